"""Backbones other than ResNet, built by `keras.applications`: one row per architecture
(builder, preprocessing, default size, layer names), each a `Backbone`
(`transfer.models.backbones`), and the `--arch` names of every backbone.

The from-scratch ResNet stays the core (`transfer.models.resnet`); these rows only say
how to call keras.applications and how to read its layer names into the groups every
backbone shares. `transfer.models.applications` builds them.
"""

import re
from dataclasses import dataclass

from transfer.errors import InvalidArgumentError
from transfer.models.architectures import ARCHITECTURES, get_architecture
from transfer.models.backbones import STAGES, Backbone

# The weights expect raw 0-255 pixels: keras.applications put the scaling in the model.
INSIDE = "none"


@dataclass(frozen=True)
class LayerNames:
    """How one family's keras.applications layer names map to groups: `rules` are
    (regex, target) tried in order, target "stem", "post", or an int added to the
    block number the regex captures (a regex without a group gives that int itself)."""

    rules: tuple


_MOBILENET_V2 = LayerNames(
    (
        (r"^(Conv1|bn_Conv1)", "stem"),
        (r"^(Conv_1|out_relu)", "post"),
        (r"^block_(\d+)_", 0),
        (r"^expanded_conv_", 0),
    )
)
_MOBILENET_V3 = LayerNames(
    (
        (r"^conv(_bn)?$", "stem"),
        (r"^conv_1(_bn)?$", "post"),
        (r"^expanded_conv_(\d+)_", 0),
        (r"^expanded_conv_", 0),
    )
)
_EFFICIENTNET = LayerNames(((r"^stem_", "stem"), (r"^top_", "post"), (r"^block(\d+)", 0)))
_CONVNEXT = LayerNames(
    (
        (r"^convnext_\w+?_(prestem|stem)", "stem"),
        (r"^layer_normalization", "post"),
        (r"^convnext_\w+?_stage_(\d+)_", 0),
        # downsampling_block_i opens stage i + 1 (the stem opens stage 0)
        (r"^convnext_\w+?_downsampling_block_(\d+)", 1),
    )
)


@dataclass(frozen=True)
class Family(Backbone):
    """One keras.applications architecture, as `transfer` uses it."""

    name: str  # the --arch name, the feature cache's and the weights' key
    builder: str  # function of keras.applications
    model_name: str  # the name keras.applications gives the model: finds it when nested
    preprocessing: str  # mode of transfer.models.preprocessing, INSIDE when in the model
    default_size: int  # the image size its ImageNet weights were trained at
    layer_names: LayerNames
    stage_starts: tuple  # the first block of conv2, conv3, conv4, conv5
    builder_options: tuple = ()  # (argument, value) passed to the builder
    # EfficientNet's ImageNet build adds a Rescaling after its Normalization layer (the
    # file's variance is the std, tensorflow#49930); we fold it into that variance.
    imagenet_rescale: tuple = None
    summary_with_top = False  # `transfer info` shows the backbone as fine-tuning uses it

    @property
    def display_name(self):
        return self.builder

    @property
    def option_values(self):
        """A family is recorded by its --arch name alone: depth and version are ResNet's."""
        return {"arch": self.name, "depth": None, "version": None}

    def group_of(self, layer_name, previous_group):
        """The group of a backbone layer; unnamed layers (activations, adds) follow the
        layer before them."""
        for pattern, target in self.layer_names.rules:
            match = re.match(pattern, layer_name)
            if not match:
                continue
            if isinstance(target, str):
                return target
            block = (int(match.group(1)) if match.groups() else 0) + target
            stage = sum(block >= start for start in self.stage_starts)
            return "stem" if stage == 0 else STAGES[stage - 1]
        return previous_group


_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)  # keras.applications.efficientnet's


def _efficientnet(name, builder, model_name, size):
    return Family(
        name,
        builder,
        model_name,
        INSIDE,
        size,
        _EFFICIENTNET,
        (2, 3, 4, 6),
        imagenet_rescale=_IMAGENET_STDDEV_RGB,
    )


def _efficientnet_v2(name, builder, model_name, size):
    return Family(
        name,
        builder,
        model_name,
        INSIDE,
        size,
        _EFFICIENTNET,
        (2, 3, 4, 6),
        builder_options=(("include_preprocessing", True),),
    )


_ROWS = [
    # tf mode: keras' MobileNetV2 expects x / 127.5 - 1 outside the model.
    Family(
        "mobilenet_v2",
        "MobileNetV2",
        "mobilenetv2_1.00_224",
        "tf",
        224,
        _MOBILENET_V2,
        (1, 3, 6, 13),
    ),
    Family(
        "mobilenet_v3_small",
        "MobileNetV3Small",
        "MobileNetV3Small",
        INSIDE,
        224,
        _MOBILENET_V3,
        (0, 1, 3, 8),
        builder_options=(("include_preprocessing", True),),
    ),
    Family(
        "mobilenet_v3_large",
        "MobileNetV3Large",
        "MobileNetV3Large",
        INSIDE,
        224,
        _MOBILENET_V3,
        (1, 3, 6, 12),
        builder_options=(("include_preprocessing", True),),
    ),
    _efficientnet("efficientnet_b0", "EfficientNetB0", "efficientnetb0", 224),
    _efficientnet("efficientnet_b1", "EfficientNetB1", "efficientnetb1", 240),
    _efficientnet("efficientnet_b2", "EfficientNetB2", "efficientnetb2", 260),
    _efficientnet("efficientnet_b3", "EfficientNetB3", "efficientnetb3", 300),
    _efficientnet_v2("efficientnet_v2_b0", "EfficientNetV2B0", "efficientnetv2-b0", 224),
    _efficientnet_v2("efficientnet_v2_b1", "EfficientNetV2B1", "efficientnetv2-b1", 240),
    _efficientnet_v2("efficientnet_v2_b2", "EfficientNetV2B2", "efficientnetv2-b2", 260),
    _efficientnet_v2("efficientnet_v2_b3", "EfficientNetV2B3", "efficientnetv2-b3", 300),
    _efficientnet_v2("efficientnet_v2_s", "EfficientNetV2S", "efficientnetv2-s", 384),
    Family(
        "convnext_tiny",
        "ConvNeXtTiny",
        "convnext_tiny",
        INSIDE,
        224,
        _CONVNEXT,
        (0, 1, 2, 3),
        builder_options=(("include_preprocessing", True),),
    ),
]
FAMILIES = {row.name: row for row in _ROWS}
_BY_MODEL_NAME = {row.model_name: row for row in _ROWS}

# --arch names of the ResNets: every row of the architecture table, by its name.
RESNET_NAMES = {architecture.name: architecture for architecture in ARCHITECTURES}
BACKBONES = {**RESNET_NAMES, **FAMILIES}  # --arch name -> Backbone
ARCH_NAMES = tuple(BACKBONES)
SMALLEST = (
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "efficientnet_v2_b0",
    "convnext_tiny",
)  # each family's smallest member


def resolve_architecture(arch=None, depth=50, version="v1"):
    """The `Backbone` named by `arch` (an --arch name), or else the ResNet of `depth` and
    `version`."""
    if arch is None:
        return get_architecture(depth, version)
    key = str(arch).lower().replace("-", "_")
    if key in BACKBONES:
        return BACKBONES[key]
    raise InvalidArgumentError(
        f"Unknown architecture: arch={arch!r}. Expected one of {', '.join(ARCH_NAMES)}."
    )


def family_of_model(model):
    """The `Family` whose keras.applications model `model` is, or None."""
    name = str(getattr(model, "name", ""))
    # keras.applications names a MobileNetV2 by its input size unless told a name
    return _BY_MODEL_NAME.get(re.sub(r"^(mobilenetv2_1\.00)_\d+$", r"\1_224", name))
