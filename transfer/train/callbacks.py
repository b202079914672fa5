"""Callbacks of a training phase: the history kept on disk for resume, and
validation on a local copy of a distributed model. Built from Keras' LambdaCallback,
so that defining them needs no Keras at import time."""

import numpy as np

from transfer.errors import RunFailedError
from transfer.io import write_json
from transfer.lazy import keras
from transfer.runtime import run_inference, score
from transfer.train.distribute import plain_copy


def epoch_log(phase, rows, path):
    """Appends each epoch's logs to `rows` and writes them to `path` at once."""

    def on_epoch_end(epoch, logs=None):
        rows.append({"phase": phase, "epoch": epoch + 1,
                     **{k: float(v) for k, v in (logs or {}).items()}})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, rows)

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)


def stop_on_nan(phase):
    """Stop at the first batch whose loss is not finite (keras.callbacks.TerminateOnNaN
    would end training quietly and leave a broken model to report on)."""

    def on_train_batch_end(batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(float(loss)):
            raise RunFailedError(
                f"Training diverged in phase {phase}: the loss became {float(loss)} at batch "
                f"{batch + 1}. Lower the learning rate (head_learning_rate, "
                "fine_tune_learning_rate) or check the images.")

    return keras.callbacks.LambdaCallback(on_train_batch_end=on_train_batch_end)


def local_validation(model, val):
    """val_loss and val_accuracy of each epoch, computed on a plain copy of `model`.

    Keras 3.15 with TF 2.21 fails to split a validation batch unevenly across
    replicas (AddN of [2, n] and [1, n]); a copy outside the strategy does not.
    """
    local = plain_copy(model)
    images = val.map(lambda x, y: x)
    labels = np.concatenate([np.asarray(y) for _, y in val]).argmax(axis=1)

    def on_epoch_end(epoch, logs=None):
        local.set_weights(model.get_weights())
        if logs is None:
            return
        found = score(labels, run_inference(local, images))
        logs["val_loss"], logs["val_accuracy"] = found["loss"], found["accuracy"]

    return keras.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)
