"""Atomic writes: every file goes to a temporary name beside its target and is
renamed into place, so an interrupted run never leaves a half-written file that
looks complete. Imports neither scikit-learn nor matplotlib."""

import contextlib
import csv
import io
import json
import os
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from transfer.errors import RunFailedError
from transfer.lazy import keras


def write_failure(path, exc):
    """The error for a file or folder that cannot be written."""
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
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name[: len(path.name) - len(suffixes)]}.",
            suffix=f".partial{suffixes}",
            dir=path.parent,
        )
        os.close(fd)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _file_mode():
    """The mode `open()` would give a new file: mkstemp's temp files are 0600, but
    outputs should be as readable as `model.save`'s (0644 under umask 022)."""
    umask = os.umask(0)  # read it; the only way without /proc
    os.umask(umask)
    return 0o666 & ~umask


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf8")
    return Path(path)


def write_bytes(path, data):
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path, data):
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path, header, rows):
    """A CSV file whose text cells cannot run as spreadsheet formulas (`escape_cell`);
    read it back with `unescape_cell` on every cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(escaped_row(header))
    writer.writerows(escaped_row(row) for row in rows)
    return write_text(path, buffer.getvalue())


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP's CSV
# injection list): a class name such as =HYPERLINK(...) must stay text.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _is_formula(text):
    """Whether a cell (after any leading quotes) would start a formula: it starts with
    one of FORMULA_STARTS and is not a plain number such as -0.5."""
    body = text.lstrip("'")
    return body[:1] in FORMULA_STARTS and not _PLAIN_NUMBER.fullmatch(body)


def escape_cell(value):
    """A CSV cell as text no spreadsheet runs: text that would start a formula gets a
    leading single quote, as OWASP advises; numbers, and text that is a plain number,
    stay as they are. Text that already starts with quotes before such a character
    gets one more, so that `unescape_cell` gives back exactly what was written."""
    if isinstance(value, str) and _is_formula(value):
        return "'" + value
    return value


def unescape_cell(text):
    """The text `escape_cell` was given, from the cell it wrote."""
    return text[1:] if text.startswith("'") and _is_formula(text) else text


def escaped_row(cells):
    """A row of cells for csv.writer, each through `escape_cell`."""
    return [escape_cell(cell) for cell in cells]


def write_npz(path, arrays, compress=True):
    """NumPy arrays as one .npz file (compressed unless told otherwise: compressing
    weights is slow and saves little). `arrays` maps names to arrays or anything
    np.asarray takes (a Keras variable): each is converted as it is written, so one
    copy at a time is in memory, not a copy of all of them (np.savez's way)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=method, allowZip64=True) as archive:
            for name, value in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(value), allow_pickle=False)
    return Path(path)


def write_npy(path, array):
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    return Path(path)


# A member of our own in a .keras file (a zip): class names, task and thresholds
# travel inside the model file, and Keras, which reads only its own members, loads it
# unchanged (safe mode included) with or without `transfer` installed.
MODEL_METADATA_MEMBER = "transfer.json"


def save_model(model, path, metadata=None):
    """Save a Keras model atomically (Keras needs the `.keras` suffix on the temp file),
    without its optimizer: Adam's state is twice the weights, and a saved model is for inference or a new
    fine-tuning, which starts its own optimizer. `metadata` (a dict) goes inside the
    file as MODEL_METADATA_MEMBER."""
    if getattr(model, "compiled", False):
        # An uncompiled model over the same layers: the file holds no optimizer, and no
        # copy of the weights is made (clone_model would compile it again, optimizer and
        # all; a copy from its config held the weights twice more while saving).
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=tmp.parent) as unzipped:
        # Zipping, Keras holds the whole weights file in memory first (at the end of a
        # run, when memory is fullest); unzipped, it writes the same
        # members to disk, and they are zipped from there, as Keras lays them out.
        try:
            model.save(Path(unzipped) / "model", zipped=False)
        except RuntimeError as exc:
            error = _h5py_write_error(exc)
            if error is None:
                raise
            raise error from exc
        with zipfile.ZipFile(tmp, "w") as archive:
            for member in sorted((Path(unzipped) / "model").rglob("*")):
                if member.is_file():
                    archive.write(member, member.relative_to(Path(unzipped) / "model").as_posix())
            if metadata is not None:
                archive.writestr(MODEL_METADATA_MEMBER, json.dumps(metadata, indent=2))
    return Path(path)


def _h5py_write_error(exc):
    """h5py reports a failed write (a full disk) as a RuntimeError naming the errno:
    the OSError it stands for (None when it names none), so that it reads as every
    other write failure."""
    found = re.search(r"errno = (\d+)", str(exc))
    if found is None:
        return None
    number = int(found.group(1))
    return OSError(number, os.strerror(number))


def save_weight_values(model, path):
    """Every weight of `model`, in order, as an .npz written atomically: a run's own
    checkpoint. Not through h5py: after a failed write (a full disk) its file objects
    stay half-open and crash the process when they are freed."""
    return write_npz(path, {f"weight_{i}": v for i, v in enumerate(model.weights)}, compress=False)


def load_weight_values(model, path):
    """Load what `save_weight_values` wrote into `model` (built the same way)."""
    with np.load(path, allow_pickle=False) as stored:
        if len(stored.files) != len(model.weights):
            raise ValueError(
                f"{path} holds {len(stored.files)} weights; the model has {len(model.weights)}."
            )
        for i, weight in enumerate(model.weights):
            weight.assign(stored[f"weight_{i}"])
    _finalize_state(model)


def _finalize_state(layer):
    """Layers that compute their state from their weights (Normalization: the mean and
    variance it applies) recompute it, as Keras' own loading makes them: else the head's
    standardisation keeps its first statistics after phase 1's weights are loaded."""
    for child in getattr(layer, "layers", None) or []:
        _finalize_state(child)
    if hasattr(layer, "finalize_state"):
        layer.finalize_state()


def make_writable_dir(path):
    """Create `path` (and parents) and check that files can be written in it."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise write_failure(path, exc) from exc
    return path
