"""Input preprocessing of each ResNet version, as a function and as a Keras layer.

The layer serialises with the model, so a saved `transfer` model takes raw 0-255 RGB
pixels and nobody downstream has to remember the mode. The function follows
`keras.applications.imagenet_utils.preprocess_input` operation for operation, so the
results are bitwise equal, not merely close; the layer is built to round the same way.
"""

import numpy as np

from transfer.errors import unknown_choice
from transfer.lazy import keras, ops
from transfer.models import names
from transfer.models.architectures import VERSIONS

# mode -> (reverse RGB to BGR, divisor, mean, std); divisor and std may be None.
MODES = {
    "caffe": (True, None, (103.939, 116.779, 123.68), None),
    "tf": (False, 127.5, None, None),  # x / 127.5 - 1: written out in `_apply`
    "torch": (False, 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    # The backbone scales its own input (keras.applications' EfficientNet, MobileNetV3,
    # ConvNeXt): raw 0-255 pixels pass unchanged.
    "none": (False, None, None, None),
}


def _check_mode(mode):
    if mode not in MODES:
        raise unknown_choice("preprocessing mode", mode, MODES)


def _resolve_mode(mode_or_version):
    """Accept a mode ("caffe") or a version name ("v2") and return the mode."""
    if mode_or_version in VERSIONS:
        return VERSIONS[mode_or_version].preprocessing
    _check_mode(mode_or_version)
    return mode_or_version


def preprocess_input(x, mode="v1"):
    """Preprocess a batch of RGB images (0-255) the way the given version expects.

    `mode` is a version ("v1", "v1.5", "v2") or a mode ("caffe", "tf", "torch"). NumPy input
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
    if mode == "none":
        return x
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


def preprocessing_layer(mode="caffe", name=names.PREPROCESSING):
    """Keras layer: raw RGB pixels (any numeric dtype, 0-255) in, model input out.

    Made of built-in Keras layers only, so a model holding it loads with plain
    `keras.models.load_model` (safe mode on) where `transfer` is not installed. Each
    mode is arranged to round exactly as `preprocess_input` does:
    - caffe: a fixed 1x1 convolution whose kernel swaps RGB to BGR and whose bias is
      -mean (x * 1 + 0 + 0 - mean is exact in floating point);
    - tf: Normalization with variance 127.5**2 divides by exactly 127.5, then
      Rescaling(1, offset=-1) subtracts 1;
    - torch: Rescaling by 1/255, then Normalization by the ImageNet mean and std.
    Computes in float32 even under a mixed-precision policy: float16 cannot hold
    `pixel - mean` exactly.
    """
    _check_mode(mode)
    reverse, divisor, mean, std = MODES[mode]
    f32 = {"dtype": "float32"}
    if mode == "caffe":
        permutation = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_channel in range(3):
            permutation[0, 0, 2 - out_channel, out_channel] = 1.0
        steps = [
            keras.layers.Conv2D(
                3,
                1,
                name=f"{name}_bgr_mean",
                trainable=False,
                **f32,
                kernel_initializer=keras.initializers.Constant(permutation),
                bias_initializer=keras.initializers.Constant(-np.array(mean, dtype="float32")),
            )
        ]
    elif mode == "none":
        steps = [keras.layers.Identity(name=f"{name}_none", **f32)]
    elif mode == "tf":
        steps = [
            keras.layers.Normalization(mean=0.0, variance=divisor**2, name=f"{name}_scale", **f32),
            keras.layers.Rescaling(1.0, offset=-1.0, name=f"{name}_shift", **f32),
        ]
    else:
        steps = [
            keras.layers.Rescaling(1.0 / divisor, name=f"{name}_scale", **f32),
            keras.layers.Normalization(
                mean=list(mean), variance=[s**2 for s in std], name=f"{name}_normalize", **f32
            ),
        ]
    return keras.Sequential(steps, name=name, trainable=False)
