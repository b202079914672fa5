"""transfer: transfer learning for image classification on Keras 3 and TensorFlow.

A from-scratch ResNet50/101/152 (v1 and v2) that is layer-for-layer compatible with
`keras.applications`, and the tools around it: weights, groups, heads, fine-tuning.
"""

import os
from importlib.metadata import PackageNotFoundError, version

# TensorFlow turns its oneDNN CPU kernels on only for CPUs with AVX-512-class
# features. On the AVX2 machines this project runs on, turning them on trained
# ResNet50 3-5x faster and ran inference up to 1.4x faster (README, "Speed").
# TensorFlow reads this once, when it loads, so it takes effect when `transfer` is
# imported before TensorFlow. TF_ENABLE_ONEDNN_OPTS=0 turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

try:
    __version__ = version("transfer")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

from transfer.errors import (
    DataError,
    InvalidArgumentError,
    RunFailedError,
    TransferError,
    WeightsError,
)
from transfer.models import (
    GROUPS,
    preprocessing_layer,
    ResNet,
    ResNet50,
    ResNet50V2,
    ResNet101,
    ResNet101V2,
    ResNet152,
    ResNet152V2,
    architecture_of,
    attach_head,
    build_classifier,
    feature_extractor,
    find_backbone,
    freeze,
    get_architecture,
    groups,
    imagenet_weights_path,
    load_weights,
    preprocess_input,
    unfreeze,
)
