#!/usr/bin/env python3
"""Convert the Fashion-MNIST IDX files into class folders of PNG images.

Fashion-MNIST (Zalando Research, https://github.com/zalandoresearch/fashion-mnist,
MIT licence) ships as four IDX files: train/t10k images and labels. Image
classification tools (and ``transfer``'s examples) want one folder per class
instead, so this script writes every selected image as a 28x28 8-bit grayscale
PNG into a folder named after its class:

    --layout split   OUT/train/<class>/train_00042.png, OUT/test/<class>/test_00007.png
    --layout flat    OUT/<class>/train_00042.png  (train only by default; the
                     chosen --splits are merged, the name prefix keeps them apart)

File names are ``<split>_<index in the IDX file, 5 digits>.png``, so every image
can be traced back to its record in the source file. ``--per-class N`` keeps the
first N images of each class in file order, so the output is deterministic, and
``--classes`` keeps a subset of the 10 classes (e.g. to make a source task and a
target task out of disjoint classes); ``--skip N`` leaves out each class's first N
(a source task of the same classes, disjoint from a target made with
``--per-class N``).

The IDX files come by default from Debian's ``dataset-fashion-mnist`` package
(``sudo apt-get install dataset-fashion-mnist``, installed under
/usr/share/datasets/fashion-mnist); ``--idx-dir`` points elsewhere. Gzipped and
plain IDX files are both read, and their magic numbers and sizes are checked.

Re-running into the same OUT is safe: files are rewritten, and PNGs following
this script's naming scheme that the run did not produce are removed from the
class folders it wrote (anything else is left alone).

The committed sample in data/fashion-mnist was made with:

    .venv/bin/python scripts/fashion_mnist_to_folders.py \\
        --out data/fashion-mnist --layout flat --splits train --per-class 30

Needs only the standard library, numpy and Pillow.
"""

from __future__ import annotations

import argparse
import gzip
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"

# Official Fashion-MNIST class names, label 0..9, made filesystem-friendly
# ("T-shirt/top" -> "T-shirt_top", "Ankle boot" -> "Ankle_boot").
CLASS_NAMES = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)

SPLITS = ("train", "test")
# Official file prefix of each split.
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
# Official record counts, checked against the files.
SPLIT_SIZE = {"train": 60000, "test": 10000}
IMAGE_SHAPE = (28, 28)

IDX_UBYTE = 0x08
OUTPUT_NAME = re.compile(r"^(train|test)_\d{5}\.png$")


class ConversionError(Exception):
    """A problem reported to the user as a one-line error."""


def _open_maybe_gzip(path: Path) -> bytes:
    """Return the file's bytes, gunzipped if it starts with the gzip magic."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise ConversionError(f"{path}: corrupt gzip data ({exc})") from exc
    return data


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with ``ndim`` dimensions.

    The IDX magic number is 0x0000 (two zero bytes), a type byte (0x08 for
    unsigned bytes) and the number of dimensions; then one big-endian uint32
    per dimension; then the data.
    """
    data = _open_maybe_gzip(path)
    if len(data) < 4:
        raise ConversionError(f"{path}: too short to be an IDX file")
    zero, dtype_code, file_ndim = int.from_bytes(data[0:2], "big"), data[2], data[3]
    magic = int.from_bytes(data[0:4], "big")
    expected_magic = (IDX_UBYTE << 8) | ndim
    if zero != 0 or dtype_code != IDX_UBYTE or file_ndim != ndim:
        raise ConversionError(
            f"{path}: bad IDX magic number 0x{magic:08x}, expected 0x{expected_magic:08x}"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ConversionError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header_len + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected_len:
        raise ConversionError(
            f"{path}: {len(data)} bytes, expected {expected_len} for shape {shape}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape)


def find_idx_file(idx_dir: Path, split: str, kind: str) -> Path:
    """Find ``<prefix>-<kind>-idxN-ubyte[.gz]`` (or the ``.idxN-ubyte`` spelling)."""
    prefix = SPLIT_PREFIX[split]
    n = 3 if kind == "images" else 1
    stems = (f"{prefix}-{kind}-idx{n}-ubyte", f"{prefix}-{kind}.idx{n}-ubyte")
    for stem in stems:
        for name in (stem + ".gz", stem):
            candidate = idx_dir / name
            if candidate.is_file():
                return candidate
    raise ConversionError(f"{idx_dir}: no {stems[0]}.gz or {stems[0]} found")


def load_split(idx_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 [N, 28, 28], labels uint8 [N]) of one split, validated."""
    images_path = find_idx_file(idx_dir, split, "images")
    labels_path = find_idx_file(idx_dir, split, "labels")
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1)
    if images.shape[1:] != IMAGE_SHAPE:
        raise ConversionError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28"
        )
    if len(images) != len(labels):
        raise ConversionError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if len(labels) != SPLIT_SIZE[split]:
        print(
            f"warning: {split} split has {len(labels)} records, "
            f"official Fashion-MNIST has {SPLIT_SIZE[split]}",
            file=sys.stderr,
        )
    if labels.size and int(labels.max()) >= len(CLASS_NAMES):
        raise ConversionError(f"{labels_path}: label {int(labels.max())} is not in 0..9")
    return images, labels


def selected_indices(
    labels: np.ndarray, label: int, per_class: int | None, skip: int = 0
) -> np.ndarray:
    """Indices (file order) of one class after its first ``skip``, the first
    ``per_class`` of those if capped."""
    indices = np.flatnonzero(labels == label)[skip:]
    return indices if per_class is None else indices[:per_class]


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a 2-D uint8 array as an 8-bit grayscale (mode L) PNG, no metadata."""
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(path, format="PNG")


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    """Parse a comma list, matching ``allowed`` names case-insensitively; keep ``allowed`` order."""
    by_lower = {name.lower(): name for name in allowed}
    chosen = set()
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.lower() not in by_lower:
            raise ConversionError(f"unknown {what} {item!r}; choose from {', '.join(allowed)}")
        chosen.add(by_lower[item.lower()])
    if not chosen:
        raise ConversionError(f"no {what} given")
    return [name for name in allowed if name in chosen]


def convert(
    idx_dir: Path,
    out: Path,
    splits: list[str],
    layout: str,
    classes: list[str],
    per_class: int | None,
    skip: int = 0,
) -> dict[str, int]:
    """Write the selected images; return the number written per split."""
    written: dict[str, int] = {}
    produced: dict[Path, set[str]] = {}  # class folder -> file names written there
    for split in splits:
        images, labels = load_split(idx_dir, split)
        root = out / split if layout == "split" else out
        count = 0
        for class_name in classes:
            folder = root / class_name
            folder.mkdir(parents=True, exist_ok=True)
            names = produced.setdefault(folder, set())
            for index in selected_indices(labels, CLASS_NAMES.index(class_name), per_class, skip):
                name = f"{split}_{int(index):05d}.png"
                write_png(folder / name, images[index])
                names.add(name)
                count += 1
        written[split] = count
    # Remove stale files of an earlier run with other options from the folders
    # written now, so OUT reflects this run; only this script's file names.
    for folder, names in produced.items():
        for path in folder.iterdir():
            if path.is_file() and OUTPUT_NAME.match(path.name) and path.name not in names:
                path.unlink()
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Convert Fashion-MNIST IDX files into class folders of 28x28 grayscale PNGs "
            "named <split>_<index>.png."
        ),
        epilog="Classes (label 0..9): " + ", ".join(CLASS_NAMES),
    )
    parser.add_argument(
        "--idx-dir",
        type=Path,
        default=None,
        help=(
            "folder with the IDX files (train-images-idx3-ubyte[.gz], ...); default: "
            f"{DEBIAN_IDX_DIR} from Debian's dataset-fashion-mnist package"
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--per-class",
        type=int,
        default=None,
        metavar="N",
        help="keep at most the first N images of each class per split (file order); default all",
    )
    parser.add_argument(
        "--skip",
        type=int,
        default=0,
        metavar="N",
        help=(
            "leave out the first N images of each class per split (file order): a set "
            "disjoint from one made with --per-class N, such as a source backbone's"
        ),
    )
    parser.add_argument(
        "--splits",
        default=None,
        help=(
            "comma list of official splits to write, from train,test; "
            "default train,test for --layout split and train for --layout flat"
        ),
    )
    parser.add_argument(
        "--layout",
        choices=("split", "flat"),
        default="split",
        help=(
            "split: OUT/<split>/<class>/*.png; flat: OUT/<class>/*.png with the "
            "chosen splits merged (default: split)"
        ),
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="comma list of class folder names to keep (default: all 10)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = parser.prog
    try:
        if args.per_class is not None and args.per_class < 1:
            raise ConversionError("--per-class must be at least 1")
        if args.skip < 0:
            raise ConversionError("--skip must be 0 or more")
        default_splits = "train,test" if args.layout == "split" else "train"
        splits = parse_list(args.splits or default_splits, SPLITS, "split")
        classes = (
            parse_list(args.classes, CLASS_NAMES, "class") if args.classes else list(CLASS_NAMES)
        )
        idx_dir = args.idx_dir
        if idx_dir is None:
            idx_dir = DEBIAN_IDX_DIR
            if not idx_dir.is_dir():
                raise ConversionError(
                    f"Fashion-MNIST IDX files not found in {idx_dir}; "
                    f"install them with `{INSTALL_HINT}` or pass --idx-dir"
                )
        elif not idx_dir.is_dir():
            raise ConversionError(f"--idx-dir {idx_dir} is not a folder")
        written = convert(
            idx_dir, args.out, splits, args.layout, classes, args.per_class, args.skip
        )
    except ConversionError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    total = sum(written.values())
    per_split = ", ".join(f"{split} {n}" for split, n in written.items())
    where = args.out if args.layout == "flat" else f"{args.out}/{{{','.join(splits)}}}"
    print(
        f"wrote {total} PNGs ({per_split}) in {len(classes)} class folders "
        f"under {where} (layout {args.layout}, from {idx_dir})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
