"""Two-phase fine-tuning, as Keras' transfer-learning guide recommends.

Phase 1 trains a new head on a frozen backbone. While the backbone is frozen and
the images are not augmented its pooled features cannot change, so they are
computed once and the head trains on them; the head's layers are shared with the
full model, which therefore ends phase 1 holding the trained head. Phase 2
unfreezes the groups from `fine_tune_from` on and trains the whole model on
(augmented) images with a lower learning rate, recompiling between phases.
"""

import logging
import platform
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import keras
import numpy as np

from transfer.data.pipeline import augmentation, drop_unreadable, image_dataset
from transfer.data.sources import load_dataset
from transfer.errors import DataError, InvalidArgumentError
from transfer.models.groups import freeze, groups, unfreeze
from transfer.models.heads import build_classifier
from transfer.report import (
    compute_metrics,
    plot_training_curves,
    prepare_run_dir,
    save_model,
    write_csv,
    write_json,
    write_reports,
    write_text,
)
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


def _compile(model, options, learning_rate, num_classes):
    model.compile(
        optimizer=_optimizer(options.optimizer, learning_rate),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=options.label_smoothing),
        metrics=_metrics(num_classes),
        jit_compile=JIT_COMPILE[options.jit_compile],
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


def _callbacks(options, run_dir, phase):
    callbacks = [keras.callbacks.TensorBoard(log_dir=str(run_dir / "logs" / phase))]
    if options.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=options.early_stopping_patience,
            restore_best_weights=True, verbose=1))
    return callbacks


def _history_rows(history, phase):
    keys = list(history.history)
    epochs = len(history.history[keys[0]]) if keys else 0
    return [{"phase": phase, "epoch": i + 1,
             **{k: float(history.history[k][i]) for k in keys}} for i in range(epochs)]


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


def _shuffled_batches(elements, options, shuffle):
    """Batches of (x, one-hot y); both phase-1 paths shuffle identically by seed."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(elements)
    if shuffle:
        ds = ds.shuffle(len(elements[1]), seed=options.seed, reshuffle_each_iteration=True)
    return ds


def _cached_split(extractor, split, options, architecture_name, num_classes):
    """(features, labels) dataset of one split, from the feature cache."""
    import tensorflow as tf

    from transfer.train.feature_cache import (
        cache_key,
        compute_features,
        default_cache_dir,
        weights_identity,
    )

    images = image_dataset(split, options.image_size, options.batch_size, num_classes,
                           one_hot=False).map(lambda x, y: x)
    key = cache_key(weights_identity(options.weights, options.seed), architecture_name,
                    options.image_size, options.pooling, split.paths)
    cache_dir = None if options.weights is None else (options.cache_dir or default_cache_dir())
    features = compute_features(extractor, images, len(split), extractor.output.shape[-1],
                                cache_dir=cache_dir, key=key)
    return features, tf.one_hot(split.labels, num_classes)


def train_head_on_cached_features(model, dataset, options, run_dir, class_weight):
    """Phase 1 with the frozen backbone's features computed once.

    The batches are shuffled exactly as `_train_on_images` shuffles images, so with
    the same seed the head comes out the same (within float tolerance) as training
    through the frozen backbone, only much faster.
    """
    from transfer.models.groups import architecture_of

    extractor = pooled_features(model)
    num_classes = dataset.num_classes
    name = architecture_of(model).name
    logger.info("Phase 1: computing the frozen backbone's features once "
                "(train %d, validation %d images)...",
                len(dataset.splits["train"]), len(dataset.splits["val"]))
    train = _shuffled_batches(_cached_split(extractor, dataset.splits["train"], options, name,
                                            num_classes), options, shuffle=True)
    val = _shuffled_batches(_cached_split(extractor, dataset.splits["val"], options, name,
                                          num_classes), options, shuffle=False)
    head = head_model(model)
    _compile(head, options, options.head_learning_rate, num_classes)
    logger.info("Phase 1: training the head on cached features...")
    return head.fit(train.batch(options.batch_size), validation_data=val.batch(options.batch_size),
                    epochs=options.head_epochs, class_weight=class_weight, shuffle=False,
                    callbacks=_callbacks(options, run_dir, "head"), verbose=2)


def _train_on_images(model, dataset, options, run_dir, class_weight, phase, epochs, learning_rate,
                     augment):
    num_classes = dataset.num_classes
    train = image_dataset(dataset.splits["train"], options.image_size, options.batch_size,
                          num_classes, shuffle=True, seed=options.seed,
                          augment=augmentation(options.seed) if augment else None)
    val = image_dataset(dataset.splits["val"], options.image_size, options.batch_size,
                        num_classes)
    _compile(model, options, learning_rate, num_classes)
    # shuffle=False: the tf.data pipeline shuffles already (Keras warns otherwise).
    return model.fit(train, validation_data=val, epochs=epochs, class_weight=class_weight,
                     callbacks=_callbacks(options, run_dir, phase), shuffle=False, verbose=1)


def predict_split(model, split, options, num_classes):
    """(labels, probabilities) of a split, in the split's order."""
    ds = image_dataset(split, options.image_size, options.batch_size, num_classes, one_hot=False)
    return split.labels, model.predict(ds.map(lambda x, y: x), verbose=0)


def _versions():
    import sklearn
    import tensorflow as tf

    import transfer

    return {"transfer": transfer.__version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}


def finetune(data, out=None, overwrite=False, options=None, **overrides):
    """Fine-tune a ResNet on `data` (a folder or `tfds:NAME`) and write a run directory.

    Options are the fields of `FinetuneOptions`, given as an object or as keywords.
    Returns a `RunResult` with the run directory, the metrics and the model.
    """
    options = resolve_options(options, **overrides)
    run_dir = prepare_run_dir(out or default_run_dir(data), overwrite=overwrite)
    started = time.monotonic()
    keras.utils.set_random_seed(options.seed)

    dataset = load_dataset(data, val_split=options.val_split, test_split=options.test_split,
                           tfds_data_dir=options.tfds_data_dir)
    drop_unreadable(dataset, strict=options.strict)
    if not len(dataset.splits["val"]):
        raise DataError(f"{data} gives no validation images. Raise --val-split or add a val/ "
                        "folder.")
    logger.info("Data: %s.", dataset.describe())

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(_precision_policy(options.mixed_precision))
    try:
        model = build_classifier(
            dataset.num_classes, depth=options.depth, version=options.version,
            weights=options.weights, image_size=options.image_size,
            weights_dir=options.weights_dir, pooling=options.pooling, dropout=options.dropout,
            hidden_units=options.hidden_units)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if options.fine_tunes and options.fine_tune_from not in groups(model):
        raise InvalidArgumentError(
            f"Unknown group: --fine-tune-from {options.fine_tune_from!r}. Expected one of "
            f"{', '.join(g for g in groups(model) if g != 'head')} or none.")
    config = {"data": str(data), "out": str(run_dir), "options": options.as_dict(),
              "dataset": {"name": dataset.name, "source": dataset.source,
                          "fingerprint": dataset.fingerprint,
                          "splits": {k: len(v) for k, v in dataset.splits.items()},
                          "skipped_files": len(dataset.skipped)},
              "classes": dataset.class_names, "versions": _versions(),
              "started": datetime.now().isoformat(timespec="seconds")}
    write_json(run_dir / "config.json", {**config, "status": "running"})
    write_text(run_dir / "labels.txt", "\n".join(dataset.class_names) + "\n")

    class_weight = _class_weights(options, dataset.splits["train"].labels, dataset.num_classes)
    history, timings = [], {}

    # Phase 1: the head, on a frozen backbone.
    freeze(model, train_bn=False)
    phase_start = time.monotonic()
    if options.head_epochs:
        if options.cache_features and options.augment != "both":
            result = train_head_on_cached_features(model, dataset, options, run_dir, class_weight)
        else:
            logger.info("Phase 1: training the head through the frozen backbone...")
            result = _train_on_images(model, dataset, options, run_dir, class_weight, "head",
                                      options.head_epochs, options.head_learning_rate,
                                      augment=options.augment == "both")
        history += _history_rows(result, "head")
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
        result = _train_on_images(model, dataset, options, run_dir, class_weight, "fine-tune",
                                  options.fine_tune_epochs, options.fine_tune_learning_rate,
                                  augment=options.augment != "none")
        history += _history_rows(result, "fine-tune")
        timings["fine_tune_seconds"] = round(time.monotonic() - phase_start, 2)

    # Reports on the validation split (and the test split, if any).
    metrics = {"classes": dataset.class_names}
    for split_name, prefix in (("val", ""), ("test", "test_")):
        split = dataset.splits.get(split_name)
        if split is None or not len(split):
            continue
        labels, probabilities = predict_split(model, split, options, dataset.num_classes)
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
        **config, "status": "complete", "timings": timings,
        "weights_used": "random initialisation" if options.weights is None else options.weights})
    return RunResult(run_dir, metrics, dataset.class_names, history, timings, model)
