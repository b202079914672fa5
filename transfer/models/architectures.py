"""The table of ResNet variants: one row per version, one per depth; each ResNet is a
`Backbone` (`transfer.models.backbones`), built by `transfer.models.resnet`.

Everything else (builders, weights, groups, the CLI) reads these tables, so adding
a variant is adding a row here.
"""

from dataclasses import dataclass

from transfer.errors import InvalidArgumentError
from transfer.models.backbones import STAGES, Backbone

STAGE_FILTERS = (64, 128, 256, 512)  # bottleneck width; block output is 4x this

BLOCKS_PER_STAGE = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
# What a depth below 50 (ResNet18/34 elsewhere) points to: smaller families of
# transfer.models.families, by their arch names.
SMALLER_FAMILIES = "arch=mobilenet_v3_small or arch=efficientnet_b0, for example"

DEFAULT_INPUT_SIZE = 224  # ImageNet's, for every depth and version
BN_EPSILON = 1.001e-5  # keras.applications' value, part of the weights' contract
TORCH_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default, part of torchvision's weights


@dataclass(frozen=True)
class Version:
    """How one published form of ResNet differs from the others."""

    name: str
    model_suffix: str  # "resnet50" + suffix is the model name and weights key
    block: str  # key of the block builder in `transfer.models.resnet`
    preact: bool  # pre-activation (BN-ReLU before conv): no conv1_bn, adds post_bn
    stage_strides: tuple  # stride of conv2..conv5
    stride_on: str  # the convolution of a strided block that carries the stride: "1x1", "3x3"
    conv_bias: bool  # the stem's and post-activation blocks' convolutions have a bias
    bn_epsilon: float
    preprocessing: str  # mode of `transfer.models.preprocessing` its weights expect


VERSIONS = {
    # He et al. 2015, as in keras.applications.ResNet50: stride on the first block,
    # on its first 1x1 convolution.
    "v1": Version(
        name="v1",
        model_suffix="",
        block="bottleneck_v1",
        preact=False,
        stage_strides=(1, 2, 2, 2),
        stride_on="1x1",
        conv_bias=True,
        bn_epsilon=BN_EPSILON,
        preprocessing="caffe",
    ),
    # v1 with the stride on the 3x3 convolution, as in torchvision's and timm's resnet50:
    # PyTorch's arithmetic (symmetric padding, no conv biases, its BN epsilon), so that
    # their checkpoints reproduce their outputs.
    "v1.5": Version(
        name="v1.5",
        model_suffix="v1.5",
        block="bottleneck_v1",
        preact=False,
        stage_strides=(1, 2, 2, 2),
        stride_on="3x3",
        conv_bias=False,
        bn_epsilon=TORCH_BN_EPSILON,
        preprocessing="torch",
    ),
    # He et al. 2016 (identity mappings), as in keras.applications.ResNet50V2:
    # stride on the last block of a stage.
    "v2": Version(
        name="v2",
        model_suffix="v2",
        block="bottleneck_v2",
        preact=True,
        stage_strides=(2, 2, 2, 1),
        stride_on="3x3",
        conv_bias=True,
        bn_epsilon=BN_EPSILON,
        preprocessing="tf",
    ),
}


# The first part of a ResNet layer's name -> its group: the layer names are keras.applications'.
_PREFIX_GROUPS = {
    "conv1": "stem",
    "pool1": "stem",
    "post": "post",
    **{stage: stage for stage in STAGES},
}


@dataclass(frozen=True)
class Architecture(Backbone):
    """One concrete ResNet: a depth and a version."""

    depth: int
    version: Version
    summary_with_top = True  # `transfer info` shows keras.applications' model, top included

    @property
    def blocks(self):
        return BLOCKS_PER_STAGE[self.depth]

    @property
    def name(self):
        """Model name and weights key, as keras.applications spells it: resnet50v2
        (resnet50v1.5 for v1.5, which keras.applications does not have)."""
        return f"resnet{self.depth}{self.version.model_suffix}"

    @property
    def display_name(self):
        return f"ResNet{self.depth}{self.version.model_suffix.upper()}"

    @property
    def preprocessing(self):
        return self.version.preprocessing

    @property
    def default_size(self):
        return DEFAULT_INPUT_SIZE

    @property
    def option_values(self):
        """A ResNet is recorded by depth and version, whichever way it was named."""
        return {"arch": None, "depth": self.depth, "version": self.version.name}

    def group_of(self, layer_name, previous_group):
        # Unnamed layers (the input, v2's shortcut max-pooling) belong with the layer
        # before them: the shortcut pool follows the previous block of its own stage.
        return _PREFIX_GROUPS.get(layer_name.split("_", 1)[0], previous_group)


def get_architecture(depth=50, version="v1"):
    """Return the `Architecture` for `depth` and `version`, or raise naming both."""
    try:
        depth = int(depth)
    except (TypeError, ValueError):
        depth = depth  # reported as given below
    if depth not in BLOCKS_PER_STAGE:
        smaller = (
            f" For a smaller model, pass another family: {SMALLER_FAMILIES}."
            if isinstance(depth, int) and depth < min(BLOCKS_PER_STAGE)
            else ""
        )
        raise InvalidArgumentError(
            f"Unsupported ResNet depth: {depth!r}. "
            f"Expected one of {', '.join(str(d) for d in BLOCKS_PER_STAGE)}.{smaller}"
        )
    key = str(version).lower()
    if key not in VERSIONS:
        raise InvalidArgumentError(
            f"Unknown ResNet version: {version!r}. Expected one of {', '.join(VERSIONS)}."
        )
    return Architecture(depth, VERSIONS[key])


# Every ResNet of the table, by depth then version.
ARCHITECTURES = tuple(
    Architecture(depth, version) for depth in BLOCKS_PER_STAGE for version in VERSIONS.values()
)


def image_size_pair(image_size):
    """(height, width) from an int or a pair."""
    if isinstance(image_size, int):
        return (image_size, image_size)
    return tuple(int(d) for d in image_size)
