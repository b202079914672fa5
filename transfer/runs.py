"""The run directory: the name of every file a run writes, its config.json, claiming
a folder for a run, the resume check, and loading a run (or a bare model file) back.

    config.json    every resolved option, versions, dataset fingerprint, classes, status
    labels.txt     class names, one per line, in output order
    model.keras    the classifier: raw RGB pixels in, probabilities out
    history.csv, training_curves.png, metrics.json, and per evaluated split
    classification_report.txt, confusion_matrix.png|.csv, predictions.csv
    ("test_" before each name for the test split)
    logs/          TensorBoard, one folder per phase
    checkpoints/   what --resume needs while the run is not complete
"""

import contextlib
import json
import platform
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from transfer.version import __version__
from transfer.errors import InvalidArgumentError, first_line
from transfer.io import make_writable_dir, write_text
from transfer.lazy import keras, tf
from transfer.models.architectures import image_size_pair
from transfer.models.heads import is_classifier
from transfer.models.names import CLASSIFIER
from transfer.train.options import RESULT_NEUTRAL

CONFIG_FILE = "config.json"
LABELS_FILE = "labels.txt"
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CURVES_FILE = "training_curves.png"
AUGMENTATION_PREVIEW_FILE = "augmentation_preview.png"
REPORT_FILES = ("classification_report.txt", "confusion_matrix.png", "confusion_matrix.csv",
                "predictions.csv")
TEST_PREFIX = "test_"  # the test split's reports: test_predictions.csv, ...
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"

# The files and folders a run writes; overwrite=True removes exactly these.
RUN_FILES = (CONFIG_FILE, LABELS_FILE, MODEL_FILE, HISTORY_FILE, METRICS_FILE, CURVES_FILE,
             AUGMENTATION_PREVIEW_FILE,
             *REPORT_FILES, *(TEST_PREFIX + name for name in REPORT_FILES))
RUN_FOLDERS = (LOGS_DIR, CHECKPOINTS_DIR)

RUNNING, COMPLETE = "running", "complete"  # config.json's status


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
    head_weights = property(lambda self: self.checkpoints / "after-head.weights.h5")
    head_history = property(lambda self: self.checkpoints / "after-head.history.json")

    def logs(self, phase):
        return self.root / LOGS_DIR / phase

    def backup(self, phase):
        """A phase's backup for --resume (transfer.train.callbacks.resume_backup)."""
        return self.checkpoints / f"backup-{phase}"

    def phase_history(self, phase):
        """A phase's history rows so far, written after every epoch."""
        return self.checkpoints / f"history-{phase}.json"


def default_run_dir(data):
    """runs/<timestamp>-<name of the data folder or TFDS dataset>."""
    name = str(data).rstrip("/").replace("tfds:", "tfds-").split("/")[-1] or "data"
    return Path("runs") / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


def prepare_run_dir(path, overwrite=False, keep=False):
    """Create the run directory; refuse a non-empty one unless `overwrite` (which
    removes the files of the earlier run) or `keep` (resuming it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InvalidArgumentError(f"out={path} is a file, not a folder.")
    if path.exists() and any(path.iterdir()) and not keep:
        if not overwrite:
            raise InvalidArgumentError(
                f"out={path} is not empty. Choose another folder or pass overwrite=True "
                "to replace the run in it."
            )
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (path / name).unlink()
        for name in RUN_FOLDERS:
            shutil.rmtree(path / name, ignore_errors=True)
    return make_writable_dir(path)


def versions():
    """Versions of what made a run, for config.json."""
    import sklearn

    return {"transfer": __version__, "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version()}


def run_config(data, out, options, dataset, replicas):
    """config.json of a run that starts now; `status` and timings come later."""
    return {"data": str(data), "out": str(out), "options": options.as_dict(),
            "dataset": {"name": dataset.name, "source": dataset.source,
                        "fingerprint": dataset.fingerprint,
                        "splits": {k: len(v) for k, v in dataset.splits.items()},
                        "skipped_files": len(dataset.skipped)},
            "classes": dataset.class_names, "versions": versions(),
            "replicas": replicas,
            "started": datetime.now().isoformat(timespec="seconds")}


def read_config(run_dir):
    return json.loads(RunPaths(run_dir).config.read_text())


def check_resume(run_dir, options):
    """A run can resume when its config exists, is not complete, and has our options."""
    paths = RunPaths(run_dir)
    if not paths.config.exists():
        raise InvalidArgumentError(
            f"resume=True: {run_dir} holds no run to resume (no {CONFIG_FILE}).")
    config = read_config(run_dir)
    if config.get("status") == COMPLETE:
        raise InvalidArgumentError(f"resume=True: the run in {run_dir} is already complete.")
    stored = config.get("options", {})
    differ = sorted(k for k, v in options.as_dict().items()
                    if k in stored and stored[k] != v and k not in RESULT_NEUTRAL)
    if differ:
        raise InvalidArgumentError(
            f"resume=True: {run_dir} was started with other options ({', '.join(differ)}); "
            "run the same command again with resume=True.")


def write_labels(path, class_names):
    return write_text(path, "\n".join(class_names) + "\n")


def read_labels(path):
    """Class names of a labels.txt, or None where there is none."""
    path = Path(path)
    if not path.exists():
        return None
    return [name for name in path.read_text(encoding="utf8").split("\n") if name]


@dataclass
class LoadedModel:
    model: object  # a keras.Model
    path: Path
    class_names: list  # None for a model without labels.txt
    image_size: tuple  # (height, width)

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
        f"{model_path} takes images of any size; pass image_size to choose one.")


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
            "or a .keras model file.")
    model_path = path / MODEL_FILE if path.is_dir() else path
    if not model_path.is_file():
        raise InvalidArgumentError(
            f"{path} holds no {MODEL_FILE}. Expected a run directory of `transfer finetune` "
            "or a .keras model file.")
    try:
        model = keras.models.load_model(model_path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, OSError, zip errors...
        raise InvalidArgumentError(
            f"{model_path} is not a Keras model that can be loaded safely ({first_line(exc)}). "
            "Expected a .keras file written by transfer or Keras.") from exc
    labels_path = model_path.parent / LABELS_FILE
    class_names = read_labels(labels_path)
    loaded = LoadedModel(model, model_path, class_names,
                         _image_size(model, model_path, image_size))
    if need_classifier:
        if not loaded.is_classifier:
            raise InvalidArgumentError(
                f"{model_path} is a feature extractor (output shape "
                f"{tuple(model.output.shape)}), not a classifier: this command needs a model "
                f"ending in a '{CLASSIFIER}' layer, such as a run's model.keras.")
        if class_names is None:
            raise InvalidArgumentError(
                f"{model_path} has no {LABELS_FILE} beside it. Expected the class names, one "
                "per line in output order, in " + str(labels_path) + ".")
        outputs = model.output.shape[-1]
        if len(class_names) != outputs:
            raise InvalidArgumentError(
                f"{labels_path} names {len(class_names)} classes but the model has {outputs} "
                "outputs.")
    return loaded
