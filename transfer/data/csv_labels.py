"""Labels from a table: a CSV file, or a pandas DataFrame, with a column of image paths
(relative to the CSV's folder or to `images`), a column of labels (several in one cell,
joined by a separator, make the data set multi-label), and optionally a split column
(train, val, test) used as given. The result is the same `Dataset` class folders give:
without a split column, images go to validation and test by the hash of their path,
per label set, as class folders do per class.

Labels are normalised to Unicode NFC ("café" in NFC and in NFD is one class); a label
holding a control character (a newline, a tab) is refused. Images keep to the image
folder as class folders' do (`transfer.data.sources`): a path written outside it is
an error; a link that leads outside it, once resolved, is skipped and reported."""

import csv
import logging
import math
import os
from pathlib import Path

import numpy as np

from transfer.data.dataset import (
    Dataset,
    Split,
    class_name,
    control_characters,
    is_inside,
    printable_path,
)
from transfer.data.splits import (
    DEFAULT_TEST_SPLIT,
    DEFAULT_VAL_SPLIT,
    file_stamp,
    fingerprint_of,
    hash_split,
)
from transfer.errors import DataError, InvalidArgumentError, listing
from transfer.io import unescape_cell

logger = logging.getLogger("transfer")

# Column names looked for (in this order, any letter case) when none is given.
PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "image", "image_path")
LABEL_COLUMNS = ("label", "labels", "class", "category", "tags", "target")
SPLIT_COLUMNS = ("split", "subset")
LABEL_SEPARATORS = (";", "|")  # a cell holding one of these holds several labels
SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
# The options of a table source, as `load_dataset` and `FinetuneOptions` name them.
TABLE_OPTIONS = (
    "images",
    "path_column",
    "label_column",
    "split_column",
    "label_sep",
    "multi_label",
)


def is_table(data):
    """Whether `data` is a CSV file's path or a DataFrame."""
    if hasattr(data, "columns") and hasattr(data, "to_dict"):
        return True
    return isinstance(data, (str, os.PathLike)) and str(data).lower().endswith(".csv")


def table_name(data):
    """How config.json and the run directory's default name call the data."""
    return "dataframe" if hasattr(data, "columns") else str(data)


def _read_rows(data):
    """(header, rows as lists of strings, description) of a CSV file or a DataFrame."""
    if hasattr(data, "columns"):
        header = [str(c) for c in data.columns]
        rows = [
            ["" if _missing(v) else str(v) for v in row]
            for row in data.itertuples(index=False, name=None)
        ]
        return header, rows, "the DataFrame"
    path = Path(data).expanduser()
    if not path.is_file():
        raise DataError(
            f"data={path} does not exist." if not path.exists() else f"data={path} is not a file."
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} is not a readable UTF-8 CSV file ({exc}).") from exc
    if not table:
        raise DataError(f"{path} is empty: expected a header row, then one row per image.")
    # A quote before = + - @ is a spreadsheet's mark of text (and what transfer's own
    # CSVs, a clean CSV of `transfer audit` among them, write before such a label).
    table = [[unescape_cell(cell) for cell in row] for row in table]
    return [c.strip() for c in table[0]], table[1:], str(path)


def _missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def _column(header, given, candidates, what, source, option):
    """The index of a column: the one given by name, else the first candidate found."""
    if given is not None:
        if given not in header:
            raise DataError(
                f"Unknown {what} column: {option}={given!r}. {source} has the "
                f"columns {listing(map(repr, header), limit=20)}."
            )
        return header.index(given)
    lowered = [c.lower() for c in header]
    for name in candidates:
        if name in lowered:
            return lowered.index(name)
    return None


def _separator(cells, label_sep, multi_label):
    """The separator of several labels in one cell, or None for single-label data."""
    if label_sep:
        return label_sep
    found = next((sep for sep in LABEL_SEPARATORS if any(sep in c for c in cells)), None)
    return found or (LABEL_SEPARATORS[0] if multi_label else None)


def load_table(
    data,
    images=None,
    path_column=None,
    label_column=None,
    split_column=None,
    label_sep=None,
    multi_label=False,
    val_split=DEFAULT_VAL_SPLIT,
    test_split=DEFAULT_TEST_SPLIT,
    min_classes=2,
):
    """A `Dataset` from a CSV file or a DataFrame (see the module docstring).

    Rows whose file is missing are reported and skipped, as unreadable files are;
    a path outside the image folder, an unknown column or split, or no usable row
    is a `DataError`. `label_sep` (or a cell holding ';' or '|') or `multi_label`
    make it multi-label: labels become rows of 0/1 per class.
    """
    header, rows, source = _read_rows(data)
    if images is not None:
        root = Path(images).expanduser()
        if not root.is_dir():
            raise DataError(f"images={root} is not a folder.")
    else:
        root = Path(data).expanduser().parent if not hasattr(data, "columns") else Path.cwd()
    root = Path(os.path.abspath(root))
    inside = os.path.realpath(root)  # where files must lie once links are resolved
    path_at = _column(header, path_column, PATH_COLUMNS, "path", source, "path_column")
    label_at = _column(header, label_column, LABEL_COLUMNS, "label", source, "label_column")
    split_at = _column(header, split_column, SPLIT_COLUMNS, "split", source, "split_column")
    for at, what, option, candidates in (
        (path_at, "path", "path_column", PATH_COLUMNS),
        (label_at, "label", "label_column", LABEL_COLUMNS),
    ):
        if at is None:
            raise DataError(
                f"{source} has no {what} column (looked for {', '.join(candidates)} among "
                f"{listing(map(repr, header), limit=20)}); name it with {option}=NAME."
            )
    width = len(header)
    rows = [row + [""] * (width - len(row)) for row in rows]
    separator = _separator([row[label_at] for row in rows], label_sep, multi_label)
    entries, skipped, outside, unprintable, seen = [], [], [], [], {}
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        where = f"row {number} of {source}"
        cell = row[path_at].strip()
        if not cell:
            skipped.append({"path": where, "reason": "no path"})
            continue
        path = Path(os.path.normpath(root / Path(cell).expanduser()))
        if os.path.commonpath([root, path]) != str(root):
            outside.append(f"{cell!r} ({where})")
            continue
        if str(path) in seen:
            skipped.append(
                {
                    "path": printable_path(path),
                    "reason": f"listed again in {where} (first in row {seen[str(path)]})",
                }
            )
            continue
        seen[str(path)] = number
        labels = _labels_of(row[label_at], separator)
        for label in labels:
            if control_characters(label):
                unprintable.append(f"{label!r} ({where})")
        if not labels and separator is None:
            skipped.append({"path": printable_path(path), "reason": f"no label ({where})"})
            continue
        if not path.is_file():
            skipped.append({"path": printable_path(path), "reason": f"file not found ({where})"})
            continue
        if not is_inside(path, inside):
            skipped.append(
                {
                    "path": printable_path(path),
                    "reason": f"link to a file outside the image folder, not read ({where})",
                }
            )
            continue
        split = _split_name(row[split_at], where) if split_at is not None else None
        entries.append((path, labels, split))
    if outside:
        raise DataError(
            f"Paths outside the image folder {root}: {listing(outside)}. Every "
            "path must lead to a file inside it (pass images=DIR to choose it)."
        )
    if unprintable:
        raise DataError(
            f"Labels with control characters (a class name is one line of "
            f"text): {listing(unprintable)}. Remove them from {source}."
        )
    if not entries:
        reasons = listing((f"{s['path']}: {s['reason']}" for s in skipped), separator="; ")
        raise DataError(f"{source} has no usable rows{': ' + reasons if reasons else ''}.")
    class_names = sorted({label for _, labels, _ in entries for label in labels})
    if len(class_names) < min_classes:
        raise DataError(
            f"{source} names {len(class_names)} class"
            f"{'' if len(class_names) == 1 else 'es'} ({', '.join(class_names)}); "
            "a classifier needs at least two."
        )
    # The rows skipped here are reported with the unreadable files, once, by
    # `pipeline.drop_unreadable`, which every reader of a dataset calls.
    records = _split_records(entries, root, split_at is not None, val_split, test_split, separator)
    index = {name: i for i, name in enumerate(class_names)}
    splits = {
        name: Split([str(p) for p, _ in recs], _label_array(recs, index, separator))
        for name, recs in records.items()
    }
    if not len(splits["train"]):
        raise DataError(f"{source} leaves no images for training.")
    fingerprint = fingerprint_of(
        (split, os.path.relpath(p, root), *file_stamp(p), sorted(labels))
        for split, recs in records.items()
        for p, labels in recs
    )
    name = Path(data).stem if not hasattr(data, "columns") else "dataframe"
    return Dataset(
        name, "csv" if split_at is None else "csv-splits", class_names, splits, skipped, fingerprint
    )


def _labels_of(cell, separator):
    """The labels of a cell, as class names (NFC)."""
    cell = class_name(cell.strip())
    if separator is None:
        return [cell] if cell else []
    return sorted({label.strip() for label in cell.split(separator) if label.strip()})


def _split_name(cell, where):
    name = SPLIT_NAMES.get(cell.strip().lower())
    if name is None:
        raise DataError(
            f"Unknown split {cell.strip()!r} in {where}: expected {', '.join(SPLIT_NAMES)}."
        )
    return name


def _split_records(entries, root, given, val_split, test_split, separator):
    """{split: [(path, labels)]}: the split column's, or by hash per set of labels."""
    if not 0.0 <= val_split < 1.0 or not 0.0 <= test_split < 1.0 or val_split + test_split >= 1:
        raise InvalidArgumentError(
            f"val_split and test_split must be in [0, 1) and leave images for training. "
            f"Received: val_split={val_split}, test_split={test_split}"
        )
    labels_of = {path: labels for path, labels, _ in entries}
    if given:
        records = {
            name: [(p, labels) for p, labels, split in entries if split == name]
            for name in ("train", "val", "test")
        }
        if records["val"] or not val_split:
            return {name: recs for name, recs in records.items() if recs or name != "test"}
        pool, held_out = records["train"], {"test": records["test"]} if records["test"] else {}
        test_split = 0.0  # a test column is used as given; only validation comes from train
    else:
        pool, held_out = [(p, labels) for p, labels, _ in entries], {}
    groups = {}
    for path, labels in pool:
        groups.setdefault((separator or "\n").join(labels), []).append(path)
    train, val, test = hash_split(
        groups, val_split, test_split, key=lambda path, group: path.relative_to(root).as_posix()
    )
    found = {"train": train, "val": val, **held_out}
    if test_split > 0:
        found["test"] = test
    return {name: [(p, labels_of[p]) for p, _ in recs] for name, recs in found.items()}


def _label_array(records, index, separator):
    """Class indices (int64), or rows of 0/1 per class (float32) for multi-label data."""
    if separator is None:
        return np.array([index[labels[0]] for _, labels in records], dtype=np.int64)
    multi_hot = np.zeros((len(records), len(index)), dtype=np.float32)
    for row, (_, labels) in enumerate(records):
        multi_hot[row, [index[label] for label in labels]] = 1.0
    return multi_hot
