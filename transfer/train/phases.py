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

from transfer.allocator import return_freed_memory
from transfer.data.augment import augmentation, cacheable_orientations
from transfer.data.pipeline import (
    epoch_batches,
    image_dataset,
    images_only,
    labelled,
    one_hot_images,
)
from transfer.errors import InvalidArgumentError
from transfer.lazy import keras, tf
from transfer.models import names
from transfer.models.groups import groups, split_at_group
from transfer.models.heads import (
    MULTI_LABEL,
    SINGLE_LABEL,
    has_hidden_layer,
    has_standardization,
    head_model,
    pooled_features,
    set_standardization,
    task_of,
)
from transfer.models.identify import architecture_of
from transfer.progress import fit_verbosity, seconds_since_start
from transfer.runtime import correct_predictions, run_inference, score
from transfer.train.callbacks import (
    ELAPSED,
    backup_epoch,
    cached_validation,
    early_stopping,
    epoch_log,
    local_validation,
    precise_batchnorm,
    restore_backup,
    resume_backup,
    stop_on_nan,
    validation_callback,
)
from transfer.train.distribute import keras_multi_worker_fit, local_copy
from transfer.train.feature_cache import (
    cache_key,
    compute_features,
    default_cache_dir,
    weights_identity,
)
from transfer.train.logistic import fit_logistic_regression, fitted_c, output_weights
from transfer.train.options import AUTO, JIT_COMPILE, OPTIMIZERS

logger = logging.getLogger("transfer")

HEAD, FINE_TUNE = "head", "fine-tune"  # the phases' names in history.csv and logs/

# Phase 1 with head_epochs="auto": on cached features a step costs next to nothing,
# so the head gets enough optimizer steps to converge like a linear probe
# (HEAD_STEPS), in at least HEAD_MIN_EPOCHS and at most HEAD_MAX_EPOCHS epochs;
# early stopping ends it sooner. Through the backbone an epoch costs a pass over
# the images, so it gets HEAD_EPOCHS_ON_IMAGES.
HEAD_STEPS = 600
HEAD_MIN_EPOCHS, HEAD_MAX_EPOCHS = 10, 200
HEAD_EPOCHS_ON_IMAGES = 10
WARMUP_FRACTION = 0.1  # of phase 2's steps, at most one epoch: the learning rate ramps up


def head_epochs(options, train_count, on_cached_features):
    """Phase 1's epochs: the option's number, or planned from the data for "auto"."""
    if options.head_epochs != AUTO:
        return options.head_epochs
    if not on_cached_features:
        return HEAD_EPOCHS_ON_IMAGES
    steps_per_epoch = math.ceil(train_count / options.batch_size)
    return int(min(HEAD_MAX_EPOCHS, max(HEAD_MIN_EPOCHS, math.ceil(HEAD_STEPS / steps_per_epoch))))


def warmup_cosine(learning_rate, total_steps, steps_per_epoch):
    """Linear warmup from 0 over min(one epoch, 10% of the steps), then cosine decay to 0
    (Loshchilov & Hutter 2017; Goyal et al. 2017's warmup), as timm and fastai do."""
    warmup = max(1, min(steps_per_epoch, int(WARMUP_FRACTION * total_steps)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(1, total_steps - warmup), alpha=0.0,
        warmup_target=learning_rate, warmup_steps=warmup)


def group_rate_multipliers(model, layer_decay):
    """{id(variable): learning-rate multiplier}: 1 for the head, `layer_decay` for the
    group below it, its square for the next (layer-wise decay, as timm's --layer-decay
    and fastai's discriminative learning rates)."""
    multipliers = {}
    for distance, layers in enumerate(reversed(list(groups(model).values()))):
        for layer in layers:
            for variable in layer.trainable_weights:
                multipliers[id(variable)] = layer_decay ** distance
    return multipliers


_LAYERWISE = {}  # optimizer class -> its subclass with a learning rate per variable


def _layerwise_class(base):
    """`base` with per-variable learning-rate multipliers: Keras 3 applies one learning
    rate to every variable, but passes it to `update_step` one variable at a time."""
    if base not in _LAYERWISE:
        def build(self, variables):
            base.build(self, variables)
            self.rate_multipliers = [self.multipliers_by_id.get(id(v), 1.0) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            multiplier = self.rate_multipliers[self._get_variable_index(variable)]
            return base.update_step(self, gradient, variable, learning_rate * multiplier)

        _LAYERWISE[base] = type(f"Layerwise{base.__name__}", (base,),
                                {"build": build, "update_step": update_step})
    return _LAYERWISE[base]


EMA_MOMENTUM = 0.99  # Keras' default: the average spans about the last 100 steps


def make_optimizer(name, learning_rate, rate_multipliers=None, ema=False):
    """The optimizer `name`; with `rate_multipliers` ({id(variable): factor}) each
    variable learns at `learning_rate` times its factor; with `ema` the weights end
    as their exponential moving average (Keras' `use_ema`)."""
    class_name, arguments = OPTIMIZERS[name]
    if ema:
        arguments = dict(arguments, use_ema=True, ema_momentum=EMA_MOMENTUM)
    optimizer_class = getattr(keras.optimizers, class_name)
    if rate_multipliers is None or all(m == 1.0 for m in rate_multipliers.values()):
        return optimizer_class(learning_rate=learning_rate, **arguments)
    optimizer = _layerwise_class(optimizer_class)(learning_rate=learning_rate, **arguments)
    optimizer.multipliers_by_id = rate_multipliers
    return optimizer


# task -> the loss in keras.losses (both take label_smoothing)
LOSSES = {SINGLE_LABEL: "CategoricalCrossentropy", MULTI_LABEL: "BinaryCrossentropy"}


def labels_ranked_first(y_true, y_pred):
    """Per image, 1 where all its labels are ranked above all other classes: the
    multi-label accuracy of `runtime.correct_predictions`, as a Keras metric."""
    truth = y_true > 0.5
    lowest_label = tf.reduce_min(tf.where(truth, y_pred, np.inf), axis=-1)
    highest_other = tf.reduce_max(tf.where(truth, -np.inf, y_pred), axis=-1)
    return tf.cast(lowest_label > highest_other, y_pred.dtype)


def _metrics(num_classes, task=SINGLE_LABEL):
    if task == MULTI_LABEL:
        return [keras.metrics.MeanMetricWrapper(labels_ranked_first, name="accuracy")]
    found = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes >= 5:
        found.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    return found


def compile_model(model, options, learning_rate, num_classes, replicas=1, rate_multipliers=None,
                  ema=False):
    jit_compile = JIT_COMPILE[options.jit_compile]
    if replicas > 1 and jit_compile == "auto":
        # XLA-compiled steps fail under tf.distribute's cross-replica code in TF 2.21
        # ("You must feed a value for placeholder tensor ... cond/Placeholder").
        jit_compile = False
    model.compile(
        optimizer=make_optimizer(options.optimizer, learning_rate, rate_multipliers, ema),
        loss=getattr(keras.losses, LOSSES[task_of(model)])(label_smoothing=options.label_smoothing),
        metrics=_metrics(num_classes, task_of(model)),
        jit_compile=jit_compile,  # Keras' "auto": XLA on GPUs, not on CPUs
    )


def class_weights(options, labels, num_classes):
    """Balanced weights per class with class_weight="auto", else None."""
    if options.class_weight != "auto":
        return None
    if np.ndim(labels) == 2:
        raise InvalidArgumentError(
            "class_weight='auto' weighs one class per image; multi-label data has several. "
            "Use class_weight='none'.")
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
        return backup_epoch(self.backup_dir)

    def fit(self, model, train_base, train_count, val, epochs, learning_rate, augment=None,
            schedule=False, layer_decay=1.0, ema=False, validation=None, recalibrate=None,
            fitted=None):
        """Train `model`; `schedule` warms the learning rate up and decays it (cosine),
        `layer_decay` below 1 lets each group below the head learn that much slower,
        `ema` ends with the moving average of the weights. `validation`, a callback
        that puts the validation scores in each epoch's logs, replaces Keras' pass
        over `val`; `recalibrate` (`precise_batchnorm`) runs at each epoch's end
        before it. `fitted`, the model Keras trains, is `model` or a part of it that
        shares its layers (the groups after a frozen prefix, on the prefix's outputs)."""
        replicas = self.strategy.num_replicas_in_sync
        fitted = model if fitted is None else fitted
        with self.strategy.scope():
            compile_model(fitted, self.options, learning_rate, self.num_classes, replicas)
        self.jit_compile = xla = bool(fitted.jit_compile)
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
        if schedule or layer_decay != 1.0 or ema:  # they need what the first compile decided
            rate = warmup_cosine(learning_rate, steps * epochs, steps) if schedule else learning_rate
            multipliers = group_rate_multipliers(model, layer_decay) if layer_decay != 1.0 else None
            with self.strategy.scope():
                compile_model(fitted, self.options, rate, self.num_classes, replicas, multipliers,
                              ema)
        if first and not restore_backup(fitted, self.backup_dir):
            first = 0
            train = epoch_batches(train_base, train_count, batch, self.options.seed, epochs,
                                  first, augment, drop_remainder=drop_remainder)
        log_path = self.paths.phase_history(self.name)
        rows = json.loads(log_path.read_text())[:first] if first and log_path.exists() else []
        # The epoch log is written before the backup, so a backup never runs ahead of it.
        # Phase 2 can fall back on phase 1's model, unless told to keep the last.
        falls_back = self.name == FINE_TUNE and self.options.keep == "best"
        callbacks = [stop_on_nan(self.name, fitted, falls_back)]
        if recalibrate is not None:
            callbacks.append(recalibrate)
        if replicas > 1:
            callbacks.append(local_validation(fitted, val))
            val = None
        elif validation is not None:
            callbacks.append(validation)
            val = None
        callbacks += [epoch_log(self.name, rows, log_path),
                      resume_backup(fitted, self.backup_dir, self.options.backup_interval),
                      # Scalars only: the graph and histograms cost seconds an epoch.
                      keras.callbacks.TensorBoard(log_dir=str(self.paths.logs(self.name)),
                                                  write_graph=False, histogram_freq=0)]
        if self.options.early_stopping_patience:
            callbacks.append(early_stopping(fitted, self.options.early_stopping_patience,
                                            self.paths.best_weights(self.name)))
        # shuffle=False: epoch_batches has shuffled already (Keras warns otherwise).
        # In scope: the optimizer makes its variables on the first step.
        with self.strategy.scope(), keras_multi_worker_fit(fitted, self.strategy, train):
            fitted.fit(train, validation_data=val, epochs=epochs, initial_epoch=first,
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


def split_features(model, dataset, options, strategy, split_names, backbone_as_cached,
                   known=None):
    """{split name: pooled backbone features} of the named splits (the empty ones left
    out), for the end of a run: its predictions are the head's on these, and its report
    reuses them. While the backbone is still the frozen one phase 1 cached features of,
    they come from the cache; after phase 2 it is a new backbone, and one pass computes
    them (uncached: the cache's key names the starting weights). `known` holds the
    features of splits computed already with this backbone, taken as they are."""
    extractor = pooled_features(local_copy(model, strategy))
    name = architecture_of(model).name
    found = {}
    for split_name in split_names:
        split = dataset.splits.get(split_name)
        if split is None or not len(split):
            continue
        if split_name in (known or {}):
            found[split_name] = known[split_name]
        elif backbone_as_cached:
            found[split_name] = _cached_features(extractor, split, options, name)
        else:
            found[split_name] = compute_features(
                extractor, images_only(split, options.image_size, options.batch_size),
                len(split), extractor.output.shape[-1])
    return found


# Rows at a time: features may be a memory-mapped file, and a block's float64
# temporaries stay small (512 x 2,048 features: 8 MB each).
STATISTICS_CHUNK = 512


def _parts(features):
    """One array of features, or several whose rows go one after the other."""
    return list(features) if isinstance(features, (list, tuple)) else [features]


def _chunks(features, chunk=STATISTICS_CHUNK):
    """float64 blocks of rows of `features` (one array or several), in order."""
    for part in _parts(features):
        for start in range(0, len(part), chunk):
            yield np.asarray(part[start:start + chunk], dtype=np.float64)


def feature_statistics(features, chunk=STATISTICS_CHUNK):
    """Per-feature mean and variance of `features` (one array or several), in float64
    and in chunks (features may be a memory-mapped file larger than memory)."""
    total = np.zeros(_parts(features)[0].shape[1])
    squares = np.zeros_like(total)
    count = 0
    for part in _chunks(features, chunk):
        total += part.sum(axis=0)
        squares += np.square(part).sum(axis=0)
        count += len(part)
    mean = total / max(1, count)
    return mean, np.maximum(squares / max(1, count) - np.square(mean), 0.0)


# Floor of a feature's variance, relative to the mean variance of all features: a
# feature (a ReLU channel) nearly constant on the training images would otherwise be
# divided by almost 0 and blow up on an image where it is not.
VARIANCE_FLOOR = 0.01


def standardize_head(model, train_features):
    """Set the head's standardisation to the training features' statistics (one array
    or several): a softmax on raw pooled features learns slowly, a linear probe
    standardises. Returns the function that standardises features as the model now
    does (the identity for a head without standardisation)."""
    dim = _parts(train_features)[0].shape[1]
    if not has_standardization(model):
        return standardizer(np.zeros(dim), np.ones(dim))
    mean, variance = feature_statistics(train_features)
    floor = VARIANCE_FLOOR * float(np.mean(variance)) if variance.size else 0.0
    variance = np.maximum(variance, floor)
    set_standardization(model, mean, variance)
    return standardizer(mean, np.sqrt(variance))


def standardizer(mean, scale):
    def standardized(features, dtype=np.float32):
        """(features - mean) / scale of `features` (one array or several, stacked) as
        one array of `dtype`, filled chunk by chunk: no whole-size temporaries (5,000 x
        2,048 features: 82 MB each in float64)."""
        out = np.empty((sum(len(part) for part in _parts(features)), len(mean)), dtype)
        row = 0
        for part in _chunks(features):
            out[row:row + len(part)] = (part - mean) / scale
            row += len(part)
        return out
    return standardized


def fit_head_as_probe(model, head, standardized, train_x, train_labels, val_x, val_labels,
                      options, num_classes):
    """Phase 1 as LP-FT's linear probe: a logistic regression with C chosen by
    cross-validation on the (standardised) training features becomes the head's
    output layer. Returns a history row with its training and validation scores."""
    # float64: LogisticRegressionCV would copy float32 features into float64 itself.
    fitted_c = _set_probe_head(model, standardized(train_x, np.float64), train_labels, options,
                               num_classes)
    logger.info("Phase 1: the head is the logistic regression (C = %.4g).", fitted_c)
    train_score = score(train_labels, run_inference(head, _batches(train_x, options)))
    val_score = score(val_labels, run_inference(head, _batches(val_x, options)))
    return [{"phase": HEAD, "epoch": 1, "accuracy": train_score["accuracy"],
             "loss": train_score["loss"], "val_accuracy": val_score["accuracy"],
             "val_loss": val_score["loss"], PROBE_C: fitted_c,
             ELAPSED: seconds_since_start()}]


PROBE_C = "probe_C"  # the history column of a phase 1 that is the probe


def _set_probe_head(model, standardized_features, labels, options, num_classes, c=None):
    """Fit the logistic regression (with C chosen by cross-validation, or `c`) and make
    it the classifier layer; returns its C."""
    classifier = fit_logistic_regression(standardized_features, labels, num_classes,
                                         seed=options.seed, standardize=False, c=c)
    model.get_layer(names.CLASSIFIER).set_weights(list(output_weights(classifier, num_classes)))
    return fitted_c(classifier)


def head_is_probe(history):
    return probe_c(history) is not None


def probe_c(history):
    """The C that cross-validation chose for phase 1's probe; None if phase 1 trained."""
    return next((row[PROBE_C] for row in history if row["phase"] == HEAD and PROBE_C in row),
                None)


def refit_probe_on_all_labels(model, dataset, options, strategy, c):
    """Fit phase 1's probe again, with its C, on the training and validation images
    together, once validation has chosen phase 1: its labels then train rather than
    judge, as scikit-learn's `refit=True` fits the chosen C on all the data after a
    search. At 10 labels per class the hold-out is a fifth of the labels. The model's
    standardisation takes the statistics of all of them. Returns what metrics.json
    records of the refit."""
    extractor = pooled_features(local_copy(model, strategy))
    name = architecture_of(model).name
    splits = [dataset.splits["train"], dataset.splits["val"]]
    logger.info("Refitting phase 1's probe (C = %.4g) on the training and validation "
                "images (%d)...", c, sum(len(split) for split in splits))
    features = [_cached_features(extractor, split, options, name) for split in splits]
    labels = np.concatenate([split.labels for split in splits])
    standardized = standardize_head(model, features)
    # float32: a single LogisticRegression fits in float32 (scikit-learn >= 1.8), half
    # the bytes of the float64 its cross-validation needs.
    _set_probe_head(model, standardized(features), labels, options, dataset.num_classes, c=c)
    return_freed_memory()  # the fit's arrays, before the reports
    return {"images": int(len(labels)), "C": c,
            "note": "validation scores are of the model before the refit"}


def _batches(features, options):
    return tf.data.Dataset.from_tensor_slices(np.asarray(features)).batch(options.batch_size)


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
    standardized = standardize_head(model, train_x)
    with phase.strategy.scope():  # a model made outside the scope fails to train in it
        head = head_model(model)
    # The probe is phase 1 unless told otherwise: a number of head epochs asks for training.
    if options.head_init == "probe" and options.head_epochs == AUTO and not has_hidden_layer(model):
        return fit_head_as_probe(model, head, standardized, train_x, train.labels, val_x,
                                 val.labels, options, dataset.num_classes)
    epochs = head_epochs(options, len(train), on_cached_features=True)
    logger.info("Phase 1: training the head on cached features (%d epochs at most)...", epochs)
    return phase.fit(head, labelled(train_x, train.labels, dataset.num_classes), len(train),
                     labelled(val_x, val.labels, dataset.num_classes).batch(options.batch_size),
                     epochs, options.head_learning_rate)


def train_head_on_images(model, dataset, options, phase):
    """Phase 1 through the frozen backbone (no feature cache)."""
    train = dataset.splits["train"]
    if has_standardization(model):
        extractor = pooled_features(local_copy(model, phase.strategy))
        standardize_head(model, run_inference(
            extractor, images_only(train, options.image_size, options.batch_size)))
    logger.info("Phase 1: training the head through the frozen backbone...")
    return train_on_images(model, dataset, options, phase,
                           head_epochs(options, len(train), on_cached_features=False),
                           options.head_learning_rate)


def fine_tune_on_images(model, dataset, options, phase):
    """Phase 2: augmented images, warmup and cosine decay, rates falling with depth;
    BatchNormalization that trains gets precise statistics at each epoch's end. The
    frozen groups' outputs are computed once where they fit (`FrozenPrefix`): for the
    validation images always, and for the training images where the augmentation
    is none or a flip, so that each step runs only the groups that train."""
    cached = FrozenPrefix.of(model, dataset, options, phase)
    validation = cached.validation() if cached else None
    train, val = dataset.splits["train"], dataset.splits["val"]
    train_on_prefix = cached is not None and cached.train is not None
    recalibrate = None
    if options.train_bn and phase.strategy.num_replicas_in_sync == 1:
        if train_on_prefix:
            recalibrate = precise_batchnorm(cached.suffix, cached.train_batches(
                train.sample_indices(PRECISE_BN_IMAGES, options.seed)))
        else:
            recalibrate = precise_batchnorm(model, images_only(
                train.sample(PRECISE_BN_IMAGES, options.seed), options.image_size,
                options.batch_size))
    # Keras' validation would come before the recalibration, and it cannot run images
    # through a model that trains on the prefix's outputs.
    if validation is None and len(val) and (recalibrate is not None or train_on_prefix):
        validation = validation_callback(
            model, images_only(val, options.image_size, options.batch_size), val.labels)
    fit_args = dict(schedule=options.lr_schedule == "cosine", layer_decay=options.layer_decay,
                    ema=options.ema, validation=validation, recalibrate=recalibrate)
    if train_on_prefix:
        return phase.fit(model, labelled(np.arange(len(train)), train.labels, dataset.num_classes),
                         len(train), None, options.fine_tune_epochs,
                         options.fine_tune_learning_rate, augment=cached.train_inputs(options.seed),
                         fitted=cached.suffix, **fit_args)
    return train_on_images(model, dataset, options, phase, options.fine_tune_epochs,
                           options.fine_tune_learning_rate,
                           augment=augmentation(options.seed, options.augment, options.flip),
                           **fit_args)


# Precise BatchNormalization statistics are averaged over this many training images
# (a seeded sample); pycls averages over 8192 at ImageNet scale.
PRECISE_BN_IMAGES = 512


# Phase 2 runs the frozen groups' (the prefix's) outputs through the groups that
# train (the suffix). Those outputs are computed once and kept in float16 when they
# fit in this budget: the validation images' first, then both orientations of the
# training images'. (At 224 px a ResNet's conv4 output is 392 KB an image in float16.)
PREFIX_CACHE_BYTES = 2 * 2**30


class FrozenPrefix:
    """The outputs of the groups before `fine_tune_from`, computed once for phase 2."""

    def __init__(self, prefix, suffix, options):
        self.prefix, self.suffix, self.options = prefix, suffix, options
        self.val_outputs = self.val_labels = None
        # A tensor of (orientations × training images, ...) or None; image i mirrored
        # is at i + train_count.
        self.train, self.orientations = None, 0

    @classmethod
    def of(cls, model, dataset, options, phase):
        """The cache for this run, or None where the model does not split at
        fine_tune_from (or several replicas validate on a local copy instead,
        `local_validation`)."""
        if phase.strategy.num_replicas_in_sync > 1:
            return None
        split = split_at_group(model, options.fine_tune_from)
        if split is None:
            return None
        prefix, suffix = split
        train, val = dataset.splits["train"], dataset.splits["val"]
        per_image = int(np.prod(prefix.output.shape[1:])) * 2
        budget = PREFIX_CACHE_BYTES
        cache = cls(prefix, suffix, options)
        if len(val) * per_image > budget:
            logger.info("Validation runs through the whole model: the frozen groups' outputs "
                        "would take %.1f GB.", len(val) * per_image / 2**30)
        elif len(val):
            cache.val_outputs, cache.val_labels = cache._outputs(val), val.labels
            budget -= len(val) * per_image
        orientations = cacheable_orientations(options.augment, options.flip)
        size = orientations * len(train) * per_image
        if orientations and len(train) and size <= budget:
            logger.info("Phase 2: the frozen groups' outputs for the training images are "
                        "computed once (%d image%s, %.0f MB); each step runs from %s on.",
                        len(train), "s and their mirror images" if orientations == 2 else "s",
                        size / 2**20, options.fine_tune_from)
            cache.train = tf.convert_to_tensor(np.concatenate(
                [cache._outputs(train, mirrored=bool(o)) for o in range(orientations)]))
            cache.orientations = orientations
        elif orientations and len(train):
            logger.info("Phase 2 trains on images: the frozen groups' outputs would take "
                        "%.1f GB.", size / 2**30)
        return cache

    def _outputs(self, split, mirrored=False):
        images = images_only(split, self.options.image_size, self.options.batch_size)
        if mirrored:  # as keras.layers.RandomFlip("horizontal") mirrors them
            images = images.map(lambda x: tf.reverse(x, axis=[2]))
        return run_inference(self.prefix, images, dtype=np.float16)

    @property
    def train_count(self):
        return self.train.shape[0] // self.orientations if self.orientations else 0

    def validation(self):
        """The `cached_validation` callback, or None (Keras validates through the whole
        model) where the validation outputs did not fit."""
        if self.val_outputs is None:
            return None
        return cached_validation(self.suffix, self.val_outputs, self.val_labels,
                                 self.options.batch_size)

    def _gather(self, positions):
        return tf.cast(tf.gather(self.train, positions), self.suffix.input.dtype)

    def train_batches(self, positions):
        """Batches of the cached outputs of the training images at `positions`, as
        they are."""
        return tf.data.Dataset.from_tensor_slices(positions).batch(
            self.options.batch_size).map(self._gather)

    def train_inputs(self, seed):
        """`epoch_batches`' augment for training on the cache: a batch of image
        positions -> their cached outputs, each mirrored or not at random when the
        cache holds both orientations (a horizontal flip of probability 1/2)."""
        count, orientations = self.train_count, self.orientations
        generator = tf.random.Generator.from_seed(seed)

        def inputs(positions, training=True):
            if orientations == 2:
                mirrored = generator.uniform(tf.shape(positions)) < 0.5
                positions = positions + tf.cast(mirrored, positions.dtype) * count
            return self._gather(positions)

        return inputs


def train_on_images(model, dataset, options, phase, epochs, learning_rate, augment=None,
                    schedule=False, layer_decay=1.0, ema=False, validation=None,
                    recalibrate=None):
    train, val = dataset.splits["train"], dataset.splits["val"]
    num_classes = dataset.num_classes
    val_ds = image_dataset(val, options.image_size, options.batch_size, num_classes)
    return phase.fit(model, one_hot_images(train, options.image_size, num_classes), len(train),
                     val_ds, epochs, learning_rate, augment=augment, schedule=schedule,
                     layer_decay=layer_decay, ema=ema, validation=validation,
                     recalibrate=recalibrate)


def release_training_state(model):
    """After the last phase: let go of the optimizer (Adam's slots are twice the weights
    that trained: 120 MB for a ResNet50's conv5), the traced steps that captured its
    variables, and the compile state naming it, so that the end of the run (refit,
    reports, saving) reuses that memory. The model predicts as before, uncompiled."""
    if not getattr(model, "compiled", False):
        return
    for attribute in ("optimizer", "train_function", "test_function", "predict_function"):
        # Deleted first: TensorFlow's tracking keeps a reference to what an attribute held
        # (for checkpoints) until the attribute is deleted, not when it is reassigned.
        if getattr(model, attribute, None) is not None:
            delattr(model, attribute)
        setattr(model, attribute, None)
    model.compiled = False
    model._compile_config = None  # Keras' own record of compile(), optimizer included
    return_freed_memory()


def validation_score(probabilities, labels):
    """{"accuracy", "loss"} of a model's `probabilities` for the validation images, and
    "correct": which images it gets right, for the paired comparison of two phases."""
    return {**score(labels, probabilities), "correct": correct_predictions(labels, probabilities)}


# Phase 2 is kept when it gets more validation images right than phase 1 by more than
# this many standard errors of the paired difference (McNemar's statistic on the images
# where the two disagree): on 90 validation images, one image more is noise, and on the
# 100-label experiment a phase 2 kept for one image tested 0.02 below phase 1.
KEEP_MARGIN = 1.0


def clearly_better(correct, baseline_correct, margin=KEEP_MARGIN):
    """Whether `correct` beats `baseline_correct` (per-image booleans on the same
    images) by more than `margin` standard errors of the paired difference."""
    gained = int(np.sum(correct & ~baseline_correct))
    lost = int(np.sum(baseline_correct & ~correct))
    return bool(gained - lost > margin * np.sqrt(gained + lost))
