"""Data sources: class folders, split folders, TFDS; splits; decoding; bad files."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests.conftest import make_image_folder, mock_tfds_metadata
from transfer.data import drop_unreadable, image_dataset, load_dataset, load_folder
from transfer.data.augment import augmentation
from transfer.errors import DataError


def test_class_folders_every_format_becomes_rgb(image_folder):
    dataset = load_folder(image_folder, val_split=0.25)
    assert dataset.class_names == ["cat", "dog", "fox"]
    assert dataset.source == "folder"
    assert sum(len(s) for s in dataset.splits.values()) == 24
    suffixes = {p.rsplit(".", 1)[1] for s in dataset.splits.values() for p in s.paths}
    assert suffixes == {"png", "JPG", "jpeg", "bmp", "gif", "PNG", "Jpeg"}
    batches = list(image_dataset(dataset.splits["train"], 32, 64, 3, one_hot=False))
    images = np.concatenate([x.numpy() for x, _ in batches])
    assert images.shape == (len(dataset.splits["train"]), 32, 32, 3)
    assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 255
    labels = np.concatenate([y.numpy() for _, y in batches])
    np.testing.assert_array_equal(labels, dataset.splits["train"].labels)


def test_hash_split_is_stratified_deterministic_and_stable(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 20, "b": 20})
    first = load_folder(root, val_split=0.3)
    again = load_folder(root, val_split=0.3)
    assert first.splits["val"].paths == again.splits["val"].paths
    for label in (0, 1):  # both classes are represented in validation
        assert (first.splits["val"].labels == label).sum() >= 2
    # Add images later: every earlier image keeps its split.
    make_image_folder(root, {"a": 15, "b": 15}, start=20)
    grown = load_folder(root, val_split=0.3)
    for split in ("train", "val"):
        assert set(first.splits[split].paths) <= set(grown.splits[split].paths)
    assert first.fingerprint != grown.fingerprint


def test_test_split_is_held_out(tmp_path):
    root = make_image_folder(tmp_path / "d", {"a": 20, "b": 20})
    dataset = load_folder(root, val_split=0.2, test_split=0.2)
    paths = [set(dataset.splits[s].paths) for s in ("train", "val", "test")]
    assert all(len(p) for p in paths)
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])


def test_split_folders_used_as_given(tmp_path):
    root = tmp_path / "d"
    make_image_folder(root / "train", {"a": 4, "b": 4})
    make_image_folder(root / "val", {"a": 2, "b": 1})
    make_image_folder(root / "test", {"b": 3})
    dataset = load_folder(root)
    assert dataset.source == "split-folders"
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 8, "val": 3, "test": 3}
    assert dataset.splits["test"].labels.tolist() == [1, 1, 1]


def test_split_folders_with_an_unknown_class(tmp_path):
    root = tmp_path / "d"
    make_image_folder(root / "train", {"a": 4, "b": 4})
    make_image_folder(root / "val", {"a": 1, "zebra": 1})
    with pytest.raises(DataError, match="class folders that train/ does not: zebra"):
        load_folder(root)


def test_non_images_reported_hidden_ignored(image_folder):
    (image_folder / "cat" / "notes.txt").write_text("not an image")
    (image_folder / "cat" / ".DS_Store").write_bytes(b"\0\0")
    (image_folder / ".hidden_class").mkdir()
    dataset = load_folder(image_folder)
    assert dataset.class_names == ["cat", "dog", "fox"]
    assert [s["path"] for s in dataset.skipped] == [str(image_folder / "cat" / "notes.txt")]
    assert "not an image file" in dataset.skipped[0]["reason"]


def test_unreadable_images_reported_by_path_and_dropped(image_folder):
    bad = {
        "zero.png": b"",
        "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not really a jpeg",
        "text.png": b"hello world\n",
    }
    for name, content in bad.items():
        (image_folder / "dog" / name).write_bytes(content)
    good = image_folder / "fox" / "img_001.JPG"
    data = good.read_bytes()
    (image_folder / "fox" / "truncated.jpg").write_bytes(data[: len(data) // 3])
    dataset = drop_unreadable(load_folder(image_folder, val_split=0.25), progress=False)
    skipped = {s["path"]: s["reason"] for s in dataset.skipped}
    expected = {str(image_folder / "dog" / n) for n in bad}
    assert expected <= set(skipped)
    assert skipped[str(image_folder / "dog" / "zero.png")] == "empty file (0 bytes)"
    kept = [p for s in dataset.splits.values() for p in s.paths]
    assert not set(kept) & set(skipped)
    assert len(kept) == 24 and len(skipped) == 4  # every good image is kept
    # Nothing left in the pipeline can fail: iterating every split works.
    for split in dataset.splits.values():
        for _ in image_dataset(split, 32, 8, 3):
            pass


def test_strict_turns_bad_files_into_an_error(image_folder):
    (image_folder / "dog" / "zero.png").write_bytes(b"")
    with pytest.raises(
        DataError, match=r"1 unusable files \(strict=True\): .*zero.png: empty file"
    ):
        drop_unreadable(load_folder(image_folder), strict=True, progress=False)


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda root: None, r"does not exist"),
        (lambda root: root.mkdir(), r"No class folders in .*Expected one sub-folder per class"),
        (
            lambda root: (make_image_folder(root, {"a": 3}), (root / "b").mkdir()),
            r"Class folder '.*b' holds no images",
        ),
        (lambda root: make_image_folder(root, {"only": 3}), r"has a single class \('only'\)"),
        (
            lambda root: (root.mkdir(), (root / "x.png").write_bytes(b"")),
            r"holds files but no class sub-folders",
        ),
    ],
    ids=["missing", "empty", "empty-class", "single-class", "flat-files"],
)
def test_bad_folders(tmp_path, setup, message):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=message):
        load_dataset(root)


def test_tfds_source_with_mock_data(tmp_path):
    mock_tfds_metadata(tmp_path)
    with tfds.testing.mock_data(
        num_examples=12, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=str(tmp_path)
    ):
        dataset = load_dataset("tfds:mnist", val_split=0.25, tfds_data_dir=str(tmp_path))
        assert dataset.source == "tfds"
        assert dataset.class_names == [str(i) for i in range(10)]
        assert set(dataset.splits) == {"train", "val", "test"}  # val carved from train
        images, labels = next(iter(image_dataset(dataset.splits["test"], 32, 5, 10, one_hot=False)))
        assert images.shape == (5, 32, 32, 3)  # grayscale became RGB
        np.testing.assert_array_equal(labels.numpy(), dataset.splits["test"].labels[:5])


def test_tfds_unknown_dataset():
    with pytest.raises(DataError, match="Unknown TFDS dataset 'no_such_dataset_xyz'"):
        load_dataset("tfds:no_such_dataset_xyz")


def test_augmentation_seeds_each_layer_apart_and_repeats_with_the_seed(image_folder):
    """Layers sharing one seed draw the same numbers (every flip with the same zoom):
    each layer gets its own. The same seed gives the same augmented images."""

    seeds = [layer.seed for layer in augmentation(seed=7).layers]
    assert len(set(seeds)) == len(seeds) == 4
    assert all(layer.seed is None for layer in augmentation(seed=None).layers)
    dataset = load_dataset(image_folder, val_split=0.0)
    images = next(iter(image_dataset(dataset.splits["train"], 32, 8, dataset.num_classes)))[0]
    first = augmentation(seed=7)(images, training=True)
    again = augmentation(seed=7)(images, training=True)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(images))


def test_decoded_images_are_whole_levels_kept_as_uint8(image_folder):
    from transfer.data.pipeline import decoded_images, one_hot_images
    from transfer.data.sources import load_dataset

    train = load_dataset(image_folder, val_split=0.2).splits["train"]
    cached = list(decoded_images(train, 24, cache=True))
    plain = list(decoded_images(train, 24, cache=False))
    for (x, y), (raw, label) in zip(cached, plain):
        assert x.dtype == "float32" and int(y) == int(label)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(raw))
        assert np.array_equal(np.asarray(x), np.round(np.asarray(x)))  # whole levels
    repeated = [np.asarray(x) for x, _ in decoded_images(train, 24, cache=True)]
    assert len(repeated) == len(cached) == len(train)
    # Training shuffles uint8 pixels (a quarter of the bytes); the model casts them.
    for (x, _), (pixels, label) in zip(cached, one_hot_images(train, 24, 3)):
        assert pixels.dtype == "uint8" and int(np.argmax(label)) >= 0
        np.testing.assert_array_equal(np.asarray(pixels, dtype="float32"), np.asarray(x))
