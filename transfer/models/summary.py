"""A readable description of an architecture: its groups, shapes, parameters,
multiply-adds per image and published ImageNet checkpoints."""

from dataclasses import dataclass

import numpy as np

from transfer.lazy import keras
from transfer.models.applications import build_backbone
from transfer.models.families import resolve_architecture
from transfer.models.groups import groups
from transfer.models.pretrained import checkpoints


@dataclass
class GroupSummary:
    name: str
    layers: int
    output_shape: tuple
    params: int


def _count(weights):
    return sum(int(keras.ops.size(w)) for w in weights)


def multiply_adds(model):
    """Multiply-adds of one image through `model` (built for a fixed input size), counted
    from the output shapes of its convolutions and dense layers; normalisation,
    activations, pooling and additions (a few percent) are left out."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):  # nested: a backbone, ConvNeXt's downsampling
            total += multiply_adds(layer)
            continue
        kernel = getattr(layer, "kernel", None)
        if kernel is None or not isinstance(
            layer, (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D)
        ):
            continue
        outputs = int(np.prod(layer.output.shape[1:]))
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            per_output = int(np.prod(kernel.shape[:2]))  # one input channel per output
        else:  # Conv2D (kernel h, w, inputs per group, outputs) and Dense (inputs, outputs)
            per_output = int(np.prod(kernel.shape[:-1]))
        total += outputs * per_output
    return total


def describe(depth=50, version="v1", input_size=None, arch=None):
    """Build the architecture (no weights) and summarise it by group.

    `input_size` defaults to the backbone's ImageNet size. `checkpoints` lists the
    published ImageNet weights (`transfer.models.pretrained`): keras.applications' files
    for v1, v2 and the other families, torchvision's and timm's for v1.5. The backbone
    is built with its ImageNet top where its `summary_with_top` says so (ResNet, as
    keras.applications publishes it), else without it, as fine-tuning uses it.
    """
    arch = resolve_architecture(arch, depth, version)
    input_size = input_size or arch.default_size
    model = build_backbone(
        arch,
        include_top=arch.summary_with_top,
        weights=None,
        input_shape=(input_size, input_size, 3),
    )
    rows = [
        GroupSummary(
            name,
            len(layers),
            tuple(layers[-1].output.shape),
            _count(w for layer in layers for w in layer.weights),
        )
        for name, layers in groups(model).items()
    ]
    return {
        "architecture": arch,
        "input_size": input_size,
        "groups": rows,
        "layers": len(model.layers),
        "params": model.count_params(),
        "trainable_params": _count(model.trainable_weights),
        "non_trainable_params": _count(model.non_trainable_weights),
        "multiply_adds": multiply_adds(model),
        "checkpoints": checkpoints(arch),
    }
