"""`transfer embed`: pooled backbone features of every image of a dataset, with
labels, paths and splits, saved as .npz for a linear probe or other tools."""

import logging
from pathlib import Path

import numpy as np

from transfer.data.pipeline import drop_unreadable, images_only
from transfer.data.sources import load_dataset
from transfer.errors import DataError, InvalidArgumentError
from transfer.io import write_npz
from transfer.models.architectures import image_size_pair
from transfer.models.heads import feature_extractor
from transfer.models.applications import build_backbone
from transfer.models.families import resolve_architecture
from transfer.runs import load_model
from transfer.runtime import INFERENCE_BATCH_SIZE, run_inference
from transfer.train.options import FinetuneOptions

logger = logging.getLogger("transfer")

FINETUNE = FinetuneOptions()  # embeddings are split and pooled as a run would be
EMBEDDING_KEYS = ("features", "labels", "paths", "splits", "class_names")  # in every .npz


def embed(data, out=None, model=None, depth=FINETUNE.depth, version=FINETUNE.version,
          weights=FINETUNE.weights, weights_dir=None, image_size=FINETUNE.image_size,
          batch_size=INFERENCE_BATCH_SIZE, pooling=FINETUNE.pooling,
          val_split=FINETUNE.val_split, test_split=FINETUNE.test_split, tfds_data_dir=None,
          strict=False, overwrite=False, arch=None, **table_options):
    """Pooled backbone features for every image of `data`, with labels and splits.

    The backbone is a trained model's (`model`: run directory or .keras file) or a
    fresh backbone (`arch`, or the ResNet of `depth` and `version`; `weights`).
    Returns a dict of arrays: features, labels (class indices, or rows of 0/1 per class
    for multi-label data), paths, splits, class_names; with `out`, also writes them to
    a .npz file. `table_options` read labels from a CSV file or DataFrame (see
    `load_dataset`).
    """
    if out is not None and Path(out).suffix != ".npz":
        raise InvalidArgumentError(f"out={out}: embeddings are written as .npz.")
    if out is not None and Path(out).exists() and not overwrite:
        raise InvalidArgumentError(
            f"out={out} exists. Choose another path or pass overwrite=True.")
    extractor, image_size, source = _extractor(model, resolve_architecture(arch, depth, version),
                                               weights, weights_dir, image_size, pooling)
    dataset = load_dataset(data, val_split=val_split, test_split=test_split,
                           tfds_data_dir=tfds_data_dir, min_classes=1, **table_options)
    drop_unreadable(dataset, strict=strict)
    features, labels, paths, splits = [], [], [], []
    for name, split in dataset.splits.items():
        if not len(split):
            continue
        logger.info("Embedding the %s split (%d images)...", name, len(split))
        features.append(run_inference(extractor, images_only(split, image_size, batch_size),
                                      verbose=1, description=f"Embedded {name}"))
        labels.append(split.labels)
        paths += list(split.paths)
        splits += [name] * len(split)
    result = {
        "features": np.concatenate(features).astype(np.float32),
        "labels": np.concatenate(labels).astype(np.int64),
        "paths": np.array(paths, dtype=str),
        "splits": np.array(splits, dtype=str),
        "class_names": np.array(dataset.class_names, dtype=str),
        "source": np.array(source),
    }
    if out is not None:
        write_npz(out, result)
    return result


def _extractor(model, architecture, weights, weights_dir, image_size, pooling):
    """(feature extractor, image size, description) of a trained model or a fresh backbone."""
    if model is not None:
        loaded = load_model(model, need_classifier=False)
        return (feature_extractor(loaded.model, pooling=pooling), loaded.image_size,
                str(loaded.path))
    weights = None if str(weights).lower() == "none" else weights
    size = image_size_pair(image_size)
    backbone = build_backbone(architecture, include_top=False, weights=weights,
                              input_shape=(*size, 3), weights_dir=weights_dir)
    return feature_extractor(backbone, pooling=pooling), size, f"{backbone.name} weights={weights}"


def load_embeddings(path):
    """The arrays of an .npz written by `embed`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            loaded = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(f"{path} is not an .npz file of `transfer embed`.") from exc
    missing = set(EMBEDDING_KEYS) - set(loaded)
    if missing:
        raise InvalidArgumentError(
            f"{path} lacks {', '.join(sorted(missing))}: expected an .npz of `transfer embed`.")
    _check_embeddings(path, loaded)
    return loaded


def _check_embeddings(path, data):
    """The arrays must agree: one row per image, labels that name a class."""
    features, labels = data["features"], data["labels"]
    if features.ndim != 2:
        raise DataError(f"{path}: features must be one row per image. Received shape "
                        f"{features.shape}.")
    lengths = {key: len(data[key]) for key in ("features", "labels", "paths", "splits")}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{path}: features, labels, paths and splits must have one entry per "
                        f"image. Received {lengths}.")
    classes = len(data["class_names"])
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers. Received {labels.dtype}.")
    if labels.ndim == 2:  # multi-label: a row of 0/1 per image, a column per class
        if labels.shape[1] != classes or not np.isin(labels, (0, 1)).all():
            raise DataError(f"{path}: multi-label labels must be rows of 0 and 1, one column "
                            f"for each of its {classes} class_names. Received shape "
                            f"{labels.shape}.")
        return
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(f"{path}: labels must be in [0, {classes}), one of its {classes} "
                        f"class_names. Received labels from {labels.min()} to {labels.max()}.")
