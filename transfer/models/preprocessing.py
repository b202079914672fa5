"""Input preprocessing of each ResNet version, as a function and as a Keras layer.

The layer serialises with the model, so a saved `transfer` model takes raw 0-255 RGB
pixels and nobody downstream has to remember the mode. The arithmetic follows
`keras.applications.imagenet_utils.preprocess_input` operation for operation, so the
results are bitwise equal, not merely close.
"""

import keras
import numpy as np
from keras import ops

from transfer.errors import InvalidArgumentError

# mode -> (reverse RGB to BGR, divisor, mean, std); divisor and std may be None.
MODES = {
    "caffe": (True, None, (103.939, 116.779, 123.68), None),
    "tf": (False, 127.5, None, None),  # x / 127.5 - 1: written out in `_apply`
    "torch": (False, 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def _check_mode(mode):
    if mode not in MODES:
        raise InvalidArgumentError(
            f"Unknown preprocessing mode: {mode!r}. Expected one of {', '.join(MODES)}."
        )


def _resolve_mode(mode_or_version):
    """Accept a mode ("caffe") or a version name ("v2") and return the mode."""
    from transfer.models.architectures import VERSIONS

    if mode_or_version in VERSIONS:
        return VERSIONS[mode_or_version].preprocessing
    _check_mode(mode_or_version)
    return mode_or_version


def preprocess_input(x, mode="v1"):
    """Preprocess a batch of RGB images (0-255) the way the given version expects.

    `mode` is a version ("v1", "v2") or a mode ("caffe", "tf", "torch"). NumPy input
    gives NumPy output (integers become float32, floats keep their precision, as in
    keras.applications); tensors give tensors.
    """
    mode = _resolve_mode(mode)
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(keras.config.floatx())
        return _apply(x, mode, np)
    x = ops.convert_to_tensor(x)
    if not keras.backend.is_float_dtype(x.dtype):
        x = ops.cast(x, keras.config.floatx())
    return _apply(x, mode, ops)


def _apply(x, mode, xp):
    reverse, divisor, mean, std = MODES[mode]
    if reverse:
        x = x[..., ::-1] if xp is np else ops.flip(x, axis=-1)
    if divisor is not None:
        x = x / divisor
    if mode == "tf":
        return x - 1.0
    x = x + _constant(-np.array(mean), x, xp)
    if std is not None:
        x = x / _constant(np.array(std), x, xp)
    return x


def _constant(values, like, xp):
    if xp is np:
        return values.astype(like.dtype)
    return ops.convert_to_tensor(values, dtype=like.dtype)


@keras.saving.register_keras_serializable(package="transfer")
class ImagePreprocessing(keras.layers.Layer):
    """Keras layer: raw RGB pixels (any numeric dtype, 0-255) in, model input out.

    Computes in float32 even under a mixed-precision policy: float16 cannot hold
    `pixel - mean` exactly.
    """

    def __init__(self, mode="caffe", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        _check_mode(mode)
        self.mode = mode

    def call(self, inputs):
        return _apply(ops.cast(inputs, self.compute_dtype), self.mode, ops)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}
