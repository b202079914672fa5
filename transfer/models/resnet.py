"""ResNet50/101/152, v1, v1.5 and v2; v1 and v2 layer-for-layer compatible with
keras.applications, v1.5 with torchvision's resnet50/101/152.

Three levels, as in keras.applications: a block, a stack of blocks (one stage), and
one generic builder driven by `transfer.models.architectures`. Layer names are built
from a prefix (`conv3_block2_1_conv`); they are the keys of the official weight files,
so they are a public contract and must not change.
"""

from transfer.errors import InvalidArgumentError
from transfer.lazy import keras, layers
from transfer.models import names
from transfer.models.architectures import (
    DEFAULT_INPUT_SIZE,
    STAGE_FILTERS,
    STAGES,
    Architecture,
    get_architecture,
)
from transfer.models.backbones import MIN_INPUT_SIZE, builds
from transfer.models.weights.load import check_weights_argument, load_weights

POOLING_MODES = (None, "avg", "max")
AVG_POOL, MAX_POOL = names.TOP_POOLINGS


def _bn(name, version):
    return layers.BatchNormalization(axis=-1, epsilon=version.bn_epsilon, name=name)


def bottleneck_v1(x, filters, version, stride=1, conv_shortcut=True, name=None):
    """Post-activation bottleneck; the stride sits where `version.stride_on` says.

    v1 (keras.applications) strides the first 1x1 convolution. v1.5 (torchvision)
    strides the 3x3 one, padded by 1 on each side as PyTorch does: TF's "same" pads
    a stride-2 convolution of an even size by 0 before and 1 after, which shifts
    every window. Padding takes its own layer, `_2_pad`, as in keras.applications' v2.
    """
    stride_1x1, stride_3x3 = (stride, 1) if version.stride_on == "1x1" else (1, stride)
    bias = version.conv_bias
    if conv_shortcut:
        shortcut = layers.Conv2D(
            4 * filters, 1, strides=stride, use_bias=bias, name=f"{name}_0_conv"
        )(x)
        shortcut = _bn(f"{name}_0_bn", version)(shortcut)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=stride_1x1, use_bias=bias, name=f"{name}_1_conv")(x)
    x = _bn(f"{name}_1_bn", version)(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    if version.stride_on == "3x3":
        x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name=f"{name}_2_pad")(x)
        x = layers.Conv2D(filters, 3, strides=stride_3x3, use_bias=bias, name=f"{name}_2_conv")(x)
    else:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=bias, name=f"{name}_2_conv")(x)
    x = _bn(f"{name}_2_bn", version)(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, use_bias=bias, name=f"{name}_3_conv")(x)
    x = _bn(f"{name}_3_bn", version)(x)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def stack_v1(x, filters, blocks, stride, name, version):
    x = bottleneck_v1(x, filters, version, stride=stride, name=f"{name}_block1")
    for i in range(2, blocks + 1):
        x = bottleneck_v1(x, filters, version, conv_shortcut=False, name=f"{name}_block{i}")
    return x


def bottleneck_v2(x, filters, version, stride=1, conv_shortcut=False, name=None):
    """Pre-activation bottleneck; the stride sits on the 3x3 convolution."""
    preact = _bn(f"{name}_preact_bn", version)(x)
    preact = layers.Activation("relu", name=f"{name}_preact_relu")(preact)
    if conv_shortcut:
        shortcut = layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(preact)
    elif stride > 1:
        # Unnamed in keras.applications too: it holds no weights, and its automatic
        # name (max_pooling2d, max_pooling2d_1, ...) is what the reference gets.
        shortcut = layers.MaxPooling2D(1, strides=stride)(x)
    else:
        shortcut = x
    x = layers.Conv2D(filters, 1, strides=1, use_bias=False, name=f"{name}_1_conv")(preact)
    x = _bn(f"{name}_1_bn", version)(x)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name=f"{name}_2_pad")(x)
    x = layers.Conv2D(filters, 3, strides=stride, use_bias=False, name=f"{name}_2_conv")(x)
    x = _bn(f"{name}_2_bn", version)(x)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    return layers.Add(name=f"{name}_out")([shortcut, x])


def stack_v2(x, filters, blocks, stride, name, version):
    x = bottleneck_v2(x, filters, version, conv_shortcut=True, name=f"{name}_block1")
    for i in range(2, blocks):
        x = bottleneck_v2(x, filters, version, name=f"{name}_block{i}")
    return bottleneck_v2(x, filters, version, stride=stride, name=f"{name}_block{blocks}")


# Version.block -> the function that builds one stage of that block kind.
STACK_BUILDERS = {
    "bottleneck_v1": stack_v1,
    "bottleneck_v2": stack_v2,
}


def _resolve_input_shape(input_shape, include_top, pretrained):
    """keras.applications' `obtain_input_shape` for channels_last, with our errors."""
    if input_shape is None:
        if include_top:
            return (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE, 3)
        return (None, None, 3)
    input_shape = tuple(None if d is None else int(d) for d in input_shape)
    if len(input_shape) != 3:
        raise InvalidArgumentError(
            f"input_shape must be (height, width, channels). Received: input_shape={input_shape}"
        )
    height, width, channels = input_shape
    if pretrained and channels != 3:
        raise InvalidArgumentError(
            "Pretrained weights need 3 input channels (RGB). "
            f"Received: input_shape={input_shape}; use weights=None for {channels} channels."
        )
    if any(d is not None and d < MIN_INPUT_SIZE for d in (height, width)):
        raise InvalidArgumentError(
            f"Input size must be at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}. "
            f"Received: input_shape={input_shape}"
        )
    if include_top and (height is None or width is None):
        raise InvalidArgumentError(
            "With include_top=True the input height and width must be fixed. "
            f"Received: input_shape={input_shape}"
        )
    return input_shape


def _check_weights_argument(weights, include_top, classes, classifier_activation, arch):
    check_weights_argument(weights, arch)
    if weights == "imagenet" and include_top and classes != 1000:
        raise InvalidArgumentError(
            "With weights='imagenet' and include_top=True, classes must be 1000. "
            f"Received: classes={classes}; use include_top=False and attach a new head."
        )
    if weights is not None and include_top:
        activation = keras.activations.get(classifier_activation)
        if activation not in (keras.activations.get("softmax"), keras.activations.get(None)):
            raise InvalidArgumentError(
                "With pretrained weights and include_top=True, classifier_activation must "
                f"be 'softmax' or None. Received: classifier_activation={classifier_activation!r}"
            )


def ResNet(
    depth=50,
    version="v1",
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
    weights_dir=None,
):
    """Build any ResNet of the architecture table; the six named builders call this.

    Arguments are those of `keras.applications.ResNet50`, plus `depth` (50, 101, 152)
    and `version` ("v1", "v1.5", "v2"). `weights` is None, "imagenet" (v1 and v2), or a
    path to a weights file: any Keras format, or a torchvision/timm checkpoint for v1.5
    (see `transfer.load_weights`); "imagenet" files are looked for in `weights_dir` (or
    $TRANSFER_WEIGHTS_DIR), then Keras' cache, then downloaded.
    Returns a `keras.Model` whose layer names, order and weight shapes are those of
    keras.applications (v1, v2), or those of v1 plus a `_2_pad` layer per block (v1.5).
    """
    arch = get_architecture(depth, version)
    if pooling not in POOLING_MODES:
        raise InvalidArgumentError(
            f"Unknown pooling: {pooling!r}. Expected one of None, 'avg', 'max'."
        )
    _check_weights_argument(weights, include_top, classes, classifier_activation, arch)
    if weights == "imagenet" and include_top and input_shape is not None:
        if tuple(input_shape) != (DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE, 3):
            raise InvalidArgumentError(
                "With weights='imagenet' and include_top=True the input shape must be "
                f"(224, 224, 3). Received: input_shape={tuple(input_shape)}; "
                "use include_top=False for other sizes."
            )
    input_shape = _resolve_input_shape(input_shape, include_top, weights is not None)

    if input_tensor is None:
        img_input = layers.Input(shape=input_shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor

    version = arch.version
    # Explicit symmetric padding, as PyTorch pads its 7x7/2 convolution and 3x3/2 pool.
    x = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")(img_input)
    x = layers.Conv2D(64, 7, strides=2, use_bias=version.conv_bias, name=names.STEM_CONV)(x)
    if not version.preact:
        x = _bn("conv1_bn", version)(x)
        x = layers.Activation("relu", name="conv1_relu")(x)
    # PyTorch pads its max-pooling with -inf; zeros are the same after a ReLU (v1, v1.5).
    x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    stack = STACK_BUILDERS[version.block]
    for stage, filters, blocks, stride in zip(
        STAGES, STAGE_FILTERS, arch.blocks, version.stage_strides
    ):
        x = stack(x, filters, blocks, stride, stage, version)

    if version.preact:
        x = _bn("post_bn", version)(x)
        x = layers.Activation("relu", name="post_relu")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name=AVG_POOL)(x)
        x = layers.Dense(classes, activation=classifier_activation, name=names.CLASSIFIER)(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name=AVG_POOL)(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name=MAX_POOL)(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = keras.Model(inputs, x, name=name or arch.name)

    if weights is not None:
        load_weights(model, weights, architecture=arch, weights_dir=weights_dir)
    return model


@builds(Architecture)
def build_resnet(
    architecture, include_top=False, weights="imagenet", input_shape=None, weights_dir=None
):
    """`Backbone.build` of a ResNet of the table."""
    return ResNet(
        architecture.depth,
        architecture.version.name,
        include_top=include_top,
        weights=weights,
        input_shape=input_shape,
        weights_dir=weights_dir,
    )


def _variant(depth, version):
    """Make the public builder of one variant, with keras.applications' signature."""
    arch = get_architecture(depth, version)

    def builder(
        include_top=True,
        weights="imagenet",
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        name=arch.name,
    ):
        return ResNet(
            depth,
            version,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
        )

    builder.__name__ = builder.__qualname__ = arch.display_name
    builder.__doc__ = (
        f"Instantiate {arch.display_name}, compatible with "
        f"`keras.applications.{arch.display_name}`.\n\n"
        "See `transfer.ResNet` for the arguments."
    )
    return builder


ResNet50 = _variant(50, "v1")
ResNet101 = _variant(101, "v1")
ResNet152 = _variant(152, "v1")
ResNet50V2 = _variant(50, "v2")
ResNet101V2 = _variant(101, "v2")
ResNet152V2 = _variant(152, "v2")
