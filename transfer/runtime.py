"""The compiled inference path and the kind of device it runs on: the one place a
model runs on images outside `fit`, for training's reports and the feature cache,
and for predict, evaluate, embed and probe."""

import logging

import numpy as np

from transfer.lazy import tf
from transfer.progress import Progress

logger = logging.getLogger("transfer")

# Whether inference is XLA-compiled, per kind of device. On CPUs XLA gains nothing at
# large images and loses at small ones, and compiles again for every new batch shape
# (scripts/benchmark.py measures it); GPUs keep Keras' choice, XLA.
INFERENCE_JIT = {"CPU": False, "GPU": True}
INFERENCE_BATCH_SIZE = 32  # of evaluate, predict and embed
TOP_K = 3  # labels shown per image by predict and explain
# A label is predicted when its probability reaches this, until per-label thresholds
# are tuned on validation (transfer.report.metrics.tune_thresholds).
MULTI_LABEL_THRESHOLD = 0.5


def device_kind():
    """ "GPU" when TensorFlow sees one, else "CPU"."""
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def precision_policy(mixed_precision):
    """float16 compute on a GPU; on a CPU float16 is emulated and slower, so no."""
    if not mixed_precision:
        return "float32"
    if device_kind() == "GPU":
        logger.info("Mixed precision: float16 compute, float32 weights and outputs.")
        return "mixed_float16"
    logger.warning(
        "mixed_precision=True: no GPU here, and a CPU emulates float16 more slowly "
        "than it computes float32, so this run stays in float32."
    )
    return "float32"


WIDTH_AXIS = 2  # of a batch of images: (batch, height, width, channels)


def flip_averaged(predict, flip):
    """`predict` averaged over each image and its horizontal mirror: flip test-time
    augmentation, as timm's validate.py and fastai's tta do. `flip(batch, axis)`
    mirrors a batch: np.flip for arrays, `tf.reverse` for tensors."""
    return lambda batch: (predict(batch) + predict(flip(batch, WIDTH_AXIS))) / 2


def _reverse(batch, axis):
    return tf.reverse(batch, axis=[axis])


def _compiled_call(model, jit_compile=None, tta=False):
    """A tf.function calling `model` in inference mode (with `tta`, `flip_averaged`),
    made once per model."""
    if jit_compile is None:
        jit_compile = INFERENCE_JIT[device_kind()]
    cache = model.__dict__.setdefault("_transfer_inference", {})
    if (jit_compile, tta) not in cache:

        def call(x):
            return model(x, training=False)

        if tta:
            call = flip_averaged(call, _reverse)
        function = tf.function(call, jit_compile=jit_compile, reduce_retracing=True)
        # TensorFlow counts traces by the Python code object, so the first trace of each
        # new model (backbone, frozen prefix, head, the report's) reads as a "retrace"
        # and warns, although each model's function is traced once per input shape.
        function._omit_frequent_tracing_warning = True
        cache[jit_compile, tta] = function
    return cache[jit_compile, tta]


def predict_batch(model, batch, jit_compile=None):
    """Outputs of `model` for one batch, as NumPy."""
    return np.asarray(_compiled_call(model, jit_compile)(batch))


def run_inference(
    model, images, verbose=0, jit_compile=None, description="Inference", tta=False, dtype=None
):
    """Outputs of `model` for a tf.data.Dataset of image batches, as one array.

    The one place inference runs for predict, evaluate, embed and the feature
    cache, so that every command gets the fastest path. `tta` averages each
    image's outputs with its horizontal mirror's. `dtype` converts each batch's
    outputs as they come (float16 halves what large outputs hold in memory).
    """
    # The shape only matters for no batches; asked then (a Sequential has no `output`
    # until it is called).
    return collect_outputs(
        _compiled_call(model, jit_compile, tta),
        images,
        lambda: model.output.shape[1:],
        verbose,
        description,
        dtype,
    )


def collect_outputs(call, batches, output_shape, verbose=0, description="Inference", dtype=None):
    """`call`'s outputs for each of `batches`, as one array (of `output_shape` per
    image: a tuple, or a function giving it); with `verbose`, a progress line. `dtype`
    converts each batch's outputs."""
    cardinality = int(batches.cardinality()) if hasattr(batches, "cardinality") else -1
    progress = (
        Progress(description, cardinality if cardinality > 0 else None, unit="batch")
        if verbose
        else None
    )
    outputs = []
    for step, batch in enumerate(batches, start=1):
        outputs.append(np.asarray(call(batch), dtype=dtype))
        if progress:
            progress.update(step)
    if progress:
        progress.done()
    if not outputs:
        shape = output_shape() if callable(output_shape) else output_shape
        return np.zeros((0, *shape), dtype=dtype or np.float32)
    return np.concatenate(outputs)


def correct_predictions(labels, probabilities):
    """Per image: is the top class the label? Non-finite outputs count as wrong.

    Multi-label (`labels` rows of 0/1): are all the image's labels ranked above all
    other classes? For one label per image that is the top class again; it needs no
    threshold (those are tuned after the guard has chosen a phase), and it keeps one
    outcome per image for the guard's paired comparison. An image without labels
    counts as right. (A decision per label at 0.5 rewarded a model that predicts
    nothing: with 2 labels in 10, that is 80% right.)"""
    finite = np.isfinite(probabilities).all(axis=1)
    probabilities = np.nan_to_num(probabilities)
    if np.ndim(labels) == 2:
        truth = np.asarray(labels) > 0.5
        lowest_label = np.where(truth, probabilities, np.inf).min(axis=1)
        highest_other = np.where(truth, -np.inf, probabilities).max(axis=1)
        return (lowest_label > highest_other) & finite
    return (probabilities.argmax(axis=1) == labels) & finite


def score(labels, probabilities):
    """Accuracy and log loss (binary cross-entropy per label for multi-label); an image
    with non-finite outputs (a diverged model) counts as wrong, with the largest loss."""
    correct = correct_predictions(labels, probabilities)
    probabilities = np.nan_to_num(probabilities, nan=0.0, posinf=0.0, neginf=0.0)
    if np.ndim(labels) == 2:
        right = np.where(np.asarray(labels) > 0.5, probabilities, 1.0 - probabilities)
        picked = np.clip(right, 1e-7, 1.0)
    else:
        picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    return {"accuracy": float(np.mean(correct)), "loss": float(-np.mean(np.log(picked)))}
