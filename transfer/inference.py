"""Using trained models: load a run or model file, run it on images fast, evaluate
on labelled data, predict top-k labels for files and folders.

Models are always loaded with Keras' safe mode on: a model file never runs code.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from transfer.data.pipeline import find_unreadable, image_dataset
from transfer.data.sources import IMAGE_EXTENSIONS, Split, evaluation_split, load_dataset
from transfer.errors import DataError, InvalidArgumentError
from transfer.models.weights import CLASSIFIER_LAYER
from transfer.report import compute_metrics, prepare_run_dir, write_json, write_reports

logger = logging.getLogger("transfer")

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.txt"


@dataclass
class LoadedModel:
    model: keras.Model
    path: Path
    class_names: list  # None for a model without labels.txt
    image_size: tuple  # (height, width)

    @property
    def is_classifier(self):
        return _is_classifier(self.model)


def _is_classifier(model):
    names = {layer.name for layer in model.layers}
    return CLASSIFIER_LAYER in names and len(model.output.shape) == 2


def _image_size(model, model_path, image_size):
    if image_size:
        return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    height, width = model.input_shape[1:3]
    if height and width:
        return (height, width)
    config = model_path.parent / "config.json"
    if config.exists():
        size = json.loads(config.read_text()).get("options", {}).get("image_size")
        if size:
            return (size, size)
    raise InvalidArgumentError(
        f"{model_path} takes images of any size; pass --image-size to choose one.")


def load_model(run_or_model, need_classifier=True, image_size=None):
    """Load a run directory (model.keras + labels.txt) or a `.keras` file, safely.

    With `need_classifier`, the model must end in a `predictions` layer and have a
    labels.txt beside it, one class name per output.
    """
    path = Path(run_or_model)
    if not path.exists():
        raise InvalidArgumentError(
            f"{path} does not exist. Expected a run directory of `transfer finetune` "
            "or a .keras model file.")
    model_path = path / MODEL_FILE if path.is_dir() else path
    if not model_path.is_file():
        raise InvalidArgumentError(
            f"{path} holds no {MODEL_FILE}. Expected a run directory of `transfer finetune` "
            "or a .keras model file.")
    try:
        model = keras.models.load_model(model_path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, zip errors...
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidArgumentError(
            f"{model_path} is not a Keras model that can be loaded safely ({reason}). "
            "Expected a .keras file written by transfer or Keras.") from exc
    labels_path = model_path.parent / LABELS_FILE
    class_names = labels_path.read_text(encoding="utf8").split("\n") if labels_path.exists() else None
    if class_names is not None:
        class_names = [name for name in class_names if name]
    loaded = LoadedModel(model, model_path, class_names,
                         _image_size(model, model_path, image_size))
    if need_classifier:
        if not loaded.is_classifier:
            raise InvalidArgumentError(
                f"{model_path} is a feature extractor (output shape "
                f"{tuple(model.output.shape)}), not a classifier: this command needs a model "
                f"ending in a '{CLASSIFIER_LAYER}' layer, such as a run's model.keras.")
        if class_names is None:
            raise InvalidArgumentError(
                f"{model_path} has no {LABELS_FILE} beside it. Expected the class names, one "
                "per line in output order, in " + str(labels_path) + ".")
        outputs = model.output.shape[-1]
        if len(class_names) != outputs:
            raise InvalidArgumentError(
                f"{labels_path} names {len(class_names)} classes but the model has {outputs} "
                "outputs.")
    return loaded


# Whether inference is XLA-compiled, per kind of device. On CPU, scripts/benchmark.py
# measured XLA at par at 128-224 px and 5-8x slower at 32-64 px, with a longer
# compile for every new batch shape (README, "Speed"); GPUs keep Keras' choice, XLA.
INFERENCE_JIT = {"CPU": False, "GPU": True}


def _device_kind():
    import tensorflow as tf

    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def _compiled_call(model, jit_compile=None):
    """A tf.function calling `model` in inference mode, made once per model."""
    import tensorflow as tf

    if jit_compile is None:
        jit_compile = INFERENCE_JIT[_device_kind()]
    cache = model.__dict__.setdefault("_transfer_inference", {})
    if jit_compile not in cache:
        cache[jit_compile] = tf.function(lambda x: model(x, training=False),
                                         jit_compile=jit_compile, reduce_retracing=True)
    return cache[jit_compile]


def predict_batch(model, batch, jit_compile=None):
    """Outputs of `model` for one batch, as NumPy."""
    return np.asarray(_compiled_call(model, jit_compile)(batch))


def run_inference(model, images, verbose=0, jit_compile=None):
    """Outputs of `model` for a tf.data.Dataset of image batches, as one array.

    The one place inference runs for predict, evaluate, embed and the feature
    cache, so that every command gets the fastest path.
    """
    call = _compiled_call(model, jit_compile)
    cardinality = int(images.cardinality()) if hasattr(images, "cardinality") else -1
    bar = keras.utils.Progbar(cardinality if cardinality > 0 else None, unit_name="batch") \
        if verbose else None
    outputs = []
    for step, batch in enumerate(images, start=1):
        outputs.append(np.asarray(call(batch)))
        if bar:
            bar.update(step)
    if not outputs:
        return np.zeros((0, *model.output.shape[1:]), dtype=np.float32)
    return np.concatenate(outputs)


def _images_only(split, image_size, batch_size):
    ds = image_dataset(split, image_size, batch_size, num_classes=1, one_hot=False)
    return ds.map(lambda x, y: x)


# ---------------------------------------------------------------- evaluate


def evaluate(run_or_model, data, out, batch_size=32, image_size=None, tfds_data_dir=None,
             overwrite=False, strict=False):
    """Evaluate a classifier on labelled images; write the same reports as finetune.

    Class folders are matched to the model's labels by name. Images of classes the
    model never saw are counted and reported in metrics.json, not silently dropped.
    """
    from transfer.data.pipeline import drop_unreadable

    loaded = load_model(run_or_model, image_size=image_size)
    out = prepare_run_dir(out, overwrite=overwrite)
    dataset = load_dataset(data, val_split=0.0, tfds_data_dir=tfds_data_dir, min_classes=1)
    drop_unreadable(dataset, strict=strict)
    split_name, split = evaluation_split(dataset)
    index = {name: i for i, name in enumerate(loaded.class_names)}
    data_names = np.array(dataset.class_names)[split.labels] if len(split) else np.array([])
    known = np.array([name in index for name in data_names], dtype=bool)
    unknown = {}
    for name in data_names[~known]:
        unknown[str(name)] = unknown.get(str(name), 0) + 1
    for name, count in sorted(unknown.items()):
        logger.warning("%d images of class %r, which the model does not know, are counted "
                       "apart and left out of the metrics.", count, name)
    if not known.any():
        raise DataError(
            f"None of the classes in {data} ({', '.join(dataset.class_names)}) is one the model "
            f"knows ({', '.join(loaded.class_names)}).")
    paths = [p for p, k in zip(split.paths, known) if k]
    labels = np.array([index[name] for name in data_names[known]], dtype=np.int64)
    if split.tfds is not None:
        subset = split  # TFDS images come with their labels: predict all, keep the known
    else:
        subset = Split(paths, labels)
    logger.info("Evaluating %s on %d images (%s split of %s)...", loaded.path, len(subset),
                split_name, dataset.name)
    probabilities = run_inference(loaded.model, _images_only(subset, loaded.image_size,
                                                             batch_size), verbose=1)
    if split.tfds is not None:
        probabilities = probabilities[known]
    metrics = compute_metrics(labels, probabilities, loaded.class_names)
    metrics.update({
        "model": str(loaded.path), "data": str(data), "split": split_name,
        "unknown_classes": unknown, "unknown_class_images": int(sum(unknown.values())),
        "skipped_files": dataset.skipped,
    })
    write_reports(out, labels, probabilities, loaded.class_names, paths)
    write_json(out / "metrics.json", metrics)
    return metrics


# ---------------------------------------------------------------- predict


def list_image_files(paths):
    """Files named directly (any extension) and image files found in folders, in order.

    Returns (files, missing) where `missing` lists paths that do not exist.
    """
    files, missing = [], []
    for path in map(Path, paths):
        if path.is_dir():
            for found in sorted(path.rglob("*")):
                # Broken links are listed too: they get an error row, not silence.
                if ((found.is_file() or found.is_symlink())
                        and found.suffix.lower() in IMAGE_EXTENSIONS
                        and not any(part.startswith(".") for part in found.relative_to(path).parts)):
                    files.append(str(found))
        elif path.exists():
            files.append(str(path))
        else:
            missing.append(str(path))
    return files, missing


def predict(run_or_model, paths, top_k=3, batch_size=32, image_size=None, progress=None):
    """Top-k labels for image files and folders: one row per image, in order.

    A row is {"path", "predictions": [(label, probability), ...], "error": None}; an
    unreadable or missing file gets its error in its row and the others go on.
    """
    loaded = load_model(run_or_model, image_size=image_size)
    files, missing = list_image_files(paths)
    if not files and not missing:
        raise DataError(f"No images found in {', '.join(map(str, paths))}.")
    bad = dict(find_unreadable(files, progress=False))
    good = [f for f in files if f not in bad]
    top_k = max(1, min(top_k, len(loaded.class_names)))
    probabilities = np.zeros((0, len(loaded.class_names)))
    if good:
        progress = len(good) > 2 * batch_size if progress is None else progress
        probabilities = run_inference(
            loaded.model,
            _images_only(Split(good, np.zeros(len(good), np.int64)), loaded.image_size,
                         batch_size),
            verbose=1 if progress else 0)
    results = {f: p for f, p in zip(good, probabilities)}
    rows = []
    for path in files + missing:
        if path in results:
            order = np.argsort(-results[path])[:top_k]
            rows.append({"path": path, "error": None, "predictions": [
                (loaded.class_names[i], float(results[path][i])) for i in order]})
        else:
            rows.append({"path": path, "predictions": [],
                         "error": bad.get(path, "file not found")})
    return rows
