"""Nothing lost, nothing leaked, nothing silently wrong: output modes, stdout kept for
results, bounded reports, claimed and protected folders, hostile inputs (issue 17)."""

import csv
import io
import json
import logging
import os
import stat
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import make_image_folder
from transfer.cli import cli
from transfer.io import save_model, write_npz, write_text
from transfer.models.heads import build_classifier
from transfer.runs import RunPaths, write_labels


def run_cli(*args):
    """The CLI, with standard output and standard error kept apart."""
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory with an untrained 32-pixel classifier of two classes (no training)."""
    paths = RunPaths(tmp_path_factory.mktemp("tiny-run"))
    save_model(build_classifier(2, weights=None, image_size=32), paths.model)
    write_labels(paths.labels, ["cat", "dog"])
    return paths.root


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask_like_model_save(tmp_path, umask, mask, mode):
    umask(mask)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    written = [write_text(tmp_path / "a.txt", "x"),
               write_npz(tmp_path / "a.npz", {"x": np.zeros(2)}),
               save_model(model, tmp_path / "model.keras")]
    model.save(tmp_path / "reference.keras")
    assert stat.S_IMODE(os.stat(tmp_path / "reference.keras").st_mode) == mode
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path


@pytest.mark.parametrize("output_format", ["csv", "json"])
def test_predict_prints_results_alone_on_stdout(tmp_path, tiny_run, monkeypatch, output_format):
    # As on a terminal, where Keras draws its progress bar on sys.stdout.
    monkeypatch.setattr("transfer.progress.interactive", lambda: True)
    folder = make_image_folder(tmp_path / "images", {"cat": 3}, size=(32, 32))
    result = run_cli("predict", tiny_run, folder, "--format", output_format,
                     "--batch-size", 1)
    assert result.exit_code == 0, result.output
    if output_format == "csv":
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
    else:
        rows = json.loads(result.stdout)
    assert len(rows) == 3 and all(row["path"].startswith(str(folder)) for row in rows)
    assert "3/3" in result.stderr  # the progress bar went to stderr


@pytest.mark.parametrize("classes", [3, 60, 400])
def test_confusion_matrix_figure_stays_bounded(tmp_path, classes):
    from PIL import Image

    from transfer.report.plots import DPI, MAX_MATRIX_INCHES, plot_confusion_matrix

    rng = np.random.default_rng(0)
    true, predicted = rng.integers(0, classes, 5000), rng.integers(0, classes, 5000)
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (true, predicted), 1)
    names = [f"class number {i} with a rather long descriptive name" for i in range(classes)]
    plot_confusion_matrix(matrix, names, tmp_path / "cm.png")
    width, height = Image.open(tmp_path / "cm.png").size
    # the figure (matrix and colour bar) plus room for cut class names
    assert width <= (MAX_MATRIX_INCHES + 4) * DPI and height <= (MAX_MATRIX_INCHES + 3) * DPI


TINY = dict(report=False, weights="none", image_size=32, batch_size=8, head_epochs=1, fine_tune_from="none")


class DiskTrouble(OSError):
    pass


def _failing_plot(*args, **kwargs):
    raise DiskTrouble("the report could not be drawn")


def test_a_failing_report_loses_neither_model_nor_history(tmp_path, monkeypatch):
    from transfer.commands.finetune import finetune

    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    monkeypatch.setattr("transfer.report.metrics.plot_confusion_matrix", _failing_plot)
    run = tmp_path / "run"
    with pytest.raises(DiskTrouble):
        finetune(data, out=run, **TINY)
    paths = RunPaths(run)
    assert paths.model.is_file() and paths.history.is_file()
    assert keras.models.load_model(paths.model).output.shape[-1] == 2
    assert json.loads(paths.config.read_text())["status"] == "failed"


def test_evaluate_keeps_its_metrics_when_a_report_fails(tmp_path, tiny_run, monkeypatch):
    from transfer.commands.evaluate import evaluate

    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    monkeypatch.setattr("transfer.report.metrics.plot_confusion_matrix", _failing_plot)
    with pytest.raises(DiskTrouble):
        evaluate(tiny_run, data, tmp_path / "reports")
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text())["images"] == 4


def test_export_keeps_its_labels_with_it_and_respects_overwrite(tmp_path, tiny_run):
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "labels.txt").write_text("someone else's\n")
    out = exports / "model.keras"
    assert run_cli("export", tiny_run, "--out", out, "--no-compare").exit_code == 0
    assert (exports / "model.keras.labels.txt").read_text().split() == ["cat", "dog"]
    assert (exports / "labels.txt").read_text() == "someone else's\n"
    # the exported file predicts with its own labels
    image = make_image_folder(tmp_path / "images", {"cat": 1}, size=(32, 32))
    result = run_cli("predict", out, image, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["predictions"][0]["label"] in ("cat", "dog")
    # a second export there is refused without --overwrite, even where only the labels remain
    out.unlink()
    result = run_cli("export", tiny_run, "--out", out)
    assert result.exit_code == 2 and "model.keras.labels.txt exists" in result.stderr
    assert run_cli("export", tiny_run, "--out", out, "--overwrite", "--no-compare").exit_code == 0


def _foreign_folder(path):
    """A folder of someone else's that happens to use names a run uses."""
    (path / "logs").mkdir(parents=True)
    (path / "logs" / "server.log").write_text("keep me\n")
    (path / "metrics.json").write_text("{}\n")
    return path


def test_overwrite_refuses_a_folder_transfer_did_not_write(tmp_path, tiny_run):
    foreign = _foreign_folder(tmp_path / "foreign")
    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    for args in (["finetune", "--data", data, "--out", foreign, "--overwrite", "--weights", "none"],
                 ["evaluate", tiny_run, "--data", data, "--out", foreign, "--overwrite"],
                 ["export", tiny_run, "--format", "savedmodel", "--out", foreign, "--overwrite"]):
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"Error: --out {foreign}"), result.stderr
        assert "not written by transfer" in result.stderr \
            or "not a SavedModel export of transfer" in result.stderr, result.stderr
        assert (foreign / "logs" / "server.log").read_text() == "keep me\n"
        assert (foreign / "metrics.json").exists()
    # a folder of ours is replaced
    reports = tmp_path / "reports"
    assert run_cli("evaluate", tiny_run, "--data", data, "--out", reports).exit_code == 0
    assert run_cli("evaluate", tiny_run, "--data", data, "--out", reports,
                   "--overwrite").exit_code == 0


def _dead_pid():
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_claims_its_folder_and_releases_it(tmp_path):
    import subprocess
    import sys

    from transfer.runs import LOCK_FILE, MARKER_FILE

    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    out = tmp_path / "run"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(f"{other.pid}\n")
        (out / "config.json").write_text('{"status": "running", "options": {}}')
        for extra in ([], ["--resume"]):
            result = run_cli("finetune", "--data", data, "--out", out, *extra)
            assert result.exit_code == 2
            assert f"--out {out} is in use by another run (process {other.pid})" in \
                result.stderr, result.stderr
        assert (out / LOCK_FILE).read_text() == f"{other.pid}\n"  # still the other run's
    finally:
        other.kill()
        other.wait()
    # A dead run's lock is taken over; the lock goes when the run ends, even on failure.
    (out / "config.json").unlink()
    (out / LOCK_FILE).write_text(f"{_dead_pid()}\n")
    result = run_cli("finetune", "--data", tmp_path / "missing", "--out", out)
    assert result.exit_code == 2 and "in use" not in result.stderr, result.stderr
    assert not (out / LOCK_FILE).exists() and (out / MARKER_FILE).exists()


@pytest.mark.parametrize("stop, status, code", [
    (KeyboardInterrupt, "interrupted", 130), (RuntimeError("out of memory"), "failed", 1)])
def test_a_stopped_run_says_why_in_config_json(tmp_path, monkeypatch, stop, status, code):
    def train_head(*args, **kwargs):
        raise stop

    monkeypatch.setattr("transfer.train.run.Run.train_head", train_head)
    data = make_image_folder(tmp_path / "images", {"cat": 4, "dog": 4}, size=(32, 32))
    out = tmp_path / "run"
    result = run_cli("finetune", "--data", data, "--out", out, "--weights", "none",
                     "--image-size", 32)
    assert result.exit_code == code, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == status and config["reason"]
    if status == "interrupted":
        assert result.stderr.strip().splitlines()[-1] == \
            f"Error: The run was interrupted. --resume --out {out} continues it."


def test_ctrl_c_backs_up_the_epochs_done_before_the_first_periodic_backup(tmp_path, monkeypatch):
    # Ctrl-C in phase 2's third epoch, long before a backup was due (--backup-interval
    # 3600): the two epochs done are kept, and --resume goes on from the third.
    import transfer.train.phase as phase_module

    real_stop_on_nan = phase_module.stop_on_nan

    def interrupting(name, model, falls_back=False):
        def on_epoch_begin(epoch, logs=None):
            if name == "fine-tune" and epoch == 2:
                raise KeyboardInterrupt
        callback = real_stop_on_nan(name, model, falls_back)
        callback.on_epoch_begin = on_epoch_begin
        return callback

    monkeypatch.setattr(phase_module, "stop_on_nan", interrupting)
    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    out = tmp_path / "run"
    flags = ["--data", data, "--out", out, "--no-report", "--weights", "none", "--image-size",
             32, "--batch-size", 8, "--head-epochs", 1, "--fine-tune-from", "conv5",
             "--fine-tune-epochs", 3, "--early-stopping", 0, "--augment", "none",
             "--backup-interval", 3600]
    result = run_cli("finetune", *flags)
    assert result.exit_code == 130, result.output
    backup = out / "checkpoints" / "backup-fine-tune" / "backup.json"
    assert json.loads(backup.read_text())["epoch"] == 2

    monkeypatch.setattr(phase_module, "stop_on_nan", real_stop_on_nan)
    resumed = run_cli("finetune", *flags, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming fine-tune from epoch 3 of 3" in resumed.stderr
    with open(out / "history.csv") as f:
        assert [line.split(",")[:2] for line in f.read().split()[1:]] == \
            [["head", "1"], ["fine-tune", "1"], ["fine-tune", "2"], ["fine-tune", "3"]]


def _interrupted_run(tmp_path, monkeypatch, data):
    """A run stopped (as by Ctrl-C) after config.json was written, before training."""
    def train_head(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transfer.train.run.Run.train_head", train_head)
    out = tmp_path / "run"
    result = run_cli("finetune", "--data", data, "--out", out, *TINY_FLAGS)
    assert result.exit_code == 130, result.output
    return out


TINY_FLAGS = ["--no-report", "--weights", "none", "--image-size", 32, "--batch-size", 8, "--head-epochs", 1,
              "--fine-tune-from", "none"]


def test_resume_refuses_other_data_but_not_another_cache_dir(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "images", {"cat": 4, "dog": 4}, size=(32, 32))
    other = make_image_folder(tmp_path / "other", {"cat": 5, "dog": 4}, size=(32, 32))
    out = _interrupted_run(tmp_path, monkeypatch, data)
    result = run_cli("finetune", "--data", other, "--out", out, "--resume", *TINY_FLAGS)
    assert result.exit_code == 2 and "was started on other data" in result.stderr, result.output
    assert json.loads((out / "config.json").read_text())["status"] == "interrupted"  # as it was
    result = run_cli("finetune", "--data", data, "--out", out, "--resume", *TINY_FLAGS,
                     "--cache-dir", tmp_path / "elsewhere")
    assert "other options" not in result.stderr and "other data" not in result.stderr
    assert result.exit_code == 130  # got as far as training again (still interrupted here)


def test_a_class_without_training_images_is_refused(tmp_path):
    from tests.conftest import write_image

    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    (data / "bird").mkdir()
    write_image(data / "bird" / "img_012.png", size=(32, 32))  # hashes into validation
    result = run_cli("finetune", "--data", data, "--out", tmp_path / "run", *TINY_FLAGS)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].startswith(
        "Error: No training images for class 'bird' of images")
    assert "Warning: Class 'bird'" not in result.stderr


def test_classes_with_few_training_images_are_named(tmp_path, monkeypatch):
    from transfer.train.run import load_data
    from transfer.train.options import resolve_options


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
    assert sum(len(split) for split in dataset.splits.values()) == 4 + 4 + 1
    assert sorted((Path(s["path"]).name, s["reason"]) for s in dataset.skipped) == [
        ("loop", "link to a folder, not followed"), ("more", "link to a folder, not followed")]


def _legacy_h5(path, make_kernel):
    """A legacy Keras H5 file of one layer, `dense`, whose kernel `make_kernel` creates."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        group = f.create_group("dense")
        group.attrs["weight_names"] = np.array([b"dense/kernel:0"])
        make_kernel(f, group)
    return path


def _external_storage(tmp_path, secret):
    return lambda f, group: group.create_dataset(
        "dense/kernel:0", shape=(secret.stat().st_size,), dtype="u1",
        external=[(str(secret), 0, secret.stat().st_size)])


def _virtual(tmp_path, secret):
    import h5py

    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["data"] = np.frombuffer(secret.read_bytes(), "u1")

    def make(f, group):
        layout = h5py.VirtualLayout(shape=(secret.stat().st_size,), dtype="u1")
        layout[:] = h5py.VirtualSource(str(source), "data", shape=(secret.stat().st_size,))
        group.create_virtual_dataset("dense/kernel:0", layout)
    return make


def _external_link(tmp_path, secret):
    import h5py

    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["kernel:0"] = np.frombuffer(secret.read_bytes(), "u1")
    return lambda f, group: group.__setitem__("dense", h5py.ExternalLink(str(source), "/"))


def _huge(tmp_path, secret):
    # Declared 4 GB, stored as almost nothing (unwritten chunks read as the fill value).
    return lambda f, group: group.create_dataset(
        "dense/kernel:0", shape=(2**16, 2**14), dtype="f4", chunks=(64, 64))


@pytest.mark.parametrize("make", [_external_storage, _virtual, _external_link, _huge])
def test_weights_reader_refuses_h5_files_that_reach_outside(tmp_path, make):
    from transfer.errors import WeightsError
    from transfer.models.weights.formats import read_weights_file

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"password=hunter2\n")
    path = _legacy_h5(tmp_path / "crafted.h5", make(tmp_path, secret))
    with pytest.raises(WeightsError, match="Not allowed: H5 file with"):
        read_weights_file(path)


def test_torch_checkpoints_need_a_torch_without_cve_2025_32434(tmp_path, monkeypatch):
    import sys
    import types
    import zipfile

    from transfer.errors import WeightsError
    from transfer.models.weights.formats import read_weights_file

    def load(*args, **kwargs):
        raise AssertionError("torch.load must not run on a vulnerable PyTorch")

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(
        __version__="2.5.1+cpu", load=load, is_tensor=lambda value: False))
    path = tmp_path / "resnet50.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("resnet50/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(WeightsError, match=r"CVE-2025-32434.*torch>=2\.6"):
        read_weights_file(path)


def _png_declaring(path, width, height):
    """A tiny real PNG whose header claims width x height (IHDR patched, CRC fixed)."""
    import struct
    import zlib

    from tests.conftest import write_image

    data = bytearray(write_image(path, size=(8, 8)).read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    path.write_bytes(bytes(data))
    return path


def test_images_too_large_are_skipped_unread(tmp_path, tiny_run):
    from transfer.data.pipeline import MAX_PIXELS

    folder = make_image_folder(tmp_path / "images", {"cat": 2}, size=(32, 32))
    bomb = _png_declaring(folder / "cat" / "bomb.png", 12_000, 8_000)  # 96 million pixels
    assert 12_000 * 8_000 > MAX_PIXELS
    result = run_cli("predict", tiny_run, folder, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = {Path(row["path"]).name: row for row in json.loads(result.stdout)}
    assert rows["bomb.png"]["error"].startswith("image too large (12000x8000)")
    assert not rows["img_000.png"]["error"] and not rows["img_001.JPG"]["error"]
    # finetune's limit is an option; a small one skips ordinary images, reported by path
    from transfer.train.run import load_data
    from transfer.train.options import resolve_options

    data = make_image_folder(tmp_path / "train", {"cat": 6, "dog": 6}, size=(32, 32))
    _png_declaring(data / "dog" / "big.png", 64, 64)
    dataset = load_data(data, resolve_options(weights="none", max_pixels=32 * 32))
    assert [Path(s["path"]).name for s in dataset.skipped] == ["big.png"]
    assert "max_pixels=1024" in dataset.skipped[0]["reason"]


def test_a_file_name_that_is_not_utf8_is_reported_not_fatal(tmp_path, tiny_run):
    from tests.conftest import write_image
    from transfer.train.run import load_data
    from transfer.train.options import resolve_options

    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    odd = os.path.join(os.fsencode(data / "cat"), b"caf\xe9.png")
    os.rename(write_image(tmp_path / "plain.png", size=(32, 32)), odd)
    dataset = load_data(data, resolve_options(weights="none"))
    assert dataset.skipped == [{"path": str(data / "cat") + "/caf\\xe9.png",
                                "reason": "file name is not valid UTF-8; rename it to use it"}]
    assert sum(len(split) for split in dataset.splits.values()) == 12
    result = run_cli("predict", tiny_run, data / "cat", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    odd_rows = [row for row in rows if row["path"].endswith("caf\\xe9.png")]
    assert len(rows) == 7 and len(odd_rows) == 1 and "not valid UTF-8" in odd_rows[0]["error"]


@pytest.mark.parametrize("name", ["two\nlines", b"caf\xe9"])
def test_class_folders_whose_names_cannot_be_labels_are_refused(tmp_path, name):
    data = make_image_folder(tmp_path / "images", {"cat": 3}, size=(32, 32))
    os.rename(data / "cat", os.path.join(os.fsencode(data), name) if isinstance(name, bytes)
              else data / name)
    make_image_folder(data, {"dog": 3}, size=(32, 32))
    result = run_cli("finetune", "--data", data, "--out", tmp_path / "run", *TINY_FLAGS)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: Class folder names that cannot be class names")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag, value", [("--head-lr", "nan"), ("--fine-tune-lr", "inf"),
                                         ("--head-lr", "0"), ("--dropout", "nan"),
                                         ("--val-split", "nan")])
def test_numeric_options_must_be_finite(tmp_path, flag, value):
    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    result = run_cli("finetune", "--data", data, "--out", tmp_path / "run", *TINY_FLAGS,
                     flag, value)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {flag} {float(value)} must be"), result.stderr
    assert not (tmp_path / "run").exists()


def test_training_that_diverges_stops_and_marks_the_run_failed(tmp_path):
    data = make_image_folder(tmp_path / "images", {"cat": 8, "dog": 8}, size=(32, 32))
    out = tmp_path / "run"
    result = run_cli("finetune", "--data", data, "--out", out, "--weights", "none",
                     "--image-size", 32, "--batch-size", 4, "--head-init", "train",
                     "--head-epochs", 2, "--head-lr", "1e38", "--fine-tune-from", "none")
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines()[-1].startswith(
        "Error: Training diverged in phase head: the loss became nan")
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "failed" and "Training diverged" in config["reason"]
    assert not (out / "model.keras").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other shape"])
def test_a_damaged_feature_cache_is_recomputed_and_stale_partials_removed(tmp_path, damage):
    import tensorflow as tf

    from transfer.train.feature_cache import STALE_PARTIAL_SECONDS, compute_features

    extractor = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    batches = tf.data.Dataset.from_tensor_slices(np.ones((5, 4), "float32")).batch(2)
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / "key.npy"
    if damage == "garbage":
        entry.write_bytes(b"not numpy at all")
    else:
        np.save(entry, np.zeros((5, 3) if damage == "truncated" else (4, 3), "float32"))
        if damage == "truncated":
            entry.write_bytes(entry.read_bytes()[:-7])
    stale, fresh = cache / ".key.abc.partial.npy", cache / ".other.def.partial.npy"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    old = stale.stat().st_mtime - STALE_PARTIAL_SECONDS - 60
    os.utime(stale, (old, old))

    features = compute_features(extractor, batches, 5, 3, cache_dir=cache, key="key", verbose=0)
    expected = np.asarray(extractor(np.ones((5, 4), "float32")))
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    np.testing.assert_allclose(np.load(entry), expected, rtol=1e-6)  # the entry is good again
    assert not stale.exists() and fresh.exists()


def _embeddings(path, **changes):
    """A small .npz in the layout of `transfer embed` (3 classes, train and val)."""
    rng = np.random.default_rng(0)
    arrays = dict(features=rng.normal(size=(60, 8)).astype("float32"),
                  labels=np.arange(60) % 3, paths=np.array([f"p{i}.png" for i in range(60)]),
                  splits=np.array(["train"] * 40 + ["val"] * 20),
                  class_names=np.array(["a", "b", "c"]), source=np.array("test"))
    np.savez(path, **{**arrays, **changes})
    return path


@pytest.mark.parametrize("changes, message", [
    ({"labels": np.arange(60) % 4}, "labels must be in [0, 3), one of its 3 class_names. "
                                    "Received labels from 0 to 3."),
    ({"labels": np.arange(59) % 3}, "features, labels, paths and splits must have one entry "
                                    "per image"),
])
def test_probe_refuses_embeddings_that_disagree(tmp_path, changes, message):
    path = _embeddings(tmp_path / "e.npz", **changes)
    result = run_cli("probe", path, "--out", tmp_path / "probe")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {path}: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_probe_prints_no_scikit_learn_warnings(tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli("probe", _embeddings(tmp_path / "e.npz"), "--out", tmp_path / "probe")
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, UserWarning))]
    assert "Warning" not in result.stderr


def test_embed_refuses_an_existing_out_without_overwrite(tmp_path):
    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    out = tmp_path / "e.npz"
    out.write_bytes(b"precious")
    args = ["embed", "--data", data, "--out", out, "--weights", "none", "--image-size", 32,
            "--depth", 50]
    result = run_cli(*args)
    assert result.exit_code == 2 and result.stderr == \
        f"Error: --out {out} exists. Choose another path or pass --overwrite.\n"
    assert out.read_bytes() == b"precious"
    assert run_cli(*args, "--overwrite").exit_code == 0
    assert len(np.load(out)["labels"]) == 4


def test_predict_reports_files_in_folders_that_are_not_images(tmp_path, tiny_run):
    from PIL import Image

    folder = make_image_folder(tmp_path / "photos", {"cat": 1}, size=(32, 32))
    Image.new("RGB", (32, 32)).save(folder / "cat" / "photo.webp")
    Image.new("RGB", (32, 32)).save(folder / "cat" / "scan.tiff")
    result = run_cli("predict", tiny_run, folder, "--format", "json")
    assert result.exit_code == 0, result.output
    errors = {Path(r["path"]).name: r["error"] for r in json.loads(result.stdout)}
    assert errors["img_000.png"] is None
    assert errors["photo.webp"] == errors["scan.tiff"] == \
        "not an image file (expected .jpg, .jpeg, .png, .bmp, .gif)"
    assert "2 of 3 files could not be read." in result.stderr


def test_ctrl_c_in_any_command_exits_130(tmp_path, tiny_run, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transfer.commands.predict.run_inference", interrupted)
    folder = make_image_folder(tmp_path / "images", {"cat": 1}, size=(32, 32))
    result = run_cli("predict", tiny_run, folder)
    assert result.exit_code == 130 and result.stderr == "Error: Interrupted.\n"


def test_a_lock_still_being_written_is_respected_an_old_empty_one_is_not(tmp_path):
    from transfer.runs import LOCK_FILE, LOCK_WRITE_SECONDS, claimed_run_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text("")  # created by a run that has not written its pid yet
    with pytest.raises(ValueError, match="is being claimed by another run"):
        with claimed_run_dir(out):
            pass
    old = time.time() - LOCK_WRITE_SECONDS - 1
    os.utime(out / LOCK_FILE, (old, old))
    with claimed_run_dir(out):
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert not (out / LOCK_FILE).exists()
