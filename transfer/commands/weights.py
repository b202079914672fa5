"""`transfer weights`: find (or download) the official ImageNet weights file."""

from transfer.models.families import resolve_architecture
from transfer.models.weights.download import imagenet_weights_path


def weights(depth, version, include_top=False, weights_dir=None, arch=None):
    """The local path of keras.applications' ImageNet file for a ResNet (or `arch`)."""
    return imagenet_weights_path(
        resolve_architecture(arch, depth, version), include_top=include_top, weights_dir=weights_dir
    )
