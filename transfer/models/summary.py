"""A readable description of an architecture: its groups, shapes and parameters."""

from dataclasses import dataclass

import keras

from transfer.models import torch_weights
from transfer.models.architectures import get_architecture
from transfer.models.groups import groups
from transfer.models.weights import (
    KERAS_APPLICATIONS,
    imagenet_file_name,
    imagenet_md5,
    imagenet_url,
)

@dataclass
class GroupSummary:
    name: str
    layers: int
    output_shape: tuple
    params: int

def describe(depth=50, version="v1", input_size=224):
    """Build the architecture (no weights) and summarise it by group.

    `weights` lists keras.applications' ImageNet files (v1, v2); `torch_weights` the
    torchvision and timm checkpoints (v1.5), which keras.applications does not have.
    """
    from transfer.models.resnet import ResNet

    arch = get_architecture(depth, version)
    keras_files = arch.version.pretrained == KERAS_APPLICATIONS
    model = ResNet(depth, version, weights=None, input_shape=(input_size, input_size, 3))
    rows = [
        GroupSummary(
            name,
            len(layers),
            tuple(layers[-1].output.shape),
            sum(int(keras.ops.size(w)) for layer in layers for w in layer.weights),
        )
        for name, layers in groups(model).items()
    ]
    return {
        "architecture": arch,
        "groups": rows,
        "layers": len(model.layers),
        "params": model.count_params(),
        "trainable_params": sum(int(keras.ops.size(w)) for w in model.trainable_weights),
        "non_trainable_params": sum(int(keras.ops.size(w)) for w in model.non_trainable_weights),
        "weights": [
            {
                "include_top": top,
                "file": imagenet_file_name(arch, top),
                "url": imagenet_url(arch, top),
                "md5": imagenet_md5(arch, top),
            }
            for top in ((True, False) if keras_files else ())
        ],
        "torch_weights": [] if keras_files else torch_weights.pretrained_files(arch.depth),
    }
