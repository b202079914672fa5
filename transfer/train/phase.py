"""The runner of one training phase: compile, callbacks (with backups for resuming),
fit; and what a phase leaves behind when it ends."""

import json
import logging
import math
from dataclasses import dataclass

from transfer.allocator import return_freed_memory
from transfer.data.pipeline import epoch_batches, image_dataset, one_hot_images
from transfer.lazy import keras
from transfer.progress import fit_verbosity
from transfer.runs import FINE_TUNE, HEAD
from transfer.train.budget import deadline_callback, futility_callback, planned_cosine
from transfer.train.callbacks import (
    backup_epoch,
    early_stopping,
    epoch_log,
    local_validation,
    restore_backup,
    resume_backup,
    stop_on_nan,
    write_backup,
)
from transfer.train.distribute import keras_multi_worker_fit
from transfer.train.optim import (
    WARMUP_FRACTION,
    compile_model,
    group_rate_multipliers,
    warmup_cosine,
)
from transfer.train.selection import KEEP_MARGIN

logger = logging.getLogger("transfer")


@dataclass
class Schedule:
    """How a phase trains: its epochs and learning rate; phase 2 adds augmentation,
    warmup and cosine decay, rates falling with depth (`layer_decay` below 1) and a
    moving average of the weights (`ema`)."""

    epochs: int
    learning_rate: float
    augment: object = None  # epoch_batches' augment: a batch -> the batch as trained on
    cosine: bool = False
    layer_decay: float = 1.0
    ema: bool = False
    # Epochs planned to a deadline (None: `epochs`): the cosine decays over them, and
    # the phase replans them as it measures its epochs (`budget.deadline_callback`).
    planned_epochs: int = None

    @property
    def compiles_twice(self):
        """Whether the second compile needs what the first decided (XLA, hence steps)."""
        return self.cosine or self.layer_decay != 1.0 or self.ema


class Phase:
    """One training phase of a run (`run` gives options, paths, strategy, class weights
    and the number of classes)."""

    def __init__(self, name, run):
        self.name, self.run = name, run
        self.options, self.paths, self.strategy = run.options, run.paths, run.strategy
        self.backup_dir = run.paths.backup(name)
        self.jit_compile = None  # XLA or not, decided in fit()

    def first_epoch(self):
        """The epoch a backup of an interrupted run resumes from (0 without one)."""
        return backup_epoch(self.backup_dir)

    def fit(
        self,
        model,
        train_base,
        train_count,
        val,
        schedule,
        validation=None,
        recalibrate=None,
        fitted=None,
    ):
        """Train `model` on `train_base` (`train_count` labelled examples) as `schedule`
        says. `validation`, a callback that puts the validation scores in each epoch's
        logs, replaces Keras' pass over `val`; `recalibrate` (`precise_batchnorm`) runs
        at each epoch's end before it. `fitted`, the model Keras trains, is `model` or a
        part of it that shares its layers (the groups after a frozen prefix, on the
        prefix's outputs). Returns the history rows of this phase."""
        replicas = self.strategy.num_replicas_in_sync
        num_classes, options = self.run.num_classes, self.options
        fitted = model if fitted is None else fitted
        with self.strategy.scope():
            compile_model(fitted, options, schedule.learning_rate, num_classes, replicas)
        self.jit_compile = xla = bool(fitted.jit_compile)
        first = self.first_epoch()
        epochs = schedule.epochs
        if first:
            logger.info("Resuming %s from epoch %d of %d.", self.name, first + 1, epochs)
        batch = options.batch_size
        # Several replicas need equal shares of every batch, and XLA compiles again for
        # every new batch shape: drop the last partial batch (a reshuffle each epoch
        # drops other images).
        drop_remainder = (replicas > 1 or xla) and train_count >= batch

        def batches(first_epoch):
            return epoch_batches(
                train_base,
                train_count,
                batch,
                options.seed,
                epochs,
                first_epoch,
                schedule.augment,
                drop_remainder=drop_remainder,
            )

        train = batches(first)
        steps = train_count // batch if drop_remainder else math.ceil(train_count / batch)
        rate = None
        if schedule.compiles_twice:
            multipliers = (
                group_rate_multipliers(model, schedule.layer_decay)
                if schedule.layer_decay != 1.0
                else None
            )
            with self.strategy.scope():
                rate = self._rate(schedule, steps)
                compile_model(
                    fitted, options, rate, num_classes, replicas, multipliers, schedule.ema
                )
        if first and not restore_backup(fitted, self.backup_dir):
            first = 0
            train = batches(first)
        log_path = self.paths.phase_history(self.name)
        rows = json.loads(log_path.read_text())[:first] if first and log_path.exists() else []
        # The epoch log is written before the backup, so a backup never runs ahead of it.
        # Phase 2 can fall back on phase 1's model, unless told to keep the last.
        falls_back = self.name == FINE_TUNE and options.keep == "best"
        callbacks = [stop_on_nan(self.name, fitted, falls_back)]
        if recalibrate is not None:
            callbacks.append(recalibrate)
        if replicas > 1:
            callbacks.append(local_validation(fitted, val))
            val = None
        elif validation is not None:
            callbacks.append(validation)
            val = None
        callbacks += [
            epoch_log(self.name, rows, log_path, self.run.epoch_listeners),
            resume_backup(fitted, self.backup_dir, options.backup_interval),
            # Scalars only: the graph and histograms cost seconds an epoch.
            keras.callbacks.TensorBoard(
                log_dir=str(self.paths.logs(self.name)), write_graph=False, histogram_freq=0
            ),
        ]
        callbacks += self._planning(schedule, rate)
        if options.early_stopping_patience:
            callbacks.append(
                early_stopping(
                    fitted, options.early_stopping_patience, self.paths.best_weights(self.name)
                )
            )
        # shuffle=False: epoch_batches has shuffled already (Keras warns otherwise).
        # In scope: the optimizer makes its variables on the first step.
        with self.strategy.scope(), keras_multi_worker_fit(fitted, self.strategy, train):
            try:
                fitted.fit(
                    train,
                    validation_data=val,
                    epochs=epochs,
                    initial_epoch=first,
                    steps_per_epoch=steps,
                    class_weight=self.run.class_weight,
                    callbacks=callbacks,
                    shuffle=False,
                    verbose=2 if self.name == HEAD else fit_verbosity(),
                )
            except KeyboardInterrupt:
                self._back_up_when_interrupted(fitted, len(rows))
                raise
        return rows

    @staticmethod
    def _rate(schedule, steps):
        """The learning rate or its schedule over the phase's (planned) epochs."""
        if not schedule.cosine:
            return schedule.learning_rate
        if schedule.planned_epochs is not None:
            return planned_cosine(
                schedule.learning_rate, steps, schedule.planned_epochs, WARMUP_FRACTION
            )
        return warmup_cosine(schedule.learning_rate, steps * schedule.epochs, steps)

    def _planning(self, schedule, rate):
        """Phase 2's stops: at the deadline of a time-limited run, as soon as it cannot
        beat phase 1 (with keep="best" and a phase 1 that trained), and the run's own
        (`run.phase_two_stops`: transfer tune's pruner)."""
        run, options = self.run, self.options
        found = []
        if self.name != FINE_TUNE:
            return found
        record = run.phase_two
        if run.plan is not None and schedule.planned_epochs is not None:
            found.append(
                deadline_callback(
                    run.plan,
                    run.reserve,
                    schedule.planned_epochs,
                    schedule.epochs,
                    rate if hasattr(rate, "set_epochs") else None,
                    record,
                )
            )
        if options.futility_stop and options.keep == "best" and run.head_score is not None:
            found.append(
                futility_callback(
                    run.head_score["accuracy"],
                    len(run.dataset.splits["val"]),
                    schedule.epochs,
                    KEEP_MARGIN,
                    record,
                )
            )
        return found + list(run.phase_two_stops)

    def _back_up_when_interrupted(self, fitted, epochs_done):
        """Ctrl-C: keep what the phase learned, whatever the backup interval. The
        weights are the interrupted epoch's, part-way: a resumed run repeats that epoch
        from its first batch on them."""
        if not epochs_done or backup_epoch(self.backup_dir) == epochs_done:
            return
        try:
            write_backup(fitted, self.backup_dir, epochs_done)
        except Exception as exc:  # the interruption is what the user must see
            logger.warning("Interrupted: no backup could be written (%s).", exc)
            return
        logger.info(
            "Interrupted: backed up %s after epoch %d; --resume goes on from there.",
            self.name,
            epochs_done,
        )

    def fit_on_images(self, model, schedule, validation=None, recalibrate=None):
        """`fit` on the run's training images, validated on its validation images."""
        options, dataset = self.options, self.run.dataset
        train, val = dataset.splits["train"], dataset.splits["val"]
        num_classes = dataset.num_classes
        val_ds = image_dataset(val, options.image_size, options.batch_size, num_classes)
        return self.fit(
            model,
            one_hot_images(train, options.image_size, num_classes),
            len(train),
            val_ds,
            schedule,
            validation=validation,
            recalibrate=recalibrate,
        )


def release_training_state(model):
    """After the last phase: let go of the optimizer (Adam's slots are twice the weights
    that trained), the traced steps that captured its variables, and the compile state
    naming it, so that the end of the run (refit, reports, saving) reuses that memory.
    The model predicts as before, uncompiled."""
    if not getattr(model, "compiled", False):
        return
    for attribute in ("optimizer", "train_function", "test_function", "predict_function"):
        # Deleted first: TensorFlow's tracking keeps a reference to what an attribute held
        # (for checkpoints) until the attribute is deleted, not when it is reassigned.
        if getattr(model, attribute, None) is not None:
            delattr(model, attribute)
        setattr(model, attribute, None)
    model.compiled = False
    model._compile_config = None  # Keras' own record of compile(), optimizer included
    return_freed_memory()
