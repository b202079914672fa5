"""The table of ResNet variants: one row per version, one per depth.

Everything else (builders, weights, groups, the CLI) reads these tables, so adding
a variant is adding a row here.
"""

from dataclasses import dataclass

from transfer.errors import InvalidArgumentError

STAGES = ("conv2", "conv3", "conv4", "conv5")
STAGE_FILTERS = (64, 128, 256, 512)  # bottleneck width; block output is 4x this

BLOCKS_PER_STAGE = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

MIN_INPUT_SIZE = 32
DEFAULT_INPUT_SIZE = 224
BN_EPSILON = 1.001e-5  # keras.applications' value, part of the weights' contract


@dataclass(frozen=True)
class Version:
    """How one published form of ResNet differs from the others."""

    name: str
    model_suffix: str  # "resnet50" + suffix is the model name and weights key
    block: str  # key of the block builder in `transfer.models.resnet`
    preact: bool  # pre-activation (BN-ReLU before conv): no conv1_bn, adds post_bn
    stage_strides: tuple  # stride of conv2..conv5
    preprocessing: str  # mode of `transfer.models.preprocessing`


VERSIONS = {
    # He et al. 2015, as in keras.applications.ResNet50: stride on the first block.
    "v1": Version("v1", "", "bottleneck_v1", False, (1, 2, 2, 2), "caffe"),
    # He et al. 2016 (identity mappings), as in keras.applications.ResNet50V2:
    # stride on the last block of a stage.
    "v2": Version("v2", "v2", "bottleneck_v2", True, (2, 2, 2, 1), "tf"),
}


@dataclass(frozen=True)
class Architecture:
    """One concrete ResNet: a depth and a version."""

    depth: int
    version: Version

    @property
    def blocks(self):
        return BLOCKS_PER_STAGE[self.depth]

    @property
    def name(self):
        """Model name and weights key, as keras.applications spells it: resnet50v2."""
        return f"resnet{self.depth}{self.version.model_suffix}"

    @property
    def display_name(self):
        return f"ResNet{self.depth}{self.version.model_suffix.upper()}"

    @property
    def feature_channels(self):
        return 4 * STAGE_FILTERS[-1]


def get_architecture(depth=50, version="v1"):
    """Return the `Architecture` for `depth` and `version`, or raise naming both."""
    try:
        depth = int(depth)
    except (TypeError, ValueError):
        depth = depth  # reported as given below
    if depth not in BLOCKS_PER_STAGE:
        raise InvalidArgumentError(
            f"Unsupported ResNet depth: {depth!r}. "
            f"Expected one of {', '.join(str(d) for d in BLOCKS_PER_STAGE)}."
        )
    key = str(version).lower()
    if key not in VERSIONS:
        raise InvalidArgumentError(
            f"Unknown ResNet version: {version!r}. Expected one of {', '.join(VERSIONS)}."
        )
    return Architecture(depth, VERSIONS[key])


def all_architectures():
    """Every (depth, version) the tables define, in table order."""
    return [Architecture(d, v) for v in VERSIONS.values() for d in BLOCKS_PER_STAGE]
