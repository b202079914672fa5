"""Datasets as lists of files (or TFDS splits) with labels, class names and splits.

A folder is either one sub-folder per class, or `train/` (and optionally `val/`,
`test/`) each holding class sub-folders. Without explicit splits, each file goes to
validation or test by a hash of its path inside its class folder: deterministic,
stratified by class, and stable when images are added later.

Class names are the folder names in Unicode NFC (two folders that differ only in
how an accent is encoded are one class); a name with a control character is refused.

Only files inside the image folder are read, once links are resolved: a link (to a
file, or a class folder that is a link) that leads outside the folder is skipped and
reported, as an unreadable file is (`strict=True` makes it an error), so that a
folder cannot bring in, and a report show, images from elsewhere on the machine. A
CSV's images keep to its image folder by the same rule (`transfer.data.csv_labels`).
"""

import logging
import os
from pathlib import Path

import numpy as np

from transfer.data.csv_labels import is_table, load_table
from transfer.data.dataset import (
    TFDS_PREFIX,
    Dataset,
    Split,
    class_name,
    control_characters,
    is_inside,
    label_counts,
    printable_path,
)
from transfer.data.records import TFRECORD_SOURCE, is_records, load_records, shard_files
from transfer.data.splits import (  # noqa: F401
    DEFAULT_TEST_SPLIT,
    DEFAULT_VAL_SPLIT,
    file_stamp,
    fingerprint_of,
    hash_split,
    split_fraction,
)
from transfer.data.tfds import load_tfds
from transfer.errors import DataError, InvalidArgumentError, listing

logger = logging.getLogger("transfer")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
NOT_AN_IMAGE = f"not an image file (expected {', '.join(IMAGE_EXTENSIONS)})"
# Sources whose splits come from the hash (not given as folders or a split column).
HASH_SPLIT_SOURCES = ("folder", "csv", TFRECORD_SOURCE)
FEW_TRAINING_IMAGES = 5  # per class: below this, a warning names the class


def _is_hidden(path):
    return path.name.startswith(".")


OUTSIDE_FOLDER = "link to a folder outside the image folder, not followed"
OUTSIDE_FILE = "link to a file outside the image folder, not read"


def _list_class_files(class_dir, skipped, inside):
    """Image files of one class folder, recursively, sorted, as paths (str); others
    reported.

    Links to folders are not followed (as Keras' image_dataset_from_directory with
    follow_links=False): a link can make a loop. Links to files are, when the file
    lies inside the resolved image folder `inside` (see the module docstring)."""
    if not is_inside(class_dir, inside):
        skipped.append({"path": printable_path(class_dir), "reason": OUTSIDE_FOLDER})
        return []
    files = []
    _walk(str(class_dir), files, skipped, inside)
    return files


def _walk(folder, files, skipped, inside):
    """`_list_class_files` of one folder: its files, then each sub-folder's, in name
    order. One directory read per folder and no other call per plain file: the file
    type comes with the listing (`os.scandir`); only links are looked up."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted((e for e in listing if not e.name.startswith(".")), key=_entry_name)
    except OSError as exc:
        reason = f"folder cannot be read ({exc.strerror or type(exc).__name__})"
        skipped.append({"path": printable_path(folder), "reason": reason})
        return
    folders = []
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            folders.append(entry.path)
        elif entry.is_symlink() and entry.is_dir():
            skipped.append(
                {"path": printable_path(entry.path), "reason": "link to a folder, not followed"}
            )
    for entry in entries:
        if entry.is_dir():  # a folder, or a link to one (reported above)
            continue
        path = entry.path
        if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
            skipped.append({"path": printable_path(path), "reason": NOT_AN_IMAGE})
        elif not entry.is_file():
            skipped.append({"path": printable_path(path), "reason": "broken link or not a file"})
        # Only a link can lead out: the folders walked are inside, none a link.
        elif entry.is_symlink() and not is_inside(path, inside):
            skipped.append({"path": printable_path(path), "reason": OUTSIDE_FILE})
        else:
            files.append(path)
    for sub in folders:
        _walk(sub, files, skipped, inside)


def _entry_name(entry):
    return entry.name


def _class_dirs(root):
    return sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p))


def _check_class_names(dirs):
    """A class name is one line of labels.txt, written as UTF-8: refuse folder names
    that cannot be one."""
    bad = []
    for d in dirs:
        if printable_path(d.name) != d.name:
            bad.append(f"{printable_path(d)!r} (not valid UTF-8)")
        elif control_characters(d.name):
            bad.append(
                f"{printable_path(d)!r} (holds the control characters "
                f"{' '.join(control_characters(d.name))})"
            )
    if bad:
        raise DataError(
            f"Class folder names that cannot be class names: {listing(bad)}. Rename the folders."
        )


def _scan_class_folders(root, skipped, inside, class_names=None):
    """{class name: [files]} of a folder with one sub-folder per class; files inside
    the resolved image folder `inside` only."""
    dirs = _class_dirs(root)
    _check_class_names(dirs)
    names = {d: class_name(d.name) for d in dirs}
    if class_names is None:
        if not dirs:
            stray = [p for p in root.iterdir() if p.is_file() and not _is_hidden(p)]
            hint = " (it holds files but no class sub-folders)" if stray else ""
            raise DataError(
                f"No class folders in {root}{hint}. Expected one sub-folder per class, "
                "or train/ (and optionally val/, test/) holding class sub-folders."
            )
        files = _files_by_class(dirs, names, skipped, inside)
        empty = [name for name, found in files.items() if not found]
        if empty:
            raise DataError(
                f"Class folder{'s' if len(empty) > 1 else ''} "
                f"{', '.join(repr(str(root / e)) for e in empty)} hold{'' if len(empty) > 1 else 's'} "
                f"no images (expected files ending in {', '.join(IMAGE_EXTENSIONS)})."
                + _outside_hint(skipped)
            )
        return files
    unknown = [d.name for d in dirs if names[d] not in class_names]
    if unknown:
        raise DataError(
            f"{root} has class folders that train/ does not: {', '.join(unknown)}. "
            f"Known classes: {', '.join(class_names)}."
        )
    return _files_by_class(dirs, names, skipped, inside)


def _outside_hint(skipped):
    """What an error about empty classes adds when class folders lead outside."""
    outside = [entry["path"] for entry in skipped if entry["reason"] == OUTSIDE_FOLDER]
    return (
        f" Not followed: {listing(outside)}, links to folders outside the image "
        "folder (pass the folder they lead to instead)."
        if outside
        else ""
    )


def _files_by_class(dirs, names, skipped, inside):
    """{class name: files}: folders whose names are one class name share it."""
    files = {}
    for d in dirs:
        files.setdefault(names[d], []).extend(_list_class_files(d, skipped, inside))
    return files


def _records_to_split(records, class_index):
    paths = [p for p, _ in records]
    labels = np.array([class_index[c] for _, c in records], dtype=np.int64)
    return Split(paths, labels)


def list_class_folders(root):
    """({class name: image paths}, skipped files) of a folder with one sub-folder per
    class: the listing of `load_folder`, which then splits it (`split_class_files`)."""
    skipped = []
    return _scan_class_folders(Path(root), skipped, os.path.realpath(root)), skipped


def split_class_files(files, root, val_split, test_split):
    """{split name: Split} of `list_class_folders`' files of `root`: validation and,
    with `test_split` > 0, test by the hash of each path inside its class folder."""
    class_index = {name: i for i, name in enumerate(sorted(files))}
    train, val, test = _hash_split(files, root, val_split, test_split)
    records = {"train": train, "val": val, **({"test": test} if test_split > 0 else {})}
    return {name: _records_to_split(recs, class_index) for name, recs in records.items()}


def folder_fingerprint(splits, root):
    """The fingerprint of a folder's splits: each image's split, path inside `root`,
    size and modification time."""
    relative = _relative_to(root)
    return fingerprint_of(
        (split, relative(p), *file_stamp(p)) for split, s in splits.items() for p in s.paths
    )


def _relative_to(root):
    """path -> the path inside `root` of a path listed under it: a cut, not
    os.path.relpath, which costs more than a stat per path. Paths under `root` start
    as Path joins them (nothing for "."), which is where the cut falls."""
    start = len(str(Path(root) / "_")) - 1
    return lambda path: path[start:]


def load_folder(root, val_split=DEFAULT_VAL_SPLIT, test_split=DEFAULT_TEST_SPLIT, min_classes=2):
    """Scan an image folder into a `Dataset` (see the module docstring for layouts).

    `min_classes=1` accepts a single class folder (evaluating a model on one class).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"data={root} does not exist.")
    if not root.is_dir():
        raise DataError(f"data={root} is not a folder.")
    if not 0.0 <= val_split < 1.0 or not 0.0 <= test_split < 1.0 or val_split + test_split >= 1:
        raise InvalidArgumentError(
            f"val_split and test_split must be in [0, 1) and leave images for training. "
            f"Received: val_split={val_split}, test_split={test_split}"
        )
    skipped = []
    inside = os.path.realpath(root)
    subdirs = {d.name.lower(): d for d in _class_dirs(root)}
    if "train" in subdirs and set(subdirs) <= set(SPLIT_FOLDERS):
        source = "split-folders"
        train_files = _scan_class_folders(subdirs["train"], skipped, inside)
        class_names = sorted(train_files)
        by_split = {"train": train_files}
        for folder, dir_path in subdirs.items():
            if SPLIT_FOLDERS[folder] != "train":
                by_split[SPLIT_FOLDERS[folder]] = _scan_class_folders(
                    dir_path, skipped, inside, class_names
                )
        records = {
            split: [(p, c) for c in sorted(files) for p in files[c]]
            for split, files in by_split.items()
        }
        if "val" not in records:  # no val/ folder: split train/ by hash as usual
            records["train"], records["val"] = _hash_split(
                train_files, subdirs["train"], val_split, 0.0
            )[:2]
        class_index = {name: i for i, name in enumerate(class_names)}
        splits = {name: _records_to_split(recs, class_index) for name, recs in records.items()}
    else:
        source = "folder"
        files = _scan_class_folders(root, skipped, inside)
        class_names = sorted(files)
        splits = split_class_files(files, root, val_split, test_split)
    if len(class_names) < min_classes:
        raise DataError(
            f"{root} has a single class ({class_names[0]!r}); a classifier needs at least two "
            "class folders."
        )
    if not len(splits["train"]):
        raise DataError(f"{root} leaves no images for training.")
    fingerprint = folder_fingerprint(splits, root)
    dataset = Dataset(root.resolve().name, source, class_names, splits, skipped, fingerprint)
    if val_split > 0 or "val" in subdirs:
        _warn_small_validation(dataset)
    return dataset


def _hash_split(files, root, val_split, test_split):
    """Per class, assign each file by the hash of its path within its class folder
    (written with "/")."""
    relative = _relative_to(root)
    return hash_split(
        files,
        val_split,
        test_split,
        key=lambda path, _: relative(path).partition(os.sep)[2].replace(os.sep, "/"),
    )


def _warn_small_validation(dataset):
    val = dataset.splits.get("val")
    if val is not None and len(val) < dataset.num_classes:
        logger.warning(
            "Only %d validation images for %d classes: validation metrics will be noisy. "
            "Add images or raise val_split.",
            len(val),
            dataset.num_classes,
        )


def check_training_classes(dataset):
    """Every class needs training images: refuse a class with none (its files all went to
    validation or test, or were unreadable) and warn about classes with few."""
    train = dataset.splits["train"]
    if dataset.source == "tfds":
        return
    counts = label_counts(train.labels, dataset.num_classes)
    empty = [name for name, count in zip(dataset.class_names, counts) if count == 0]
    if empty:
        raise DataError(
            f"No training images for class{'es' if len(empty) > 1 else ''} "
            f"{listing(repr(name) for name in empty)} of {dataset.name}: their images all went "
            "to validation or test, or could not be read. Add images or lower val_split "
            "and test_split."
        )
    few = [
        (name, int(count))
        for name, count in zip(dataset.class_names, counts)
        if count < FEW_TRAINING_IMAGES
    ]
    if len(few) == 1:
        name, count = few[0]
        logger.warning(
            "Class %r has only %d training image%s: the model will hardly learn it.",
            name,
            count,
            "" if count == 1 else "s",
        )
    elif few:  # one line, however many classes
        logger.warning(
            "%d classes have fewer than %d training images: the model will hardly learn them (%s).",
            len(few),
            FEW_TRAINING_IMAGES,
            listing(f"{name!r} {count}" for name, count in few),
        )


def check_source_exists(data):
    """Refuse a folder or CSV file that does not exist, or a pattern of TFRecord
    shards that matches none, as loading it would, before anything heavy loads."""
    if hasattr(data, "columns") or str(data).startswith(TFDS_PREFIX):
        return
    if is_records(data):
        shard_files(data)
        return
    path = Path(data).expanduser()
    if not path.exists():
        raise DataError(f"data={path} does not exist.")


def load_dataset(
    data,
    val_split=DEFAULT_VAL_SPLIT,
    test_split=DEFAULT_TEST_SPLIT,
    tfds_data_dir=None,
    min_classes=2,
    **table_options,
):
    """A `Dataset` from a folder path, `tfds:NAME`, TFRecord shards (a pattern such as
    "shards/*.tfrecord", see `transfer.data.records`), or a CSV file or pandas
    DataFrame of paths and labels (`table_options`: those of
    `transfer.data.csv_labels.load_table`)."""
    if is_table(data):
        return load_table(
            data,
            val_split=val_split,
            test_split=test_split,
            min_classes=min_classes,
            **table_options,
        )
    data = str(data)
    if data.startswith(TFDS_PREFIX):
        return load_tfds(data[len(TFDS_PREFIX) :], val_split=val_split, data_dir=tfds_data_dir)
    if is_records(data):
        return load_records(
            data, val_split=val_split, test_split=test_split, min_classes=min_classes
        )
    return load_folder(data, val_split=val_split, test_split=test_split, min_classes=min_classes)


def evaluation_split(dataset):
    """The split to evaluate on: test if there is one, else an explicit val/, else all
    images of a plain class-folder dataset."""
    if len(dataset.splits.get("test", ())):
        return "test", dataset.splits["test"]
    if dataset.source not in HASH_SPLIT_SOURCES and len(dataset.splits.get("val", ())):
        return "val", dataset.splits["val"]
    return ("all" if dataset.source in HASH_SPLIT_SOURCES else "train"), dataset.splits["train"]
