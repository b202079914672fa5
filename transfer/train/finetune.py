"""Two-phase fine-tuning, as Keras' transfer-learning guide recommends.

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
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from transfer.data.pipeline import (
    SHUFFLE_BUFFER,
    augmentation,
    decoded_images,
    drop_unreadable,
    image_dataset,
)
from transfer.data.sources import load_dataset
from transfer.errors import DataError, InvalidArgumentError
from transfer.models.groups import freeze, groups, unfreeze
from transfer.models.heads import build_classifier
from transfer.report import (
    compute_metrics,
    plot_training_curves,
    prepare_run_dir,
    save_model,
    save_weights,
    write_csv,
    write_json,
    write_reports,
    write_text,
)
from transfer.train.distribute import keras_multi_worker_fit
from transfer.train.options import resolve_options

logger = logging.getLogger("transfer")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    class_names: list
    history: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    model: object = None


def _precision_policy(mixed_precision):
    """float16 compute on a GPU; on a CPU float16 is emulated and slower, so no."""
    if not mixed_precision:
        return "float32"
    from transfer.inference import _device_kind

    if _device_kind() == "GPU":
        logger.info("Mixed precision: float16 compute, float32 weights and outputs.")
        return "mixed_float16"
    logger.warning("--mixed-precision: no GPU here, and a CPU emulates float16 more slowly "
                   "than it computes float32, so this run stays in float32.")
    return "float32"


def default_run_dir(data):
    name = str(data).rstrip("/").replace("tfds:", "tfds-").split("/")[-1] or "data"
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


def _optimizer(name, learning_rate):
    return {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "sgd": lambda learning_rate: keras.optimizers.SGD(learning_rate, momentum=0.9),
        "rmsprop": keras.optimizers.RMSprop,
    }[name](learning_rate=learning_rate)


def _metrics(num_classes):
    found = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes >= 5:
        found.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    return found


JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


def _compile(model, options, learning_rate, num_classes, replicas=1):
    jit_compile = JIT_COMPILE[options.jit_compile]
    if replicas > 1 and jit_compile == "auto":
        # XLA-compiled steps fail under tf.distribute's cross-replica code in TF 2.21
        # ("You must feed a value for placeholder tensor ... cond/Placeholder").
        jit_compile = False
    model.compile(
        optimizer=_optimizer(options.optimizer, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing),
        metrics=_metrics(num_classes),
        jit_compile=jit_compile,  # Keras' "auto": XLA on GPUs, not on CPUs
    )


def _class_weights(options, labels, num_classes):
    if options.class_weight != "auto":
        return None
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    result = {int(c): 1.0 for c in range(num_classes)}
    result.update({int(c): float(w) for c, w in zip(present, weights)})
    return result


def head_model(classifier):
    """The layers after pooling, as a model from pooled features to probabilities.

    It shares its layers (and so its weights) with `classifier`.
    """
    head_layers = groups(classifier)["head"]
    pool_index = [layer.name for layer in head_layers].index("head_pool")
    features = keras.Input(shape=head_layers[pool_index].output.shape[1:], name="features")
    x = features
    for layer in head_layers[pool_index + 1:]:
        x = layer(x)
    return keras.Model(features, x, name="head")


def pooled_features(classifier):
    """Model: raw pixels -> pooled backbone features, sharing layers with `classifier`."""
    return keras.Model(classifier.input, classifier.get_layer("head_pool").output,
                       name="pooled_features")


def epoch_batches(base, count, batch_size, seed, epochs, first_epoch=0, augment=None,
                  drop_remainder=False):
    """Batches of epochs `first_epoch`..`epochs`-1 as one dataset.

    Epoch e's order depends on (seed, e) only, so a resumed run sees the same
    batches as an uninterrupted one, and cached features are shuffled exactly as
    the images they came from.
    """
    import tensorflow as tf

    buffer = min(count, SHUFFLE_BUFFER)

    def one_epoch(epoch):
        return base.shuffle(buffer, seed=seed * 7919 + epoch,
                            reshuffle_each_iteration=False).batch(batch_size, drop_remainder)

    # Python-int seeds per epoch: a tensor seed (flat_map over a range) breaks TF's
    # seed check when the global seed is 0, i.e. `--seed 0`.
    ds = one_epoch(first_epoch).take(0)
    for epoch in range(first_epoch, epochs):
        ds = ds.concatenate(one_epoch(epoch))
    if augment is not None:
        ds = ds.map(lambda x, y: (augment(x, training=True), y),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


class Phase:
    """One training phase: compile, callbacks (with backups for --resume), fit."""

    def __init__(self, name, options, run_dir, strategy, class_weight, num_classes):
        self.name, self.options, self.run_dir = name, options, run_dir
        self.strategy, self.class_weight, self.num_classes = strategy, class_weight, num_classes
        self.backup_dir = run_dir / "checkpoints" / f"backup-{name}"
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
            _compile(model, self.options, learning_rate, self.num_classes, replicas)
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
        log_path = self.run_dir / "checkpoints" / f"history-{self.name}.json"
        rows = json.loads(log_path.read_text())[:first] if first and log_path.exists() else []
        # The epoch log is written before the backup, so a backup never runs ahead of it.
        callbacks = []
        if replicas > 1:
            # Keras 3.15 with TF 2.21 fails to split a validation batch unevenly across
            # replicas (AddN of [2, n] and [1, n]); validate on a local copy instead.
            callbacks.append(_LocalValidation(model, val, self.num_classes))
            val = None
        callbacks += [_EpochLog(self.name, rows, log_path),
                     keras.callbacks.BackupAndRestore(str(self.backup_dir), double_checkpoint=True),
                     keras.callbacks.TensorBoard(log_dir=str(self.run_dir / "logs" / self.name))]
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
                      verbose=2 if self.name == "head" else 1)
        return rows


class _LocalValidation(keras.callbacks.Callback):
    """val_loss and val_accuracy of each epoch, computed on a plain copy of the model."""

    def __init__(self, model, val, num_classes):
        super().__init__()
        self.local = plain_copy(model)
        self.images = val.map(lambda x, y: x)
        self.labels = np.concatenate([np.asarray(y) for _, y in val]).argmax(axis=1)
        self.num_classes = num_classes

    def on_epoch_end(self, epoch, logs=None):
        from transfer.inference import run_inference

        self.local.set_weights(self.model.get_weights())
        probabilities = np.clip(run_inference(self.local, self.images), 1e-7, 1.0)
        logs = logs if logs is not None else {}
        logs["val_loss"] = float(-np.mean(np.log(probabilities[np.arange(len(self.labels)),
                                                               self.labels])))
        logs["val_accuracy"] = float(np.mean(probabilities.argmax(axis=1) == self.labels))


class _EpochLog(keras.callbacks.Callback):
    """History rows of a phase, kept on disk as they come, for --resume."""

    def __init__(self, phase, rows, path):
        super().__init__()
        self.phase, self.rows, self.path = phase, rows, path

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"phase": self.phase, "epoch": epoch + 1,
                          **{k: float(v) for k, v in (logs or {}).items()}})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, self.rows)


def _cached_features(extractor, split, options, architecture_name):
    from transfer.train.feature_cache import (
        cache_key,
        compute_features,
        default_cache_dir,
        weights_identity,
    )

    images = image_dataset(split, options.image_size, options.batch_size, 1,
                           one_hot=False).map(lambda x, y: x)
    # The key holds the seed for random initialisation: same seed, same backbone.
    key = cache_key(weights_identity(options.weights, options.seed), architecture_name,
                    options.image_size, options.pooling, split.paths)
    return compute_features(extractor, images, len(split), extractor.output.shape[-1],
                            cache_dir=options.cache_dir or default_cache_dir(), key=key)


def _labelled(x, labels, num_classes):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, tf.one_hot(labels, num_classes)))


def plain_copy(model):
    """A copy of `model` with the same weights, outside any tf.distribute strategy."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def local_copy(model, strategy):
    """`model` itself, or under a multi-replica strategy a plain copy: inference on
    distributed variables outside `fit` splits and sums the batch across replicas,
    and every worker needs all of the outputs."""
    return model if strategy.num_replicas_in_sync == 1 else plain_copy(model)


def train_head_on_cached_features(model, dataset, options, phase):
    """Phase 1 with the frozen backbone's features computed once.

    The batches are shuffled exactly as images would be, so with the same seed the
    head comes out the same (within float tolerance) as training through the frozen
    backbone, only much faster.
    """
    from transfer.models.groups import architecture_of

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
    return phase.fit(head, _labelled(train_x, train.labels, dataset.num_classes), len(train),
                     _labelled(val_x, val.labels, dataset.num_classes).batch(options.batch_size),
                     options.head_epochs, options.head_learning_rate)


def _image_base(split, options, num_classes):
    """Decoded images (cached in memory when they fit) with one-hot labels."""
    import tensorflow as tf

    return decoded_images(split, options.image_size).map(
        lambda x, y: (x, tf.one_hot(y, num_classes)))


def train_on_images(model, dataset, options, phase, epochs, learning_rate, augment):
    train, val = dataset.splits["train"], dataset.splits["val"]
    num_classes = dataset.num_classes
    val_ds = image_dataset(val, options.image_size, options.batch_size, num_classes)
    return phase.fit(model, _image_base(train, options, num_classes), len(train), val_ds,
                     epochs, learning_rate,
                     augment=augmentation(options.seed) if augment else None)


def predict_split(model, split, options, num_classes):
    """(labels, probabilities) of a split, in the split's order."""
    from transfer.inference import run_inference

    ds = image_dataset(split, options.image_size, options.batch_size, num_classes, one_hot=False)
    return split.labels, run_inference(model, ds.map(lambda x, y: x))


def _versions():
    import sklearn
    import tensorflow as tf

    import transfer

    return {"transfer": transfer.__version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}


def _check_resume(run_dir, options):
    """A run can resume when its config exists, is not complete, and has our options."""
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise InvalidArgumentError(f"--resume: {run_dir} holds no run to resume (no config.json).")
    config = json.loads(config_path.read_text())
    if config.get("status") == "complete":
        raise InvalidArgumentError(f"--resume: the run in {run_dir} is already complete.")
    stored = config.get("options", {})
    differ = sorted(k for k, v in options.as_dict().items() if k in stored and stored[k] != v)
    if differ:
        raise InvalidArgumentError(
            f"--resume: {run_dir} was started with other options ({', '.join(differ)}); "
            "run the same command again with --resume.")


def finetune(data, out=None, overwrite=False, resume=False, options=None, **overrides):
    """Fine-tune a ResNet on `data` (a folder or `tfds:NAME`) and write a run directory.

    Options are the fields of `FinetuneOptions`, given as an object or as keywords.
    `resume=True` continues an interrupted run in `out` from its last completed epoch.
    Returns a `RunResult` with the run directory, the metrics and the model.
    """
    from transfer.train.distribute import is_chief, make_strategy

    options = resolve_options(options, **overrides)
    strategy = make_strategy(options.strategy)  # first: multi-worker needs it before any op
    chief = is_chief(strategy)
    out = Path(out or default_run_dir(data))
    if resume:
        _check_resume(out, options)
    if chief:
        run_dir = prepare_run_dir(out, overwrite=overwrite, keep=resume)
    else:  # workers other than the chief compute alongside it and write nothing that stays
        run_dir = Path(tempfile.mkdtemp(prefix="transfer-worker-"))
    started = time.monotonic()
    keras.utils.set_random_seed(options.seed)

    dataset = load_dataset(data, val_split=options.val_split, test_split=options.test_split,
                           tfds_data_dir=options.tfds_data_dir)
    drop_unreadable(dataset, strict=options.strict)
    if not len(dataset.splits["val"]):
        raise DataError(f"{data} gives no validation images. Raise --val-split or add a val/ "
                        "folder.")
    logger.info("Data: %s.", dataset.describe())
    if strategy.num_replicas_in_sync > 1:
        logger.info("Training on %d replicas (%s); --batch-size %d is the global batch.",
                    strategy.num_replicas_in_sync, type(strategy).__name__, options.batch_size)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(_precision_policy(options.mixed_precision))
    try:
        with strategy.scope():
            model = build_classifier(
                dataset.num_classes, depth=options.depth, version=options.version,
                weights=options.weights, image_size=options.image_size,
                weights_dir=options.weights_dir, pooling=options.pooling,
                dropout=options.dropout, hidden_units=options.hidden_units)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if options.fine_tunes and options.fine_tune_from not in groups(model):
        raise InvalidArgumentError(
            f"Unknown group: --fine-tune-from {options.fine_tune_from!r}. Expected one of "
            f"{', '.join(g for g in groups(model) if g != 'head')} or none.")
    config = {"data": str(data), "out": str(out), "options": options.as_dict(),
              "dataset": {"name": dataset.name, "source": dataset.source,
                          "fingerprint": dataset.fingerprint,
                          "splits": {k: len(v) for k, v in dataset.splits.items()},
                          "skipped_files": len(dataset.skipped)},
              "classes": dataset.class_names, "versions": _versions(),
              "replicas": strategy.num_replicas_in_sync,
              "started": datetime.now().isoformat(timespec="seconds")}
    if not resume:
        write_json(run_dir / "config.json", {**config, "status": "running"})
    write_text(run_dir / "labels.txt", "\n".join(dataset.class_names) + "\n")

    class_weight = _class_weights(options, dataset.splits["train"].labels, dataset.num_classes)
    phase_args = (options, run_dir, strategy, class_weight, dataset.num_classes)
    checkpoints = run_dir / "checkpoints"
    head_done = checkpoints / "after-head.weights.h5"
    history, timings = [], {}

    # Phase 1: the head, on a frozen backbone.
    freeze(model, train_bn=False)
    phase_start = time.monotonic()
    if resume and head_done.exists():
        logger.info("Phase 1 finished before the interruption: loading its result.")
        model.load_weights(head_done)
        history += json.loads((checkpoints / "after-head.history.json").read_text())
    elif options.head_epochs:
        phase = Phase("head", *phase_args)
        if options.cache_features and options.augment != "both":
            result = train_head_on_cached_features(model, dataset, options, phase)
        else:
            logger.info("Phase 1: training the head through the frozen backbone...")
            result = train_on_images(model, dataset, options, phase, options.head_epochs,
                                     options.head_learning_rate, augment=options.augment == "both")
        history += result
        timings["head_xla"] = phase.jit_compile
        if options.fine_tunes:  # what --resume needs to skip phase 1 next time
            checkpoints.mkdir(parents=True, exist_ok=True)
            save_weights(model, head_done)
            write_json(checkpoints / "after-head.history.json", history)
    timings["head_seconds"] = round(time.monotonic() - phase_start, 2)

    # Phase 2: fine-tune the top groups with a lower learning rate.
    if options.fine_tunes and options.weights is None and not options.train_bn:
        logger.warning("The backbone is randomly initialised but its BatchNormalization stays "
                       "in inference mode; pass --train-bn to let it learn statistics.")
    if options.fine_tunes:
        unfreeze(model, options.fine_tune_from, train_bn=options.train_bn)
        logger.info("Phase 2: fine-tuning from %s (learning rate %g)...",
                    options.fine_tune_from, options.fine_tune_learning_rate)
        phase_start = time.monotonic()
        phase = Phase("fine-tune", *phase_args)
        result = train_on_images(model, dataset, options, phase,
                                 options.fine_tune_epochs, options.fine_tune_learning_rate,
                                 augment=options.augment != "none")
        history += result
        timings["fine_tune_seconds"] = round(time.monotonic() - phase_start, 2)
        timings["fine_tune_xla"] = phase.jit_compile

    # Reports on the validation split (and the test split, if any).
    metrics = {"classes": dataset.class_names}
    inference_model = local_copy(model, strategy)
    for split_name, prefix in (("val", ""), ("test", "test_")):
        split = dataset.splits.get(split_name)
        if split is None or not len(split):
            continue
        labels, probabilities = predict_split(inference_model, split, options,
                                              dataset.num_classes)
        metrics[split_name] = compute_metrics(labels, probabilities, dataset.class_names)
        write_reports(run_dir, labels, probabilities, dataset.class_names, split.paths,
                      prefix=prefix)
    timings["total_seconds"] = round(time.monotonic() - started, 2)
    metrics["timings"] = timings
    metrics["skipped_files"] = dataset.skipped

    if history:
        columns = sorted({k for row in history for k in row} - {"phase", "epoch"})
        write_csv(run_dir / "history.csv", ["phase", "epoch", *columns],
                  [[row["phase"], row["epoch"], *[row.get(c, "") for c in columns]]
                   for row in history])
        plot_training_curves(history, run_dir / "training_curves.png")
    save_model(model, run_dir / "model.keras")
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "config.json", {
        **config, "status": "complete", "timings": timings, "resumed": bool(resume),
        "weights_used": "random initialisation" if options.weights is None else options.weights})
    shutil.rmtree(checkpoints, ignore_errors=True)
    if not chief:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = out
    return RunResult(run_dir, metrics, dataset.class_names, history, timings, model)
