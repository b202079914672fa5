"""The checks of a dataset before training: classes without enough images, links, oversized
images, names that cannot be labels."""

import csv
import io
import json
import logging
import os
from pathlib import Path

import pytest

from tests.conftest import TINY_FLAGS, make_image_folder, run_cli


def test_a_class_without_training_images_is_refused(tmp_path):
    from tests.conftest import write_image

    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    (data / "bird").mkdir()
    write_image(data / "bird" / "img_012.png", size=(32, 32))  # hashes into validation
    result = run_cli("finetune", "--data", data, "--out", tmp_path / "run", *TINY_FLAGS)
    assert result.exit_code == 2, result.output
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("Error: No training images for class 'bird' of images")
    )
    assert "Warning: Class 'bird'" not in result.stderr


def test_classes_with_few_training_images_are_named(tmp_path, monkeypatch):
    from transfer.train.options import resolve_options
    from transfer.train.run import load_data

    data = make_image_folder(tmp_path / "images", {"cat": 12, "dog": 3}, size=(32, 32))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("transfer").addHandler(handler)
    try:
        load_data(data, resolve_options(weights="none"))
    finally:
        logging.getLogger("transfer").removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any(m.startswith("Class 'dog' has only 2 training images") for m in warnings), warnings
    assert not any("'cat'" in m for m in warnings)


def test_folder_links_are_not_followed_and_loops_never_entered(tmp_path):
    from transfer.data.sources import load_folder

    data = make_image_folder(tmp_path / "images", {"cat": 4, "dog": 4}, size=(32, 32))
    elsewhere = make_image_folder(tmp_path / "elsewhere", {"more": 3}, size=(32, 32))
    (data / "cat" / "loop").symlink_to(data / "cat")  # a folder that holds itself
    (data / "dog" / "more").symlink_to(elsewhere / "more")
    (data / "dog" / "linked.png").symlink_to(elsewhere / "more" / "img_000.png")
    dataset = load_folder(data)
    # A link to a file outside the image folder is skipped too.
    assert sum(len(split) for split in dataset.splits.values()) == 4 + 4
    assert sorted((Path(s["path"]).name, s["reason"]) for s in dataset.skipped) == [
        ("linked.png", "link to a file outside the image folder, not read"),
        ("loop", "link to a folder, not followed"),
        ("more", "link to a folder, not followed"),
    ]


def _png_declaring(path, width, height):
    """A tiny real PNG whose header claims width x height (IHDR patched, CRC fixed)."""
    import struct
    import zlib

    from tests.conftest import write_image

    data = bytearray(write_image(path, size=(8, 8)).read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


@pytest.mark.heavy
def test_images_too_large_are_skipped_unread(tmp_path, tiny_run):
    from transfer.data.pipeline import MAX_PIXELS

    folder = make_image_folder(tmp_path / "images", {"cat": 2}, size=(32, 32))
    _png_declaring(folder / "cat" / "bomb.png", 12_000, 8_000)  # 96 million pixels
    assert 12_000 * 8_000 > MAX_PIXELS
    result = run_cli("predict", tiny_run, folder, "--format", "json")
    assert result.exit_code == 1, result.output  # an image could not be predicted
    rows = {Path(row["path"]).name: row for row in json.loads(result.stdout)}
    assert rows["bomb.png"]["error"].startswith("image too large (12000x8000)")
    assert not rows["img_000.png"]["error"] and not rows["img_001.JPG"]["error"]
    # finetune's limit is an option; a small one skips ordinary images, reported by path
    from transfer.train.options import resolve_options
    from transfer.train.run import load_data

    data = make_image_folder(tmp_path / "train", {"cat": 6, "dog": 6}, size=(32, 32))
    _png_declaring(data / "dog" / "big.png", 64, 64)
    dataset = load_data(data, resolve_options(weights="none", max_pixels=32 * 32))
    assert [Path(s["path"]).name for s in dataset.skipped] == ["big.png"]
    assert "max_pixels=1024" in dataset.skipped[0]["reason"]


def test_a_file_name_that_is_not_utf8_is_reported_not_fatal(tmp_path, tiny_run):
    from tests.conftest import write_image
    from transfer.train.options import resolve_options
    from transfer.train.run import load_data

    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    odd = os.path.join(os.fsencode(data / "cat"), b"caf\xe9.png")
    os.rename(write_image(tmp_path / "plain.png", size=(32, 32)), odd)
    dataset = load_data(data, resolve_options(weights="none"))
    assert dataset.skipped == [
        {
            "path": str(data / "cat") + "/caf\\xe9.png",
            "reason": "file name is not valid UTF-8; rename it to use it",
        }
    ]
    assert sum(len(split) for split in dataset.splits.values()) == 12
    result = run_cli("predict", tiny_run, data / "cat", "--format", "csv")
    assert result.exit_code == 1, result.output  # an image could not be predicted
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    odd_rows = [row for row in rows if row["path"].endswith("caf\\xe9.png")]
    assert len(rows) == 7 and len(odd_rows) == 1 and "not valid UTF-8" in odd_rows[0]["error"]


@pytest.mark.parametrize("name", ["two\nlines", b"caf\xe9"])
def test_class_folders_whose_names_cannot_be_labels_are_refused(tmp_path, name):
    data = make_image_folder(tmp_path / "images", {"cat": 3}, size=(32, 32))
    os.rename(
        data / "cat",
        os.path.join(os.fsencode(data), name) if isinstance(name, bytes) else data / name,
    )
    make_image_folder(data, {"dog": 3}, size=(32, 32))
    result = run_cli("finetune", "--data", data, "--out", tmp_path / "run", *TINY_FLAGS)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: Class folder names that cannot be class names")
    assert len(result.stderr.strip().splitlines()) == 1


def test_predict_on_a_folder_keeps_to_it_as_datasets_do(tmp_path, tiny_run):
    # The one rule of folders: a link inside that leads outside is reported, not read.
    folder = make_image_folder(tmp_path / "images", {"cat": 2}, size=(32, 32))
    secret = make_image_folder(tmp_path / "elsewhere", {"x": 1}, size=(32, 32))
    os.symlink(next((secret / "x").iterdir()), folder / "cat" / "linked.png")
    result = run_cli("predict", tiny_run, folder, "--format", "json")
    rows = {Path(row["path"]).name: row for row in json.loads(result.stdout)}
    assert rows["linked.png"]["error"] == "link to a file outside the image folder, not read"
    assert rows["linked.png"]["predictions"] == []
    assert not rows["img_000.png"]["error"]
