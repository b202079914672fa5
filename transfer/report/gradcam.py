"""Grad-CAM (Selvaraju et al., 2017): where in an image a classifier looked for a
class. The gradient of the class's logit with respect to a convolutional group's
output, averaged over space, weighs that output's channels; their positive sum,
scaled to [0, 1] and resized to the image, is the heat map."""

import io

import numpy as np
from PIL import Image

from transfer.errors import InvalidArgumentError
from transfer.lazy import keras, tf
from transfer.models.groups import groups
from transfer.models.identify import find_backbone
from transfer.models.names import CLASSIFIER

# The last convolutional group (post in v2, else conv5) is Grad-CAM's choice, but on
# small inputs its map is 1×1 (32 px) or 2×2 (64 px) and says nothing about where.
# The map comes from the last group at least this many cells on a side, else the
# last group: conv5 from 128 px on.
MIN_CAM_CELLS = 4
OVERLAY_ALPHA = 0.45  # heat map over image
COLORMAP = "jet"


def _side(layer):
    height, width = layer.output.shape[1:3]
    return None if height is None or width is None else min(height, width)


def cam_group(model):
    """The group whose output Grad-CAM weighs (see MIN_CAM_CELLS)."""
    found = [
        (name, layers)
        for name, layers in groups(find_backbone(model)).items()
        if name not in ("stem", "head")
    ]
    for name, layers in reversed(found):
        side = _side(layers[-1])
        if side is None or side >= MIN_CAM_CELLS:
            return name
    return found[-1][0]


def cam_model(classifier, group=None):
    """A model: raw pixels -> (the group's output, the classifier's logits), sharing
    the classifier's layers. `group` defaults to `cam_group`."""
    backbone = find_backbone(classifier)
    if backbone is classifier:
        raise InvalidArgumentError(
            f"Model {classifier.name!r} is a bare backbone; Grad-CAM needs a classifier "
            f"ending in a '{CLASSIFIER}' layer, such as a run's model.keras."
        )
    found = groups(backbone)
    group = group or cam_group(classifier)
    if group not in found or group == "stem":
        raise InvalidArgumentError(
            f"Unknown group: group={group!r}. Expected one of "
            f"{', '.join(g for g in found if g not in ('stem', 'head'))}."
        )
    group_output = found[group][-1].output
    layers = [
        layer for layer in classifier.layers if not isinstance(layer, keras.layers.InputLayer)
    ]
    at = layers.index(backbone)
    # Two halves, so that `heatmaps` records gradients through the layers after the
    # group only: a tape around the whole model would hold every activation of the
    # backbone as well.
    features_in = x = keras.Input(shape=group_output.shape[1:])
    if group_output is not backbone.output:  # the group is not the backbone's last
        x = keras.Model(group_output, backbone.output, name=f"{group}_to_output")(x)
    for layer in layers[at + 1 :]:
        if layer.name == CLASSIFIER:
            # The same weights without the softmax: Grad-CAM follows the class's score.
            linear = keras.layers.Dense(layer.units, dtype="float32", name="logits")
            x = linear(x)
            linear.set_weights(layer.get_weights())
        else:
            x = layer(x)
    features_to_logits = keras.Model(features_in, x, name=f"{group}_to_logits")
    inputs = x = keras.Input(shape=classifier.input.shape[1:])
    for layer in layers[:at]:
        x = layer(x)
    features = keras.Model(backbone.input, group_output, name=f"pixels_to_{group}")(x)
    pixels_to_features = keras.Model(inputs, features, name=f"pixels_to_{group}_features")
    cam = keras.Model(inputs, [features, features_to_logits(features)], name=f"gradcam_{group}")
    cam.halves = (pixels_to_features, features_to_logits)
    return cam


def heatmaps(model, images, classes):
    """Grad-CAM of `classes[i]` on `images[i]`, each in [0, 1] at the images' size.

    `model` gives (feature map, logits), as `cam_model` builds it.
    """
    images = tf.convert_to_tensor(np.asarray(images), tf.float32)
    classes = tf.convert_to_tensor(np.asarray(classes), tf.int32)
    halves = getattr(model, "halves", None)  # cam_model's: the tape covers the second
    features = halves[0](images, training=False) if halves else None
    with tf.GradientTape(watch_accessed_variables=not halves) as tape:
        if halves:
            tape.watch(features)
            logits = halves[1](features, training=False)
        else:
            features, logits = model(images, training=False)
        score = tf.gather(logits, classes, axis=1, batch_dims=1)
    gradients = tf.cast(tape.gradient(score, features), tf.float32)
    features = tf.cast(features, tf.float32)
    weights = tf.reduce_mean(gradients, axis=(1, 2))
    maps = tf.nn.relu(tf.einsum("bhwc,bc->bhw", features, weights))
    maps = tf.image.resize(maps[..., None], images.shape[1:3], method="bilinear")[..., 0]
    peak = tf.reduce_max(maps, axis=(1, 2), keepdims=True)
    return np.clip(tf.math.divide_no_nan(maps, peak).numpy(), 0.0, 1.0)


def overlay(image, heatmap, alpha=OVERLAY_ALPHA):
    """The heat map in colour over the image (both H×W, pixels 0-255): uint8 RGB."""
    from matplotlib import colormaps

    colour = colormaps[COLORMAP](np.asarray(heatmap))[..., :3] * 255.0
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
    return np.clip((1 - alpha) * image + alpha * colour, 0, 255).astype(np.uint8)


def png_bytes(pixels, size=None):
    """PNG of uint8 pixels, enlarged to `size` on its longer side without smoothing
    (small inputs stay sharp)."""
    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    if size and max(image.size) < size:
        scale = size / max(image.size)
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.NEAREST
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
