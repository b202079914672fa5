"""The run directory: every file is written to a temporary name and renamed into
place, so an interrupted run never leaves a half-written file that looks complete."""

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

from transfer.errors import InvalidArgumentError, RunFailedError

# The files and folders a run writes; --overwrite removes exactly these.
RUN_FILES = (
    "config.json", "labels.txt", "model.keras", "history.csv", "metrics.json",
    "classification_report.txt", "confusion_matrix.png", "confusion_matrix.csv",
    "training_curves.png", "predictions.csv", "test_predictions.csv",
    "test_classification_report.txt", "test_confusion_matrix.csv", "test_confusion_matrix.png",
)
RUN_FOLDERS = ("logs", "checkpoints")


def _failure(path, exc):
    reason = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
    return RunFailedError(f"Cannot write {path}: {reason}.")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; rename it into place only on success."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Keep every suffix (.weights.h5, .keras): Keras checks them on the temp name.
        suffixes = "".join(path.suffixes)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:len(path.name) - len(suffixes)]}.",
                                   suffix=f".partial{suffixes}", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _failure(path, exc) from exc
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        raise _failure(path, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf8")
    return Path(path)


def write_json(path, data):
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())


def save_model(model, path):
    """Save a Keras model atomically (Keras needs the `.keras` suffix on the temp file)."""
    with atomic_path(path) as tmp:
        model.save(tmp)
    return Path(path)


def save_weights(model, path):
    """Save a model's weights atomically (`.weights.h5`)."""
    with atomic_path(path) as tmp:
        model.save_weights(tmp)
    return Path(path)


def prepare_run_dir(path, overwrite=False, keep=False):
    """Create the run directory; refuse a non-empty one unless `overwrite` (which
    removes the files of the earlier run) or `keep` (resuming it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"--out {path} is a file, not a folder.")
    if path.exists() and any(path.iterdir()) and not keep:
        if not overwrite:
            raise InvalidArgumentError(
                f"--out {path} is not empty. Choose another folder or pass --overwrite "
                "to replace the run in it."
            )
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()
        for name in RUN_FOLDERS:
            shutil.rmtree(path / name, ignore_errors=True)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise _failure(path, exc) from exc
    return path
