"""Augmentation presets for phase 2, built from Keras' own preprocessing layers and
applied to 0-255 pixels on the tf.data side.

Factors are fractions of the image (rotation of a full turn, zoom and translation of
its height and width), so a preset means the same at 32 px as at 224 px.
"""

from transfer.errors import unknown_choice
from transfer.lazy import keras

# preset -> [(Keras layer, its arguments)], in the order they are applied. A
# horizontal flip is part of every preset but `none`; `flip=False` leaves it out
# (it is wrong for digits and text).
PRESETS = {
    "none": [],
    # The one augmentation phase 2 can train under on cached frozen-group outputs
    # (both orientations of every image; transfer.train.phases).
    "flip": [("RandomFlip", {"mode": "horizontal"})],
    "light": [
        ("RandomFlip", {"mode": "horizontal"}),
        ("RandomTranslation", {"height_factor": 0.05, "width_factor": 0.05}),
    ],
    # The first wave's set, as in Keras' transfer-learning guide (flip, rotation).
    "default": [
        ("RandomFlip", {"mode": "horizontal"}),
        ("RandomRotation", {"factor": 0.05}),
        ("RandomZoom", {"height_factor": 0.1}),
        ("RandomContrast", {"factor": 0.1}),
    ],
    # timm's recipe for training from scratch, at a dose fit for fine-tuning:
    # RandAugment (Cubuk et al. 2020) and random erasing (Zhong et al. 2020).
    "strong": [
        ("RandomFlip", {"mode": "horizontal"}),
        ("RandAugment", {"value_range": (0, 255), "num_ops": 2, "factor": 0.5}),
        ("RandomErasing", {"factor": 0.25, "value_range": (0, 255)}),
    ],
}


def augmentation_steps(preset="default", flip=True):
    """[(Keras layer name, its arguments)] of the preset, without the flip if not `flip`."""
    if preset not in PRESETS:
        raise unknown_choice("augment", preset, tuple(PRESETS))
    return [(name, args) for name, args in PRESETS[preset] if flip or name != "RandomFlip"]


def cacheable_orientations(preset="default", flip=True):
    """The versions of each image that stand for every augmented one: 1 (no
    augmentation), 2 (as it is and mirrored: a horizontal flip only), or 0 (random
    transforms that must run on the pixels at every step)."""
    names = [name for name, _ in augmentation_steps(preset, flip)]
    return {(): 1, ("RandomFlip",): 2}.get(tuple(names), 0)


def augmentation(seed=None, preset="default", flip=True):
    """A Keras Sequential of the preset's random layers, or None for `none`.

    Each layer gets its own seed (`seed + i`): layers given the same seed draw the
    same random numbers, so every flip would come with the same rotation and zoom.
    """
    steps = augmentation_steps(preset, flip)
    if not steps:
        return None
    return keras.Sequential(
        [
            getattr(keras.layers, name)(**args, seed=None if seed is None else seed + i)
            for i, (name, args) in enumerate(steps)
        ],
        name="augmentation",
    )
