"""`transfer runs`: every run directory under a folder, one row each (status, when,
data, backbone, weights, image size, validation and test accuracy, the phase kept,
wall time), and a few runs side by side: the options that differ, and their metrics.

Runs of earlier versions list too: what their files do not record is left blank.
"""

import json
import os
from pathlib import Path

from transfer.errors import InvalidArgumentError, unknown_choice
from transfer.models.families import resolve_architecture
from transfer.runs import (
    CHECKPOINTS_DIR,
    COMPLETE,
    CONFIG_FILE,
    INTERRUPTED,
    LOGS_DIR,
    METRICS_FILE,
    RUNNING,
    in_use,
)

RUNS_DIR = "runs"  # where `finetune` puts a run without --out
FORMATS = ("table", "csv", "json")
# A row's columns: key -> header. The rows' values are as the run's files record them.
COLUMNS = {
    "run": "run",
    "status": "status",
    "started": "started",
    "data": "data",
    "backbone": "backbone",
    "weights": "weights",
    "image_size": "size",
    "val_accuracy": "val acc",
    "test_accuracy": "test acc",
    "kept": "kept",
    "seconds": "seconds",
}
BEST_FIRST = ("val_accuracy", "test_accuracy")  # sorted high to low; the rest low to high
UNKNOWN = "unknown"  # the status of a run whose config.json records none (and no metrics)
# compare: the metrics side by side, label -> (file, the keys to the value in it)
COMPARED_METRICS = {
    "status": (CONFIG_FILE, ("status",)),
    "val accuracy": (METRICS_FILE, ("val", "accuracy")),
    "val macro F1": (METRICS_FILE, ("val", "macro_f1")),
    "val log loss": (METRICS_FILE, ("val", "log_loss")),
    "test accuracy": (METRICS_FILE, ("test", "accuracy")),
    "test macro F1": (METRICS_FILE, ("test", "macro_f1")),
    "kept": (METRICS_FILE, ("kept", "phase")),
    "phase 1 val accuracy": (METRICS_FILE, ("kept", "validation", "head", "accuracy")),
    "phase 2 val accuracy": (METRICS_FILE, ("kept", "validation", "fine-tune", "accuracy")),
    "seconds": (METRICS_FILE, ("timings", "total_seconds")),
}


def list_runs(folder=RUNS_DIR, sort="started"):
    """One row (a dict of COLUMNS) per run directory under `folder`, at any depth,
    sorted by the column `sort`: accuracies best first, the rest in ascending order,
    blanks last."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidArgumentError(f"{folder} is not a folder of runs.")
    if sort not in COLUMNS:
        raise unknown_choice("sort column", sort, tuple(COLUMNS))
    rows = [_row(run, config, folder) for run, config in _run_dirs(folder)]
    known = [r for r in rows if r[sort] is not None]
    known.sort(key=lambda r: r[sort], reverse=sort in BEST_FIRST)
    return known + [r for r in rows if r[sort] is None]


def compare_runs(run_dirs):
    """The runs `run_dirs` side by side: {"runs": their paths, "options": {option:
    [value per run]} of the options that differ (data and its fingerprint among them),
    "metrics": {label: [value per run]} (COMPARED_METRICS, those any run records)}."""
    if len(run_dirs) < 2:
        raise InvalidArgumentError("Name two runs or more to compare.")
    files = []
    for run in run_dirs:
        if not (Path(run) / CONFIG_FILE).is_file():
            raise InvalidArgumentError(f"{run} is not a run directory (no {CONFIG_FILE}).")
        files.append({CONFIG_FILE: _read(Path(run) / CONFIG_FILE), METRICS_FILE: _metrics(run)})
    recorded = [_compared_options(f[CONFIG_FILE]) for f in files]
    names = list(dict.fromkeys(name for options in recorded for name in options))
    differ = {
        name: [options.get(name) for options in recorded]
        for name in names
        if len({json.dumps(options.get(name)) for options in recorded}) > 1
    }
    metrics = {
        label: [_dig(f[source], keys) for f in files]
        for label, (source, keys) in COMPARED_METRICS.items()
    }
    metrics = {label: values for label, values in metrics.items() if values != [None] * len(files)}
    return {"runs": [str(run) for run in run_dirs], "options": differ, "metrics": metrics}


def _run_dirs(folder):
    """(folder, its config.json) of each folder under `folder` (itself included) that
    holds a run's config.json; a run's own logs and checkpoints are not looked into."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in (LOGS_DIR, CHECKPOINTS_DIR))
        config = _read(Path(root) / CONFIG_FILE) if CONFIG_FILE in files else {}
        if isinstance(config.get("options"), dict):
            found.append((Path(root), config))
    return found


def _row(run, config, folder):
    metrics = _metrics(run)
    options = config.get("options", {})
    weights = options.get("weights", "imagenet")
    return {
        "run": str(run.relative_to(folder)) if run != folder else str(run),
        "status": _status(run, config, metrics),
        "started": config.get("started"),
        "data": config.get("data"),
        "backbone": _backbone(options),
        "weights": "none" if weights is None else weights,
        "image_size": options.get("image_size"),
        "val_accuracy": _dig(metrics, ("val", "accuracy")),
        "test_accuracy": _dig(metrics, ("test", "accuracy")),
        "kept": config.get("kept") or _dig(metrics, ("kept", "phase")),
        "seconds": _dig(metrics, ("timings", "total_seconds")),
    }


def _status(run, config, metrics):
    """complete, interrupted, failed or running as config.json says; a run recorded as
    running whose process is gone (killed) was interrupted."""
    status = config.get("status")
    if status == RUNNING and not in_use(run):
        return INTERRUPTED
    return status or (COMPLETE if metrics else UNKNOWN)


def _backbone(options):
    try:
        return resolve_architecture(
            options.get("arch"), options.get("depth", 50), options.get("version", "v1")
        ).name
    except ValueError:  # an architecture this version does not have
        return options.get("arch") or f"resnet{options.get('depth')} {options.get('version')}"


def _compared_options(config):
    """A run's options as compare shows them: its data and fingerprint first."""
    return {
        "data": config.get("data"),
        "data fingerprint": (config.get("dataset") or {}).get("fingerprint"),
        **config.get("options", {}),
    }


def _metrics(run):
    path = Path(run) / METRICS_FILE
    return _read(path) if path.is_file() else {}


def _read(path):
    """A JSON file of a run as a dict; {} where it cannot be read (a run being written,
    or a file of someone else's)."""
    try:
        found = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _dig(table, keys):
    for key in keys:
        if not isinstance(table, dict):
            return None
        table = table.get(key)
    return table
