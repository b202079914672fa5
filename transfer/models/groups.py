"""Layer groups of a ResNet (stem, conv2..conv5, post, head) and freezing by group.

A group is found from the layer names that keras.applications gives, so it works on
a bare backbone, on a classifier that nests one, and on either after save and load.
Frozen layers are `trainable=False`; for BatchNormalization that also means
inference mode in Keras 3, so its moving statistics stay as they are.
"""

from collections import OrderedDict

from transfer.errors import InvalidArgumentError
from transfer.lazy import keras
from transfer.models import names
from transfer.models.architectures import GROUPS, STAGES
from transfer.models.identify import find_backbone

_PREFIX_GROUPS = {"conv1": "stem", "pool1": "stem", "post": "post",
                  **{stage: stage for stage in STAGES}}
_HEAD_NAMES = {*names.TOP_POOLINGS, names.CLASSIFIER}


def _backbone_group(layer_name, previous_group):
    prefix = layer_name.split("_", 1)[0]
    if prefix in _PREFIX_GROUPS:
        return _PREFIX_GROUPS[prefix]
    if layer_name in _HEAD_NAMES:
        return "head"
    # Unnamed layers (the input, v2's shortcut max-pooling) belong with the layer
    # before them: the shortcut pool follows the previous block of its own stage.
    return previous_group


def groups(model):
    """Ordered {group name: [layers]} of a backbone or of a classifier nesting one.

    Groups absent from the model (post in v1, head without a top) are left out.
    Layers of the classifier around a nested backbone go to the stem (input,
    preprocessing) when they come before it and to the head when they come after.
    """
    backbone = find_backbone(model)
    result = OrderedDict((name, []) for name in GROUPS)
    outer = model.layers if backbone is not model else [backbone]
    seen_backbone = False
    for outer_layer in outer:
        if outer_layer is backbone:
            seen_backbone = True
            group = "stem"
            for layer in backbone.layers:
                group = _backbone_group(layer.name, group)
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


def set_trainable_from(model, first_trainable=None, train_bn=False):
    """Freeze every group before `first_trainable`; make it and later groups trainable.

    `first_trainable=None` freezes everything. BatchNormalization in trainable groups
    stays frozen (inference mode, moving statistics kept) unless `train_bn=True`.
    Recompile the model afterwards, as for any change of `trainable` in Keras.
    """
    model_groups = groups(model)
    if first_trainable is not None:
        _check_group(model_groups, first_trainable, "from")
    backbone = find_backbone(model)
    # Layers before the backbone (input, preprocessing) hold fixed arithmetic.
    fixed = {id(layer) for layer in model_groups["stem"]} - {id(l) for l in backbone.layers}
    trainable = False
    for name, layers in model_groups.items():
        trainable = trainable or name == first_trainable
        for layer in layers:
            if id(layer) in fixed:
                layer.trainable = False
            elif isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = trainable and train_bn
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
