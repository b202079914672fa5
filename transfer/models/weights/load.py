"""Loading weights into a ResNet built by `transfer`: layers matched by name, with
every mismatch explained (which architecture the file holds, which layers lack
weights, which shapes differ)."""

import logging
import os
from pathlib import Path

from transfer.errors import InvalidArgumentError, WeightsError, listing
from transfer.models import names
from transfer.models.identify import architecture_of, describe, find_backbone
from transfer.models.pretrained import check_imagenet_available, imagenet_checkpoint
from transfer.models.weights.download import imagenet_weights_path
from transfer.models.weights.formats import WHOLE_MODEL_FORMATS, read_weights_file

logger = logging.getLogger("transfer")

WEIGHTS_SUFFIXES = ".h5, .weights.h5, .keras, .pth or .safetensors"  # for messages


def check_weights_argument(weights, architecture=None):
    """Raise unless `weights` is None, "imagenet" (published for `architecture`, when
    given), or a path to an existing file."""
    if weights is None:
        return
    if weights == "imagenet":
        if architecture is not None:
            check_imagenet_available(architecture)
        return
    if isinstance(weights, (str, os.PathLike)):
        if Path(weights).is_file():
            return
        if Path(weights).exists():
            raise InvalidArgumentError(
                f"weights={str(weights)!r} is a folder, not a weights file. Expected None, "
                f"'imagenet', or a path to a {WEIGHTS_SUFFIXES} file."
            )
    raise InvalidArgumentError(
        f"Unknown weights: {weights!r}. Expected None (random initialisation), 'imagenet', "
        f"or a path to an existing {WEIGHTS_SUFFIXES} file."
    )


def load_weights(model, weights, architecture=None, weights_dir=None):
    """Load `weights` ("imagenet" or a file path) into a ResNet built by `transfer`.

    Layers are matched by name, so the file may come from keras.applications,
    tf-keras, Keras 3 or a `transfer` classifier; a torchvision/timm checkpoint (v1.5)
    is mapped to those names first. A classifier (`predictions`) with a different
    number of classes is skipped with a warning, and a whole model's (`.keras`,
    PyTorch) is left out of a model without a top; any other mismatch raises
    `WeightsError` naming the architecture expected and the one found.
    """
    backbone = find_backbone(model)
    architecture = architecture or architecture_of(backbone)
    has_top = any(layer.name == names.CLASSIFIER for layer in backbone.layers)
    if weights == "imagenet":
        path = imagenet_weights_path(architecture, include_top=has_top, weights_dir=weights_dir)
    else:
        check_weights_argument(weights)
        path = Path(weights)
    source = read_weights_file(path, like=backbone)
    found = source.architecture()
    expected = (architecture.depth, architecture.version.name)
    if found is not None and found != expected:
        raise WeightsError(
            f"{path.name} holds weights for {describe(found)}, but the model is "
            f"{architecture.display_name}. Build a {describe(found)} "
            f"(depth={found[0]}, version={found[1]}) or use weights made for "
            f"{architecture.display_name}."
        )
    file_has_top = names.CLASSIFIER in source.layers
    if file_has_top and not has_top and source.format not in WHOLE_MODEL_FORMATS:
        notop = imagenet_checkpoint(architecture, include_top=False).file
        raise WeightsError(
            f"{path.name} holds {architecture.display_name} with its classifier (a top "
            f"with {source.layers[names.CLASSIFIER][-1].shape[-1]} classes), but the model "
            f"has no top. Build it with include_top=True, or use the notop file ({notop})."
        )
    missing, loaded = [], 0
    for layer in backbone.layers:
        if not layer.weights:
            continue
        values = source.layers.get(layer.name)
        if layer.name == names.CLASSIFIER:
            if values is None:
                raise WeightsError(
                    f"{path.name} holds {architecture.display_name} without a classifier "
                    "(a notop file), but the model has one. Build it with "
                    "include_top=False, or use the file with the top."
                )
            if [v.shape for v in values] != [tuple(w.shape) for w in layer.weights]:
                logger.warning(
                    "Skipped the classifier of %s: it has %d classes and the model %d; "
                    "the backbone is loaded, the classifier keeps its initialisation.",
                    path.name,
                    values[-1].shape[-1],
                    layer.weights[-1].shape[-1],
                )
                continue
        if values is None:
            missing.append(layer.name)
            continue
        _assign(layer, values, path)
        loaded += 1
    if missing:
        raise WeightsError(
            f"{path.name} has no weights for {len(missing)} layers of "
            f"{architecture.display_name} ({listing(missing)}); it holds {describe(found)}."
        )
    logger.info("Loaded %d layers from %s (%s).", loaded, path, source.format)
    return path


def _assign(layer, values, path):
    expected = [tuple(w.shape) for w in layer.weights]
    got = [tuple(v.shape) for v in values]
    if expected != got:
        raise WeightsError(
            f"{path.name}: layer {layer.name} has weights of shapes {got} but the model "
            f"expects {expected}. Pretrained weights need 3 input channels and the same "
            "architecture."
        )
    layer.set_weights(values)
