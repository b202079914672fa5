"""TensorFlow Datasets as a data source: `tfds:NAME` with its own splits and class names."""

import logging

import numpy as np

from transfer.data.dataset import Dataset, Split
from transfer.data.splits import DEFAULT_VAL_SPLIT
from transfer.errors import DataError, first_line

logger = logging.getLogger("transfer")

VALIDATION_SPLITS = ("validation", "val", "valid")


def _percent(fraction):
    return int(round(100 * fraction))


def load_tfds(name, val_split=DEFAULT_VAL_SPLIT, data_dir=None):
    """Prepare (download if needed) a TFDS image classification dataset."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as exc:  # tfds raises its own DatasetNotFoundError and others
        raise DataError(f"Unknown TFDS dataset {name!r}: {first_line(exc)}") from exc
    try:
        builder.download_and_prepare()
    except Exception as exc:
        raise DataError(
            f"TFDS dataset {name!r} could not be prepared in {builder.data_dir} "
            f"({first_line(exc)}). Download it on a connected machine and pass "
            "tfds_data_dir=DIR, or use a folder of images."
        ) from exc
    info = builder.info
    keys = info.supervised_keys
    if not keys or len(keys) != 2:
        raise DataError(f"TFDS dataset {name!r} has no (image, label) supervised keys.")
    image_key, label_key = keys
    label_feature = info.features[label_key]
    if not hasattr(label_feature, "names"):
        raise DataError(f"TFDS dataset {name!r}: {label_key!r} is not a class label.")
    available = list(info.splits.keys())
    if "train" not in available:
        raise DataError(f"TFDS dataset {name!r} has no train split (it has {available}).")
    val_name = next((s for s in VALIDATION_SPLITS if s in available), None)
    split_specs = {"train": "train", "val": val_name}
    if val_name is None:  # carve validation out of train with TFDS' own slicing
        cut = _percent(1 - val_split)
        split_specs = {"train": f"train[:{cut}%]", "val": f"train[{cut}%:]"}
    if "test" in available:
        split_specs["test"] = "test"

    splits = {}
    for split, spec in split_specs.items():
        labels_only = builder.as_dataset(
            split=spec, decoders={image_key: tfds.decode.SkipDecoding()}
        )
        labels = np.array(
            [int(example[label_key]) for example in labels_only.as_numpy_iterator()], dtype=np.int64
        )
        data = builder.as_dataset(split=spec, as_supervised=True, shuffle_files=False)
        paths = [f"tfds:{name}/{spec}/{i}" for i in range(len(labels))]
        splits[split] = Split(paths, labels, tfds=data)
    fingerprint = f"{info.full_name}:" + ",".join(f"{k}={len(v)}" for k, v in splits.items())
    return Dataset(name, "tfds", list(label_feature.names), splits, [], fingerprint)
