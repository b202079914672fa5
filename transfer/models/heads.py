"""New classification heads on a ResNet backbone, and the one-call classifier builder.

The classifier is one Keras model from raw 0-255 RGB pixels to probabilities:
input -> preprocessing layer (the backbone's mode) -> backbone -> head. The backbone
is nested as one layer, so it can be taken out again as a feature extractor. The
head owns pooling, dropout and the output layer; the backbone knows nothing about
classes.
"""

import numpy as np

from transfer.errors import InvalidArgumentError, unknown_choice
from transfer.lazy import keras
from transfer.models import names
from transfer.models.applications import build_backbone
from transfer.models.architectures import image_size_pair
from transfer.models.families import resolve_architecture
from transfer.models.groups import groups
from transfer.models.identify import architecture_of, find_backbone
from transfer.models.preprocessing import preprocessing_layer

# pooling -> the Keras layer that pools the last feature map
# The two tasks: one class per image (softmax), or any number of labels (sigmoids).
SINGLE_LABEL, MULTI_LABEL = "single", "multi"
OUTPUT_ACTIVATION = {SINGLE_LABEL: "softmax", MULTI_LABEL: "sigmoid"}

HEAD_POOLING = {"avg": "GlobalAveragePooling2D", "max": "GlobalMaxPooling2D"}
POOLINGS = tuple(HEAD_POOLING)


def _pooling_layer(pooling):
    return getattr(keras.layers, HEAD_POOLING[pooling])(name=names.HEAD_POOL)


def attach_head(
    backbone,
    num_classes,
    pooling="avg",
    dropout=0.0,
    hidden_units=None,
    multi_label=False,
    standardize=False,
    name=None,
):
    """Put a new classifier on a feature-map backbone (`include_top=False, pooling=None`).

    Args:
        backbone: a ResNet from `transfer` (or keras.applications) without top or pooling.
        num_classes: number of outputs.
        pooling: "avg" or "max" global pooling of the last feature map.
        dropout: dropout rate before the output layer (and after the hidden layer).
        hidden_units: optional width of a hidden ReLU layer between pooling and output.
        multi_label: sigmoid outputs (independent labels) instead of softmax.
        standardize: standardise the pooled features (a Normalization layer, identity
            until `set_standardization` gives it the training features' statistics).

    Returns a `keras.Model` taking raw RGB pixels (0-255, any numeric dtype) and
    giving probabilities; it saves to `.keras` and reloads with safe mode on.
    """
    backbone = find_backbone(backbone)
    architecture = architecture_of(backbone)
    if len(backbone.output.shape) != 4:
        raise InvalidArgumentError(
            f"attach_head needs a backbone that outputs a feature map; {backbone.name!r} "
            f"outputs shape {tuple(backbone.output.shape)}. Build it with "
            "include_top=False and pooling=None."
        )
    if pooling not in HEAD_POOLING:
        raise unknown_choice("head pooling", pooling, POOLINGS)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise InvalidArgumentError(
            f"num_classes must be a positive integer. Received: num_classes={num_classes!r}"
        )
    if not 0.0 <= float(dropout) < 1.0:
        raise InvalidArgumentError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    if hidden_units is not None and (not isinstance(hidden_units, int) or hidden_units < 1):
        raise InvalidArgumentError(
            f"hidden_units must be a positive integer or None. Received: hidden_units={hidden_units!r}"
        )

    layers = keras.layers
    inputs = keras.Input(shape=backbone.input.shape[1:], name=names.INPUT)
    x = preprocessing_layer(architecture.preprocessing, name=names.PREPROCESSING)(inputs)
    x = backbone(x)
    x = _pooling_layer(pooling)(x)
    if standardize:
        # float32: the features' statistics do not fit float16 under mixed precision.
        x = layers.Normalization(axis=-1, name=names.HEAD_STANDARDIZE, dtype="float32")(x)
    if hidden_units:
        if dropout:
            x = layers.Dropout(dropout, name=names.HEAD_DROPOUT)(x)
        x = layers.Dense(hidden_units, activation="relu", name=names.HEAD_HIDDEN)(x)
    if dropout:
        x = layers.Dropout(
            dropout, name=names.HEAD_HIDDEN_DROPOUT if hidden_units else names.HEAD_DROPOUT
        )(x)
    activation = OUTPUT_ACTIVATION[MULTI_LABEL if multi_label else SINGLE_LABEL]
    # float32 output: softmax and the loss stay stable under mixed precision.
    outputs = layers.Dense(
        num_classes, activation=activation, dtype="float32", name=names.CLASSIFIER
    )(x)
    return keras.Model(inputs, outputs, name=name or f"{backbone.name}_classifier")


def build_classifier(
    num_classes,
    depth=50,
    version="v1",
    weights="imagenet",
    image_size=224,
    weights_dir=None,
    arch=None,
    **head_options,
):
    """Build a backbone (`include_top=False`) and attach a new head to it.

    The backbone is `arch` (an --arch name of `transfer.models.families`, e.g.
    "efficientnet_b0") or else the ResNet of `depth` and `version`. `image_size` may be
    an int, a (height, width) pair, or None for any size. `head_options` are those of
    `attach_head`.
    """
    shape = (None, None, 3) if image_size is None else (*image_size_pair(image_size), 3)
    backbone = build_backbone(
        resolve_architecture(arch, depth, version),
        include_top=False,
        weights=weights,
        input_shape=shape,
        weights_dir=weights_dir,
    )
    return attach_head(backbone, num_classes, **head_options)


def feature_extractor(model, pooling="avg", group=None):
    """From a classifier (or backbone), a model: raw pixels -> backbone features.

    `group` (stem, conv2..conv5, post) ends at that group's last layer instead of the
    backbone's; `pooling` "avg" or "max" pools the feature map, None keeps it.
    """
    backbone = find_backbone(model)
    architecture = architecture_of(backbone)
    if pooling is not None and pooling not in HEAD_POOLING:
        raise InvalidArgumentError(
            f"Unknown pooling: {pooling!r}. Expected one of {', '.join(POOLINGS)} or none."
        )
    if group is not None:
        found = groups(backbone)
        choices = [g for g in found if g != "head"]
        if group not in choices:
            raise InvalidArgumentError(
                f"Unknown group: {group!r}. Expected one of {', '.join(choices)}."
            )
        backbone = keras.Model(
            backbone.input, found[group][-1].output, name=f"{backbone.name}_{group}"
        )
    inputs = keras.Input(shape=backbone.input.shape[1:], name=names.INPUT)
    x = preprocessing_layer(architecture.preprocessing, name=names.PREPROCESSING)(inputs)
    x = backbone(x)
    if pooling is not None:
        x = _pooling_layer(pooling)(x)
    return keras.Model(inputs, x, name=f"{backbone.name}_features")


def head_model(classifier):
    """The layers after pooling, as a model from pooled features to probabilities.

    It shares its layers (and so its weights) with `classifier`.
    """
    head_layers = groups(classifier)["head"]
    pool_index = [layer.name for layer in head_layers].index(names.HEAD_POOL)
    features = keras.Input(shape=head_layers[pool_index].output.shape[1:], name="features")
    x = features
    for layer in head_layers[pool_index + 1 :]:
        x = layer(x)
    return keras.Model(features, x, name="head")


def pooled_features(classifier):
    """Model: raw pixels -> pooled backbone features, sharing layers with `classifier`."""
    return keras.Model(
        classifier.input, classifier.get_layer(names.HEAD_POOL).output, name="pooled_features"
    )


def set_standardization(model, mean, variance):
    """Give a head's standardisation layer the statistics of the training features."""
    layer = model.get_layer(names.HEAD_STANDARDIZE)
    count = np.asarray(layer.weights[2]) if len(layer.weights) > 2 else None
    values = [np.asarray(mean, "float32"), np.asarray(variance, "float32")]
    layer.set_weights(values + ([count] if count is not None else []))
    layer.finalize_state()


def has_hidden_layer(model):
    return any(layer.name == names.HEAD_HIDDEN for layer in model.layers)


def has_standardization(model):
    return any(layer.name == names.HEAD_STANDARDIZE for layer in model.layers)


def is_classifier(model):
    """Whether `model` ends in our (or keras.applications') classifier layer."""
    return (
        any(layer.name == names.CLASSIFIER for layer in model.layers)
        and len(model.output.shape) == 2
    )


def task_of(model):
    """MULTI_LABEL for a classifier whose outputs are independent sigmoids, else
    SINGLE_LABEL: the output layer says which, in any model that holds it."""
    activation = model.get_layer(names.CLASSIFIER).get_config().get("activation")
    return MULTI_LABEL if activation == OUTPUT_ACTIVATION[MULTI_LABEL] else SINGLE_LABEL
