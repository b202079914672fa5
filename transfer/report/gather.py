"""What report.html shows, gathered from the files a run (or an `evaluate` folder) left
and from its model: the summary, the confusion counts, the images with the highest
loss and their Grad-CAM, calibration, leaked duplicates. The result is a plain dict
for `transfer.report.html` to render; nothing here writes a file."""

import base64
import csv
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from transfer.data import duplicates
from transfer.data.dataset import Split, printable_path
from transfer.data.pipeline import find_unreadable, images_only
from transfer.errors import InvalidArgumentError
from transfer.export.common import Runner
from transfer.export.keras_format import KerasRunner
from transfer.models.families import resolve_architecture
from transfer.models.heads import head_model, pooled_features
from transfer.models.names import CLASSIFIER
from transfer.report import calibration, gradcam
from transfer.report.metrics import phase_label, scores_line, split_title
from transfer.report.plots import plot_coverage, plot_reliability
from transfer.runs import (
    CONFIG_FILE,
    METRICS_FILE,
    TEST_PREFIX,
    LoadedModel,
    RunPaths,
    load_model,
    read_config,
    read_labels,
    recorded_base,
    recorded_model,
    recorded_path,
    reopen_data,
    report_file,
)
from transfer.runtime import INFERENCE_BATCH_SIZE, run_inference

logger = logging.getLogger("transfer")

TOP_LOSSES = 12  # highest-loss validation images in the gallery
CAM_CORRECT_PER_CLASS = 2  # correct images per class with their Grad-CAM
CONFUSED_PAIRS = 10
THUMBNAIL = 96  # pixels, longer side
MAX_DUPLICATES_SHOWN = 50  # all are counted in metrics.json; this many are drawn
# Tracing a model for the compiled path costs more than running a few thousand small
# images through it eagerly, and the report makes a new model (the embedding one) each
# time, which would be traced again: so splits up to EAGER_PIXELS run eagerly. An
# eager call of a Keras functional model keeps every layer's output alive until it
# returns, so eager batches, Grad-CAM's included, hold at most EAGER_BATCH_PIXELS.
EAGER_PIXELS = 4096 * 32 * 32  # 4,096 images at 32 px, 1,024 at 64
EAGER_BATCH_PIXELS = 32 * 32 * 32  # 32 images at 32 px, 8 at 64, 1 at 224


def eager_batch(size):
    """Images per eager call at `size` (height, width)."""
    return max(1, EAGER_BATCH_PIXELS // (size[0] * size[1]))


@dataclass
class Evaluated:
    """One split's images as the report sees them."""

    name: str
    paths: list
    labels: np.ndarray
    readable: bool  # False when the images cannot be read any more
    features: np.ndarray = None  # pooled backbone features
    probabilities: np.ndarray = None

    @property
    def losses(self):
        p = self.probabilities[np.arange(len(self.labels)), self.labels]
        return -np.log(np.clip(p, 1e-12, None))


@dataclass
class GatheredReport:
    """A folder's report before it is written: the page's data, its metrics.json
    (updated with the calibration error and the leaked duplicates), and with
    calibration the in-memory model that now holds the fitted temperature, for the
    command that asked for it to save (`transfer.runs.resave_model`)."""

    folder: Path
    page: dict
    metrics: dict
    calibrated: object = None  # a keras.Model


def gather_report(
    folder, calibrate=False, batch_size=INFERENCE_BATCH_SIZE, model=None, features=None
):
    """The report of `folder`; with `calibrate`, a temperature is first fitted on the
    validation images and applied to the model in memory (not saved). `model` (a
    keras.Model, a LoadedModel or an export's runner from `transfer.export.open_model`)
    saves loading the folder's model again; `features` ({"train"/"val"/"test": (paths,
    the model's pooled features)}, as the run computed them) saves a pass of its
    backbone over those images."""
    folder = Path(folder)
    metrics_path = folder / METRICS_FILE
    if not metrics_path.is_file():
        raise InvalidArgumentError(
            f"{folder} holds no {METRICS_FILE}. Expected a run directory of `transfer "
            "finetune` or the --out folder of `transfer evaluate`."
        )
    metrics = json.loads(metrics_path.read_text())
    is_run = (folder / CONFIG_FILE).is_file()
    config = read_config(folder) if is_run else {}
    if calibrate and not is_run:
        raise InvalidArgumentError(
            f"calibrate=True: {folder} is not a run directory; temperature scaling is "
            "fitted on a run's validation images and stored in its model."
        )
    loaded = _loaded_model(folder, metrics, is_run, model)
    if loaded.thresholds is not None:  # only multi-label models carry thresholds
        raise InvalidArgumentError(
            f"{folder} holds a multi-label model: report.html is for single-label runs; its "
            "metrics.json, classification_report.txt and confusion_matrix.csv hold the "
            "per-label results."
        )
    base = recorded_base(config if is_run else metrics, folder)
    splits = [
        _evaluated(folder, prefix, name, loaded.class_names, base)
        for prefix, name in (
            ("", "val" if is_run else metrics.get("split", "data")),
            (TEST_PREFIX, "test"),
        )
    ]
    splits = [s for s in splits if s is not None]
    page = {
        "title": _title(folder, config, metrics),
        "generated": datetime.now().isoformat(timespec="seconds"),
        "summary": summary_rows(config, metrics, loaded.class_names),
        "curves": _inline_file(RunPaths(folder).curves),
        "confusion_png": _inline_file(folder / report_file("confusion_matrix.png")),
        "per_class": [
            {"name": name, **values}
            for name, values in (metrics["val"] if is_run else metrics)["per_class"].items()
        ],
        "skipped": metrics.get("skipped_files", []),
        **_confusion(folder, loaded.class_names),
    }
    gathered = GatheredReport(folder, page, metrics)
    if loaded.model is None:
        page["no_images"] = (
            f"{loaded.path} is an export, not a Keras model; evaluate the "
            "run it came from for Grad-CAM, calibration and duplicates"
        )
    elif splits[0].readable:
        page.update(
            _image_sections(
                loaded, folder, config, metrics, splits, calibrate, batch_size, features or {}
            )
        )
        gathered.calibrated = loaded.model if calibrate else None
    else:
        page["no_images"] = (
            f"the images of {folder / report_file('predictions.csv')} cannot be read any more"
        )
    return gathered


def _loaded_model(folder, metrics, is_run, model):
    if model is None and not is_run and metrics.get("format", "keras") != "keras":
        # an export's evaluation: the page comes from its saved predictions; nothing runs
        per_class = metrics.get("per_class", {})
        thresholds = [v["threshold"] for v in per_class.values() if "threshold" in v]
        return LoadedModel(None, Path(metrics["model"]), list(per_class), None, thresholds or None)
    if model is None:
        return load_model(folder if is_run else recorded_model(folder, metrics))
    if isinstance(model, LoadedModel):  # evaluate's, already loaded
        return model
    if isinstance(model, KerasRunner):  # evaluate's reader of a Keras model
        return model.loaded
    if isinstance(model, Runner):  # evaluate's reader of an export: no Keras model to run
        return LoadedModel(None, model.path, model.class_names, model.image_size)
    paths = RunPaths(folder)  # the run's model, still in memory
    return LoadedModel(model, paths.model, read_labels(paths.labels), tuple(model.input_shape[1:3]))


def _image_sections(loaded, folder, config, metrics, splits, calibrate, batch, known):
    """The sections that need the images and the model: calibration, Grad-CAM,
    leaked duplicates. Updates `metrics` with what they find."""
    model, size = loaded.model, loaded.image_size
    train, no_train = _training_split(folder, config, metrics.get("skipped_files", []))
    splits = [s for s in splits if s.readable]
    main = splits[0]
    train_features = _embed_and_predict(model, train, splits, size, batch, known)
    if calibrate:
        metrics["calibration"] = _calibrate(model, main, splits, metrics)
    page = {"calibration": _calibration(main, metrics.get("calibration"))}
    metrics.setdefault("calibration", {})["ece"] = page["calibration"]["ece"]
    cam = gradcam.cam_model(model)
    page["top_losses"], page["cam_correct"] = _gradcam_sections(main, loaded.class_names, cam, size)
    page["cam_group"] = cam.name.split("_", 1)[1]
    page["duplicates"] = _duplicates(train, train_features, no_train, splits, size, batch, metrics)
    return page


# ------------------------------------------------------------------------ inputs


def _read_predictions(path, class_names):
    with open(path, newline="", encoding="utf8") as f:
        rows = list(csv.DictReader(f))
    index = {name: i for i, name in enumerate(class_names)}
    return [r["path"] for r in rows], np.array([index[r["true_label"]] for r in rows], np.int64)


def _evaluated(folder, prefix, name, class_names, base=None):
    """A split's images, from its predictions.csv (its relative paths are relative to
    `base`, see `transfer.runs.recorded_base`)."""
    path = folder / report_file("predictions.csv", prefix)
    if not path.is_file():
        return None
    paths, labels = _read_predictions(path, class_names)
    paths = [recorded_path(p, base) for p in paths]
    return Evaluated(
        name, paths, labels, bool(paths) and not find_unreadable(paths, progress=False)
    )


def _features(model, split, size, batch):
    """`model`'s outputs for a split: called as it is (eagerly) up to EAGER_PIXELS,
    through the compiled inference path beyond."""
    if len(split) * size[0] * size[1] > EAGER_PIXELS:
        return run_inference(model, images_only(split, size, batch))
    return np.concatenate(
        [np.asarray(model(x, training=False)) for x in images_only(split, size, eager_batch(size))]
    )


def _embed_and_predict(model, train, splits, size, batch, known):
    """Features of the training images (when known) and of the splits: those in `known`
    ({name: (paths, features)}) where the paths are the same, the rest from one pass of
    the backbone. Each split gets its features and, through the head, its
    probabilities. Returns the training images' features."""
    parts = {"train": train} if train is not None else {}
    parts.update((split.name, split) for split in splits if split.readable)
    found = {}
    for name, part in parts.items():
        paths, features = known.get(name, ((), None))
        if features is not None and [str(p) for p in paths] == [str(p) for p in part.paths]:
            found[name] = features
    missing = [name for name in parts if name not in found]
    paths = [p for name in missing for p in parts[name].paths]
    computed = (
        _features(pooled_features(model), Split(paths, np.zeros(len(paths), np.int64)), size, batch)
        if paths
        else None
    )
    start = 0
    for name in missing:
        found[name] = computed[start : start + len(parts[name].paths)]
        start += len(parts[name].paths)
    head = head_model(model)
    for split in (s for s in splits if s.readable):
        split.features = found[split.name]
        split.probabilities = np.asarray(head(split.features), np.float64)
    return found.get("train")


def _training_split(folder, config, skipped_files):
    """The run's training images, found again from config.json (None: cannot be)."""
    if not config:
        return None, "this folder is not a run directory (no training images to compare)"
    try:
        dataset = reopen_data(folder)
    except Exception as exc:  # moved, deleted, or not readable here
        return None, f"the training data cannot be read again ({exc})"
    if dataset.source == "tfds":
        return None, "TFDS datasets are not compared"
    if dataset.fingerprint != config.get("dataset", {}).get("fingerprint"):
        return None, f"the images in {config['data']} changed since the run"
    train = dataset.splits["train"]
    base = recorded_base(config, folder)  # unreadable: the run left them out
    skipped = {printable_path(recorded_path(s["path"], base)) for s in skipped_files}
    keep = [i for i, p in enumerate(train.paths) if printable_path(p) not in skipped]
    return Split([train.paths[i] for i in keep], train.labels[keep]), None


def pixels_of(paths, size, batch):
    """The images of `paths` as the pipeline decodes them, at `size`, in order."""
    if not len(paths):
        return np.zeros((0, *size, 3), np.float32)
    split = Split(list(paths), np.zeros(len(paths), np.int64))
    return np.concatenate([np.asarray(b) for b in images_only(split, size, batch)])


def thumbnail(pixels):
    """An image's pixels as an inline PNG (data: URI), THUMBNAIL pixels on its longer side."""
    return data_uri(gradcam.png_bytes(np.clip(pixels, 0, 255).astype(np.uint8), THUMBNAIL))


def data_uri(png):
    """PNG bytes as a data: URI, for a page that makes no requests."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _inline_file(path):
    return data_uri(Path(path).read_bytes()) if Path(path).is_file() else None


# ---------------------------------------------------------------------- sections


def _title(folder, config, metrics):
    data = config.get("data") or metrics.get("data", "")
    return f"transfer report: {Path(folder).name} ({data})"


def summary_rows(config, metrics, class_names):
    """The summary's (label, value) rows, from a run's config.json (or {} for an
    `evaluate` folder) and metrics.json."""
    options = config.get("options", {})
    rows = [("data", config.get("data") or metrics.get("data"))]
    if config:
        rows += [
            (
                "splits",
                ", ".join(
                    f"{k} {v}" for k, v in config.get("dataset", {}).get("splits", {}).items()
                ),
            ),
            ("model", backbone_name(options)),
            ("weights", config.get("weights_used", options.get("weights"))),
            ("image size", options.get("image_size")),
            ("phases", _phases(options)),
            ("model kept", _kept(metrics.get("kept", {}))),
            ("wall time", f"{metrics.get('timings', {}).get('total_seconds', 0):.0f} s"),
        ]
    else:
        rows += [("model", metrics.get("model")), ("split", metrics.get("split"))]
        if "training_images_scored" in metrics:
            rows.append(("training images scored", training_images_line(metrics)))
    rows.append(("classes", f"{len(class_names)}: {', '.join(class_names)}"))
    for split in ("val", "test") if config else ("",):
        values = metrics.get(split, {}) if split else metrics
        if not values:
            continue
        label = {"val": "validation", "test": "test", "": "evaluation"}[split]
        rows.append((split_title(label, values), scores_line(values)))
    return rows


def training_images_line(metrics):
    """How many of an evaluation's images the model's run trained on, in words."""
    scored, left_out = (
        metrics.get("training_images_scored"),
        metrics.get("training_images_left_out"),
    )
    if scored is None:
        return "not known: the model names no run whose images can be read"
    line = f"{scored} of {metrics.get('images')}" + (
        ": the run trained on them, so these scores are not held-out" if scored else ""
    )
    return line + (f" ({left_out} left out)" if left_out else "")


def backbone_name(options):
    """The display name of a run's backbone (ResNet50V2, EfficientNetB0), from the
    options of its config.json; as recorded where the architecture is not known here."""
    try:
        return resolve_architecture(
            options.get("arch"), options.get("depth"), options.get("version")
        ).display_name
    except InvalidArgumentError:  # a name from another version of transfer, or none
        depth, version = options.get("depth"), options.get("version")
        return options.get("arch") or (f"ResNet{depth} {version}" if depth else "unknown")


def _phases(options):
    head = f"head {options.get('head_epochs')} epochs"
    if options.get("fine_tune_from") in (None, "none") or not options.get("fine_tune_epochs"):
        return head
    return (
        f"{head}; fine-tune from {options['fine_tune_from']}, {options['fine_tune_epochs']} epochs"
    )


def _kept(kept):
    if not kept:
        return ""
    return f"{phase_label(kept.get('phase'))}: {kept.get('reason', '')}"


def _confusion(folder, class_names):
    """The counts (from confusion_matrix.csv) and the most confused pairs."""
    path = folder / report_file("confusion_matrix.csv")
    if not path.is_file():
        return {"matrix": None, "confused": []}
    with open(path, newline="", encoding="utf8") as f:
        rows = list(csv.reader(f))[1:]
    matrix = np.array([[int(v) for v in row[1:]] for row in rows])
    off = [
        (matrix[i, j], class_names[i], class_names[j])
        for i in range(len(matrix))
        for j in range(len(matrix))
        if i != j and matrix[i, j]
    ]
    off.sort(key=lambda row: -row[0])
    totals = matrix.sum(axis=1)
    return {
        "matrix": [
            (class_names[i], [(int(v), v / totals[i] if totals[i] else 0.0) for v in row])
            for i, row in enumerate(matrix)
        ],
        "confused": [
            {"true": t, "predicted": p, "count": int(c), "share": c / totals[class_names.index(t)]}
            for c, t, p in off[:CONFUSED_PAIRS]
        ],
    }


def _with_cam(split, indices, classes, cam, size):
    """Thumbnails and Grad-CAM overlays (for `classes`) of some images of a split."""
    batch = eager_batch(size)
    pixels = pixels_of([split.paths[i] for i in indices], size, batch)
    if not len(indices):
        return []
    maps = np.concatenate(
        [
            gradcam.heatmaps(cam, pixels[s : s + batch], classes[s : s + batch])
            for s in range(0, len(indices), batch)
        ]
    )
    return [
        (thumbnail(image), data_uri(gradcam.png_bytes(gradcam.overlay(image, m), THUMBNAIL)))
        for image, m in zip(pixels, maps)
    ]


def _gradcam_sections(split, class_names, cam, size):
    """The highest-loss images, and the most confident correct ones of each class
    (CAM_CORRECT_PER_CLASS), each with its Grad-CAM for the predicted class."""
    losses = split.losses
    predicted = split.probabilities.argmax(axis=1)
    confidence = split.probabilities.max(axis=1)
    top = list(np.argsort(-losses, kind="stable")[:TOP_LOSSES])
    correct = []
    for c in range(len(class_names)):
        right = np.flatnonzero((split.labels == c) & (predicted == c))
        correct += list(right[np.argsort(-confidence[right])][:CAM_CORRECT_PER_CLASS])
    images = _with_cam(split, top + correct, predicted[top + correct], cam, size)
    top_losses = [
        {
            "path": split.paths[i],
            "true": class_names[split.labels[i]],
            "predicted": class_names[predicted[i]],
            "confidence": confidence[i],
            "loss": losses[i],
            "thumbnail": thumb,
            "cam": overlay,
        }
        for i, (thumb, overlay) in zip(top, images)
    ]
    examples = [
        {
            "path": split.paths[i],
            "label": class_names[predicted[i]],
            "confidence": confidence[i],
            "thumbnail": thumb,
            "cam": overlay,
        }
        for i, (thumb, overlay) in zip(correct, images[len(top) :])
    ]
    return top_losses, examples


def _calibrate(model, main, splits, metrics):
    """Temperature scaling fitted on validation and applied to `model` in memory (the
    command that asked for it saves it); the splits' probabilities become the scaled
    ones. Returns what metrics.json records of it."""
    if model.get_layer(CLASSIFIER).activation.__name__ != "softmax":
        raise InvalidArgumentError("calibrate=True needs a softmax classifier.")
    previous = metrics.get("calibration", {})
    before = previous.get(
        "ece_before", calibration.expected_calibration_error(main.probabilities, main.labels)
    )
    temperature = calibration.fit_temperature(main.probabilities, main.labels)
    calibration.apply_temperature(model, temperature)
    for split in splits:
        split.probabilities = calibration.scaled(split.probabilities, temperature)
    after = calibration.expected_calibration_error(main.probabilities, main.labels)
    logger.info(
        "Temperature scaling: T=%.3f, validation ECE %.4f -> %.4f.", temperature, before, after
    )
    return {
        "temperature": temperature * previous.get("temperature", 1.0),
        "fitted_on": main.name,
        "ece_before": before,
        "ece_after": after,
    }


def _calibration(main, stored):
    bins = calibration.reliability_bins(main.probabilities, main.labels)
    ece = calibration.expected_calibration_error(main.probabilities, main.labels)
    thresholds, coverage, accuracy = calibration.coverage_curve(main.probabilities, main.labels)
    stored = stored or {}
    before = stored.get("ece_before") if "temperature" in stored else None
    return {
        "ece": ece,
        "temperature": stored.get("temperature"),
        "ece_before": before,
        "reliability": data_uri(plot_reliability(bins, ece, before)),
        "coverage": data_uri(plot_coverage(coverage, accuracy, thresholds)),
        "trade_off": [
            (
                p,
                coverage[np.flatnonzero(thresholds >= p)[-1]],
                accuracy[np.flatnonzero(thresholds >= p)[-1]],
            )
            for p in (0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
            if (thresholds >= p).any()
        ],
    }


def _duplicates(train, train_features, reason, splits, size, batch, metrics):
    if train is None:
        metrics["leaked_duplicates"] = {"checked": False, "reason": reason}
        return {"reason": reason}
    found, counts = [], {}
    for split in splits:
        pairs = duplicates.find_duplicates(train_features, split.features)
        counts[split.name] = len(pairs)
        found += [(split, q, t, s) for q, t, s in pairs]
    found.sort(key=lambda row: -row[3])
    shown = found[:MAX_DUPLICATES_SHOWN]
    query = pixels_of([split.paths[q] for split, q, _, _ in shown], size, batch)
    originals = pixels_of([train.paths[t] for _, _, t, _ in shown], size, batch)
    metrics["leaked_duplicates"] = {
        "checked": True,
        "threshold": duplicates.DUPLICATE_THRESHOLD,
        **counts,
        "pairs": [
            {
                "split": split.name,
                "path": split.paths[q],
                "train_path": train.paths[t],
                "similarity": round(s, 4),
            }
            for split, q, t, s in found
        ],
    }
    return {
        "counts": counts,
        "threshold": duplicates.DUPLICATE_THRESHOLD,
        "pairs": [
            {
                "split": split.name,
                "path": split.paths[q],
                "train_path": train.paths[t],
                "similarity": s,
                "image": thumbnail(a),
                "original": thumbnail(b),
            }
            for (split, q, t, s), a, b in zip(shown, query, originals)
        ],
    }
