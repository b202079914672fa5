"""`transfer evaluate`: a trained classifier, or any export of one (SavedModel,
TFLite, ONNX), on labelled images, with the same reports as a run; and its agreement
with another model (by default, the run an export came from). Images the model's run
trained on are held out by default, and counted wherever they are scored."""

import functools
import logging
import os
from pathlib import Path

import numpy as np

from transfer.data.dataset import Split, task_of_labels
from transfer.data.pipeline import drop_unreadable
from transfer.data.sources import evaluation_split, load_dataset
from transfer.errors import DataError, InvalidArgumentError, check_whole_number, unknown_choice
from transfer.export import open_model
from transfer.export.compare import agreement
from transfer.io import write_json
from transfer.models.heads import MULTI_LABEL
from transfer.report.html import write_report_or_warn
from transfer.report.metrics import compute_metrics, write_reports
from transfer.runs import (
    METRICS_FILE,
    is_run_data,
    model_identity,
    path_key,
    prepare_run_dir,
    reopen_data,
    run_of_model,
    training_images,
)
from transfer.runtime import INFERENCE_BATCH_SIZE

logger = logging.getLogger("transfer")

# Which images of the data are scored (`split`): a split of the run's own data, or of
# the data as given, or all of its images.
SPLITS = ("val", "test", "all")


def evaluate(
    run_or_model,
    data,
    out,
    batch_size=INFERENCE_BATCH_SIZE,
    image_size=None,
    tfds_data_dir=None,
    overwrite=False,
    strict=False,
    tta=False,
    compare=None,
    split=None,
    trust_model=False,
    **table_options,
):
    """Evaluate a classifier on labelled images; write the same reports as finetune.

    `run_or_model`: a run directory, a .keras file, a SavedModel folder, a .tflite
    or an .onnx file. Class folders are matched to the model's labels by name.
    Images of classes the model never saw are counted and reported in metrics.json,
    not silently dropped. `tta` averages each image's probabilities with its
    horizontal mirror's. `compare` (a run or .keras file) adds the top-1 agreement
    and the accuracy difference with that model; an export of transfer is compared
    with the run it came from unless `compare=False`. `table_options` read labels
    from a CSV file or DataFrame (see `load_dataset`); a multi-label model is judged
    with the thresholds stored in it.

    `split` chooses the images scored. When `data` is the data of the model's run (a
    run directory, a model file in one, or an export that names its run), it is split
    as the run split it: "val", "test", or "all" of its images; by default its test
    split where it has one, else its validation split: never its training images
    unless asked for with "all". Other data is scored as given: by default its test/ (or
    val/) folder or split column where it has one, else all its images, leaving out any
    that are training images of the model's run; "val" and "test" take its split of that
    name, "all" every image. Training images scored are counted (a warning, and
    `training_images_scored` in metrics.json; null where the model names no run whose
    images can be read).

    A SavedModel runs its graph, which can do what a program can: one that transfer did
    not write is refused unless `trust_model` (`transfer.export.open_model`).
    """
    if split is not None and split not in SPLITS:
        raise unknown_choice("split", split, SPLITS)
    batch_size = check_whole_number("batch_size", batch_size)
    loaded = open_model(run_or_model, image_size=image_size, trust_model=trust_model)
    reference = _reference(loaded, compare)
    out = prepare_run_dir(out, overwrite=overwrite)
    run = run_of_model(loaded.path, loaded.metadata)
    own = run is not None and is_run_data(run, data)
    if own:  # split as the run split it
        dataset = reopen_data(run, min_classes=1)
    else:
        dataset = load_dataset(
            data, val_split=0.0, tfds_data_dir=tfds_data_dir, min_classes=1, **table_options
        )
    drop_unreadable(dataset, strict=strict)
    split_name, split, trained, left_out = _scored_images(dataset, own, split, run, data)
    match = _match_labels if loaded.task == MULTI_LABEL else _match_classes
    known, labels, unknown = match(dataset, split, loaded.class_names, data)
    trained_scored = None if trained is None else int((trained & known).sum())
    if trained_scored:
        logger.warning(
            "%d of the %d images scored are training images of %s: the scores are not "
            "held-out ones. %s",
            trained_scored,
            int(known.sum()),
            run,
            "split='val' or 'test' scores the run's held-out images."
            if own
            else "Leave split out to score only the others.",
        )
    paths = [p for p, k in zip(split.paths, known) if k]
    # TFDS images come with their labels: predict all, keep the known.
    subset = split if split.tfds is not None else Split(paths, labels)
    logger.info(
        "Evaluating %s on %d images (%s split of %s)...",
        loaded.path,
        len(subset),
        split_name,
        dataset.name,
    )
    probabilities = loaded.predict_split(
        subset, batch_size, tta=tta, verbose=1, description="Evaluated"
    )
    if split.tfds is not None:
        probabilities = probabilities[known]
    metrics = compute_metrics(labels, probabilities, loaded.class_names, loaded.thresholds)
    metrics.update(
        {
            # paths stored here are relative to this folder (or absolute); the model is
            # recorded so that `transfer report` rebuilds the page from it and no other
            "model": os.path.relpath(Path(loaded.path).resolve(), Path(out).resolve()),
            "model_file": model_identity(loaded.path),
            "format": loaded.format,
            "data": str(data),
            "working_dir": os.getcwd(),
            "split": split_name,
            "tta": bool(tta),
            "training_images_scored": trained_scored,
            **({"training_images_left_out": left_out} if left_out else {}),
            "unknown_classes": unknown,
            "unknown_class_images": int(sum(unknown.values())),
            "skipped_files": dataset.skipped,
        }
    )
    if reference is not None:
        expected = reference.predict_split(
            subset, batch_size, tta=tta, verbose=1, description="Compared"
        )
        if split.tfds is not None:
            expected = expected[known]
        metrics.update(
            compared_with=str(reference.path), agreement=agreement(labels, expected, probabilities)
        )
    write_json(Path(out) / METRICS_FILE, metrics)  # first: a failing report must not lose it
    write_reports(
        out, labels, probabilities, loaded.class_names, paths, thresholds=loaded.thresholds
    )
    if loaded.task == MULTI_LABEL:  # the report's sections are single-label ones
        return metrics
    return write_report_or_warn(out, metrics, batch_size=batch_size, model=loaded)[0]


def _scored_images(dataset, own, split, run, data):
    """(split name, the Split scored, which of its images are training images of the
    model's run (booleans; None where not known), how many were left out as such)."""
    splits = dataset.splits
    if own:
        name = split or ("test" if len(splits.get("test", ())) else "val")
    elif split is None:
        name, chosen = evaluation_split(dataset)
    else:
        name = split
    if name == "all":
        chosen = _all_images(dataset)
    elif own or split is not None:
        chosen = splits.get(name)
        if chosen is None or not len(chosen):
            there = ", ".join(f"{k} {len(v)}" for k, v in splits.items() if len(v))
            raise InvalidArgumentError(
                f"split={name!r}: {data} has no {name} images "
                f"({'as the run split it' if own else 'as given'}: {there}). Expected one "
                f"of {', '.join(s for s in SPLITS if s == 'all' or len(splits.get(s, ())))}."
            )
    if own:  # the run's own splits: only "all" holds its training images, first
        trained = np.zeros(len(chosen), dtype=bool)
        if name == "all":
            trained[: len(splits["train"])] = True
        return name, chosen, trained, 0
    keys = training_images(run) if run is not None else None
    if keys is None:
        return name, chosen, None, 0
    trained = np.array([path_key(p) in keys for p in chosen.paths], dtype=bool)
    if split is not None or not trained.any():
        return name, chosen, trained, 0
    logger.warning(
        "%d of the %d images of %s are training images of %s: they are left out "
        "(split='all' scores them).",
        int(trained.sum()),
        len(chosen),
        data,
        run,
    )
    keep = np.flatnonzero(~trained)
    if not len(keep):
        raise DataError(
            f"Every image of {data} is a training image of {run}: there is "
            "nothing held out to score. Pass split='all' to score them anyway."
        )
    chosen = chosen.subset(keep)
    return name, chosen, np.zeros(len(keep), dtype=bool), int(trained.sum())


def _all_images(dataset):
    """Every image of a dataset as one Split: train, then val, then test."""
    parts = [
        dataset.splits[name]
        for name in ("train", "val", "test")
        if len(dataset.splits.get(name, ()))
    ]
    tfds = None
    if parts[0].tfds is not None:
        tfds = functools.reduce(lambda a, b: a.concatenate(b), [s.tfds for s in parts])
    return Split(
        [p for s in parts for p in s.paths],
        np.concatenate([np.asarray(s.labels) for s in parts]),
        tfds=tfds,
    )


def _reference(loaded, compare):
    """The model to compare with: `compare`, else the run an export names as its source."""
    if compare is False:
        return None
    if compare is None:
        source = loaded.metadata.get("source")
        if not source or not Path(source).exists():
            return None
        compare = source
    reference = open_model(compare, image_size=loaded.image_size)
    if reference.class_names != loaded.class_names:
        raise InvalidArgumentError(
            f"compare={compare} has other classes than {loaded.path}; expected the run the "
            "model was exported from."
        )
    return reference


def _match_classes(dataset, split, class_names, data):
    """(which images are of a class the model knows, their labels in the model's
    order, {unknown class: image count})."""
    if task_of_labels(split.labels) == MULTI_LABEL:
        raise DataError(
            f"{data} is multi-label; the model gives one class per image. Evaluate "
            "a multi-label model on it."
        )
    index = {name: i for i, name in enumerate(class_names)}
    data_names = np.array(dataset.class_names)[split.labels] if len(split) else np.array([])
    known = np.array([name in index for name in data_names], dtype=bool)
    unknown = {}
    for name in data_names[~known]:
        unknown[str(name)] = unknown.get(str(name), 0) + 1
    for name, count in sorted(unknown.items()):
        logger.warning(
            "%d images of class %r, which the model does not know, are counted "
            "apart and left out of the metrics.",
            count,
            name,
        )
    if not known.any():
        raise DataError(
            f"None of the classes in {data} ({', '.join(dataset.class_names)}) is one the model "
            f"knows ({', '.join(class_names)})."
        )
    labels = np.array([index[name] for name in data_names[known]], dtype=np.int64)
    return known, labels, unknown


def _match_labels(dataset, split, class_names, data):
    """`_match_classes` for a multi-label model: every image is kept, its labels as rows
    of 0/1 in the model's order (class folders give one label each); labels the model
    does not know are counted, by image, and left out."""
    labels = np.asarray(split.labels)
    if labels.ndim == 1:
        labels = np.eye(dataset.num_classes, dtype=np.float32)[labels]
    index = {name: i for i, name in enumerate(class_names)}
    matched = np.zeros((len(labels), len(class_names)), dtype=np.float32)
    unknown = {}
    for column, name in enumerate(dataset.class_names):
        if name in index:
            matched[:, index[name]] = labels[:, column]
        elif labels[:, column].any():
            unknown[name] = int(labels[:, column].sum())
            logger.warning(
                "%d images labelled %r, a label the model does not know: that "
                "label is left out of the metrics.",
                unknown[name],
                name,
            )
    if not set(dataset.class_names) & set(index):
        raise DataError(
            f"None of the labels in {data} ({', '.join(dataset.class_names)}) is one the model "
            f"knows ({', '.join(class_names)})."
        )
    return np.ones(len(labels), dtype=bool), matched, unknown
