"""A readable description of an architecture: its groups, shapes, parameters and
published ImageNet checkpoints."""

from dataclasses import dataclass

from transfer.lazy import keras
from transfer.models.architectures import get_architecture
from transfer.models.groups import groups
from transfer.models.pretrained import checkpoints
from transfer.models.resnet import ResNet


@dataclass
class GroupSummary:
    name: str
    layers: int
    output_shape: tuple
    params: int


def _count(weights):
    return sum(int(keras.ops.size(w)) for w in weights)


def describe(depth=50, version="v1", input_size=224):
    """Build the architecture (no weights) and summarise it by group.

    `checkpoints` lists the published ImageNet weights (`transfer.models.pretrained`):
    keras.applications' files for v1 and v2, torchvision's and timm's for v1.5.
    """
    arch = get_architecture(depth, version)
    model = ResNet(depth, version, weights=None, input_shape=(input_size, input_size, 3))
    rows = [
        GroupSummary(name, len(layers), tuple(layers[-1].output.shape),
                     _count(w for layer in layers for w in layer.weights))
        for name, layers in groups(model).items()
    ]
    return {
        "architecture": arch,
        "groups": rows,
        "layers": len(model.layers),
        "params": model.count_params(),
        "trainable_params": _count(model.trainable_weights),
        "non_trainable_params": _count(model.non_trainable_weights),
        "checkpoints": checkpoints(arch),
    }
