"""`transfer weights`: find (or download) the official ImageNet weights file."""

from transfer.models.architectures import get_architecture
from transfer.models.weights.download import imagenet_weights_path


def weights(depth, version, include_top=False, weights_dir=None):
    """The local path of keras.applications' ImageNet file for a ResNet."""
    return imagenet_weights_path(get_architecture(depth, version), include_top=include_top,
                                 weights_dir=weights_dir)
