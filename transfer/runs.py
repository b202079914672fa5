"""The run directory: the name of every file a run writes, its config.json, claiming
a folder for a run, the resume check, and loading a run (or a bare model file) and its
data back.

    config.json    every resolved option, versions, dataset fingerprint, classes, status
    labels.txt     class names, one per line, in output order
    model.keras    the classifier: raw RGB pixels in, probabilities out; inside it,
                   its class names, task and (multi-label) thresholds
    history.csv, training_curves.png, metrics.json, and per evaluated split
    classification_report.txt, confusion_matrix.png|.csv, predictions.csv
    ("test_" before each name for the test split)
    report.html    one self-contained page of all of it (transfer.report.html)
    logs/          TensorBoard, one folder per phase
    checkpoints/   what --resume needs while the run is not complete
"""

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from transfer.data.csv_labels import TABLE_OPTIONS
from transfer.data.dataset import TFDS_PREFIX
from transfer.data.sources import load_dataset
from transfer.data.splits import DEFAULT_TEST_SPLIT, DEFAULT_VAL_SPLIT
from transfer.errors import InvalidArgumentError, first_line
from transfer.io import (
    MODEL_METADATA_MEMBER,
    make_writable_dir,
    save_model,
    write_failure,
    write_text,
)
from transfer.lazy import keras, tf
from transfer.models.architectures import image_size_pair
from transfer.models.heads import MULTI_LABEL, is_classifier, task_of
from transfer.models.names import CLASSIFIER
from transfer.train.options import RESULT_NEUTRAL
from transfer.version import __version__

logger = logging.getLogger("transfer")

CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
AUGMENTATION_PREVIEW_FILE = "augmentation_preview.png"
REPORT_HTML = "report.html"  # transfer.report.html: the page built from the files above
REPORT_FILES = (
    "classification_report.txt",
    "confusion_matrix.png",
    "confusion_matrix.csv",
    "predictions.csv",
)
HEAD, FINE_TUNE = "head", "fine-tune"  # the phases' names in history.csv, logs/ and backups
TEST_PREFIX = "test_"  # the test split's reports: test_predictions.csv, ...
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
# Written first into every folder a command of ours claims: overwrite=True replaces
# only a folder that holds it (or an earlier version's config.json), never another's.
MARKER_FILE = ".transfer"
LOCK_FILE = ".transfer.lock"  # the pid of the run that holds the folder now
LOCK_WRITE_SECONDS = 10  # a lock without a pid yet is being written for this long at most
# The temporary name of an atomic write (transfer.io.atomic_path) unchanged this long was
# left by a process that died (kill -9): a run that claims the folder removes it.
STALE_PARTIAL_SECONDS = 300

# The files and folders a run writes; overwrite=True removes exactly these.
RUN_FILES = (
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    CURVES_FILE,
    AUGMENTATION_PREVIEW_FILE,
    REPORT_HTML,
    *REPORT_FILES,
    *(TEST_PREFIX + name for name in REPORT_FILES),
)
RUN_FOLDERS = (LOGS_DIR, CHECKPOINTS_DIR)

# config.json's status; a run that stops early records why in "reason"

RUNNING, COMPLETE, FAILED, INTERRUPTED = "running", "complete", "failed", "interrupted"


def report_file(name, prefix=""):
    """The path name of one report file, `prefix` "" (validation) or TEST_PREFIX."""
    assert name in REPORT_FILES, name
    return prefix + name


class RunPaths:
    """Where each file of one run directory goes."""

    def __init__(self, root):
        self.root = Path(root)

    config = property(lambda self: self.root / CONFIG_FILE)
    labels = property(lambda self: self.root / LABELS_FILE)
    model = property(lambda self: self.root / MODEL_FILE)
    history = property(lambda self: self.root / HISTORY_FILE)
    metrics = property(lambda self: self.root / METRICS_FILE)
    curves = property(lambda self: self.root / CURVES_FILE)
    augmentation_preview = property(lambda self: self.root / AUGMENTATION_PREVIEW_FILE)
    checkpoints = property(lambda self: self.root / CHECKPOINTS_DIR)
    # Phase 1's result, kept so that a resumed run skips it.
    head_weights = property(lambda self: self.checkpoints / "after-head.weights.npz")
    head_history = property(lambda self: self.checkpoints / "after-head.history.json")

    def logs(self, phase):
        return self.root / LOGS_DIR / phase

    def backup(self, phase):
        """A phase's backup for --resume (transfer.train.callbacks.resume_backup)."""
        return self.checkpoints / f"backup-{phase}"

    def best_weights(self, phase):
        """A phase's best epoch so far, for early stopping to restore (an .npz)."""
        return self.checkpoints / f"best-{phase}.npz"

    def phase_history(self, phase):
        """A phase's history rows so far, written after every epoch."""
        return self.checkpoints / f"history-{phase}.json"


def default_run_dir(data):
    """runs/<timestamp>-<name of the data folder or TFDS dataset>; a pattern of
    TFRecord shards ("shards/*.tfrecord") is named by its folder."""
    parts = str(data).rstrip("/").replace("tfds:", "tfds-").split("/")
    name = next((p for p in reversed(parts) if p and not set("*?[") & set(p)), "data")
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


def check_run_dir(path, overwrite=False, keep=False):
    """Refuse `path` as a run directory as `prepare_run_dir` would, changing nothing
    (a command checks it before anything heavy loads). Returns whether it holds an
    earlier run that `overwrite` replaces."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"out={path} is a file, not a folder.")
    _check_not_in_use(path)
    if path.exists() and not keep and any(p.name != LOCK_FILE for p in path.iterdir()):
        if not overwrite:
            raise InvalidArgumentError(
                f"out={path} is not empty. Choose another folder or pass overwrite=True "
                "to replace the run in it."
            )
        if not is_ours(path):
            raise InvalidArgumentError(
                f"out={path} is not empty and was not written by transfer (no {MARKER_FILE} "
                f"or {CONFIG_FILE} of a run in it): overwrite=True replaces only a folder of "
                "ours. Choose another folder, or empty this one yourself."
            )
        return True
    return False


def prepare_run_dir(path, overwrite=False, keep=False):
    """Create the run directory; refuse a non-empty one unless `overwrite` (which
    removes the files of the earlier run, only if a command of ours wrote it) or
    `keep` (resuming it). Marks the folder as ours."""
    path = Path(path)
    if check_run_dir(path, overwrite, keep):
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()
        for name in RUN_FOLDERS:
            shutil.rmtree(path / name, ignore_errors=True)
    make_writable_dir(path)
    mark_as_ours(path)
    return path


def mark_as_ours(folder):
    write_text(Path(folder) / MARKER_FILE, f"written by transfer {__version__}\n")


def is_ours(folder):
    """Whether a command of ours wrote `folder`: its marker, or (from versions before
    the marker) a config.json with a run's fields."""
    folder = Path(folder)
    if (folder / MARKER_FILE).is_file():
        return True
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(config, dict)
        and {"options", "versions", "dataset"} <= set(config)
        and "transfer" in config["versions"]
    )


@contextlib.contextmanager
def claimed_run_dir(path, overwrite=False, keep=False):
    """`prepare_run_dir` under a lock held until the block ends: a second run (or a
    --resume) cannot share the folder while the first one still runs."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"out={path} is a file, not a folder.")
    make_writable_dir(path)
    lock = _take_lock(path)
    try:
        remove_stale_partials(path)
        yield prepare_run_dir(path, overwrite=overwrite, keep=keep)
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


def remove_stale_partials(folder, max_age=STALE_PARTIAL_SECONDS):
    """Remove what atomic writes of a killed process left in `folder` and below: hidden
    `.<name>.<random>.partial<suffix>` files (and `.<name>.partial-<random>` folders)
    unchanged for `max_age` seconds. Returns how many were removed."""
    now, removed = time.time(), 0
    for root, dirs, files in os.walk(folder):
        for name in [*files, *dirs]:
            if not (name.startswith(".") and ".partial" in name):
                continue
            partial = Path(root) / name
            with contextlib.suppress(OSError):  # gone already, or not ours to remove
                if now - partial.lstat().st_mtime <= max_age:
                    continue
                if partial.is_dir() and not partial.is_symlink():
                    shutil.rmtree(partial)
                else:
                    partial.unlink()
                removed += 1
        dirs[:] = [d for d in dirs if (Path(root) / d).exists()]
    if removed:
        logger.info(
            "Removed %d temporary file%s that an interrupted process left in %s.",
            removed,
            "" if removed == 1 else "s",
            folder,
        )
    return removed


def _check_not_in_use(folder):
    """Refuse a folder whose lock a live run holds (before its files are looked at:
    a run in progress is the reason to give)."""
    pid = _lock_owner(folder / LOCK_FILE)
    if pid is not None and _is_running(pid) and pid != os.getpid():
        raise InvalidArgumentError(
            f"out={folder} is in use by another run (process {pid}). Wait for it "
            f"to end, or choose another folder."
        )


def in_use(folder):
    """Whether a live run (of another process, or this one) holds `folder`'s lock."""
    pid = _lock_owner(Path(folder) / LOCK_FILE)
    return pid is not None and _is_running(pid)


def _take_lock(folder):
    lock = folder / LOCK_FILE
    for _ in range(2):  # once more after removing a dead run's lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            _check_not_in_use(folder)
            pid = _lock_owner(lock)
            if pid is None and _age_seconds(lock) < LOCK_WRITE_SECONDS:
                break  # another run has just created it and is writing its pid
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # its run died without removing it
            continue
        except OSError as exc:
            raise write_failure(lock, exc) from exc
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            lock.unlink(missing_ok=True)
            raise write_failure(lock, exc) from exc
        return lock
    raise InvalidArgumentError(f"out={folder} is being claimed by another run; try again.")


def _age_seconds(path):
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return float("inf")


def _lock_owner(lock):
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):
        return None  # unreadable or half-written: treated as stale


def _is_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def versions():
    """Versions of what made a run, for config.json."""
    import sklearn

    return {
        "transfer": __version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "python": platform.python_version(),
    }


def run_config(data, out, options, dataset, replicas):
    """config.json of a run that starts now; `status` and timings come later."""
    task = {"task": dataset.task} if dataset.task == MULTI_LABEL else {}
    return {
        "data": str(data),
        "out": str(out),
        "working_dir": os.getcwd(),
        "options": options.as_dict(),
        **task,
        "dataset": {
            "name": dataset.name,
            "source": dataset.source,
            "fingerprint": dataset.fingerprint,
            "splits": {k: len(v) for k, v in dataset.splits.items()},
            "skipped_files": len(dataset.skipped),
        },
        "classes": dataset.class_names,
        "versions": versions(),
        "replicas": replicas,
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def read_config(run_dir):
    return json.loads(RunPaths(run_dir).config.read_text())


def reopen_data(run, data=None, min_classes=2):
    """The dataset of a run read again as its config.json says: the same source, CSV
    options (`TABLE_OPTIONS`), split fractions and TFDS data folder, so the same images
    in the same splits where the files have not changed (compare its fingerprint with
    the config's). `run` is a run directory or its config (a dict; {} for a model
    without a run). `data` reads other images in place of the run's, split with the
    run's fractions; the CSV options apply to the run's own table only. Raises
    DataError or InvalidArgumentError where the images cannot be read."""
    config = run if isinstance(run, dict) else read_config(run)
    base = recorded_base(config, None if isinstance(run, dict) else run)
    options = {
        name: recorded_path(value, base) if name in RECORDED_PATH_OPTIONS else value
        for name, value in config.get("options", {}).items()
    }
    own = data is None or is_run_data(config, data, base)
    data = recorded_path(config.get("data"), base) if data is None else data
    if data is None:
        raise InvalidArgumentError("The run's config.json names no data: pass data=.")
    table = {name: options[name] for name in TABLE_OPTIONS if name in options} if own else {}
    return load_dataset(
        data,
        val_split=options.get("val_split", DEFAULT_VAL_SPLIT),
        test_split=options.get("test_split", DEFAULT_TEST_SPLIT),
        tfds_data_dir=options.get("tfds_data_dir"),
        min_classes=min_classes,
        **table,
    )


def is_run_data(run, data, base=None):
    """Whether `data` names the images a run trained on: the same folder or CSV file
    (resolved), or the same TFDS dataset. `run` is a run directory or its config."""
    config = run if isinstance(run, dict) else read_config(run)
    if base is None and not isinstance(run, dict):
        base = recorded_base(config, run)
    return _same_path(data, recorded_path(config.get("data"), base))


def _same_path(data, other):
    if other is None or not isinstance(data, (str, os.PathLike)):
        return False  # a DataFrame
    if str(data).startswith(TFDS_PREFIX) or str(other).startswith(TFDS_PREFIX):
        return str(data) == str(other)
    return Path(data).expanduser().resolve() == Path(other).expanduser().resolve()


# Options of config.json that name files or folders: relative ones are relative to the
# run's working_dir, as its data is.
RECORDED_PATH_OPTIONS = ("images", "tfds_data_dir")


def recorded_base(record, folder=None):
    """The folder that relative paths in `record` (a run's config.json, or the
    metrics.json of an `evaluate` folder) were given from: its `working_dir` where that
    still exists; else, for a run, the folder its relative `out` was given from, found
    from where the run's `folder` is now. None where neither says (the current folder)."""
    working_dir = record.get("working_dir")
    if working_dir and Path(working_dir).is_dir():
        return Path(working_dir)
    out = record.get("out")
    if folder is None or not out or Path(out).is_absolute() or ".." in Path(out).parts:
        return None
    here, parts = Path(folder).resolve().parts, Path(out).parts
    if len(parts) >= len(here) or here[-len(parts) :] != parts:
        return None  # moved or renamed since
    return Path(*here[: -len(parts)])


def recorded_path(path, base):
    """A path stored in a run or `evaluate` folder, as this process opens it: a relative
    one is joined to `base` (`recorded_base`) unless that is the current folder; TFDS
    names and absolute paths are kept."""
    if (
        base is None
        or not isinstance(path, (str, os.PathLike))
        or os.path.isabs(path)
        or str(path).startswith(TFDS_PREFIX)
        or base.resolve() == Path.cwd().resolve()
    ):
        return path
    return str(base / path)


def path_key(path):
    """An image as two lists of images compare it: its resolved path (a TFDS image, its
    name)."""
    path = str(path)
    return path if path.startswith(TFDS_PREFIX) else os.path.realpath(path)


def run_of_model(path, metadata=None):
    """The run directory a model came from, or None: a run directory itself, the folder
    of a model file with a config.json beside it, or the run (or its model.keras) that an
    export names as its source (`metadata["source"]`)."""
    candidates = [Path(path)]
    if metadata and metadata.get("source"):
        candidates.append(Path(metadata["source"]))
    for candidate in candidates:
        folder = candidate if candidate.is_dir() else candidate.parent
        if (folder / CONFIG_FILE).is_file():
            return folder
    return None


def training_images(run_dir):
    """The `path_key`s of a run's training images, reopened from its config.json, to
    look for among other data than the run's own; None (with the reason logged) where
    they cannot be read again."""
    if str(read_config(run_dir).get("data", "")).startswith(TFDS_PREFIX):
        return set()  # a TFDS dataset's images are named by it: no other data holds them
    try:
        dataset = reopen_data(run_dir, min_classes=1)
    except Exception as exc:  # moved, deleted, or not readable here
        logger.warning(
            "The training images of %s cannot be read again (%s): whether any "
            "of them are among these images is not known.",
            run_dir,
            first_line(exc),
        )
        return None
    return {path_key(p) for p in dataset.splits["train"].paths}


def model_identity(path):
    """What tells a model file (or SavedModel folder) from any other: its size in bytes
    and SHA-256 (for a folder, of its files' names and contents)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest, size = hashlib.sha256(), 0
    for file in files:
        if file != path:
            digest.update(f"{file.relative_to(path).as_posix()}\n".encode("utf8"))
        size += file.stat().st_size
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def recorded_model(folder, metrics):
    """The model an `evaluate` folder's metrics.json names, as this process opens it: its
    path is relative to the folder (or absolute), and it must be the file evaluated (the
    size and SHA-256 of `model_file`). Folders from before that record name a path
    relative to where `evaluate` ran: read as they are, where the path resolves."""
    folder = Path(folder)
    stored = metrics.get("model")
    if not stored:
        raise InvalidArgumentError(f"{folder / METRICS_FILE} names no model.")
    recorded = metrics.get("model_file")
    if recorded is None:  # an older evaluation folder
        return Path(stored)
    path = (folder / stored).resolve()  # an absolute path stays itself
    if not path.exists():
        raise InvalidArgumentError(
            f"{path}, the model {folder} was evaluated with, does not exist any more. "
            "Evaluate the model again to report on it."
        )
    found = model_identity(path)
    if found != {k: recorded.get(k) for k in found}:
        raise InvalidArgumentError(
            f"{path} is not the model {folder} was evaluated with (its size or SHA-256 "
            f"differs from the model_file of {METRICS_FILE}). Evaluate it again to report "
            "on it."
        )
    return path


def check_resume(run_dir, options):
    """A run can resume when its config exists, is not complete, and has our options."""
    paths = RunPaths(run_dir)
    if not paths.config.exists():
        raise InvalidArgumentError(
            f"resume=True: {run_dir} holds no run to resume (no {CONFIG_FILE})."
        )
    config = read_config(run_dir)
    if config.get("status") == COMPLETE:
        raise InvalidArgumentError(f"resume=True: the run in {run_dir} is already complete.")
    stored = config.get("options", {})
    differ = sorted(
        k
        for k, v in options.as_dict().items()
        if k in stored and stored[k] != v and k not in RESULT_NEUTRAL
    )
    if differ:
        raise InvalidArgumentError(
            f"resume=True: {run_dir} was started with other options ({', '.join(differ)}); "
            "run the same command again with resume=True."
        )


def own_labels_path(model_file):
    """`<file>.labels.txt`: the class names of an exported model file, named after it
    so that two exports in one folder keep their own."""
    model_file = Path(model_file)
    return model_file.with_name(f"{model_file.name}.{LABELS_FILE}")


def labels_beside(model_file):
    """A model file's class names: its own labels file, else its folder's labels.txt."""
    own = own_labels_path(model_file)
    return own if own.exists() else Path(model_file).parent / LABELS_FILE


def check_resume_data(run_dir, dataset, data):
    """A run resumes on the images it started with: the same files, splits and classes."""
    stored = read_config(run_dir).get("dataset", {}).get("fingerprint")
    if stored and stored != dataset.fingerprint:
        raise InvalidArgumentError(
            f"resume=True: {run_dir} was started on other data (its images, splits or "
            f"classes differ from data={data}); resume it with the data it "
            "started with, or start a new run."
        )


def write_labels(path, class_names):
    return write_text(path, "\n".join(class_names) + "\n")


def read_labels(path):
    """Class names of a labels.txt, or None where there is none."""
    path = Path(path)
    if not path.exists():
        return None
    return [name for name in path.read_text(encoding="utf8").split("\n") if name]


def model_metadata(class_names, task, thresholds=None):
    """What a model file of ours carries inside it (MODEL_METADATA_MEMBER)."""
    found = {"class_names": list(class_names), "task": task}
    if thresholds is not None:
        found["thresholds"] = [float(t) for t in thresholds]
    return found


def read_model_metadata(model_file):
    """The metadata inside a .keras file of ours; {} for any other file."""
    try:
        with zipfile.ZipFile(model_file) as archive:
            found = json.loads(archive.read(MODEL_METADATA_MEMBER).decode("utf8"))
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return {}
    return found if isinstance(found, dict) else {}


def resave_model(run_dir, model):
    """Write `model` over the run's model.keras, keeping the metadata inside that file
    (class names, task, thresholds): for a model changed in place, as calibration
    changes its classifier."""
    path = RunPaths(run_dir).model
    return save_model(model, path, read_model_metadata(path) or None)


def class_names_of(model_or_run):
    """The class names of a loaded model, a run directory or a model file: those
    inside the model file first, else its labels file; None where there are none."""
    if isinstance(model_or_run, LoadedModel):
        return model_or_run.class_names
    path = Path(model_or_run)
    model_path = path / MODEL_FILE if path.is_dir() else path
    return read_model_metadata(model_path).get("class_names") or read_labels(
        labels_beside(model_path)
    )


@dataclass
class LoadedModel:
    model: object  # a keras.Model
    path: Path
    class_names: list  # None for a model without class names (inside it or labels.txt)
    image_size: tuple  # (height, width)
    thresholds: list = None  # per label, of a multi-label model

    @property
    def task(self):
        """SINGLE_LABEL or MULTI_LABEL (of a classifier)."""
        return task_of(self.model)

    @property
    def is_classifier(self):
        return is_classifier(self.model)


def _image_size(model, model_path, image_size):
    if image_size:
        return image_size_pair(image_size)
    height, width = model.input_shape[1:3]
    if height and width:
        return (height, width)
    config = model_path.parent / CONFIG_FILE
    if config.exists():
        size = json.loads(config.read_text()).get("options", {}).get("image_size")
        if size:
            return image_size_pair(size)
    raise InvalidArgumentError(
        f"{model_path} takes images of any size; pass image_size to choose one."
    )


def load_model(run_or_model, need_classifier=True, image_size=None):
    """Load a run directory (model.keras + labels.txt) or a `.keras` file, safely.

    With `need_classifier`, the model must end in a `predictions` layer and have a
    labels.txt beside it, one class name per output. Keras' safe mode is on: a model
    file never runs code.
    """
    path = Path(run_or_model)
    if not path.exists():
        raise InvalidArgumentError(
            f"{path} does not exist. Expected a run directory of `transfer finetune` "
            "or a .keras model file."
        )
    model_path = path / MODEL_FILE if path.is_dir() else path
    if not model_path.is_file():
        raise InvalidArgumentError(
            f"{path} holds no {MODEL_FILE}. Expected a run directory of `transfer finetune` "
            "or a .keras model file."
        )
    try:
        model = keras.models.load_model(model_path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, zip errors...
        raise InvalidArgumentError(
            f"{model_path} is not a Keras model that can be loaded safely ({first_line(exc)}). "
            "Expected a .keras file written by transfer or Keras."
        ) from exc
    labels_path = labels_beside(model_path)
    metadata = read_model_metadata(model_path)
    class_names = class_names_of(model_path)
    loaded = LoadedModel(
        model,
        model_path,
        class_names,
        _image_size(model, model_path, image_size),
        metadata.get("thresholds"),
    )
    if need_classifier:
        if not loaded.is_classifier:
            raise InvalidArgumentError(
                f"{model_path} is a feature extractor (output shape "
                f"{tuple(model.output.shape)}), not a classifier: this command needs a model "
                f"ending in a '{CLASSIFIER}' layer, such as a run's model.keras."
            )
        if class_names is None:
            raise InvalidArgumentError(
                f"{model_path} has no class names inside it and no {LABELS_FILE} beside it. "
                "Expected the class names, one per line in output order, in "
                + str(labels_path)
                + "."
            )
        outputs = model.output.shape[-1]
        if len(class_names) != outputs:
            source = model_path if metadata.get("class_names") else labels_path
            raise InvalidArgumentError(
                f"{source} names {len(class_names)} classes but the model has {outputs} outputs."
            )
    return loaded
