"""Callbacks of a training phase: the history kept on disk for resume, and
validation on a local copy of a distributed model. Built from Keras' LambdaCallback,
so that defining them needs no Keras at import time."""

import json
import logging
import time
import zipfile
from pathlib import Path

import numpy as np

from transfer.errors import RunFailedError
from transfer.io import write_json, write_npz
from transfer.lazy import keras, tf
from transfer.models.heads import SINGLE_LABEL, task_of
from transfer.progress import seconds_since_start
from transfer.runtime import run_inference, score
from transfer.train.distribute import plain_copy

logger = logging.getLogger("transfer")

# History columns: when the epoch ended (from process start), its wall time, and the
# part of it spent in training steps.
ELAPSED, EPOCH_SECONDS, STEP_SECONDS = "elapsed_seconds", "epoch_seconds", "step_seconds"


def epoch_log(phase, rows, path, listeners=()):
    """Appends each epoch's logs to `rows` and writes them to `path` at once, with when
    the epoch ended and how long it took: in all, and in its training steps (the rest
    is validation and callbacks); then gives `listeners` the rows."""
    clock = {"steps": 0.0}

    def on_epoch_begin(epoch, logs=None):
        clock["epoch"], clock["steps"] = time.perf_counter(), 0.0

    def on_train_batch_begin(batch, logs=None):
        clock["batch"] = time.perf_counter()

    def on_train_batch_end(batch, logs=None):
        clock["steps"] += time.perf_counter() - clock["batch"]

    def on_epoch_end(epoch, logs=None):
        rows.append(
            {
                "phase": phase,
                "epoch": epoch + 1,
                **{k: float(v) for k, v in (logs or {}).items()},
                ELAPSED: seconds_since_start(),
                EPOCH_SECONDS: round(time.perf_counter() - clock["epoch"], 3),
                STEP_SECONDS: round(clock["steps"], 3),
            }
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, rows)
        for listener in listeners:
            listener(rows)

    return keras.callbacks.LambdaCallback(
        on_epoch_begin=on_epoch_begin,
        on_train_batch_begin=on_train_batch_begin,
        on_train_batch_end=on_train_batch_end,
        on_epoch_end=on_epoch_end,
    )


def cached_validation(suffix, inputs, labels, batch_size):
    """val_loss, val_accuracy and val_top5_accuracy of each epoch, from the frozen
    groups' outputs for the validation images (`inputs`, computed once) through the
    groups being trained (`suffix`, which shares the model's layers)."""
    dtype = suffix.input.dtype
    batches = (
        tf.data.Dataset.from_tensor_slices(inputs)
        .batch(batch_size)
        .map(lambda x: tf.cast(x, dtype))
    )
    return validation_callback(suffix, batches, labels)


def validation_callback(model, batches, labels):
    """val_loss, val_accuracy and val_top5_accuracy of each epoch: `model` run on
    `batches` (its inputs, without labels) at the end of the epoch, after the
    callbacks before it in the list."""

    def on_epoch_end(epoch, logs=None):
        if logs is None:
            return
        probabilities = run_inference(model, batches)
        found = score(labels, probabilities)
        logs.update(val_loss=found["loss"], val_accuracy=found["accuracy"])
        if labels.ndim == 1:  # top-5 is of one class per image
            k = min(5, probabilities.shape[1])
            top = np.argsort(-np.nan_to_num(probabilities, nan=-1.0), axis=1)[:, :k]
            logs.update(val_top5_accuracy=float(np.mean((top == labels[:, None]).any(axis=1))))

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def precise_batchnorm(model, batches):
    """At each epoch's end, the moving statistics of every BatchNormalization that
    trains become their average over `batches` (training images, not augmented) under
    the weights of that moment: "precise BN" (Wu and Johnson, Rethinking "Batch" in
    BatchNorm, 2021). A moving average with momentum 0.99 still holds a third of its
    starting values after 100 steps, so a short run from random initialisation
    validated at chance while it trained to 0.7 (MobileNetV3Small, 3 epochs at 32 px).
    A forward pass in training mode traced with momentum 0 sets each moving statistic
    to the batch's; their mean over the batches is what the layers keep."""
    layers = [
        layer
        for layer in _leaves(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    statistics = [v for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    traced = []

    def batch_statistics():
        if not traced:  # the momentum is read when the function is traced
            momenta = [layer.momentum for layer in layers]
            for layer in layers:
                layer.momentum = 0.0
            function = tf.function(lambda x: model(x, training=True), reduce_retracing=True)
            function._omit_frequent_tracing_warning = True
            try:
                function.get_concrete_function(batches.element_spec)
            finally:
                for layer, momentum in zip(layers, momenta):
                    layer.momentum = momentum
            traced.append(function)
        return traced[0]

    def on_epoch_end(epoch, logs=None):
        forward = batch_statistics()
        sums, count = [0.0] * len(statistics), 0
        for batch in batches:
            forward(batch)
            sums = [total + np.asarray(v) for total, v in zip(sums, statistics)]
            count += 1
        if count:
            for variable, total in zip(statistics, sums):
                variable.assign(total / count)

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def stop_on_nan(phase, model, falls_back=False):
    """Stop at the first batch whose loss is not finite (keras.callbacks.TerminateOnNaN
    would end training quietly and leave a broken model to report on). A phase that
    `falls_back` (phase 2, whose run returns to phase 1's model) ends with a warning;
    any other fails the run."""

    def on_train_batch_end(batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.isfinite(float(loss)):
            return
        if falls_back:
            logger.warning(
                "Training diverged in phase %s: the loss became %s at batch %d; "
                "the phase stops here.",
                phase,
                float(loss),
                batch + 1,
            )
            model.stop_training = True
            return
        raise RunFailedError(
            f"Training diverged in phase {phase}: the loss became {float(loss)} at batch "
            f"{batch + 1}. Lower the learning rate (head_learning_rate, "
            "fine_tune_learning_rate) or check the images."
        )

    return keras.callbacks.LambdaCallback(on_train_batch_end=on_train_batch_end)


def local_validation(model, val):
    """val_loss and val_accuracy of each epoch, computed on a plain copy of `model`.

    Keras 3.15 with TF 2.21 fails to split a validation batch unevenly across
    replicas (AddN of [2, n] and [1, n]); a copy outside the strategy does not.
    """
    local = plain_copy(model)
    images = val.map(lambda x, y: x)
    labels = np.concatenate([np.asarray(y) for _, y in val])
    if task_of(model) == SINGLE_LABEL:  # one-hot targets back to class indices
        labels = labels.argmax(axis=1)

    def on_epoch_end(epoch, logs=None):
        local.set_weights(model.get_weights())
        if logs is None:
            return
        found = score(labels, run_inference(local, images))
        logs["val_loss"], logs["val_accuracy"] = found["loss"], found["accuracy"]

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


# A phase's backup for --resume: the variables that training changes (those of the
# trainable layers, BatchNormalization statistics included when they train) and the
# optimizer's, in one file written atomically, so one copy is enough. Keras'
# BackupAndRestore wrote the whole model and optimizer twice every epoch.
BACKUP_FILE, BACKUP_EPOCH_FILE = "backup.npz", "backup.json"


def _leaves(layer):
    """The layers of `layer`, nested models opened."""
    children = getattr(layer, "layers", None)
    if children:
        for child in children:
            yield from _leaves(child)
    else:
        yield layer


def _changing_variables(model):
    return [v for layer in _leaves(model) if layer.trainable for v in layer.weights]


def early_stopping(model, patience, path=None):
    """Keras' EarlyStopping(monitor="val_loss", restore_best_weights=True, verbose=1),
    keeping a copy of only the variables training changes: Keras copies every weight
    of the model at each better epoch (phase 2 from conv5 changes about two thirds of
    a ResNet50's), and holds the old copy while it makes the new one. With
    `path` (an .npz), the copy is written there instead of held in memory, one
    variable at a time: phase 2's peak is its memory's, and the file costs a tenth of
    moment an improved epoch."""
    variables = _changing_variables(model)
    state = {}

    def keep(epoch):
        state["weights"] = None  # the old copy goes before the new one is made
        if path is None:
            state["weights"] = [np.array(v) for v in variables]
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            state["weights"] = write_npz(
                path, {f"variable_{i}": v for i, v in enumerate(variables)}, compress=False
            )
        state["epoch"] = epoch

    def restore():
        if path is None:
            for variable, value in zip(variables, state["weights"]):
                variable.assign(value)
            return
        with np.load(state["weights"]) as saved:
            for i, variable in enumerate(variables):
                variable.assign(saved[f"variable_{i}"])
        Path(state["weights"]).unlink()

    def on_train_begin(logs=None):
        state.update(best=np.inf, wait=0, weights=None, epoch=0, stopped=None)

    def on_epoch_end(epoch, logs=None):
        current = (logs or {}).get("val_loss")
        if current is None:
            return
        if current < state["best"]:
            state.update(best=current, wait=0)
            keep(epoch)
            return
        if state["weights"] is None:  # as Keras: the first epoch's weights at least
            keep(epoch)
        state["wait"] += 1
        if state["wait"] >= patience and epoch > 0:
            state["stopped"] = epoch
            model.stop_training = True

    def on_train_end(logs=None):
        if state.get("stopped") is not None:
            logger.info("Epoch %d: early stopping", state["stopped"] + 1)
        if state.get("weights") is not None:
            logger.info(
                "Restoring model weights from the end of the best epoch: %d.", state["epoch"] + 1
            )
            restore()

    return keras.callbacks.LambdaCallback(
        on_train_begin=on_train_begin, on_epoch_end=on_epoch_end, on_train_end=on_train_end
    )


def resume_backup(model, directory, interval):
    """Writes the backup at the end of an epoch when `interval` seconds have passed
    since the last one (or the phase's start), and removes it when the phase ends."""
    last = [time.monotonic()]
    directory = Path(directory)

    def on_epoch_end(epoch, logs=None):
        if time.monotonic() - last[0] < interval:
            return
        write_backup(model, directory, epoch + 1)
        last[0] = time.monotonic()

    def on_train_end(logs=None):
        for name in (BACKUP_EPOCH_FILE, BACKUP_FILE):
            (directory / name).unlink(missing_ok=True)

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end, on_train_end=on_train_end)


def write_backup(model, directory, epochs):
    """The model's changing variables and its optimizer's state in `directory`, for a
    resumed phase to go on after `epochs` epochs."""
    # The variables themselves: write_npz copies one at a time (Adam's state is twice
    # the variables that train).
    arrays = {f"model_{i}": v for i, v in enumerate(_changing_variables(model))}
    arrays.update({f"optimizer_{i}": v for i, v in enumerate(model.optimizer.variables)})
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_npz(directory / BACKUP_FILE, arrays, compress=False)
    write_json(directory / BACKUP_EPOCH_FILE, {"epoch": epochs})  # after the weights


def backup_epoch(directory):
    """The number of epochs a phase's backup holds (0 without one)."""
    path = Path(directory) / BACKUP_EPOCH_FILE
    if not path.exists() or not (Path(directory) / BACKUP_FILE).exists():
        return 0
    try:
        return int(json.loads(path.read_text())["epoch"])
    except (ValueError, KeyError, TypeError):
        return 0


def restore_backup(model, directory):
    """Load a phase's backup into the compiled `model`; False (with a warning) when
    the file cannot be read or does not fit the model, and the phase starts over."""
    variables = _changing_variables(model)
    optimizer = model.optimizer
    if not optimizer.built:
        optimizer.build(model.trainable_variables)
    try:
        with np.load(Path(directory) / BACKUP_FILE) as stored:
            arrays = dict(stored)
        targets = [(f"model_{i}", v) for i, v in enumerate(variables)] + [
            (f"optimizer_{i}", v) for i, v in enumerate(optimizer.variables)
        ]
        if len(arrays) != len(targets) or any(
            name not in arrays or tuple(arrays[name].shape) != tuple(v.shape) for name, v in targets
        ):
            raise ValueError("its variables do not match the model's")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        logger.warning(
            "The backup in %s cannot be used (%s): the phase starts again.", directory, error
        )
        return False
    for name, variable in targets:
        variable.assign(arrays[name])
    return True
