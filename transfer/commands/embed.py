"""`transfer embed`: pooled backbone features of every image of a dataset, with
labels, paths and splits, saved as .npz for a linear probe or other tools."""

import logging
from pathlib import Path

import numpy as np

from transfer.data.csv_labels import TABLE_OPTIONS
from transfer.data.embeddings import EMBEDDING_KEYS
from transfer.data.pipeline import drop_unreadable, images_only
from transfer.data.sources import load_dataset
from transfer.errors import InvalidArgumentError, check_whole_number
from transfer.io import write_npz
from transfer.models.applications import build_backbone
from transfer.models.architectures import image_size_pair
from transfer.models.heads import feature_extractor
from transfer.runs import load_model
from transfer.runtime import INFERENCE_BATCH_SIZE, run_inference
from transfer.train.options import resolve_options

logger = logging.getLogger("transfer")

__all__ = ["EMBEDDING_KEYS", "embed"]


def embed(
    data,
    out=None,
    model=None,
    batch_size=INFERENCE_BATCH_SIZE,
    overwrite=False,
    options=None,
    **overrides,
):
    """Pooled backbone features for every image of `data`, with labels and splits.

    The backbone is a trained model's (`model`: run directory or .keras file) or a
    fresh backbone (the `arch`, or the ResNet of `depth` and `version`, with `weights`).
    `options` and `overrides` are `FinetuneOptions` fields, as a run would take them:
    the backbone, image_size, pooling, the split fractions, tfds_data_dir, strict, and
    the CSV/DataFrame options. Returns a dict of arrays: features, labels (class
    indices, or rows of 0/1 per class for multi-label data), paths, splits,
    class_names; with `out`, also writes them to a .npz file.
    """
    batch_size = check_whole_number("batch_size", batch_size)
    if model is not None:  # the model's own backbone: no weights to fetch or check
        overrides = {**overrides, "weights": None}
    options = resolve_options(options, **overrides)
    if out is not None and Path(out).suffix != ".npz":
        raise InvalidArgumentError(f"out={out}: embeddings are written as .npz.")
    if out is not None and Path(out).exists() and not overwrite:
        raise InvalidArgumentError(f"out={out} exists. Choose another path or pass overwrite=True.")
    extractor, image_size, source = _extractor(model, options)
    dataset = load_dataset(
        data,
        val_split=options.val_split,
        test_split=options.test_split,
        tfds_data_dir=options.tfds_data_dir,
        min_classes=1,
        **{name: getattr(options, name) for name in TABLE_OPTIONS},
    )
    drop_unreadable(dataset, strict=options.strict)
    features, labels, paths, splits = [], [], [], []
    for name, split in dataset.splits.items():
        if not len(split):
            continue
        logger.info("Embedding the %s split (%d images)...", name, len(split))
        features.append(
            run_inference(
                extractor,
                images_only(split, image_size, batch_size),
                verbose=1,
                description=f"Embedded {name}",
            )
        )
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


def _extractor(model, options):
    """(feature extractor, image size, description) of a trained model or a fresh backbone."""
    if model is not None:
        loaded = load_model(model, need_classifier=False)
        return (
            feature_extractor(loaded.model, pooling=options.pooling),
            loaded.image_size,
            str(loaded.path),
        )
    size = image_size_pair(options.image_size)
    backbone = build_backbone(
        options.architecture,
        include_top=False,
        weights=options.weights,
        input_shape=(*size, 3),
        weights_dir=options.weights_dir,
    )
    return (
        feature_extractor(backbone, pooling=options.pooling),
        size,
        f"{backbone.name} weights={options.weights}",
    )
