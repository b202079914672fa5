"""The data-preparation scripts: Fashion-MNIST IDX files to class folders, and the
label budgets of scripts/benchmark_transfer.py, on IDX files written from the real
Fashion-MNIST images in data/."""

import csv
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_DATA

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

import benchmark_audit  # noqa: E402
import benchmark_transfer  # noqa: E402
import fashion_mnist_to_folders as fashion  # noqa: E402


def write_idx(path, array):
    """An unsigned-byte IDX file, gzipped like the official ones."""
    header = bytes([0, 0, fashion.IDX_UBYTE, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def write_splits(root, splits):
    """{split: (images, labels)} as the IDX files Fashion-MNIST ships."""
    for split, (images, labels) in splits.items():
        prefix = fashion.SPLIT_PREFIX[split]
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", np.stack(images))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.array(labels))


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    """IDX files of the 300 sample images: 20 per class for train, 10 for test."""
    root = tmp_path_factory.mktemp("idx")
    splits = {"train": ([], []), "test": ([], [])}
    for label, name in enumerate(fashion.CLASS_NAMES):
        files = sorted(Path(SAMPLE_DATA, name).glob("*.png"))
        for i, path in enumerate(files):
            images, labels = splits["train" if i < 20 else "test"]
            images.append(np.asarray(Image.open(path)))
            labels.append(label)
    write_splits(root, splits)
    return root


def pngs(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))


def test_converter_writes_class_folders_traceable_to_the_idx_records(idx_dir, tmp_path):
    out = tmp_path / "fm"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "fashion_mnist_to_folders.py"),
            "--idx-dir",
            str(idx_dir),
            "--out",
            str(out),
            "--classes",
            "bag,Sandal",
            "--per-class",
            "3",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote 12 PNGs (train 6, test 6)" in done.stdout
    assert sorted(p.name for p in (out / "train").iterdir()) == ["Bag", "Sandal"]
    images, labels = fashion.load_split(idx_dir, "train")
    first_bag = np.flatnonzero(labels == fashion.CLASS_NAMES.index("Bag"))[0]
    written = out / "train" / "Bag" / f"train_{first_bag:05d}.png"
    np.testing.assert_array_equal(np.asarray(Image.open(written)), images[first_bag])

    again = subprocess.run(  # a smaller re-run removes what it no longer writes
        [
            sys.executable,
            str(SCRIPTS / "fashion_mnist_to_folders.py"),
            "--idx-dir",
            str(idx_dir),
            "--out",
            str(out),
            "--classes",
            "Bag,Sandal",
            "--per-class",
            "1",
            "--splits",
            "train",
        ],
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0, again.stderr
    assert len(pngs(out / "train")) == 2 and len(pngs(out / "test")) == 6


def test_skip_makes_a_set_disjoint_from_the_first_per_class(idx_dir, tmp_path):
    """A source task of the same classes: --skip N leaves out what --per-class N wrote."""
    first, rest = tmp_path / "first", tmp_path / "rest"
    assert fashion.main(["--idx-dir", str(idx_dir), "--out", str(first), "--per-class", "5"]) == 0
    assert fashion.main(["--idx-dir", str(idx_dir), "--out", str(rest), "--skip", "5"]) == 0
    firsts, rests = set(pngs(first)), set(pngs(rest))
    assert len(firsts) == 10 * (5 + 5) and len(rests) == 10 * (15 + 5)
    assert not firsts & rests
    assert fashion.main(["--idx-dir", str(idx_dir), "--out", str(rest), "--skip", "-1"]) == 2


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda b: b[:2] + bytes([0x09]) + b[3:], "bad IDX magic number"),
        (lambda b: b[:-5], "bytes, expected"),
    ],
)
def test_converter_refuses_damaged_idx_files(idx_dir, tmp_path, mutate, message):
    broken = tmp_path / "idx"
    broken.mkdir()
    for path in idx_dir.iterdir():
        data = gzip.decompress(path.read_bytes())
        if path.name.startswith("train-images"):
            data = mutate(data)
        (broken / path.name).write_bytes(gzip.compress(data))
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "fashion_mnist_to_folders.py"),
            "--idx-dir",
            str(broken),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert message in done.stderr and "error:" in done.stderr


def test_label_budgets_are_nested_seeded_and_share_the_test_set(idx_dir, tmp_path):
    target = tmp_path / "target"
    fashion.convert(
        idx_dir, target, ["train", "test"], "split", benchmark_transfer.TARGET_CLASSES, None
    )
    folders = benchmark_transfer.budget_folders(target, [2, 5], tmp_path / "budgets", seed=3)
    small, large = (pngs(folders[b] / "train") for b in (2, 5))
    assert len(small) == 2 * 5 and len(large) == 5 * 5
    assert set(small) <= set(large)
    for folder in folders.values():  # every test image, under its class
        assert pngs(folder / "test") and len(pngs(folder / "test")) == 5 * 10
        link = next((folder / "test").rglob("*.png"))
        assert os.path.realpath(link).startswith(str(target / "test"))
    again = benchmark_transfer.budget_folders(target, [2], tmp_path / "again", seed=3)
    other = benchmark_transfer.budget_folders(target, [2], tmp_path / "other", seed=4)
    assert pngs(again[2] / "train") == small
    assert pngs(other[2] / "train") != small
    # The budget draws only from the train split, never from images held out for test.
    train_sources = {os.path.realpath(p) for p in (folders[5] / "train").rglob("*.png")}
    assert all(str(target / "train") in p for p in train_sources)


def test_small_budgets_get_more_epochs():
    plan = benchmark_transfer.PLANS["scratch"]
    assert benchmark_transfer.epochs_for(plan, 8 * 5, 32) == 30  # 2 steps/epoch: 60 steps
    assert benchmark_transfer.epochs_for(plan, 800 * 5, 32) == plan["fine_tune_epochs"]
    head = benchmark_transfer.PLANS["head"]
    assert benchmark_transfer.epochs_for(head, 40, 32) == 0  # no fine-tuning phase
    assert benchmark_transfer.epochs_for(head, 40, 32, "head_epochs") == 150
    assert benchmark_transfer.epochs_for(head, 4000, 32, "head_epochs") == head["head_epochs"]


@pytest.fixture(scope="module")
def idx_with_sample_first(tmp_path_factory):
    """IDX files whose train split starts each class with the sample's 30 images (as
    Fashion-MNIST's does: data/ holds its first 30 of each class), then 15 others."""
    root = tmp_path_factory.mktemp("idx-sample-first")
    images, labels = [], []
    for label, name in enumerate(fashion.CLASS_NAMES):
        files = sorted(Path(SAMPLE_DATA, name).glob("*.png"))
        for path in files + files[: 2 if label < 5 else 1]:
            images.append(np.asarray(Image.open(path)))
            labels.append(label)
    write_splits(root, {"train": (images, labels), "test": (images, labels)})
    return root


@pytest.mark.heavy
def test_standin_trains_without_the_sample_and_saves_what_transfer_loads(
    idx_with_sample_first, tmp_path
):
    """scripts/pretrain_standin.py (a stand-in for the ImageNet weights) trains on the
    train split less the sample's first 30 of each class, and its backbone's weights
    file loads into transfer's ResNet50 (as `--weights` does) with the same outputs."""
    import keras
    import pretrain_standin

    import transfer

    x, y, x_test, y_test = pretrain_standin.training_images(idx_with_sample_first)
    assert x.shape == (15, 28, 28, 1) and list(np.bincount(y)) == [2] * 5 + [1] * 5
    assert len(x_test) == 315  # the test split, all of it (at most 2,048)
    model, backbone = pretrain_standin.classifier(keras, 32)
    assert model.output_shape == (None, 10) and backbone.name == "resnet50"
    weights = tmp_path / "standin.weights.h5"
    backbone.save_weights(weights)
    ours = transfer.ResNet50(weights=str(weights), include_top=False, input_shape=(32, 32, 3))
    pixels = np.pad(x[:4], ((0, 0), (2, 2), (2, 2), (0, 0))).repeat(3, -1)
    pixels = keras.applications.resnet.preprocess_input(pixels.astype("float32"))
    np.testing.assert_allclose(
        ours.predict(pixels, verbose=0), backbone.predict(pixels, verbose=0), rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_standin_script_end_to_end(idx_with_sample_first, tmp_path):
    """The whole script for one epoch at 32 px (2 minutes on 2 cores: tracing
    ResNet50's training step is most of it)."""
    import transfer

    out = tmp_path / "standin.weights.h5"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "pretrain_standin.py"),
            "--idx-dir",
            str(idx_with_sample_first),
            "--out",
            str(out),
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
    )
    assert done.returncode == 0, done.stderr
    assert "15 training images (the sample's 300 left out), 32 px" in done.stdout
    assert "accuracy on 315 test images" in done.stdout and f"wrote {out}" in done.stdout
    transfer.ResNet50(weights=str(out), include_top=False, input_shape=(32, 32, 3))


@pytest.mark.slow
def test_gpu_benchmark_runs_every_row_on_a_cpu(tmp_path):
    """scripts/benchmark_gpu.py, prepared for a GPU, checked here at 32 px (a minute on
    2 cores): the plain Keras fit and both transfer runs train and are measured."""
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "benchmark_gpu.py"),
            "--copies",
            "1",
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--jit",
            "off",
            "--out",
            str(out),
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["run"] for r in rows] == ["Keras fit", "transfer", "transfer --augment flip"]
    for row in rows:
        assert "error" not in row, row
        assert row["images"] >= 200 and len(row["step_seconds"]) == 2 and row["images_per_s"] > 0


def test_the_audit_benchmark_flips_what_it_says_and_keeps_the_truth(tmp_path):
    """scripts/benchmark_audit.py's data: exactly --noise of the training labels flipped
    to another class (seeded), true.csv the labels before, test labels untouched, and
    each planted copy a training image's copy in the test split with that label."""
    source = tmp_path / "source"
    for name in ("Bag", "Sandal", "Sneaker"):
        files = sorted(Path(SAMPLE_DATA, name).glob("*.png"))
        for split, chosen in (("train", files[:20]), ("test", files[20:24])):
            (source / split / name).mkdir(parents=True)
            for path in chosen:
                (source / split / name / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    flipped, planted = benchmark_audit.write_noisy_data(source, out, 0.1, 3, seed=0)

    def rows(name):
        with open(out / name, newline="") as f:
            return {r["path"]: (r["label"], r["split"]) for r in csv.DictReader(f)}

    noisy, true = rows("noisy.csv"), rows("true.csv")
    assert noisy.keys() == true.keys() and len(noisy) == 60 + 12 + 3
    assert len(flipped) == 6  # 10% of the 60 training images
    for path, (label, split) in noisy.items():
        assert true[path][0] == Path(path).parent.name
        if path in flipped:
            assert split == "train" and label != flipped[path] == true[path][0]
        else:
            assert label == true[path][0]
    for copy, original in planted:
        assert noisy[copy] == (true[original][0], "test") and original not in flipped
        assert (out / copy).is_file()
    again, _ = benchmark_audit.write_noisy_data(source, out, 0.1, 3, seed=0)
    assert again == flipped


@pytest.mark.slow
def test_startup_benchmark_times_each_stage_of_a_small_run(tmp_path):
    """scripts/benchmark_startup.py once on the sample: every stage it names was found
    in the run's log (a marker that no longer matches would fold its stage into the
    next), and the stages add up to the run."""
    out = tmp_path / "startup.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "benchmark_startup.py"), "--repeats", "1",
         "--out", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    stages = result["stages"]
    assert all(seconds > 0 for seconds in stages.values()), stages
    total = stages.pop("total")
    assert abs(sum(stages.values()) - total) < 1e-6
    assert result["median"]["refusal"] < result["median"]["tensorflow"]
