"""A run planned to a deadline (`time_limit`), and a phase 2 that stops when it cannot win.

With a time limit the run measures what its stages cost as it goes and plans the rest:
phase 1 first (refused at once, with the estimate, when even its backbone pass cannot
fit); then as many phase-2 epochs as fit before the end-of-run work, which is reserved,
with the cosine schedule stretched or shortened so that it still ends at the last
epoch. Without a limit, phase 2 still stops as soon as it cannot plausibly beat
phase 1 in the epochs it has left.
"""

import logging
import math
import re
import time
from datetime import datetime, timedelta

import numpy as np

from transfer.data.pipeline import images_only
from transfer.errors import InvalidArgumentError, RunFailedError
from transfer.lazy import keras, tf
from transfer.runtime import run_inference

logger = logging.getLogger("transfer")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# What the end of a run costs beyond its predictions' backbone pass: saving the model,
# the reports and plots (a floor, in seconds, and a share of the planned work).
END_FIXED_SECONDS, END_SHARE = 10.0, 0.05
# A training step runs the backbone forwards and backwards: about this many times an
# inference pass, before phase 2's first epoch measures the real cost.
TRAIN_TO_INFERENCE = 3.0
# The futility stop: phase 2 goes on while its validation accuracy, growing at
# FUTILITY_OPTIMISM times the best gain per epoch it has shown (at least one image an
# epoch), could still clear phase 1's by the keep guard's margin in the epochs left;
# it judges from MIN_EPOCHS_JUDGED epochs on.
FUTILITY_OPTIMISM = 2.0
MIN_EPOCHS_JUDGED = 2


def parse_duration(value):
    """Seconds from a duration: a number of seconds, or "90s", "10m", "2h", "1h30m"."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd]?)", text)
        # A bare number alone is seconds; after a unit ("1h30") it is ambiguous.
        if (
            not text
            or "".join(n + u for n, u in parts) != text
            or (len(parts) > 1 and any(not u for _, u in parts))
        ):
            raise InvalidArgumentError(
                f"time_limit={value!r} is not a duration. Expected seconds or a number with "
                "a unit: 90s, 10m, 2h, 1h30m."
            )
        seconds = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgumentError(f"time_limit={value!r} must be a duration above 0.")
    return seconds


def describe_seconds(seconds):
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class TimePlan:
    """The budget of one run: `limit` seconds from `started` (time.monotonic())."""

    def __init__(self, limit, started):
        self.limit, self.started = float(limit), started
        self.seconds_per_image = None  # the backbone's inference pass, measured
        self.record = {"time_limit_seconds": self.limit}

    def elapsed(self):
        return time.monotonic() - self.started

    def left(self):
        return self.limit - self.elapsed()

    def eta(self, seconds_from_now):
        return (datetime.now() + timedelta(seconds=seconds_from_now)).strftime("%H:%M:%S")

    # ------------------------------------------------------------- estimates

    def measure_backbone(self, extractor, split, options):
        """Seconds per image of the backbone's inference pass, from one timed batch
        after a first (tracing) one."""
        sample = split.sample(2 * options.batch_size, options.seed)
        batches = images_only(sample, options.image_size, options.batch_size)
        run_inference(extractor, batches.take(1))  # traces, and warms the pipeline
        timed = images_only(sample, options.image_size, options.batch_size)
        start = time.monotonic()
        run_inference(extractor, timed)
        self.seconds_per_image = (time.monotonic() - start) / max(1, len(sample))
        return self.seconds_per_image

    def end_of_run_seconds(self, images):
        """The reserve for the end of a run whose predictions (and report) pass the
        backbone over `images` images."""
        work = images * (self.seconds_per_image or 0.0)
        return END_FIXED_SECONDS + work + END_SHARE * self.limit

    def check_phase_one(self, images_to_embed, end_images):
        """Refuse at once when phase 1's backbone pass and the end of the run cannot
        fit in the limit; record the estimate."""
        needed = images_to_embed * self.seconds_per_image
        reserve = self.end_of_run_seconds(end_images)
        self.record.update(
            phase_one_estimate_seconds=round(needed, 1),
            end_of_run_reserve_seconds=round(reserve, 1),
        )
        if self.elapsed() + needed + reserve > self.limit:
            raise RunFailedError(
                f"time_limit={describe_seconds(self.limit)} is too short: phase 1 needs about "
                f"{describe_seconds(needed)} (the backbone over {images_to_embed} images at "
                f"{1 / self.seconds_per_image:.0f} images/s) and the end of the run about "
                f"{describe_seconds(reserve)}, after {describe_seconds(self.elapsed())} spent. "
                f"Raise time_limit to {describe_seconds(self.elapsed() + needed + reserve)} or "
                "more, or lower image_size."
            )
        logger.info(
            "Time limit %s: phase 1 needs about %s; %s kept for the end of the run.",
            describe_seconds(self.limit),
            describe_seconds(needed),
            describe_seconds(reserve),
        )

    def phase_two_epochs(self, end_images, train_images, most):
        """Phase 2's epochs that fit before the reserved end, from an estimate of an
        epoch's cost (the first epoch replans from its own); at most `most`."""
        reserve = self.end_of_run_seconds(end_images)
        epoch = train_images * (self.seconds_per_image or 0.0) * TRAIN_TO_INFERENCE
        available = self.left() - reserve
        fits = int(available // epoch) if epoch > 0 else most
        planned = max(0, min(most, fits))
        self.record.update(
            end_of_run_reserve_seconds=round(reserve, 1),
            fine_tune_epoch_estimate_seconds=round(epoch, 1),
            fine_tune_epochs_planned=planned,
        )
        return planned, reserve


def planned_cosine(learning_rate, steps_per_epoch, epochs, warmup_fraction):
    """Warmup then cosine decay to 0, as `optim.warmup_cosine`, over a number of epochs
    that can change while training (`set_epochs`: variables the traced step reads), so
    that a replanned phase still ends its decay at its last epoch."""
    return _planned_cosine_class()(learning_rate, steps_per_epoch, epochs, warmup_fraction)


_CLASSES = {}


def _planned_cosine_class():
    # Defined on first use: subclassing a Keras class imports TensorFlow.
    if "planned_cosine" in _CLASSES:
        return _CLASSES["planned_cosine"]

    class PlannedCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self, learning_rate, steps_per_epoch, epochs, warmup_fraction):
            self.learning_rate = float(learning_rate)
            self.steps_per_epoch = max(1, int(steps_per_epoch))
            self.warmup_fraction = warmup_fraction
            self.epochs = epochs
            self.total_steps = tf.Variable(self._total(epochs), trainable=False, dtype="float32")
            self.warmup = tf.Variable(self._warmup(epochs), trainable=False, dtype="float32")

        def _total(self, epochs):
            return float(max(1, self.steps_per_epoch * epochs))

        def _warmup(self, epochs):
            total = self.steps_per_epoch * epochs
            return float(max(1, min(self.steps_per_epoch, int(self.warmup_fraction * total))))

        def set_epochs(self, epochs):
            self.epochs = epochs
            self.total_steps.assign(self._total(epochs))
            self.warmup.assign(self._warmup(epochs))

        def __call__(self, step):
            step = tf.cast(step, "float32")
            warm = self.learning_rate * step / self.warmup
            progress = tf.clip_by_value(
                (step - self.warmup) / tf.maximum(1.0, self.total_steps - self.warmup), 0.0, 1.0
            )
            cosine = 0.5 * self.learning_rate * (1.0 + tf.cos(np.pi * progress))
            return tf.where(step < self.warmup, warm, cosine)

        def get_config(self):
            return {
                "learning_rate": self.learning_rate,
                "steps_per_epoch": self.steps_per_epoch,
                "epochs": self.epochs,
                "warmup_fraction": self.warmup_fraction,
            }

    _CLASSES["planned_cosine"] = PlannedCosine
    return PlannedCosine


def deadline_callback(plan, reserve, planned_epochs, most, schedule=None, record=None):
    """Phase 2 to a deadline: after each epoch, replan the epochs that fit from the
    epochs' measured cost (and stretch the schedule to them), log the time left and an
    ETA; stop at an epoch's end when the next would not fit, or mid-epoch at the
    reserve."""
    state = {"horizon": planned_epochs, "started": None}
    record = record if record is not None else {}

    def stop(model, why):
        model.stop_training = True
        record.setdefault("stopped", why)

    def on_train_begin(logs=None):
        state["started"] = time.monotonic()

    def on_epoch_begin(epoch, logs=None):
        state.setdefault("first", epoch)  # a resumed phase starts later

    def on_train_batch_end(batch, logs=None):
        if plan.left() < reserve:
            stop(callback.model, "the time limit (mid-epoch)")

    def on_epoch_end(epoch, logs=None):
        done = epoch + 1
        per_epoch = (time.monotonic() - state["started"]) / max(1, done - state.get("first", 0))
        fits = done + int(max(0.0, plan.left() - reserve) // max(per_epoch, 1e-6))
        horizon = max(done, min(most, fits))
        if horizon != state["horizon"]:
            state["horizon"] = horizon
            if schedule is not None:
                schedule.set_epochs(horizon)
        record.update(fine_tune_epochs_planned=horizon, fine_tune_epoch_seconds=round(per_epoch, 1))
        left = max(0.0, plan.left())
        logger.info(
            "Phase 2: epoch %d of %d; %s left of the time limit (ETA of the run %s).",
            done,
            horizon,
            describe_seconds(left),
            plan.eta(per_epoch * (horizon - done) + reserve),
        )
        if done >= horizon:
            stop(callback.model, "the time limit" if horizon < most else "its last epoch")

    callback = keras.callbacks.LambdaCallback(
        on_train_begin=on_train_begin,
        on_epoch_begin=on_epoch_begin,
        on_train_batch_end=on_train_batch_end,
        on_epoch_end=on_epoch_end,
    )
    callback.state = state
    return callback


def cannot_win(head_accuracy, val_accuracies, epochs_left, val_images, margin):
    """Whether phase 2, at `val_accuracies` (one per epoch so far), cannot plausibly
    clear phase 1's `head_accuracy` by the keep guard's margin in `epochs_left`."""
    if len(val_accuracies) < MIN_EPOCHS_JUDGED or not val_images:
        return False
    correct = [head_accuracy * val_images] + [a * val_images for a in val_accuracies]
    best_gain = max(max(b - a for a, b in zip(correct, correct[1:])), 1.0)
    # The guard keeps phase 2 for d more images right than phase 1 when d > margin *
    # sqrt(images that changed) >= margin * sqrt(d): d > margin squared at the least.
    needed = correct[0] + max(1.0, margin**2)
    reachable = min(val_images, correct[-1] + FUTILITY_OPTIMISM * best_gain * epochs_left)
    return reachable < needed


def futility_callback(head_accuracy, val_images, epochs, margin, record):
    """Stops phase 2 after an epoch from which it `cannot_win` against phase 1; the run
    then keeps phase 1 (`keep="best"`), and says why."""
    accuracies = []

    def on_epoch_end(epoch, logs=None):
        if logs is None or "val_accuracy" not in logs:
            return
        accuracies.append(float(logs["val_accuracy"]))
        horizon = record.get("fine_tune_epochs_planned", epochs)
        left = max(0, horizon - (epoch + 1))
        if left and cannot_win(head_accuracy, accuracies, left, val_images, margin):
            callback.model.stop_training = True
            epochs_left = f"{left} epoch{'s' if left > 1 else ''} left"
            record["stopped"] = (
                f"phase 2 could not beat phase 1 in its {epochs_left} (validation "
                f"accuracy {accuracies[-1]:.4f} against {head_accuracy:.4f})"
            )
            logger.info(
                "Phase 2 stops after epoch %d: it could not beat phase 1 in the %s "
                "(validation accuracy %.4f against phase 1's %.4f).",
                epoch + 1,
                epochs_left,
                accuracies[-1],
                head_accuracy,
            )

    callback = keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)
    return callback
