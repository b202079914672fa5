"""The run directory: files written as model.save writes them, a folder claimed and
released, never overwritten unless ours, why a run stopped, resume and its backups, and
failures that lose no work."""

import json
import os
import stat
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.conftest import TINY_FLAGS, make_image_folder, run_cli
from transfer.io import save_model, write_npz, write_text
from transfer.runs import RunPaths


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
    written = [
        write_text(tmp_path / "a.txt", "x"),
        write_npz(tmp_path / "a.npz", {"x": np.zeros(2)}),
        save_model(model, tmp_path / "model.keras"),
    ]
    model.save(tmp_path / "reference.keras")
    assert stat.S_IMODE(os.stat(tmp_path / "reference.keras").st_mode) == mode
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path


TINY = dict(
    report=False, weights="none", image_size=32, batch_size=8, head_epochs=1, fine_tune_from="none"
)


class DiskTrouble(OSError):
    pass


def _failing_plot(*args, **kwargs):
    raise DiskTrouble("the report could not be drawn")


def test_a_failing_report_loses_neither_model_nor_history(tmp_path, monkeypatch):
    from transfer.commands.finetune import finetune

    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    monkeypatch.setattr("transfer.report.metrics.plot_confusion_matrix", _failing_plot)
    run = tmp_path / "run"
    finetune(data, out=run, **TINY)  # a report step that fails is a warning
    paths = RunPaths(run)
    assert paths.model.is_file() and paths.history.is_file()
    assert keras.models.load_model(paths.model).output.shape[-1] == 2
    assert json.loads(paths.config.read_text())["status"] == "complete"


def _foreign_folder(path):
    """A folder of someone else's that happens to use names a run uses."""
    (path / "logs").mkdir(parents=True)
    (path / "logs" / "server.log").write_text("keep me\n")
    (path / "metrics.json").write_text("{}\n")
    return path


@pytest.mark.heavy
def test_overwrite_refuses_a_folder_transfer_did_not_write(tmp_path, tiny_run):
    foreign = _foreign_folder(tmp_path / "foreign")
    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    for args in (
        ["finetune", "--data", data, "--out", foreign, "--overwrite", "--weights", "none"],
        ["evaluate", tiny_run, "--data", data, "--out", foreign, "--overwrite"],
        ["export", tiny_run, "--format", "savedmodel", "--out", foreign, "--overwrite"],
    ):
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        assert result.stderr.startswith(f"Error: --out {foreign}"), result.stderr
        assert (
            "not written by transfer" in result.stderr
            or "not a SavedModel export of transfer" in result.stderr
        ), result.stderr
        assert (foreign / "logs" / "server.log").read_text() == "keep me\n"
        assert (foreign / "metrics.json").exists()
    # a folder of ours is replaced
    reports = tmp_path / "reports"
    assert run_cli("evaluate", tiny_run, "--data", data, "--out", reports).exit_code == 0
    assert (
        run_cli("evaluate", tiny_run, "--data", data, "--out", reports, "--overwrite").exit_code
        == 0
    )


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
            assert f"--out {out} is in use by another run (process {other.pid})" in result.stderr, (
                result.stderr
            )
        assert (out / LOCK_FILE).read_text() == f"{other.pid}\n"  # still the other run's
    finally:
        other.kill()
        other.wait()
    # A dead run's lock is taken over; the lock goes when the run ends, even on failure.
    (out / "config.json").unlink()
    (out / LOCK_FILE).write_text(f"{_dead_pid()}\n")
    # (Data that is missing is refused before the folder is claimed: one class is
    # refused after it.)
    one_class = make_image_folder(tmp_path / "one-class", {"cat": 2}, size=(32, 32))
    result = run_cli("finetune", "--data", one_class, "--out", out)
    assert result.exit_code == 2 and "in use" not in result.stderr, result.stderr
    assert not (out / LOCK_FILE).exists() and (out / MARKER_FILE).exists()


@pytest.mark.parametrize(
    "stop, status, code",
    [(KeyboardInterrupt, "interrupted", 130), (RuntimeError("out of memory"), "failed", 1)],
)
def test_a_stopped_run_says_why_in_config_json(tmp_path, monkeypatch, stop, status, code):
    def train_head(*args, **kwargs):
        raise stop

    monkeypatch.setattr("transfer.train.run.Run.train_head", train_head)
    data = make_image_folder(tmp_path / "images", {"cat": 4, "dog": 4}, size=(32, 32))
    out = tmp_path / "run"
    result = run_cli(
        "finetune", "--data", data, "--out", out, "--weights", "none", "--image-size", 32
    )
    assert result.exit_code == code, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == status and config["reason"]
    if status == "interrupted":
        assert (
            result.stderr.strip().splitlines()[-1]
            == f"Error: The run was interrupted. --resume --out {out} continues it."
        )


@pytest.mark.heavy
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
    flags = [
        "--data",
        data,
        "--out",
        out,
        "--no-report",
        "--weights",
        "none",
        "--image-size",
        32,
        "--batch-size",
        8,
        "--head-epochs",
        1,
        "--fine-tune-from",
        "conv5",
        "--fine-tune-epochs",
        3,
        "--early-stopping",
        0,
        "--augment",
        "none",
        "--backup-interval",
        3600,
        "--no-futility-stop",
    ]
    result = run_cli("finetune", *flags)
    assert result.exit_code == 130, result.output
    backup = out / "checkpoints" / "backup-fine-tune" / "backup.json"
    assert json.loads(backup.read_text())["epoch"] == 2

    monkeypatch.setattr(phase_module, "stop_on_nan", real_stop_on_nan)
    resumed = run_cli("finetune", *flags, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "Resuming fine-tune from epoch 3 of 3" in resumed.stderr
    with open(out / "history.csv") as f:
        assert [line.split(",")[:2] for line in f.read().split()[1:]] == [
            ["head", "1"],
            ["fine-tune", "1"],
            ["fine-tune", "2"],
            ["fine-tune", "3"],
        ]


def _interrupted_run(tmp_path, monkeypatch, data):
    """A run stopped (as by Ctrl-C) after config.json was written, before training."""

    def train_head(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transfer.train.run.Run.train_head", train_head)
    out = tmp_path / "run"
    result = run_cli("finetune", "--data", data, "--out", out, *TINY_FLAGS)
    assert result.exit_code == 130, result.output
    return out


def test_resume_refuses_other_data_but_not_another_cache_dir(tmp_path, monkeypatch):
    data = make_image_folder(tmp_path / "images", {"cat": 4, "dog": 4}, size=(32, 32))
    other = make_image_folder(tmp_path / "other", {"cat": 5, "dog": 4}, size=(32, 32))
    out = _interrupted_run(tmp_path, monkeypatch, data)
    result = run_cli("finetune", "--data", other, "--out", out, "--resume", *TINY_FLAGS)
    assert result.exit_code == 2 and "was started on other data" in result.stderr, result.output
    assert json.loads((out / "config.json").read_text())["status"] == "interrupted"  # as it was
    result = run_cli(
        "finetune",
        "--data",
        data,
        "--out",
        out,
        "--resume",
        *TINY_FLAGS,
        "--cache-dir",
        tmp_path / "elsewhere",
    )
    assert "other options" not in result.stderr and "other data" not in result.stderr
    assert result.exit_code == 130  # got as far as training again (still interrupted here)


@pytest.mark.heavy
def test_training_that_diverges_stops_and_marks_the_run_failed(tmp_path):
    data = make_image_folder(tmp_path / "images", {"cat": 8, "dog": 8}, size=(32, 32))
    out = tmp_path / "run"
    result = run_cli(
        "finetune",
        "--data",
        data,
        "--out",
        out,
        "--weights",
        "none",
        "--image-size",
        32,
        "--batch-size",
        4,
        "--head-init",
        "train",
        "--head-epochs",
        2,
        "--head-lr",
        "1e38",
        "--fine-tune-from",
        "none",
    )
    assert result.exit_code == 1, result.output
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("Error: Training diverged in phase head: the loss became nan")
    )
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "failed" and "Training diverged" in config["reason"]
    assert not (out / "model.keras").exists()


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


def test_unwritable_output_is_one_error_line(tmp_path, image_folder):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = run_cli(
        "finetune",
        "--data",
        image_folder,
        "--weights",
        "none",
        "--out",
        blocker / "run",
        "--image-size",
        "32",
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"Error: Cannot write {blocker / 'run'}: Not a directory."
    )


@pytest.mark.heavy
def test_full_disk_never_leaves_a_model_that_looks_complete(full_disk, image_folder):
    out = full_disk / "run"
    result = run_cli(
        "finetune",
        "--data",
        image_folder,
        "--weights",
        "none",
        "--out",
        out,
        "--image-size",
        "32",
        "--head-epochs",
        "1",
        "--fine-tune-from",
        "none",
    )
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error: Cannot write ") and "No space left on device" in last, last
    assert not (out / "model.keras").exists()
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    config = json.loads((out / "config.json").read_text())
    # never marked complete: failed, and why
    assert config["status"] == "failed" and "No space left on device" in config["reason"]


@pytest.mark.heavy
def test_full_disk_at_phase_one_checkpoint_fails_cleanly(full_disk, image_folder):
    # Phase 1's checkpoint is the first large write of a run that fine-tunes. In a
    # subprocess: a crash (h5py freeing a file after a failed write) must show as one.
    out = full_disk / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "transfer",
            "finetune",
            "--data",
            str(image_folder),
            "--weights",
            "none",
            "--out",
            str(out),
            "--image-size",
            "32",
            "--head-epochs",
            "1",
            "--fine-tune-from",
            "conv5",
            "--no-report",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: Cannot write ") and "No space left on device" in last, last
    assert "h5py" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "failed" and "No space left on device" in config["reason"]
