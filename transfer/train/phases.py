"""The two training phases, as Keras' transfer-learning guide recommends.

Phase 1 trains a new head on a frozen backbone. While the backbone is frozen and
the images are not augmented its pooled features cannot change, so they are
computed once and the head trains on them; the head's layers are shared with the
full model, which therefore ends phase 1 holding the trained head. Phase 2
unfreezes the groups from `fine_tune_from` on and trains the whole model on
(augmented) images with a lower learning rate, recompiling between phases.
"""

import json
import logging
import math

import numpy as np

from transfer.data.pipeline import (
    augmentation,
    epoch_batches,
    image_dataset,
    images_only,
    labelled,
    one_hot_images,
)
from transfer.lazy import keras
from transfer.models.heads import head_model, pooled_features
from transfer.models.identify import architecture_of
from transfer.progress import fit_verbosity
from transfer.train.callbacks import epoch_log, local_validation
from transfer.train.distribute import keras_multi_worker_fit, local_copy
from transfer.train.feature_cache import (
    cache_key,
    compute_features,
    default_cache_dir,
    weights_identity,
)
from transfer.train.options import JIT_COMPILE, OPTIMIZERS

logger = logging.getLogger("transfer")

HEAD, FINE_TUNE = "head", "fine-tune"  # the phases' names in history.csv and logs/


def make_optimizer(name, learning_rate):
    class_name, arguments = OPTIMIZERS[name]
    return getattr(keras.optimizers, class_name)(learning_rate=learning_rate, **arguments)


def _metrics(num_classes):
    found = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes >= 5:
        found.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    return found


def compile_model(model, options, learning_rate, num_classes, replicas=1):
    jit_compile = JIT_COMPILE[options.jit_compile]
    if replicas > 1 and jit_compile == "auto":
        # XLA-compiled steps fail under tf.distribute's cross-replica code in TF 2.21
        # ("You must feed a value for placeholder tensor ... cond/Placeholder").
        jit_compile = False
    model.compile(
        optimizer=make_optimizer(options.optimizer, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing),
        metrics=_metrics(num_classes),
        jit_compile=jit_compile,  # Keras' "auto": XLA on GPUs, not on CPUs
    )


def class_weights(options, labels, num_classes):
    """Balanced weights per class with class_weight="auto", else None."""
    if options.class_weight != "auto":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    result = {int(c): 1.0 for c in range(num_classes)}
    result.update({int(c): float(w) for c, w in zip(present, weights)})
    return result


class Phase:
    """One training phase: compile, callbacks (with backups for resuming), fit."""

    def __init__(self, name, options, paths, strategy, class_weight, num_classes):
        self.name, self.options, self.paths = name, options, paths
        self.strategy, self.class_weight, self.num_classes = strategy, class_weight, num_classes
        self.backup_dir = paths.backup(name)
        self.jit_compile = None  # XLA or not, decided in fit()

    def first_epoch(self):
        """The epoch a backup of an interrupted run resumes from (0 without one)."""
        metadata = self.backup_dir / "training_metadata.json"
        if metadata.exists():
            return int(json.loads(metadata.read_text()).get("epoch", 0))
        return 0

    def fit(self, model, train_base, train_count, val, epochs, learning_rate, augment=None):
        replicas = self.strategy.num_replicas_in_sync
        with self.strategy.scope():
            compile_model(model, self.options, learning_rate, self.num_classes, replicas)
        self.jit_compile = xla = bool(model.jit_compile)
        first = self.first_epoch()
        if first:
            logger.info("Resuming %s from epoch %d of %d.", self.name, first + 1, epochs)
        batch = self.options.batch_size
        # Several replicas need equal shares of every batch, and XLA compiles again for
        # every new batch shape: drop the last partial batch (a reshuffle each epoch
        # drops other images).
        drop_remainder = (replicas > 1 or xla) and train_count >= batch
        train = epoch_batches(train_base, train_count, batch, self.options.seed, epochs,
                              first, augment, drop_remainder=drop_remainder)
        steps = train_count // batch if drop_remainder else math.ceil(train_count / batch)
        log_path = self.paths.phase_history(self.name)
        rows = json.loads(log_path.read_text())[:first] if first and log_path.exists() else []
        # The epoch log is written before the backup, so a backup never runs ahead of it.
        callbacks = []
        if replicas > 1:
            callbacks.append(local_validation(model, val))
            val = None
        callbacks += [epoch_log(self.name, rows, log_path),
                      keras.callbacks.BackupAndRestore(str(self.backup_dir),
                                                       double_checkpoint=True),
                      keras.callbacks.TensorBoard(log_dir=str(self.paths.logs(self.name)))]
        if self.options.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=self.options.early_stopping_patience,
                restore_best_weights=True, verbose=1))
        # shuffle=False: epoch_batches has shuffled already (Keras warns otherwise).
        # In scope: the optimizer makes its variables on the first step.
        with self.strategy.scope(), keras_multi_worker_fit(model, self.strategy, train):
            model.fit(train, validation_data=val, epochs=epochs, initial_epoch=first,
                      steps_per_epoch=steps,
                      class_weight=self.class_weight, callbacks=callbacks, shuffle=False,
                      verbose=2 if self.name == HEAD else fit_verbosity())
        return rows


def _cached_features(extractor, split, options, architecture_name):
    # The key holds the seed for random initialisation: same seed, same backbone.
    key = cache_key(weights_identity(options.weights, options.seed), architecture_name,
                    options.image_size, options.pooling, split.paths)
    return compute_features(extractor, images_only(split, options.image_size, options.batch_size),
                            len(split), extractor.output.shape[-1],
                            cache_dir=options.cache_dir or default_cache_dir(), key=key)


def train_head_on_cached_features(model, dataset, options, phase):
    """Phase 1 with the frozen backbone's features computed once.

    The batches are shuffled exactly as images would be, so with the same seed the
    head comes out the same (within float tolerance) as training through the frozen
    backbone, only much faster.
    """
    extractor = pooled_features(local_copy(model, phase.strategy))
    name = architecture_of(model).name
    train, val = dataset.splits["train"], dataset.splits["val"]
    logger.info("Phase 1: computing the frozen backbone's features once "
                "(train %d, validation %d images)...", len(train), len(val))
    train_x = _cached_features(extractor, train, options, name)
    val_x = _cached_features(extractor, val, options, name)
    with phase.strategy.scope():  # a model made outside the scope fails to train in it
        head = head_model(model)
    logger.info("Phase 1: training the head on cached features...")
    return phase.fit(head, labelled(train_x, train.labels, dataset.num_classes), len(train),
                     labelled(val_x, val.labels, dataset.num_classes).batch(options.batch_size),
                     options.head_epochs, options.head_learning_rate)


def train_on_images(model, dataset, options, phase, epochs, learning_rate, augment):
    train, val = dataset.splits["train"], dataset.splits["val"]
    num_classes = dataset.num_classes
    val_ds = image_dataset(val, options.image_size, options.batch_size, num_classes)
    return phase.fit(model, one_hot_images(train, options.image_size, num_classes), len(train),
                     val_ds, epochs, learning_rate,
                     augment=augmentation(options.seed) if augment else None)
