"""A dataset as `transfer` sees it: class names, and per split the image files (or a
TFDS split) with integer labels."""

import os
from dataclasses import dataclass, field

import numpy as np

TFDS_PREFIX = "tfds:"


@dataclass
class Split:
    """One split of a dataset: files and integer labels (or a TFDS split)."""

    paths: list
    labels: np.ndarray
    tfds: object = None  # a tf.data.Dataset of (image, label) for TFDS sources

    def __len__(self):
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    source: str  # "folder", "split-folders" or "tfds"
    class_names: list
    splits: dict  # "train", "val", optionally "test" -> Split
    skipped: list = field(default_factory=list)  # [{"path": ..., "reason": ...}]
    fingerprint: str = ""

    @property
    def num_classes(self):
        return len(self.class_names)

    def describe(self):
        sizes = ", ".join(f"{name} {len(split)}" for name, split in self.splits.items())
        return f"{self.name}: {self.num_classes} classes, {sizes} images"


def printable_path(path):
    """A path as text that can be printed and written anywhere: bytes of a file name
    that are not UTF-8 become escapes (caf\\xe9.png)."""
    return os.fsencode(path).decode("utf8", "backslashreplace")
