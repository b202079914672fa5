"""Backbones (the ResNet architectures and keras.applications' other families, behind
one interface), preprocessing, pretrained weights, layer groups and heads."""

from transfer.models.applications import build_backbone
from transfer.models.architectures import Architecture, get_architecture
from transfer.models.backbones import GROUPS, Backbone
from transfer.models.families import FAMILIES, resolve_architecture
from transfer.models.groups import freeze, groups, unfreeze
from transfer.models.heads import (
    attach_head,
    build_classifier,
    feature_extractor,
    head_model,
    pooled_features,
)
from transfer.models.identify import architecture_of, find_backbone
from transfer.models.preprocessing import preprocess_input, preprocessing_layer
from transfer.models.resnet import (
    ResNet,
    ResNet50,
    ResNet50V2,
    ResNet101,
    ResNet101V2,
    ResNet152,
    ResNet152V2,
)
from transfer.models.weights.download import imagenet_weights_path
from transfer.models.weights.formats import read_weights_file
from transfer.models.weights.load import load_weights
