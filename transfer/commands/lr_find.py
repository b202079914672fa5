"""`transfer lr-find`: the learning-rate range test (Smith 2017, fastai's `lr_find`)
for phase 2, the phase whose learning rate matters most.

Phase 1 runs as `finetune` runs it; then the groups from fine_tune_from on unfreeze
and one pass of augmented batches trains with a learning rate that grows
exponentially from `start_lr` to `end_lr`, recording each batch's loss, until the
loss runs away. The suggestion is fastai's `lr_min`: a tenth of the rate where the
smoothed loss was lowest.
"""

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from transfer.config import apply_config
from transfer.data.augment import augmentation
from transfer.data.pipeline import epoch_batches, one_hot_images
from transfer.errors import InvalidArgumentError
from transfer.io import write_csv
from transfer.lazy import keras, tf
from transfer.models.groups import unfreeze
from transfer.report.plots import plot_lr_find
from transfer.runs import RunPaths, prepare_run_dir
from transfer.train.optim import compile_model
from transfer.train.options import resolve_options
from transfer.train.run import Run

logger = logging.getLogger("transfer")

START_LR, END_LR, STEPS = 1e-7, 1.0, 100
SMOOTHING = 0.98  # of the loss's exponential moving average, as fastai's
DIVERGED = 4.0  # stop when the smoothed loss exceeds this many times its minimum
CSV_FILE, PLOT_FILE = "lr_find.csv", "lr_find.png"


@dataclass
class RangeTest:
    learning_rates: list
    losses: list  # smoothed, one per batch
    suggested: float
    out: Path


def lr_find(
    data=None,
    out=None,
    start_lr=START_LR,
    end_lr=END_LR,
    steps=STEPS,
    overwrite=False,
    options=None,
    config=None,
    **overrides,
):
    """Run the range test on `data` with finetune's options (and a `config` file's, as
    finetune reads it); write lr_find.csv and lr_find.png to `out` and return a
    `RangeTest` with the suggested learning rate."""
    if out is None:
        raise InvalidArgumentError("out= is required: the folder for lr_find.csv and .png.")
    if not 0 < start_lr < end_lr:
        raise InvalidArgumentError(
            f"start_lr must be positive and below end_lr. Received: start_lr={start_lr}, "
            f"end_lr={end_lr}"
        )
    given = dict(overrides)
    source, data, overrides = apply_config(config, data, overrides)
    options = resolve_options(options, **overrides)
    if options.fine_tune_from == "none":
        raise InvalidArgumentError("fine_tune_from=none: the range test is for phase 2.")
    run = Run(
        options, RunPaths(prepare_run_dir(out, overwrite=overwrite)), tf.distribute.get_strategy()
    )
    keras.utils.set_random_seed(options.seed)
    run.prepare(data)
    if source is not None:
        source.check_data(run.dataset, given)
    run.train_head()
    learning_rates, losses = _range_test(run.model, run.dataset, options, start_lr, end_lr, steps)
    paths = run.paths
    suggested = _suggestion(learning_rates, losses)
    write_csv(
        paths.root / CSV_FILE,
        ["learning_rate", "smoothed_loss"],
        [[f"{r:.6g}", f"{loss:.6g}"] for r, loss in zip(learning_rates, losses)],
    )
    plot_lr_find(learning_rates, losses, suggested, paths.root / PLOT_FILE)
    return RangeTest(learning_rates, losses, suggested, paths.root)


def _range_test(model, dataset, options, start_lr, end_lr, steps):
    unfreeze(model, options.fine_tune_from, train_bn=options.train_bn)
    rate = keras.optimizers.schedules.ExponentialDecay(
        start_lr, decay_steps=steps, decay_rate=end_lr / start_lr
    )
    compile_model(model, options, rate, dataset.num_classes)
    train = dataset.splits["train"]
    epochs = math.ceil(steps * options.batch_size / len(train))  # enough batches for `steps`
    batches = epoch_batches(
        one_hot_images(train, options.image_size, dataset.num_classes),
        len(train),
        options.batch_size,
        options.seed,
        epochs,
        augment=augmentation(options.seed, options.augment, options.flip),
    )
    learning_rates, losses = [], []
    state = {"mean": 0.0, "average": 0.0, "best": math.inf}

    def on_train_batch_end(batch, logs=None):
        # Keras logs the epoch's running mean: recover this batch's loss from it.
        mean = float(logs["loss"])
        loss = (batch + 1) * mean - batch * state["mean"]
        state["mean"] = mean
        state["average"] = SMOOTHING * state["average"] + (1 - SMOOTHING) * loss
        smoothed = state["average"] / (1 - SMOOTHING ** (batch + 1))
        learning_rates.append(start_lr * (end_lr / start_lr) ** (batch / steps))
        losses.append(smoothed)
        state["best"] = min(state["best"], smoothed)
        if batch > 5 and (smoothed > DIVERGED * state["best"] or not math.isfinite(smoothed)):
            model.stop_training = True

    logger.info("Range test: learning rate from %g to %g over %d steps...", start_lr, end_lr, steps)
    model.fit(
        batches,
        epochs=1,
        steps_per_epoch=steps,
        shuffle=False,
        verbose=0,
        callbacks=[keras.callbacks.LambdaCallback(on_train_batch_end=on_train_batch_end)],
    )
    return learning_rates, losses


def _suggestion(learning_rates, losses):
    """A tenth of the learning rate at the lowest smoothed loss (fastai's lr_min)."""
    finite = [(loss, rate) for rate, loss in zip(learning_rates, losses) if math.isfinite(loss)]
    if not finite:
        raise InvalidArgumentError("The range test's loss was never finite; lower start_lr.")
    return float(min(finite)[1] / 10)
