"""TFRecord shards as a data source (`--data 'shards/*.tfrecord'`): real shards written
with tf.io.TFRecordWriter from real image files, laid out as TFDS writes a prepared
dataset (NAME-train.tfrecord-0000i-of-0000n, dataset_info.json, label.labels.txt)."""

import json
import struct
import zlib

import numpy as np
import pytest

from tests.conftest import TINY_FLAGS, make_image_folder, run_cli
from transfer.data import drop_unreadable, image_dataset, load_dataset
from transfer.data.dataset import Split
from transfer.errors import DataError
from transfer.lazy import tf

CLASSES = ["cat", "dog", "fox"]


def example(image_bytes, label, image_key="image", label_key="label"):
    """A tf.train.Example as TFDS writes an image classification record."""
    feature = tf.train.Feature
    return tf.train.Example(
        features=tf.train.Features(
            feature={
                image_key: feature(bytes_list=tf.train.BytesList(value=[image_bytes])),
                label_key: feature(int64_list=tf.train.Int64List(value=[label])),
            }
        )
    ).SerializeToString()


def write_shards(folder, files, count, name="tiny", **keys):
    """The image files (class = their folder) in `count` shards, the i-th file in shard
    i % count; returns {record name: file}."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = [folder / f"{name}-train.tfrecord-{i:05d}-of-{count:05d}" for i in range(count)]
    writers = [tf.io.TFRecordWriter(str(path)) for path in shards]
    names = {}
    for i, path in enumerate(files):
        shard = i % count
        writers[shard].write(example(path.read_bytes(), CLASSES.index(path.parent.name), **keys))
        names[f"{shards[shard]}#{i // count}"] = path
    for writer in writers:
        writer.close()
    return names


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """(pattern, {record name: image file}): 24 images of every kind (PNG with alpha,
    palette GIF, grayscale JPEG, BMP...) in 3 shards with TFDS' metadata files."""
    root = tmp_path_factory.mktemp("records")
    images = make_image_folder(root / "images", dict.fromkeys(CLASSES, 8), size=(32, 32))
    folder = root / "tiny" / "1.0.0"
    names = write_shards(folder, sorted(images.glob("*/*")), 3)
    (folder / "label.labels.txt").write_text("\n".join(CLASSES) + "\n")
    (folder / "dataset_info.json").write_text(json.dumps({"name": "tiny", "version": "1.0.0"}))
    return str(folder / "tiny-train.tfrecord*"), names


def pixels(split):
    return np.concatenate([x.numpy() for x, _ in image_dataset(split, 32, 16, 3, one_hot=False)])


def test_shards_read_as_their_files_would_be(shards):
    pattern, names = shards
    dataset = drop_unreadable(load_dataset(pattern, val_split=0.25), progress=False)
    assert (dataset.name, dataset.source, dataset.class_names) == ("tiny", "tfrecord", CLASSES)
    assert dataset.skipped == []
    val = dataset.splits["val"]
    assert sum(map(len, dataset.splits.values())) == 24
    assert set(np.unique(val.labels)) == {0, 1, 2}  # stratified by class
    # Every record once, named <shard>#<index>, labelled as its file's folder.
    every = [p for s in dataset.splits.values() for p in s.paths]
    assert sorted(every) == sorted(names)
    expected = [CLASSES.index(names[p].parent.name) for p in val.paths]
    assert val.labels.tolist() == expected
    # The same pixels as the files through the file pipeline: one decoder, the same
    # rules (transparency on white, palettes and grayscale to RGB).
    files = Split([str(names[p]) for p in val.paths], val.labels)
    np.testing.assert_array_equal(pixels(val), pixels(files))
    again = load_dataset(pattern, val_split=0.25)
    assert again.fingerprint == dataset.fingerprint
    assert again.splits["val"].paths == val.paths


def test_the_hash_split_of_records_is_stable_when_shards_are_added(tmp_path):
    images = make_image_folder(tmp_path / "images", {"cat": 10, "dog": 10}, size=(8, 8))
    files = sorted(images.glob("*/*"))
    folder = tmp_path / "shards"
    write_shards(folder, files, 2, name="first")
    first = load_dataset(str(folder / "*.tfrecord*"), val_split=0.3)
    write_shards(folder, files, 1, name="later")  # the same images once more, elsewhere
    grown = load_dataset(str(folder / "*.tfrecord*"), val_split=0.3)
    assert first.class_names == ["0", "1"]  # no names beside the shards: the numbers
    for split in ("train", "val"):
        assert set(first.splits[split].paths) <= set(grown.splits[split].paths)
    assert first.fingerprint != grown.fingerprint


def test_feature_names_from_dataset_info_and_bad_records_skipped(tmp_path):
    """dataset_info.json's supervised keys name the features; records whose image is
    not one, is empty, or declares more than max_pixels are reported by name and left
    out (strict=True refuses them), as files are."""
    images = make_image_folder(tmp_path / "images", {"cat": 4, "dog": 4}, size=(8, 8))
    folder = tmp_path / "shards"
    keys = {"image_key": "photo", "label_key": "kind"}
    write_shards(folder, sorted(images.glob("*/*")), 1, **keys)
    info = {
        "supervisedKeys": {"tuple": {"items": [{"featureKey": "photo"}, {"featureKey": "kind"}]}}
    }
    (folder / "dataset_info.json").write_text(json.dumps(info))
    png = bytearray(sorted(images.glob("cat/*.png"))[0].read_bytes())
    ihdr = png.index(b"IHDR")  # declares 12000 x 8000, CRC fixed
    png[ihdr + 4 : ihdr + 12] = struct.pack(">II", 12_000, 8_000)
    png[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr : ihdr + 17])))
    with tf.io.TFRecordWriter(str(folder / "bad.tfrecord")) as writer:
        for contents in (b"not an image", b"", bytes(png)):
            writer.write(example(contents, 1, **keys))
    pattern = str(folder / "*.tfrecord*")
    dataset = drop_unreadable(load_dataset(pattern, val_split=0.25), progress=False)
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in dataset.skipped}
    assert reasons.keys() == {"bad.tfrecord#0", "bad.tfrecord#1", "bad.tfrecord#2"}
    assert reasons["bad.tfrecord#0"].startswith("not a readable image")
    assert reasons["bad.tfrecord#1"] == "empty image (0 bytes)"
    assert reasons["bad.tfrecord#2"].startswith("image too large (12000x8000)")
    assert sum(map(len, dataset.splits.values())) == 8
    for split in dataset.splits.values():  # nothing left can fail
        assert len(pixels(split)) == len(split)
    with pytest.raises(DataError, match=r"3 unusable files \(strict=True\)"):
        drop_unreadable(load_dataset(pattern), strict=True, progress=False)


def test_no_shards_or_records_without_the_features_are_one_error_line(tmp_path):
    missing = run_cli("finetune", "--data", tmp_path / "none" / "*.tfrecord", *TINY_FLAGS)
    assert missing.exit_code == 2
    assert missing.output.startswith("Error: No files match") and missing.output.count("\n") == 1
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    with tf.io.TFRecordWriter(str(folder / "x.tfrecord")) as writer:
        image = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG"]))
        features = tf.train.Features(feature={"image": image})
        writer.write(tf.train.Example(features=features).SerializeToString())
    result = run_cli(
        "finetune", "--data", folder / "*.tfrecord", "--out", tmp_path / "run", *TINY_FLAGS
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: The records of") and "'label' feature of int64" in lines[-1]
    assert not [line for line in lines if line.startswith("Traceback")]


def test_a_run_on_shards_is_named_by_their_folder():
    from transfer.runs import default_run_dir

    assert default_run_dir("data/products/*.tfrecord").name.endswith("-products")
    assert default_run_dir("one.tfrecord").name.endswith("-one.tfrecord")


@pytest.mark.heavy
def test_finetune_and_evaluate_on_shards(shards, tmp_path):
    pattern, names = shards
    out = tmp_path / "run"
    result = run_cli("finetune", "--data", pattern, "--out", out, *TINY_FLAGS)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"]["source"] == "tfrecord" and config["classes"] == CLASSES
    lines = (out / "predictions.csv").read_text().splitlines()[1:]
    assert lines and all(line.split(",")[0] in names for line in lines)
    evaluated = run_cli("evaluate", out, "--data", pattern, "--out", tmp_path / "eval")
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["training_images_scored"] == 0
    assert sum(metrics["per_class"][c]["support"] for c in CLASSES) == len(lines)


def test_audit_on_shards(shards, tmp_path):
    """`transfer audit` reads shards as finetune does: the findings name records."""
    pattern, names = shards
    result = run_cli(
        "audit", "--data", pattern, "--out", tmp_path / "audit", "--weights", "none",
        "--image-size", 32, "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert summary["images"] == len(names), summary
    with open(tmp_path / "audit" / "issues.csv") as f:
        paths = [line.split(",")[1] for line in f.read().splitlines()[1:]]
    assert all(p in names for p in paths if p)
    assert (tmp_path / "audit" / "audit.html").stat().st_size > 1000
    refused = run_cli(
        "audit", "--data", pattern, "--out", tmp_path / "again", "--weights", "none",
        "--write-clean", tmp_path / "clean.csv",
    )  # fmt: skip
    assert refused.exit_code == 2 and "has none" in refused.stderr, refused.output
