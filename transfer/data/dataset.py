"""A dataset as `transfer` sees it: class names, and per split the image files (or a
TFDS split) with their labels: integer class indices (single-label), or rows of 0/1
per class (multi-label, float32)."""

import os
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from transfer.lazy import tf
from transfer.models.heads import MULTI_LABEL, SINGLE_LABEL

TFDS_PREFIX = "tfds:"


@dataclass
class Split:
    """One split of a dataset: files and labels (or a TFDS split)."""

    paths: list
    labels: np.ndarray
    # A tf.data.Dataset of (image, label) where the images are not files: TFDS splits,
    # TFRecord shards (`transfer.data.records.RecordSplit`).
    tfds: object = None
    # Per path, whether `decode_upright` must decode it (`needs_upright`), once the file
    # check has looked: the pipelines need not read every file's start again.
    upright: np.ndarray = None

    def __len__(self):
        return len(self.labels)

    def sample_indices(self, count, seed):
        """The positions of at most `count` of its images, drawn with `seed`, in
        their order here (a TFDS split: its first `count`)."""
        if len(self) <= count or self.tfds is not None:
            return np.arange(min(count, len(self)))
        return np.sort(np.random.default_rng(seed).choice(len(self), count, replace=False))

    def subset(self, indices):
        """The split of its images at `indices` (increasing positions in it)."""
        indices = np.asarray(indices, dtype=np.int64)
        tfds = None
        if self.tfds is not None:  # a TFDS split: its elements at those positions
            wanted = np.zeros(len(self), dtype=bool)
            wanted[indices] = True
            wanted = tf.constant(wanted)
            tfds = (
                self.tfds.enumerate()
                .filter(lambda at, element: tf.gather(wanted, at))
                .map(lambda at, element: element)
            )
        upright = None if self.upright is None else self.upright[indices]
        return Split([self.paths[i] for i in indices], self.labels[indices], tfds, upright)

    def sample(self, count, seed):
        """The split of the images `sample_indices` chooses."""
        if len(self) <= count:
            return self
        if self.tfds is not None:
            return Split(self.paths[:count], self.labels[:count], tfds=self.tfds.take(count))
        return self.subset(self.sample_indices(count, seed))


@dataclass
class Dataset:
    name: str
    source: str  # "folder", "split-folders", "csv", "csv-splits", "tfds" or "tfrecord"
    class_names: list
    splits: dict  # "train", "val", optionally "test" -> Split
    skipped: list = field(default_factory=list)  # [{"path": ..., "reason": ...}]
    fingerprint: str = ""

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def task(self):
        """SINGLE_LABEL or MULTI_LABEL, as its labels are."""
        return task_of_labels(next(iter(self.splits.values())).labels)

    def describe(self):
        sizes = ", ".join(f"{name} {len(split)}" for name, split in self.splits.items())
        return f"{self.name}: {self.num_classes} classes, {sizes} images"


def class_name(text):
    """A label as a class name: Unicode NFC, so that "café" typed or stored in either
    of its two encodings (NFC, NFD) is one class. See `control_characters`."""
    return unicodedata.normalize("NFC", text)


def control_characters(text):
    """The control characters in `text` (as escapes: '\\n', '\\t'), which a class name
    may not hold: it is one line of labels.txt, of a report's table, of a model's
    metadata. Line and paragraph separators count, as str.splitlines splits on them."""
    found = {c for c in text if unicodedata.category(c) in ("Cc", "Zl", "Zp")}
    return [repr(c)[1:-1] for c in sorted(found)]


def is_inside(path, root):
    """Whether `path`, links resolved, lies in the folder `root` (resolved already):
    the rule that keeps a dataset's images inside its image folder."""
    return os.path.commonpath([root, os.path.realpath(path)]) == root


def printable_path(path):
    """A path as text that can be printed and written anywhere: bytes of a file name
    that are not UTF-8 become escapes (caf\\xe9.png)."""
    return os.fsencode(path).decode("utf8", "backslashreplace")


def task_of_labels(labels):
    """MULTI_LABEL for rows of 0/1 per class, SINGLE_LABEL for class indices."""
    return MULTI_LABEL if np.ndim(labels) == 2 else SINGLE_LABEL


def label_counts(labels, num_classes):
    """Images per class (an image counts once for each of its labels)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.sum(axis=0).astype(np.int64)
    return np.bincount(labels.astype(np.int64), minlength=num_classes)
