"""The .npz files of `transfer embed`: features, labels, paths, splits and class names,
read back and checked for `transfer probe` and other tools."""

from pathlib import Path

import numpy as np

from transfer.errors import DataError, InvalidArgumentError

EMBEDDING_KEYS = ("features", "labels", "paths", "splits", "class_names")  # in every .npz


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
            f"{path} lacks {', '.join(sorted(missing))}: expected an .npz of `transfer embed`."
        )
    _check_embeddings(path, loaded)
    return loaded


def _check_embeddings(path, data):
    """The arrays must agree: one row per image, labels that name a class."""
    features, labels = data["features"], data["labels"]
    if features.ndim != 2:
        raise DataError(
            f"{path}: features must be one row per image. Received shape {features.shape}."
        )
    lengths = {key: len(data[key]) for key in ("features", "labels", "paths", "splits")}
    if len(set(lengths.values())) > 1:
        raise DataError(
            f"{path}: features, labels, paths and splits must have one entry per "
            f"image. Received {lengths}."
        )
    classes = len(data["class_names"])
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers. Received {labels.dtype}.")
    if labels.ndim == 2:  # multi-label: a row of 0/1 per image, a column per class
        if labels.shape[1] != classes or not np.isin(labels, (0, 1)).all():
            raise DataError(
                f"{path}: multi-label labels must be rows of 0 and 1, one column "
                f"for each of its {classes} class_names. Received shape "
                f"{labels.shape}."
            )
        return
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise DataError(
            f"{path}: labels must be in [0, {classes}), one of its {classes} "
            f"class_names. Received labels from {labels.min()} to {labels.max()}."
        )
