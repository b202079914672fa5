"""Building a row of `transfer.models.families` through keras.applications, with its
weights loaded, and `build_backbone`, which builds any `Backbone`."""

from pathlib import Path

import numpy as np

from transfer.errors import InvalidArgumentError, WeightsError, first_line
from transfer.lazy import keras
from transfer.models import names
from transfer.models.backbones import builds
from transfer.models.families import Family
from transfer.models.weights.download import imagenet_weights_path
from transfer.models.weights.load import check_weights_argument


def build_backbone(
    architecture, include_top=False, weights="imagenet", input_shape=None, weights_dir=None
):
    """The model of any `Backbone` (see `Backbone.build`)."""
    return architecture.build(
        include_top=include_top, weights=weights, input_shape=input_shape, weights_dir=weights_dir
    )


@builds(Family)
def build_family(family, include_top=False, weights="imagenet", input_shape=None, weights_dir=None):
    """keras.applications' model of `family` with `weights` (None, "imagenet" from the
    weights folder, Keras' cache or the network, or a path), without pooling."""
    check_weights_argument(weights)
    shape = tuple(input_shape) if input_shape is not None else (None, None, 3)
    least = family.min_input_size
    if any(d is not None and d < least for d in shape[:2]):
        raise InvalidArgumentError(
            f"{family.display_name} needs images of at least {least}x{least} "
            f"pixels. Received: input_shape={shape}"
        )
    builder = getattr(keras.applications, family.builder)
    model = builder(
        include_top=include_top,
        weights=None,
        input_shape=shape,
        name=family.model_name,
        **dict(family.builder_options),
    )
    if weights is not None:
        load_family_weights(model, family, weights, weights_dir)
    return model


def load_family_weights(model, family, weights, weights_dir=None):
    """Load "imagenet" (keras.applications' file) or a weights file into `model`, a
    keras.applications `family` model; a file that does not fit says so by name."""
    has_top = any(layer.name == names.CLASSIFIER for layer in model.layers)
    if weights == "imagenet":
        path = imagenet_weights_path(family, include_top=has_top, weights_dir=weights_dir)
    else:
        path = Path(weights)
    if not path.name.endswith((".h5", ".hdf5")):
        raise WeightsError(
            f"{path.name}: {family.display_name} loads keras.applications' weight files "
            "(.h5, or Keras 3's .weights.h5)."
        )
    try:
        model.load_weights(str(path))
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise WeightsError(
            f"{path.name} does not hold {family.display_name} weights "
            f"({'with' if has_top else 'without'} the 1000-class top, as the model is): "
            f"{first_line(exc)}"
        ) from exc
    if weights == "imagenet" and family.imagenet_rescale:
        _fold_rescale(model, family.imagenet_rescale)
    return path


def _fold_rescale(model, stddev):
    """Make the first Normalization layer also divide by sqrt(stddev), as the Rescaling
    keras.applications puts after it for ImageNet weights: (x - m) / sqrt(v) / sqrt(s)
    is (x - m) / sqrt(v * s)."""
    layer = next(layer for layer in model.layers if isinstance(layer, keras.layers.Normalization))
    values = [np.asarray(w) for w in layer.get_weights()]
    values[1] = (values[1] * np.reshape(stddev, values[1].shape)).astype(values[1].dtype)
    layer.set_weights(values)
    layer.finalize_state()
