"""`transfer finetune`: two-phase fine-tuning of a ResNet on a folder of images (or a
TFDS dataset), leaving a run directory (see `transfer.runs`)."""

import contextlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.allocator import return_freed_memory
from transfer.data.augment import augmentation
from transfer.data.csv_labels import TABLE_OPTIONS, table_name
from transfer.data.dataset import Split
from transfer.data.pipeline import drop_unreadable, images_only
from transfer.data.sources import check_training_classes, load_dataset
from transfer.errors import DataError, InvalidArgumentError, RunInterruptedError, first_line
from transfer.io import save_model, save_weights, write_csv, write_json
from transfer.lazy import keras
from transfer.models.groups import freeze, groups, unfreeze
from transfer.models.heads import MULTI_LABEL, build_classifier, head_model
from transfer.report.html import write_report_or_warn
from transfer.report.metrics import compute_metrics, tune_thresholds, write_reports
from transfer.report.plots import plot_image_grid, plot_training_curves
from transfer.runs import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    REPORT_HTML,
    RUNNING,
    TEST_PREFIX,
    RunPaths,
    check_resume,
    check_resume_data,
    claimed_run_dir,
    default_run_dir,
    model_metadata,
    read_config,
    run_config,
    write_labels,
)
from transfer.runtime import INFERENCE_BATCH_SIZE, precision_policy, run_inference
from transfer.train.distribute import is_chief, local_copy, make_strategy
from transfer.train.options import resolve_options
from transfer.train.phases import (
    FINE_TUNE,
    HEAD,
    Phase,
    class_weights,
    clearly_better,
    fine_tune_on_images,
    head_is_probe,
    probe_c,
    refit_probe_on_all_labels,
    release_training_state,
    split_features,
    train_head_on_cached_features,
    train_head_on_images,
    validation_score,
)

logger = logging.getLogger("transfer")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    class_names: list
    history: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    model: object = None


def finetune(data, out=None, overwrite=False, resume=False, options=None, calibrate=False,
             report=True, **overrides):
    """Fine-tune a ResNet on `data` (a folder, `tfds:NAME`, or a CSV file or pandas
    DataFrame of paths and labels) and write a run directory.

    Options are the fields of `FinetuneOptions`, given as an object or as keywords.
    `resume=True` continues an interrupted run in `out` from its last completed epoch.
    `calibrate=True` fits a temperature on validation and stores it in the model.
    `report=False` leaves out report.html (`transfer report` writes it later): it costs
    the training images' features for the leaked-duplicates check: a pass of the
    backbone over them when phase 2 is kept (phase 1's are cached).
    Returns a `RunResult` with the run directory, the metrics and the model.
    """
    options = resolve_options(options, **overrides)
    strategy = make_strategy(options.strategy)  # first: multi-worker needs it before any op
    out = Path(out or default_run_dir(table_name(data)))
    chief = is_chief(strategy)
    with _claim_run_dir(out, options, chief, overwrite, resume) as root:
        paths = RunPaths(root)
        started = time.monotonic()
        keras.utils.set_random_seed(options.seed)
        dataset, model, config = _start(data, out, paths, options, strategy, resume)
        try:
            # The report's image sections need the training images' features too.
            report_features = chief and (report or calibrate) and dataset.task != MULTI_LABEL
            result, features = _train_and_report(out, paths, model, dataset, config, options,
                                                 strategy, chief, resume, started,
                                                 report_features)
        except BaseException as exc:
            _record_stop(paths, exc)
            if isinstance(exc, KeyboardInterrupt):
                raise RunInterruptedError(
                    f"The run was interrupted. resume=True out={out} continues it.") from exc
            raise
        if chief and (report or calibrate) and dataset.task == MULTI_LABEL:
            logger.info("No %s: the report's sections are for single-label runs; "
                        "metrics.json and the per-label reports hold the results.", REPORT_HTML)
        elif chief and (report or calibrate):
            result.metrics = write_report_or_warn(paths.root, result.metrics, calibrate,
                                                  model=local_copy(model, strategy),
                                                  features=features)
        return result


def _start(data, out, paths, options, strategy, resume):
    """The data, the model, and config.json saying the run is running."""
    dataset = load_data(data, options)
    if resume:
        check_resume_data(paths.root, dataset, data)
    _log_replicas(strategy, options)
    model = build_model(dataset, options, strategy)
    config = run_config(table_name(data), out, options, dataset, strategy.num_replicas_in_sync)
    write_json(paths.config, {**config, "status": RUNNING})
    write_labels(paths.labels, dataset.class_names)
    return dataset, model, config


def _train_and_report(out, paths, model, dataset, config, options, strategy, chief, resume,
                      started, report_features=False):
    """Both phases, the model kept, its reports, and config.json saying it is complete.
    Returns the RunResult and {split name: (paths, pooled features)}, with the training
    split's when `report_features`."""
    weights = class_weights(options, dataset.splits["train"].labels, dataset.num_classes)
    phase_args = (options, paths, strategy, weights, dataset.num_classes)
    timings = {}
    history = train_head(model, dataset, options, phase_args, resume, timings)
    return_freed_memory()  # the probe's copies of the features, before phase 2
    # Phase 2 has to beat a phase 1 that trained; with head_epochs=0 there is none.
    head_score = _score(model, strategy, dataset, _val_features(
        model, strategy, dataset, options, options.cache_features)) \
        if options.fine_tunes and history else None
    _save_phase_one(model, options, paths, resume, history)
    _preview_augmentation(dataset, options, paths)
    history += _fine_tune(model, dataset, options, phase_args, timings)
    release_training_state(model)
    # Phase 2's validation features: the guard scores them, and they give the
    # predictions if phase 2 is kept.
    tuned = {"val": _val_features(model, strategy, dataset, options)} \
        if head_score is not None else {}
    kept = _keep_the_better_phase(model, strategy, dataset, options, paths, head_score,
                                  tuned.get("val"))

    # One set of pooled features per split gives the predictions (through the head) and,
    # with the training images', the report's sections: no second pass of the backbone.
    wanted = ["train"] * report_features + ["val", "test"]
    features = split_features(model, dataset, options, strategy, wanted,
                              backbone_as_cached=options.cache_features
                              and kept["phase"] == HEAD,
                              known=tuned if kept["phase"] == FINE_TUNE else None)
    # Validation judges the model as chosen, before any refit; its reports come after
    # the model and its history are saved, so that a report that fails loses neither.
    predictions = {"val": _head_outputs(model, strategy, features.get("val"))}
    # Multi-label: each label's threshold is tuned on validation, then kept in the model;
    # a refit would learn from those images, and leave the thresholds none to be tuned on.
    thresholds = tune_thresholds(dataset.splits["val"].labels, predictions["val"]) \
        if dataset.task == MULTI_LABEL else None
    if kept["phase"] == HEAD and options.refit and head_is_probe(history) \
            and thresholds is None:
        kept["refit"] = refit_probe_on_all_labels(model, dataset, options, strategy,
                                                  probe_c(history))
    _write_training_results(paths, model, history, kept,
                            model_metadata(dataset.class_names, dataset.task, thresholds))
    predictions["test"] = _head_outputs(model, strategy, features.get("test"))
    metrics = {"classes": dataset.class_names}
    for split_name, probabilities in predictions.items():
        if probabilities is not None:
            metrics[split_name] = _report_split(dataset, split_name, probabilities, paths.root,
                                                thresholds)
    timings["total_seconds"] = round(time.monotonic() - started, 2)
    metrics.update(kept=kept, timings=timings, skipped_files=dataset.skipped)
    write_json(paths.metrics, metrics)
    write_json(paths.config, {
        **config, "status": COMPLETE, "kept": kept["phase"], "timings": timings,
        "resumed": bool(resume),
        "weights_used": "random initialisation" if options.weights is None else options.weights})
    shutil.rmtree(paths.checkpoints, ignore_errors=True)
    if not chief:
        shutil.rmtree(paths.root, ignore_errors=True)
    result = RunResult(out if not chief else paths.root, metrics, dataset.class_names, history,
                       timings, model)
    return result, {name: (dataset.splits[name].paths, values)
                    for name, values in features.items()}


def _claim_run_dir(out, options, chief, overwrite, resume):
    """The folder this process writes to: `out`, checked, created and locked, on the
    chief; a temporary one on other workers, which compute alongside it and keep nothing."""
    if resume:
        check_resume(out, options)
    if not chief:
        return contextlib.nullcontext(Path(tempfile.mkdtemp(prefix="transfer-worker-")))
    return claimed_run_dir(out, overwrite=overwrite, keep=resume)


def _record_stop(paths, exc):
    """config.json says why a run stopped early: interrupted, or failed and the error."""
    with contextlib.suppress(Exception):  # the error that stopped the run matters more
        config = read_config(paths.root)
        if config.get("status") == COMPLETE:
            return
        if isinstance(exc, KeyboardInterrupt):
            stop = {"status": INTERRUPTED, "reason": "interrupted (Ctrl-C or SIGINT)"}
        else:
            stop = {"status": FAILED, "reason": f"{type(exc).__name__}: {first_line(exc)}"}
        write_json(paths.config, {**config, **stop})


def load_data(data, options):
    dataset = load_dataset(data, val_split=options.val_split, test_split=options.test_split,
                           tfds_data_dir=options.tfds_data_dir,
                           **{name: getattr(options, name) for name in TABLE_OPTIONS})
    drop_unreadable(dataset, strict=options.strict, max_pixels=options.max_pixels)
    check_training_classes(dataset)
    if not len(dataset.splits["val"]):
        raise DataError(f"{data} gives no validation images. Raise val_split or add a val/ "
                        "folder.")
    logger.info("Data: %s.", dataset.describe())
    return dataset


def _log_replicas(strategy, options):
    if strategy.num_replicas_in_sync > 1:
        logger.info("Training on %d replicas (%s); batch_size=%d is the global batch.",
                    strategy.num_replicas_in_sync, type(strategy).__name__, options.batch_size)


def build_model(dataset, options, strategy):
    """The classifier, built in the strategy's scope under the run's precision policy."""
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision_policy(options.mixed_precision))
    try:
        with strategy.scope():
            model = build_classifier(
                dataset.num_classes, depth=options.depth, version=options.version,
                arch=options.arch,
                weights=options.weights, image_size=options.image_size,
                weights_dir=options.weights_dir, pooling=options.pooling,
                dropout=options.dropout, hidden_units=options.hidden_units,
                standardize=options.standardize, multi_label=dataset.task == MULTI_LABEL)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if options.fine_tunes and options.fine_tune_from not in groups(model):
        raise InvalidArgumentError(
            f"Unknown group: fine_tune_from={options.fine_tune_from!r}. Expected one of "
            f"{', '.join(g for g in groups(model) if g != 'head')} or none.")
    return model


def train_head(model, dataset, options, phase_args, resume, timings):
    """Phase 1: the head, on a frozen backbone (skipped when a resumed run did it)."""
    paths = phase_args[1]
    freeze(model, train_bn=False)
    phase_start = time.monotonic()
    history = []
    if resume and paths.head_weights.exists():
        logger.info("Phase 1 finished before the interruption: loading its result.")
        _load_phase_one(model, paths)
        history = json.loads(paths.head_history.read_text())
    elif options.head_epochs:
        phase = Phase(HEAD, *phase_args)
        train = train_head_on_cached_features if options.cache_features else train_head_on_images
        history = train(model, dataset, options, phase)
        timings["head_xla"] = phase.jit_compile
    timings["head_seconds"] = round(time.monotonic() - phase_start, 2)
    return history


def _load_phase_one(model, paths):
    with warnings.catch_warnings():
        # The file holds no optimizer state, and the model's optimizer needs none from it.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(paths.head_weights)


def _save_phase_one(model, options, paths, resume, history):
    """Phase 1's weights and history: to return to when phase 2 does not beat it, and
    for a resumed run to skip phase 1. The weights are written last: they mark it done."""
    if options.fine_tunes and not (resume and paths.head_weights.exists()):
        write_json(paths.head_history, history)
        save_weights(model, paths.head_weights)


def _fine_tune(model, dataset, options, phase_args, timings):
    """Phase 2: the groups from fine_tune_from on, with a lower learning rate."""
    if not options.fine_tunes:
        return []
    if options.weights is None and not options.train_bn:
        logger.warning("The backbone is randomly initialised but its BatchNormalization stays "
                       "in inference mode; pass train_bn=True to let it learn statistics.")
    unfreeze(model, options.fine_tune_from, train_bn=options.train_bn)
    logger.info("Phase 2: fine-tuning from %s (learning rate %g)...",
                options.fine_tune_from, options.fine_tune_learning_rate)
    phase_start = time.monotonic()
    phase = Phase(FINE_TUNE, *phase_args)
    history = fine_tune_on_images(model, dataset, options, phase)
    timings["fine_tune_seconds"] = round(time.monotonic() - phase_start, 2)
    timings["fine_tune_xla"] = phase.jit_compile
    return history


PREVIEW_IMAGES, PREVIEW_DRAWS = 8, 3


def _preview_augmentation(dataset, options, paths):
    """augmentation_preview.png: training images as they are, then as phase 2 sees them."""
    augment = augmentation(options.seed, options.augment, options.flip)
    if augment is None or not options.fine_tunes:
        return
    train = dataset.splits["train"]
    if train.tfds is None:  # images from across the (class-sorted) split
        picked = np.linspace(0, len(train) - 1, min(PREVIEW_IMAGES, len(train))).astype(int)
        train = Split([train.paths[i] for i in picked], train.labels[picked])
    images = next(iter(images_only(train, options.image_size, PREVIEW_IMAGES)))
    rows = [np.asarray(images)] + [np.asarray(augment(images, training=True))
                                   for _ in range(PREVIEW_DRAWS)]
    plot_image_grid(np.concatenate(rows), paths.augmentation_preview, columns=len(images),
                    title=f"first row: training images; below: augment='{options.augment}', "
                          f"flip={options.flip}")


def _val_features(model, strategy, dataset, options, backbone_as_cached=False):
    """The validation images' pooled features: after phase 1, the ones it cached."""
    return split_features(model, dataset, options, strategy, ["val"], backbone_as_cached)["val"]


def _score(model, strategy, dataset, val_features):
    """`validation_score` of the model, from the validation images' pooled features
    through the head: no pass of the whole model (whose traced function, kept on the
    model, took 35 MB of phase 2's peak on the 240-image sample)."""
    return validation_score(_head_outputs(model, strategy, val_features),
                            dataset.splits["val"].labels)


def _keep_the_better_phase(model, strategy, dataset, options, paths, head_score,
                           fine_tune_features):
    """Fine-tuning never hands back a worse model than its own phase 1: unless phase 2
    gets clearly more validation images right (beyond noise, see `clearly_better`),
    phase 1's weights return. `fine_tune_features` are phase 2's validation features.
    Returns what was kept and why, for metrics.json and the summary."""
    if not options.fine_tunes:
        return {"phase": HEAD, "reason": "no fine-tuning phase"}
    if head_score is None:
        return {"phase": FINE_TUNE, "reason": "phase 1 did not train (head_epochs=0)"}
    fine_tune_score = _score(model, strategy, dataset, fine_tune_features)
    better = clearly_better(fine_tune_score.pop("correct"), head_score.pop("correct"))
    scores = {HEAD: head_score, FINE_TUNE: fine_tune_score}
    if options.keep == "last":
        return {"phase": FINE_TUNE, "reason": "keep='last'", "validation": scores}
    if not better:
        _load_phase_one(model, paths)
        logger.warning(
            "Fine-tuning did not clearly beat phase 1 on validation (accuracy %.4f against "
            "%.4f): keeping phase 1's model (keep=last keeps phase 2's).",
            fine_tune_score["accuracy"], head_score["accuracy"])
        return {"phase": HEAD, "reason": "phase 2 did not clearly beat phase 1 on validation",
                "validation": scores}
    return {"phase": FINE_TUNE, "reason": "phase 2 clearly beat phase 1 on validation",
            "validation": scores}


def _head_outputs(model, strategy, features):
    """The model's outputs (probabilities) from a split's pooled features; None for an
    empty split."""
    if features is None:
        return None
    batches = (features[start:start + INFERENCE_BATCH_SIZE]
               for start in range(0, len(features), INFERENCE_BATCH_SIZE))
    return run_inference(head_model(local_copy(model, strategy)), batches)


def _report_split(dataset, split_name, probabilities, out_dir, thresholds=None):
    """Report files of one split ("val", or "test" when there is one); its metrics."""
    split = dataset.splits[split_name]
    write_reports(out_dir, split.labels, probabilities, dataset.class_names, split.paths,
                  prefix=TEST_PREFIX if split_name == "test" else "", thresholds=thresholds)
    return compute_metrics(split.labels, probabilities, dataset.class_names, thresholds)


def _write_training_results(paths, model, history, kept, metadata):
    """model.keras (with `metadata` inside), history.csv and training_curves.png."""
    save_model(model, paths.model, metadata)
    if history:
        columns = sorted({k for row in history for k in row} - {"phase", "epoch"})
        write_csv(paths.history, ["phase", "epoch", *columns],
                  [[row["phase"], row["epoch"], *[row.get(c, "") for c in columns]]
                   for row in history])
        plot_training_curves(history, paths.curves, kept=kept["phase"])
