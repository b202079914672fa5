"""TFRecord shards as a data source: `data="shards/*.tfrecord"` (a glob pattern, or
one file, whose name holds ".tfrecord"), records of `tf.train.Example` with the
features TFDS writes for image classification: the encoded image (PNG, JPEG, BMP or
GIF bytes) and its class (int64). A prepared TFDS dataset is such shards itself:
`~/tensorflow_datasets/NAME/VERSION/NAME-train.tfrecord*`.

Beside the shards (in their common folder), TFDS' own files are read where they are:
`dataset_info.json` for the feature names (its supervised keys) and the dataset's
name, `<label>.labels.txt` for the class names (a plain `labels.txt`, one name a line,
serves too), `features.json` for the number of classes; without names, classes are
named by their numbers.

Records are read with tf.data's parallel interleave, a few shards at a time, in an
order fixed by the shards' names; each record is named `<shard>#<index in it>`, and
that name plays the part of a file's path: each record goes to validation or test by
the hash of its name (its shard's path inside the common folder), stratified by class,
as files do by their path, and it names the record in reports. Images are decoded by
`transfer.data.images.decode_upright`, as files are, after the same checks (unreadable
images, declared sizes beyond `max_pixels`: skipped and reported).
"""

import glob
import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from transfer.data.dataset import Dataset, Split, class_name, control_characters
from transfer.data.images import HEADER_BYTES, declared_size, decode_upright
from transfer.data.splits import (
    DEFAULT_TEST_SPLIT,
    DEFAULT_VAL_SPLIT,
    file_stamp,
    fingerprint_of,
    hash_split,
)
from transfer.errors import DataError, InvalidArgumentError, first_line, listing
from transfer.lazy import tf

TFRECORD_SOURCE = "tfrecord"  # Dataset.source of TFRecord shards
NAME_MARK = (
    ".tfrecord"  # in a shard's name: x.tfrecord, x.tfrecords, NAME-train.tfrecord-00000-of-00004
)
# TFDS' image classification features, unless dataset_info.json names others.
FEATURE_KEYS = ("image", "label")
# Shards read at once. A constant: the order of the records, which their positions
# count, depends on it.
READ_CYCLE = 8
SCAN_BATCH = 256  # records parsed together when the source is read
INFO_FILE, FEATURES_FILE, LABELS_FILE = "dataset_info.json", "features.json", "labels.txt"
UNKNOWN_SIZE = -1  # a record's declared size where its first bytes do not tell it


def is_records(data):
    """Whether `data` names TFRecord shards (a pattern or a file with ".tfrecord")."""
    return isinstance(data, (str, os.PathLike)) and NAME_MARK in os.path.basename(str(data).lower())


def shard_files(pattern):
    """The files `pattern` matches, sorted; a DataError where none does."""
    files = sorted(f for f in glob.glob(os.path.expanduser(str(pattern))) if os.path.isfile(f))
    if not files:
        raise DataError(
            f"No files match data={pattern}. Expected TFRecord shards, e.g. "
            "'shards/*.tfrecord' or a TFDS folder's 'NAME-train.tfrecord*' (quote the "
            "pattern so that the shell leaves it to transfer)."
        )
    return files


@dataclass
class Shards:
    """The TFRecord files of a source, in order, and the names of their two features."""

    files: list
    image_key: str
    label_key: str
    count: int = 0  # records in all

    def records(self):
        """(shard index, index in the shard, serialized record) of every record, in
        the order records' positions count: READ_CYCLE shards at a time, a record of
        each in turn (a deterministic parallel interleave)."""
        shards = tf.data.Dataset.from_tensor_slices(
            (np.arange(len(self.files), dtype=np.int64), self.files)
        )

        def read(shard, path):
            return tf.data.TFRecordDataset(path).enumerate().map(lambda i, r: (shard, i, r))

        return shards.interleave(
            read,
            cycle_length=min(READ_CYCLE, len(self.files)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def parse(self, serialized):
        """(image bytes, label) of a batch of serialized records."""
        found = tf.io.parse_example(
            serialized,
            {
                self.image_key: tf.io.FixedLenFeature([], tf.string),
                self.label_key: tf.io.FixedLenFeature([], tf.int64),
            },
        )
        return found[self.image_key], found[self.label_key]

    def examples(self, positions):
        """(image bytes, label) of the records at `positions` (increasing), in order."""
        wanted = np.zeros(self.count, dtype=bool)
        wanted[positions] = True
        wanted = tf.constant(wanted)
        return (
            self.records()
            .enumerate()
            .filter(lambda at, record: tf.gather(wanted, at))
            .map(
                lambda at, record: tuple(t[0] for t in self.parse(record[2][None])),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        )


@dataclass
class RecordSplit(Split):
    """A split of TFRecord shards: its records' positions (increasing) and declared
    image sizes; `tfds` gives their decoded images and labels, as a TFDS split's does."""

    shards: Shards = None
    positions: np.ndarray = None
    sizes: np.ndarray = None  # (width, height) per record; UNKNOWN_SIZE where not read

    @property
    def tfds(self):
        """Its records' decoded images and labels, in order; made when first asked for
        (making it traces the decoder, which a split used only for its bytes need not)."""
        if self._decoded is None:
            self._decoded = self.examples().map(
                lambda contents, label: (decode_upright(contents), label),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
        return self._decoded

    @tfds.setter
    def tfds(self, value):  # Split's __init__ sets it: always made from the records here
        self._decoded = None

    def examples(self):
        """(image bytes, label) of its records, in order."""
        return self.shards.examples(self.positions)

    def subset(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        return RecordSplit(
            [self.paths[i] for i in indices],
            self.labels[indices],
            shards=self.shards,
            positions=self.positions[indices],
            sizes=self.sizes[indices],
        )


def all_records(splits):
    """One `RecordSplit` of the records of several of one source's splits, in their
    order in the shards: a pass over them all reads the shards once."""
    splits = list(splits)
    positions = np.concatenate([s.positions for s in splits])
    order = np.argsort(positions, kind="stable")
    paths = [p for s in splits for p in s.paths]
    return RecordSplit(
        [paths[i] for i in order],
        np.concatenate([s.labels for s in splits])[order],
        shards=splits[0].shards,
        positions=positions[order],
        sizes=np.concatenate([s.sizes for s in splits])[order],
    )


def load_records(
    pattern, val_split=DEFAULT_VAL_SPLIT, test_split=DEFAULT_TEST_SPLIT, min_classes=2
):
    """A `Dataset` of the TFRecord shards `pattern` matches (see the module docstring)."""
    if not 0.0 <= val_split < 1.0 or not 0.0 <= test_split < 1.0 or val_split + test_split >= 1:
        raise InvalidArgumentError(
            f"val_split and test_split must be in [0, 1) and leave images for training. "
            f"Received: val_split={val_split}, test_split={test_split}"
        )
    files = shard_files(pattern)
    folder = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    info = _read_json(os.path.join(folder, INFO_FILE)) or {}
    shards = Shards(files, *_feature_keys(info))
    _check_first_record(shards)
    shard_of, index_in_shard, labels, sizes = _scan(shards, pattern)
    shards.count = len(labels)
    if not shards.count:
        raise DataError(f"The shards of data={pattern} hold no records.")
    class_names = _class_names(folder, shards.label_key, labels)
    if len(class_names) < min_classes:
        raise DataError(
            f"The records of data={pattern} have a single class ({class_names[0]!r}); a "
            "classifier needs at least two."
        )
    # A record's name: its shard's path as matched, and its index there; its key for the
    # hash split: the same with the shard's path inside the shards' folder.
    inside = [os.path.relpath(os.path.abspath(f), folder).replace(os.sep, "/") for f in files]
    by_class = {}
    for position, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(position)
    assigned = hash_split(
        by_class,
        val_split,
        test_split,
        key=lambda at, _: f"{inside[shard_of[at]]}#{index_in_shard[at]}",
    )
    splits = {}
    for name, records in zip(("train", "val", "test"), assigned):
        if name == "test" and not test_split:
            continue
        positions = np.sort(np.fromiter((at for at, _ in records), np.int64, len(records)))
        splits[name] = RecordSplit(
            [f"{files[shard_of[at]]}#{index_in_shard[at]}" for at in positions],
            labels[positions],
            shards=shards,
            positions=positions,
            sizes=sizes[positions],
        )
    if not len(splits["train"]):
        raise DataError(f"data={pattern} leaves no images for training.")
    fingerprint = fingerprint_of(
        [("shard", inside[i], *file_stamp(f)) for i, f in enumerate(files)]
        + [("classes", class_names)]
        + [(name, hashlib.sha256(s.positions.tobytes()).hexdigest()) for name, s in splits.items()]
    )
    name = info.get("name") or os.path.basename(folder) or "records"
    return Dataset(name, TFRECORD_SOURCE, class_names, splits, [], fingerprint)


def _read_json(path):
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf8") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as JSON ({first_line(exc)}).") from exc


def _feature_keys(info):
    """(image feature, label feature): dataset_info.json's supervised keys, as TFDS
    writes them (a tuple of feature keys, or an input and an output), else TFDS'
    usual names."""
    keys = info.get("supervisedKeys") or {}
    items = [item.get("featureKey") for item in keys.get("tuple", {}).get("items", [])]
    if len(items) == 2 and all(items):
        return tuple(items)
    if keys.get("input") and keys.get("output"):
        return keys["input"], keys["output"]
    return FEATURE_KEYS


# What each feature must hold, as tf.train.Feature calls its kinds.
FEATURE_KINDS = {"image": ("bytes_list", "encoded image bytes"), "label": ("int64_list", "int64")}


def _check_first_record(shards):
    """The first record is a tf.train.Example with both features, of their kinds: a
    DataError that names what it holds instead."""
    path = shards.files[0]
    try:
        first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    except tf.errors.OpError as exc:
        raise DataError(f"{path} cannot be read as a TFRecord file ({_tf_message(exc)}).") from exc
    if first is None:
        return  # an empty shard: the scan finds whether any holds records
    try:
        features = tf.train.Example.FromString(first.numpy()).features.feature
    except Exception as exc:  # protobuf's DecodeError
        raise DataError(
            f"The records of {path} are not tf.train.Example ({first_line(exc)})."
        ) from exc
    for role, key in zip(FEATURE_KINDS, (shards.image_key, shards.label_key)):
        kind, meaning = FEATURE_KINDS[role]
        if key not in features or features[key].WhichOneof("kind") != kind:
            held = listing(f"{k!r} ({features[k].WhichOneof('kind')})" for k in sorted(features))
            raise DataError(
                f"The records of {path} have no {key!r} feature of {meaning} (they hold "
                f"{held or 'no features'}). Expected the features TFDS writes for image "
                f"classification: {shards.image_key!r} (encoded image bytes) and "
                f"{shards.label_key!r} (int64)."
            )


def _scan(shards, pattern):
    """Per record, in position order: its shard, its index there, its label and the
    (width, height) its image's first bytes declare (UNKNOWN_SIZE where they do not)."""
    scanned = (
        shards.records()
        .batch(SCAN_BATCH)
        .map(
            lambda shard, index, serialized: (
                (shard, index) + _label_and_head(shards.parse(serialized))
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    )
    shard_of, index_in_shard, labels, sizes = [], [], [], []
    try:
        for shard, index, label, heads in scanned.as_numpy_iterator():
            shard_of.append(shard)
            index_in_shard.append(index)
            labels.append(label)
            sizes.extend(declared_size(head) or (UNKNOWN_SIZE, UNKNOWN_SIZE) for head in heads)
    except tf.errors.OpError as exc:
        raise DataError(
            f"The records of data={pattern} cannot be read as image classification "
            f"examples: {_tf_message(exc)}."
        ) from exc

    def joined(parts):
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    return (
        joined(shard_of),
        joined(index_in_shard),
        joined(labels),
        np.array(sizes, dtype=np.int64).reshape(-1, 2),
    )


def _label_and_head(parsed):
    contents, label = parsed
    return label, tf.strings.substr(contents, 0, HEADER_BYTES)


def _tf_message(exc):
    """TensorFlow's words of an op's error, without its graph names."""
    return first_line(getattr(exc, "message", exc)).split(" [[")[0].split("\t")[0]


def _class_names(folder, label_key, labels):
    """The class names of the records' labels: from `<label>.labels.txt` (TFDS) or
    labels.txt beside the shards, else numbered up to features.json's number of
    classes or the largest label."""
    smallest, largest = int(labels.min()), int(labels.max())
    if smallest < 0:
        raise DataError(f"The records' labels must be class indices from 0; found {smallest}.")
    found = [
        path
        for path in (
            os.path.join(folder, f"{label_key}.labels.txt"),
            os.path.join(folder, LABELS_FILE),
        )
        if os.path.isfile(path)
    ]
    if not found:
        count = max(largest + 1, _declared_class_count(folder, label_key))
        return [str(i) for i in range(count)]
    with open(found[0], encoding="utf8") as f:
        names = [class_name(line.strip()) for line in f.read().split("\n") if line.strip()]
    bad = [n for n in names if control_characters(n)]
    bad += [n for n, count in Counter(names).items() if count > 1]
    if bad:
        raise DataError(
            f"{found[0]}: names that cannot be class names (repeated, or holding control "
            f"characters): {listing(repr(n) for n in bad)}."
        )
    if largest >= len(names):
        raise DataError(
            f"The records' labels run up to {largest}, but {found[0]} names "
            f"{len(names)} classes (labels 0 to {len(names) - 1})."
        )
    return names


def _declared_class_count(folder, label_key):
    """features.json's number of classes of the label feature (0 where not said)."""
    features = _read_json(os.path.join(folder, FEATURES_FILE)) or {}
    label = features.get("featuresDict", {}).get("features", {}).get(label_key, {})
    return int(label.get("classLabel", {}).get("numClasses", 0))
