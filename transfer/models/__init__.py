"""ResNet architectures, preprocessing, weights and layer groups."""

from transfer.models.architectures import Architecture, get_architecture
from transfer.models.groups import GROUPS, architecture_of, find_backbone, freeze, groups, unfreeze
from transfer.models.heads import attach_head, build_classifier, feature_extractor
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
from transfer.models.weights import (
    imagenet_weights_path,
    load_weights,
    read_weights_file,
)
