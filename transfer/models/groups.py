"""Layer groups of a backbone (stem, conv2..conv5, post, head) and freezing by group.

A group is found from the layer names that keras.applications gives, so it works on
a bare backbone, on a classifier that nests one, and on either after save and load.
Frozen layers are `trainable=False`; for BatchNormalization that also means
inference mode in Keras 3, so its moving statistics stay as they are.
"""

from collections import OrderedDict

from transfer.errors import InvalidArgumentError
from transfer.lazy import keras
from transfer.models import names
from transfer.models.identify import architecture_of, find_backbone

_HEAD_NAMES = {*names.TOP_POOLINGS, names.CLASSIFIER}


def groups(model):
    """Ordered {group name: [layers]} of a backbone or of a classifier nesting one.

    Groups absent from the model (post in v1, head without a top) are left out.
    Layers of the classifier around a nested backbone go to the stem (input,
    preprocessing) when they come before it and to the head when they come after.
    """
    backbone = find_backbone(model)
    architecture = architecture_of(backbone)
    result = OrderedDict((name, []) for name in architecture.groups)
    outer = model.layers if backbone is not model else [backbone]
    seen_backbone = False
    for outer_layer in outer:
        if outer_layer is backbone:
            seen_backbone = True
            group = "stem"
            for layer in backbone.layers:
                if group == "head" or layer.name in _HEAD_NAMES:
                    group = "head"  # keras.applications' top, built with include_top
                else:
                    group = architecture.group_of(layer.name, group)
                result[group].append(layer)
        else:
            result["head" if seen_backbone else "stem"].append(outer_layer)
    return OrderedDict((name, layers) for name, layers in result.items() if layers)


def _check_group(model_groups, name, argument):
    if name not in model_groups:
        raise InvalidArgumentError(
            f"Unknown group: {argument}={name!r}. This model has the groups "
            f"{', '.join(model_groups)}."
        )


# MobileNet's BatchNormalization has momentum 0.999: its moving statistics take
# thousands of steps to leave their initial values, so a short run that trains them
# validates at chance (MobileNetV3Small from scratch, 3 epochs at 32 px: training
# accuracy 0.71, validation 0.19). 0.99 is ResNet's and keras' default.
TRAINED_BN_MOMENTUM = 0.99


def set_trainable_from(model, first_trainable=None, train_bn=False):
    """Freeze every group before `first_trainable`; make it and later groups trainable.

    `first_trainable=None` freezes everything. BatchNormalization in trainable groups
    stays frozen (inference mode, moving statistics kept) unless `train_bn=True`; then
    its momentum is at most TRAINED_BN_MOMENTUM. Recompile the model afterwards, as for
    any change of `trainable` in Keras.
    """
    model_groups = groups(model)
    if first_trainable is not None:
        _check_group(model_groups, first_trainable, "from")
    backbone = find_backbone(model)
    # Layers before the backbone (input, preprocessing) hold fixed arithmetic.
    fixed = {id(layer) for layer in model_groups["stem"]} - {id(layer) for layer in backbone.layers}
    trainable = False
    for name, layers in model_groups.items():
        trainable = trainable or name == first_trainable
        for layer in layers:
            if id(layer) in fixed:
                layer.trainable = False
            elif isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = trainable and train_bn
                if layer.trainable:
                    layer.momentum = min(layer.momentum, TRAINED_BN_MOMENTUM)
            else:
                layer.trainable = trainable
    return model


def freeze(model, until=None, train_bn=False):
    """Freeze the groups from the stem up to and including `until`.

    `until=None` freezes the whole backbone (every group but the head). Later groups
    become trainable; their BatchNormalization stays in inference mode unless
    `train_bn=True`.
    """
    model_groups = groups(model)
    names = list(model_groups)
    if until is None:
        until = names[-2] if names[-1] == "head" else names[-1]
    _check_group(model_groups, until, "until")
    index = names.index(until)
    first = names[index + 1] if index + 1 < len(names) else None
    return set_trainable_from(model, first, train_bn=train_bn)


def unfreeze(model, start="stem", train_bn=False):
    """Make the groups from `start` on trainable and freeze the ones before it."""
    return set_trainable_from(model, start, train_bn=train_bn)


def split_at_group(model, start):
    """(prefix, suffix): two models sharing `model`'s layers, raw pixels -> the input
    of group `start` -> the classifier's outputs, so that suffix(prefix(x)) equals
    model(x). None where the groups before `start` hand on more than one tensor or
    `start` is the first group (nothing to split off)."""
    model_groups = groups(model)
    _check_group(model_groups, start, "start")
    names_ = list(model_groups)
    index = names_.index(start)
    backbone = find_backbone(model)
    if index == 0 or backbone is model:
        return None
    before = {id(layer) for name in names_[:index] for layer in model_groups[name]}
    after = [
        layer for name in names_[index:] for layer in model_groups[name] if layer in backbone.layers
    ]
    # The tensors that layers from `start` on take from the earlier groups, in the
    # backbone's own graph (a layer's first call; later ones are other models').
    crossing = {
        id(tensor): tensor
        for layer in after
        for tensor in layer._inbound_nodes[0].input_tensors
        if id(tensor._keras_history.operation) in before
    }
    if len(crossing) != 1 or not after:
        return None
    boundary = next(iter(crossing.values()))
    inner_suffix = keras.Model(boundary, backbone.output, name=f"{backbone.name}_from_{start}")
    inputs = keras.Input(boundary.shape[1:], dtype=boundary.dtype, name=f"{start}_input")
    x = inner_suffix(inputs)
    for layer in model.layers[model.layers.index(backbone) + 1 :]:
        x = layer(x)
    # The prefix: the classifier up to the backbone, then the backbone up to the boundary.
    inner_prefix = keras.Model(backbone.input, boundary, name=f"{backbone.name}_to_{start}")
    pixels = model.input
    y = pixels
    for layer in model.layers[1 : model.layers.index(backbone)]:
        y = layer(y)
    prefix = keras.Model(pixels, inner_prefix(y), name=f"to_{start}")
    return prefix, keras.Model(inputs, x, name=f"from_{start}")
