"""A fine-tuning run: its options, folder, strategy, data, model and timings, and the
named steps that `transfer finetune` and `transfer lr-find` take over it: prepare,
train the head (phase 1), fine-tune (phase 2), keep the better phase, finish."""

import contextlib
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transfer.allocator import return_freed_memory
from transfer.data.augment import augmentation
from transfer.data.csv_labels import TABLE_OPTIONS, table_name
from transfer.data.dataset import Split
from transfer.data.pipeline import drop_unreadable, images_only
from transfer.data.sources import check_training_classes, load_dataset
from transfer.errors import DataError, InvalidArgumentError, first_line
from transfer.io import load_weight_values, save_model, save_weight_values, write_csv, write_json
from transfer.lazy import keras
from transfer.models.groups import freeze, groups, unfreeze
from transfer.models.heads import MULTI_LABEL, build_classifier, head_model
from transfer.report.metrics import compute_metrics, tune_thresholds, write_reports
from transfer.report.plots import plot_image_grid, plot_training_curves, report_step
from transfer.runs import (
    COMPLETE,
    FAILED,
    FINE_TUNE,
    HEAD,
    INTERRUPTED,
    RUNNING,
    TEST_PREFIX,
    check_resume,
    check_resume_data,
    claimed_run_dir,
    model_metadata,
    read_config,
    run_config,
    write_labels,
)
from transfer.runtime import INFERENCE_BATCH_SIZE, precision_policy, run_inference
from transfer.train.budget import TimePlan, describe_seconds
from transfer.train.distribute import SharedPasses, is_multi_worker, local_copy
from transfer.train.features import is_cached, run_extractor, split_cache_key, split_features
from transfer.train.fine_tune import fine_tune_on_images
from transfer.train.head import (
    head_is_probe,
    probe_c,
    refit_probe_on_all_labels,
    train_head_on_cached_features,
    train_head_on_images,
)
from transfer.train.optim import class_weights
from transfer.train.phase import Phase, release_training_state
from transfer.train.selection import choose_phase, validation_score

logger = logging.getLogger("transfer")

PREVIEW_IMAGES, PREVIEW_DRAWS = 8, 3  # augmentation_preview.png: images, augmented rows


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict
    class_names: list
    history: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    model: object = None


def load_data(data, options):
    """The dataset a run trains on, its unreadable files dropped, checked for training."""
    dataset = load_dataset(
        data,
        val_split=options.val_split,
        test_split=options.test_split,
        tfds_data_dir=options.tfds_data_dir,
        **{name: getattr(options, name) for name in TABLE_OPTIONS},
    )
    drop_unreadable(dataset, strict=options.strict, max_pixels=options.max_pixels)
    check_training_classes(dataset)
    if not len(dataset.splits["val"]):
        raise DataError(f"{data} gives no validation images. Raise val_split or add a val/ folder.")
    logger.info("Data: %s.", dataset.describe())
    return dataset


def build_model(dataset, options, strategy):
    """The classifier, built in the strategy's scope under the run's precision policy."""
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision_policy(options.mixed_precision))
    try:
        with strategy.scope():
            model = build_classifier(
                dataset.num_classes,
                depth=options.depth,
                version=options.version,
                arch=options.arch,
                weights=options.weights,
                image_size=options.image_size,
                weights_dir=options.weights_dir,
                pooling=options.pooling,
                dropout=options.dropout,
                hidden_units=options.hidden_units,
                standardize=options.standardize,
                multi_label=dataset.task == MULTI_LABEL,
            )
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    if options.fine_tunes and options.fine_tune_from not in groups(model):
        raise InvalidArgumentError(
            f"Unknown group: fine_tune_from={options.fine_tune_from!r}. Expected one of "
            f"{', '.join(g for g in groups(model) if g != 'head')} or none."
        )
    return model


def claim_run_dir(out, options, chief, overwrite, resume):
    """The folder this process writes to: `out`, checked, created and locked, on the
    chief; a temporary one on other workers, which compute alongside it and keep nothing."""
    if resume:
        check_resume(out, options)
    if not chief:
        return contextlib.nullcontext(Path(tempfile.mkdtemp(prefix="transfer-worker-")))
    return claimed_run_dir(out, overwrite=overwrite, keep=resume)


class Run:
    """One fine-tuning run in the folder of `paths` (a `RunPaths`)."""

    def __init__(
        self,
        options,
        paths,
        strategy,
        chief=True,
        resume=False,
        report_features=False,
        phase_one=None,
    ):
        self.options, self.paths, self.strategy = options, paths, strategy
        self.chief, self.resume = chief, resume
        # The RunPaths of a phase 1 done before, which this run starts from instead of
        # training its own (transfer tune's trials share one).
        self.phase_one = phase_one
        # Keras callbacks added to phase 2's stops (transfer tune's pruner), and the
        # frozen groups' outputs shared with other runs from the same backbone
        # (`fine_tune.SharedOutputs`; None: this run computes its own).
        self.phase_two_stops, self.prefix_outputs = [], None
        # Whether the end of the run computes the training images' features (report.html)
        self.report_features = report_features
        self.started = time.monotonic()
        self.plan = TimePlan(options.time_limit, self.started) if options.time_limit else None
        self.reserve = 0.0  # seconds kept for the end of a time-limited run
        self.phase_two = {}  # phase 2's plan and why it stopped, for metrics.json
        self.dataset = self.model = self.class_weight = self.config = None
        self.history, self.timings = [], {}
        self.head_score = None  # phase 1's validation score, where phase 2 must beat it
        self.fine_tuned_features = {}  # {"val": phase 2's validation features}
        self.kept = None  # which phase's model the run keeps, and why
        self.features = {}  # {split name: (paths, pooled features)} at the end
        # Under a multi-worker strategy, the workers share each pass of the frozen
        # backbone over the images (`transfer.train.features`).
        self.shared_passes = SharedPasses(strategy) if is_multi_worker(strategy) else None
        # Called with each history row as its epoch ends, in both phases (tracking).
        self.epoch_listeners = []

    @property
    def num_classes(self):
        return self.dataset.num_classes

    # ------------------------------------------------------------------ steps

    def prepare(self, data, dataset=None):
        """Read the data (refused on resume if it changed) and build the model.
        `dataset`, the data read before, is taken as it is (transfer tune's trials)."""
        self.dataset = load_data(data, self.options) if dataset is None else dataset
        if self.resume:
            check_resume_data(self.paths.root, self.dataset, data)
        if self.strategy.num_replicas_in_sync > 1:
            logger.info(
                "Training on %d replicas (%s); batch_size=%d is the global batch.",
                self.strategy.num_replicas_in_sync,
                type(self.strategy).__name__,
                self.options.batch_size,
            )
        self.model = build_model(self.dataset, self.options, self.strategy)
        return self

    def record_start(self, data, out):
        """config.json saying the run is running, and labels.txt."""
        self.config = run_config(
            table_name(data), out, self.options, self.dataset, self.strategy.num_replicas_in_sync
        )
        write_json(self.paths.config, {**self.config, "status": RUNNING})
        write_labels(self.paths.labels, self.dataset.class_names)

    def train_head(self):
        """Phase 1: the head, on a frozen backbone (skipped when a resumed run did it)."""
        options, paths = self.options, self.paths
        self.class_weight = class_weights(
            options, self.dataset.splits["train"].labels, self.num_classes
        )
        freeze(self.model, train_bn=False)
        phase_start = time.monotonic()
        if self.phase_one is not None or (self.resume and paths.head_weights.exists()):
            if self.phase_one is None:
                logger.info("Phase 1 finished before the interruption: loading its result.")
            else:
                logger.info("Phase 1: starting from the head in %s.", self.phase_one.root)
            self._load_phase_one()
            self.history = json.loads(self._phase_one_paths.head_history.read_text())
        elif options.head_epochs:
            if self.plan is not None:
                self._check_phase_one_fits()
            phase = Phase(HEAD, self)
            train = (
                train_head_on_cached_features if options.cache_features else train_head_on_images
            )
            self.history = train(self, phase)
            self.timings["head_xla"] = phase.jit_compile
        self.timings["head_seconds"] = round(time.monotonic() - phase_start, 2)
        return self.history

    def fine_tune(self):
        """Phase 2: the groups from fine_tune_from on, with a lower learning rate; first
        phase 1's score and weights are kept to return to."""
        options = self.options
        return_freed_memory()  # the probe's copies of the features, before phase 2
        if not options.fine_tunes:
            release_training_state(self.model)
            return []
        # Phase 2 has to beat a phase 1 that trained; with head_epochs=0 there is none.
        if self.history:
            self.head_score = self._score(self._val_features(options.cache_features))
        self.save_phase_one()
        self._preview_augmentation()
        if options.weights is None and not options.train_bn:
            logger.warning(
                "The backbone is randomly initialised but its BatchNormalization "
                "stays in inference mode; pass train_bn=True to let it learn "
                "statistics."
            )
        planned = None
        if self.plan is not None:
            planned, self.reserve = self.plan.phase_two_epochs(
                self._end_images(), len(self.dataset.splits["train"]), options.fine_tune_epochs
            )
            self.phase_two["fine_tune_epochs_planned"] = planned
            if not planned:
                self.phase_two["stopped"] = "no time for phase 2 within the time limit"
                logger.warning(
                    "No time for phase 2 within the time limit (%s left, %s kept "
                    "for the end of the run): keeping phase 1.",
                    describe_seconds(self.plan.left()),
                    describe_seconds(self.reserve),
                )
                release_training_state(self.model)
                return []
        unfreeze(self.model, options.fine_tune_from, train_bn=options.train_bn)
        logger.info(
            "Phase 2: fine-tuning from %s (learning rate %g%s)...",
            options.fine_tune_from,
            options.fine_tune_learning_rate,
            f", {planned} epochs planned to the time limit" if planned else "",
        )
        phase_start = time.monotonic()
        phase = Phase(FINE_TUNE, self)
        history = fine_tune_on_images(self, phase, planned_epochs=planned)
        self.timings["fine_tune_seconds"] = round(time.monotonic() - phase_start, 2)
        self.timings["fine_tune_xla"] = phase.jit_compile
        self.history += history
        release_training_state(self.model)
        # Phase 2's validation features: the guard scores them, and they give the
        # predictions if phase 2 is kept.
        if self.head_score is not None:
            self.fine_tuned_features = {"val": self._val_features()}
        return history

    def keep_the_better_phase(self):
        """Unless phase 2 gets clearly more validation images right (beyond noise, see
        `clearly_better`), phase 1's weights return."""
        fine_tuned = self.fine_tuned_features.get("val")
        fine_tune_score = self._score(fine_tuned) if fine_tuned is not None else None
        self.kept = choose_phase(self.options, self.head_score, fine_tune_score)
        if self.kept["reason"] == "phase 2 did not run" and self.phase_two.get("stopped"):
            self.kept["reason"] = self.phase_two["stopped"]
        if self.kept["phase"] == HEAD and "validation" in self.kept:
            self._load_phase_one()
        return self.kept

    def finish(self, out):
        """Predictions, the refit, the model and its history, the reports of each split,
        metrics.json and config.json saying the run is complete. Keeps in `features`
        the pooled features of the validation and test images (and the training images'
        with `report_features`) for report.html. Returns the `RunResult`."""
        report_features = self.report_features
        options, dataset, paths, kept = self.options, self.dataset, self.paths, self.kept
        # One set of pooled features per split gives the predictions (through the head)
        # and, with the training images', the report's sections: no second backbone pass.
        wanted = ["train"] * report_features + ["val", "test"]
        features = split_features(
            self,
            wanted,
            backbone_as_cached=options.cache_features and kept["phase"] == HEAD,
            known=self.fine_tuned_features if kept["phase"] == FINE_TUNE else None,
        )
        # Validation judges the model as chosen, before any refit; its reports come after
        # the model and its history are saved, so that a report that fails loses neither.
        predictions = {"val": self._head_outputs(features.get("val"))}
        # Multi-label: each label's threshold is tuned on validation, then kept in the
        # model; a refit would learn from those images, and leave none to tune them on.
        thresholds = (
            tune_thresholds(dataset.splits["val"].labels, predictions["val"])
            if dataset.task == MULTI_LABEL
            else None
        )
        if (
            kept["phase"] == HEAD
            and options.refit
            and head_is_probe(self.history)
            and thresholds is None
        ):
            kept["refit"] = refit_probe_on_all_labels(self, probe_c(self.history))
        self._write_training_results(model_metadata(dataset.class_names, dataset.task, thresholds))
        predictions["test"] = self._head_outputs(features.get("test"))
        metrics = {"classes": dataset.class_names}
        for split_name, probabilities in predictions.items():
            if probabilities is not None:
                metrics[split_name] = self._report_split(split_name, probabilities, thresholds)
        self.timings["total_seconds"] = round(time.monotonic() - self.started, 2)
        metrics.update(kept=kept, timings=self.timings, skipped_files=dataset.skipped)
        if self.shared_passes is not None:  # this worker's (the chief's) share
            metrics["features_computed"] = {
                "workers": self.shared_passes.workers,
                "images_this_worker": self.shared_passes.computed,
            }
        if self.phase_two.get("stopped"):
            kept["fine_tune_stopped"] = self.phase_two["stopped"]
        if self.plan is not None:
            metrics["time_plan"] = {
                **self.plan.record,
                **self.phase_two,
                "spent_seconds": self.timings["total_seconds"],
            }
        write_json(paths.metrics, metrics)
        write_json(
            paths.config,
            {
                **self.config,
                "status": COMPLETE,
                "kept": kept["phase"],
                "timings": self.timings,
                "resumed": bool(self.resume),
                "weights_used": "random initialisation"
                if options.weights is None
                else options.weights,
            },
        )
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
        if not self.chief:
            shutil.rmtree(paths.root, ignore_errors=True)
        self.features = {
            name: (dataset.splits[name].paths, values) for name, values in features.items()
        }
        return RunResult(
            out if not self.chief else paths.root,
            metrics,
            dataset.class_names,
            self.history,
            self.timings,
            self.model,
        )

    def record_stop(self, exc):
        """config.json says why a run stopped early: interrupted, or failed and the error."""
        with contextlib.suppress(Exception):  # the error that stopped the run matters more
            config = read_config(self.paths.root)
            if config.get("status") == COMPLETE:
                return
            if isinstance(exc, KeyboardInterrupt):
                stop = {"status": INTERRUPTED, "reason": "interrupted (Ctrl-C or SIGINT)"}
            else:
                stop = {"status": FAILED, "reason": f"{type(exc).__name__}: {first_line(exc)}"}
            write_json(self.paths.config, {**config, **stop})

    # ---------------------------------------------------------------- helpers

    def _end_images(self):
        """Images the end of the run passes the backbone over when phase 2 is kept: the
        test split's, and the training images' for the report."""
        splits = self.dataset.splits
        return len(splits.get("test", ())) + (len(splits["train"]) if self.report_features else 0)

    def _check_phase_one_fits(self):
        """A time-limited run measures its backbone first and is refused at once, with
        the estimate, when phase 1 cannot fit in the limit."""
        options, splits = self.options, self.dataset.splits
        extractor, name = run_extractor(self)
        self.plan.measure_backbone(extractor, splits["train"], options)
        to_embed = sum(
            len(splits[s])
            for s in ("train", "val")
            if not options.cache_features
            or not is_cached(split_cache_key(splits[s], options, name), options)
        )
        self.plan.check_phase_one(to_embed, self._end_images())

    @property
    def _phase_one_paths(self):
        return self.paths if self.phase_one is None else self.phase_one

    def _load_phase_one(self):
        load_weight_values(self.model, self._phase_one_paths.head_weights)

    def save_phase_one(self):
        """Phase 1's weights and history: to return to when phase 2 does not beat it,
        and for a resumed run (or transfer tune's trials) to skip phase 1. The weights
        are written last: they mark it done."""
        paths = self.paths
        if self.phase_one is None and not (self.resume and paths.head_weights.exists()):
            write_json(paths.head_history, self.history)
            save_weight_values(self.model, paths.head_weights)

    def _preview_augmentation(self):
        """augmentation_preview.png: training images as they are, then as phase 2 sees
        them."""
        options = self.options
        augment = augmentation(options.seed, options.augment, options.flip)
        if augment is None:
            return
        train = self.dataset.splits["train"]
        if train.tfds is None:  # images from across the (class-sorted) split
            picked = np.linspace(0, len(train) - 1, min(PREVIEW_IMAGES, len(train))).astype(int)
            train = Split([train.paths[i] for i in picked], train.labels[picked])
        images = next(iter(images_only(train, options.image_size, PREVIEW_IMAGES)))
        rows = [np.asarray(images)] + [
            np.asarray(augment(images, training=True)) for _ in range(PREVIEW_DRAWS)
        ]
        report_step(
            self.paths.augmentation_preview.name,
            plot_image_grid,
            np.concatenate(rows),
            self.paths.augmentation_preview,
            columns=len(images),
            title=f"first row: training images; below: augment='{options.augment}', "
            f"flip={options.flip}",
        )

    def _val_features(self, backbone_as_cached=False):
        """The validation images' pooled features: after phase 1, the ones it cached."""
        return split_features(self, ["val"], backbone_as_cached)["val"]

    def _score(self, val_features):
        """`validation_score` of the model, from the validation images' pooled features
        through the head: no pass of the whole model (whose traced function would stay
        on the model through phase 2)."""
        return validation_score(self._head_outputs(val_features), self.dataset.splits["val"].labels)

    def _head_outputs(self, features):
        """The model's outputs (probabilities) from a split's pooled features; None for
        an empty split."""
        if features is None:
            return None
        batches = (
            features[start : start + INFERENCE_BATCH_SIZE]
            for start in range(0, len(features), INFERENCE_BATCH_SIZE)
        )
        return run_inference(head_model(local_copy(self.model, self.strategy)), batches)

    def _report_split(self, split_name, probabilities, thresholds=None):
        """Report files of one split ("val", or "test" when there is one); its metrics."""
        dataset = self.dataset
        split = dataset.splits[split_name]
        write_reports(
            self.paths.root,
            split.labels,
            probabilities,
            dataset.class_names,
            split.paths,
            prefix=TEST_PREFIX if split_name == "test" else "",
            thresholds=thresholds,
        )
        return compute_metrics(split.labels, probabilities, dataset.class_names, thresholds)

    def _write_training_results(self, metadata):
        """model.keras (with `metadata` inside), history.csv and training_curves.png."""
        paths, history = self.paths, self.history
        save_model(self.model, paths.model, metadata)
        if history:
            write_history(paths.history, history)
            report_step(
                paths.curves.name,
                plot_training_curves,
                history,
                paths.curves,
                kept=self.kept["phase"],
            )


def write_history(path, history):
    """history.csv: one row per epoch of both phases, the columns any row has."""
    columns = sorted({k for row in history for k in row} - {"phase", "epoch"})
    write_csv(
        path,
        ["phase", "epoch", *columns],
        [[row["phase"], row["epoch"], *[row.get(c, "") for c in columns]] for row in history],
    )
