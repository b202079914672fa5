"""Which ResNet a model or a weights file holds, from its layer names alone.

A backbone is found by its first convolution's name, so this works on a bare
backbone, on a classifier nesting one, after save and load, and on models built by
keras.applications. Another family's backbone (`transfer.models.families`) is found by
the model name keras.applications gives it.
"""

import re
from dataclasses import dataclass

from transfer.errors import InvalidArgumentError
from transfer.lazy import keras
from transfer.models import names
from transfer.models.architectures import BLOCKS_PER_STAGE, STAGES, VERSIONS, get_architecture
from transfer.models.families import family_of_model

_BLOCK_NAME = re.compile(r"^(conv[2-5])_block(\d+)_")
_PADDED_3X3 = re.compile(r"^conv[2-5]_block\d+_2_pad$")


@dataclass(frozen=True)
class LayerCounts:
    """What a Keras 3 `.weights.h5` file tells of its architecture: it names layers by
    class and position, so only counts are left to identify it by."""

    conv: int
    bn: int
    conv_bias: bool = None  # whether the first convolution has a bias; None if unknown


def is_backbone(model):
    return isinstance(model, keras.Model) and (
        family_of_model(model) is not None
        or any(layer.name == names.STEM_CONV for layer in model.layers)
    )


def find_backbone(model):
    """The model holding the ResNet layers: `model` itself or one nested in it."""
    if is_backbone(model):
        return model
    for layer in getattr(model, "layers", []):
        if is_backbone(layer):
            return layer
    raise InvalidArgumentError(
        f"Model {getattr(model, 'name', model)!r} is not a ResNet built by transfer "
        f"(it has no layer named {names.STEM_CONV!r}) nor a keras.applications backbone "
        "of transfer.models.families."
    )


def architecture_of(model):
    """The `Architecture` of a transfer/keras.applications ResNet, from its layer names,
    or the `Family` of another keras.applications backbone."""
    backbone = find_backbone(model)
    family = family_of_model(backbone)
    if family is not None:
        return family
    found = identify_architecture([layer.name for layer in backbone.layers])
    if found is None:
        raise InvalidArgumentError(
            f"Model {backbone.name!r} has ResNet layer names but not the block counts "
            "of ResNet50, 101 or 152."
        )
    return get_architecture(*found)


def identify_architecture(layer_names):
    """Guess (depth, version name) from layer names, or None.

    `layer_names` is a model's list of layer names, or a file's {layer name: arrays}.
    v1 and v1.5 share their weighted layers' names: a model tells them apart by v1.5's
    `_2_pad` layers, a file (which lists only layers with weights) by v1.5's
    convolutions having no bias.
    """
    layer_list = list(layer_names)
    last_block = {}
    for name in layer_list:
        match = _BLOCK_NAME.match(name)
        if match:
            stage, block = match.group(1), int(match.group(2))
            last_block[stage] = max(last_block.get(stage, 0), block)
    blocks = tuple(last_block.get(stage, 0) for stage in STAGES)
    depth = next((d for d, b in BLOCKS_PER_STAGE.items() if b == blocks), None)
    if depth is None:
        return None
    is_preact = any(name.endswith("_preact_bn") for name in layer_list)
    if isinstance(layer_names, dict) and names.STEM_CONV in layer_names:
        conv_bias = len(layer_names[names.STEM_CONV]) == 2
    else:
        padded = any(_PADDED_3X3.match(name) for name in layer_list)
        conv_bias = is_preact or not padded  # v1 blocks have no pad, v1.5 blocks do
    version = next(
        (v.name for v in VERSIONS.values() if v.preact == is_preact and v.conv_bias == conv_bias),
        None,
    )
    return None if version is None else (depth, version)


def identify_from_counts(counts):
    """(depth, version name) whose convolution and BN counts are `counts`, or None."""
    for depth in BLOCKS_PER_STAGE:
        for version in VERSIONS.values():
            expected = layer_counts(get_architecture(depth, version.name))
            if (expected.conv, expected.bn) == (counts.conv, counts.bn) and counts.conv_bias in (
                None,
                version.conv_bias,
            ):
                return depth, version.name
    return None


def layer_counts(architecture):
    """The convolutions and batch normalisations of an architecture, from the table."""
    blocks = sum(architecture.blocks)
    conv = 1 + 3 * blocks + len(STAGES)
    if architecture.version.preact:
        return LayerCounts(conv, 3 * blocks + 1, architecture.version.conv_bias)
    return LayerCounts(conv, conv, architecture.version.conv_bias)


def describe(found):
    """A display name for a (depth, version) found in a file or model."""
    if found is None:
        return "an unknown architecture"
    depth, version = found
    return get_architecture(depth, version).display_name
