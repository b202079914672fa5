"""Pretrained weights: the ImageNet files of keras.applications, and weight files in
every format Keras writes, loaded by layer name with mismatches explained.

Formats read (detected from the file's content, not its suffix):
- legacy Keras H5 (`layer_names`/`weight_names` attributes): the official ImageNet
  files, tf-keras' `save_weights("x.h5")`, and whole-model `.h5` saves;
- Keras 3 `.weights.h5`, whose groups are named by layer class and position;
- Keras 3 `.keras` archives, whose `config.json` gives the layer names;
- PyTorch checkpoints of ResNet v1.5, torchvision's `.pth` and timm's `.safetensors`
  (see `transfer.models.torch_weights`).
"""

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import socket
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import keras
import numpy as np

from transfer.errors import InvalidArgumentError, WeightsError
from transfer.models import torch_weights
from transfer.models.architectures import (
    BLOCKS_PER_STAGE,
    STAGES,
    VERSIONS,
    get_architecture,
)

logger = logging.getLogger("transfer")

IMAGENET_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
# Architecture.name -> (MD5 of the file with the top, MD5 of the notop file);
# the same files and hashes as keras.applications.
IMAGENET_MD5 = {
    "resnet50": ("2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    "resnet101": ("f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    "resnet152": ("100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    "resnet50v2": ("3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    "resnet101v2": ("6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    "resnet152v2": ("a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
}
WEIGHTS_DIR_ENV = "TRANSFER_WEIGHTS_DIR"
DOWNLOAD_TIMEOUT_S = 15  # per socket operation: an offline machine fails fast
CLASSIFIER_LAYER = "predictions"
WEIGHTS_SUFFIXES = ".h5, .weights.h5, .keras, .pth or .safetensors"  # for messages
KERAS_APPLICATIONS = "keras.applications"  # Version.pretrained of the versions it publishes
# Formats that hold a whole trained model: a model without a top takes the backbone
# and leaves the classifier (keras.applications' H5 files come as top and notop).
WHOLE_MODEL_FORMATS = ("keras", torch_weights.TORCH_FORMAT, torch_weights.SAFETENSORS_FORMAT)


# ---------------------------------------------------------------- ImageNet files


def check_imagenet_available(architecture):
    """Raise unless keras.applications publishes ImageNet files for `architecture`."""
    version = architecture.version
    if version.pretrained != KERAS_APPLICATIONS:
        raise WeightsError(
            f"No keras.applications ImageNet file exists for {version.name} "
            f"({architecture.display_name}); use {version.pretrained}/timm weights: "
            f"weights=PATH (--weights PATH) to a .pth or .safetensors checkpoint, e.g. "
            f"{torch_weights.pretrained_files(architecture.depth)[1]['url']}, "
            "or weights=None for random initialisation."
        )


def imagenet_file_name(architecture, include_top=True):
    check_imagenet_available(architecture)
    suffix = "" if include_top else "_notop"
    return f"{architecture.name}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"


def imagenet_url(architecture, include_top=True):
    return IMAGENET_BASE_URL + imagenet_file_name(architecture, include_top)


def imagenet_md5(architecture, include_top=True):
    check_imagenet_available(architecture)
    return IMAGENET_MD5[architecture.name][0 if include_top else 1]


def keras_home():
    """Keras' home folder, read at call time (Keras reads $KERAS_HOME at import)."""
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = "/tmp"
    return Path(os.environ.get("KERAS_HOME", os.path.join(base, ".keras")))


def keras_cache_dir():
    """The folder where `keras.utils.get_file(cache_subdir="models")` keeps files."""
    return keras_home() / "models"


def imagenet_weights_path(architecture, include_top=True, weights_dir=None):
    """Return a local path to the official ImageNet file, downloading it if needed.

    Looks in `weights_dir` (or $TRANSFER_WEIGHTS_DIR) first, then Keras' cache, and
    only then downloads with `keras.utils.get_file`, which checks the MD5 hash.
    """
    file_name = imagenet_file_name(architecture, include_top)
    md5 = imagenet_md5(architecture, include_top)
    weights_dir = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        candidate = Path(weights_dir).expanduser() / file_name
        if candidate.is_file():
            if file_md5(candidate) != md5:
                raise WeightsError(
                    f"{candidate} does not have the MD5 hash of the official file "
                    f"({md5}): it is damaged or a different file. Download it again from "
                    f"{imagenet_url(architecture, include_top)}"
                )
            return candidate
    cache_dir = keras_cache_dir()
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return Path(
                keras.utils.get_file(
                    file_name,
                    imagenet_url(architecture, include_top),
                    cache_dir=str(keras_home()),
                    cache_subdir="models",
                    file_hash=md5,
                )
            )
    except Exception as exc:  # get_file raises a bare Exception when offline
        looked_in = f"{cache_dir}" + (f" and {weights_dir}" if weights_dir else "")
        raise WeightsError(
            f"ImageNet weights file {file_name} is not available: it is not in "
            f"{looked_in}, and downloading it from {imagenet_url(architecture, include_top)} "
            f"failed ({_short_reason(exc)}). Put the file in a folder and pass "
            f"--weights-dir DIR (or set {WEIGHTS_DIR_ENV}=DIR), or pass weights=PATH "
            "(--weights PATH) to a weights file, or weights=None for random initialisation."
        ) from exc


def file_md5(path, chunk_size=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _short_reason(exc):
    text = str(exc).strip().splitlines()
    reason = text[-1] if text else type(exc).__name__
    return reason.rsplit(" -- ", 1)[-1][:200]  # get_file prefixes the URL again


def check_weights_argument(weights):
    """Raise unless `weights` is None, "imagenet", or a path to an existing file."""
    if weights is None or weights == "imagenet":
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


# ---------------------------------------------------------------- reading files


@dataclass
class WeightsFile:
    """Arrays of a weights file, keyed by the Keras layer name they belong to."""

    path: Path
    format: str
    layers: dict = field(default_factory=dict)  # layer name -> [np.ndarray, ...]
    found: tuple = None  # (depth, version), where the reader knows it from the file

    def architecture(self):
        """The (depth, version) these layer names describe, or None if unknown."""
        return self.found or identify_architecture(self.layers)


def read_weights_file(path, like=None):
    """Read every layer's arrays from a weights file of any supported format.

    `like` is a model whose layer list decides the names in a Keras 3 `.weights.h5`
    file, which stores positions, not names.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}")
    try:
        torch_format = torch_weights.detect_format(path)
        if torch_format:
            layers, depth = torch_weights.read_checkpoint(path, torch_format)
            return WeightsFile(path, torch_format, layers, (depth, torch_weights.VERSION))
        if zipfile.is_zipfile(path):
            return _read_keras_archive(path)
        if not h5py.is_hdf5(path):
            raise WeightsError(
                f"{path} is not a weights file: expected HDF5 (.h5, .weights.h5), a "
                ".keras archive, or a PyTorch checkpoint (.pth, .safetensors)."
            )
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in root.attrs:
                return WeightsFile(path, "legacy-h5", _read_legacy_h5(root))
            if "layers" in f:
                return WeightsFile(path, "keras3-weights-h5", _read_keras3_by_model(f, like))
        raise WeightsError(f"{path} is an HDF5 file but holds no Keras weights.")
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise WeightsError(
            f"{path} could not be read: the file is truncated or corrupt ({_short_reason(exc)})."
        ) from exc


def _decode(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_legacy_h5(root):
    layers = {}
    for layer_name in root.attrs["layer_names"]:
        layer_name = _decode(layer_name)
        group = root[layer_name]
        names = [_decode(n) for n in group.attrs.get("weight_names", [])]
        if names:
            layers[layer_name] = [np.asarray(group[n]) for n in names]
    return layers


def write_legacy_h5(model, path, include_top=False):
    """Write a ResNet's weights as keras.applications' official files are written.

    The layout is tf-keras' legacy H5 (`layer_names`, per-layer `weight_names` such as
    `conv1_conv/kernel:0`), so the file loads with `--weights FILE`, with
    `keras.applications.ResNet50(weights=FILE)` and with tf-keras. Without
    `include_top` only the backbone is written, like the `_notop` files.
    """
    backbone_layers = _backbone_layers(model)
    layers = [layer for layer in backbone_layers
              if include_top or layer.name != CLASSIFIER_LAYER]
    if include_top and all(layer.name != CLASSIFIER_LAYER for layer in layers):
        raise InvalidArgumentError(
            "The model has no `predictions` layer of keras.applications: write it "
            "without the top.")
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = keras.__version__
        f.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in layers])
        for layer in layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{weight.name}:0" for weight in layer.weights]
            group.attrs["weight_names"] = np.array([n.encode("utf8") for n in names])
            for name, weight in zip(names, layer.weights):
                group.create_dataset(name, data=np.asarray(weight.numpy(), dtype=np.float32))
    return Path(path)


def _keras3_child_paths(layer_classes):
    """Keras 3 names a model's children by snake_case class name plus a counter."""
    used, paths = {}, []
    for class_name in layer_classes:
        name = re.sub(r"\W+", "", class_name)
        name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
        name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
        if name in used:
            used[name] += 1
            name = f"{name}_{used[name]}"
        else:
            used[name] = 0
        paths.append(name)
    return paths


def _read_vars(group):
    if "vars" not in group:
        return []
    vars_group = group["vars"]
    return [np.asarray(vars_group[str(i)]) for i in range(len(vars_group))]


def _collect_by_config(group, layer_configs, layers):
    """Walk a Keras 3 weights group alongside the config that wrote it."""
    classes = [c["class_name"] for c in layer_configs]
    for config, path in zip(layer_configs, _keras3_child_paths(classes)):
        if path not in group:
            continue
        child = group[path]
        inner = config.get("config", {}).get("layers")
        if inner is not None and "layers" in child:
            _collect_by_config(child["layers"], inner, layers)
        else:
            values = _read_vars(child)
            if values:
                layers[config["config"]["name"]] = values


def _read_keras_archive(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        if "config.json" not in names or "model.weights.h5" not in names:
            raise WeightsError(f"{path} is a zip file but not a .keras model archive.")
        config = json.loads(archive.read("config.json"))
        data = io.BytesIO(archive.read("model.weights.h5"))
    layers = {}
    with h5py.File(data, "r") as f:
        _collect_by_config(f["layers"], config["config"]["layers"], layers)
    return WeightsFile(Path(path), "keras", layers)


def _read_keras3_by_model(f, like):
    """Map a `.weights.h5` file to layer names by the layer list of `like`.

    The file's backbone may sit at the top (`layers/conv2d`) or inside a classifier
    (`layers/functional/layers/conv2d`): take the group holding the most convolutions.
    """
    if like is None:
        raise WeightsError("A Keras 3 .weights.h5 file can only be read against a model.")
    candidates = []
    f.visititems(
        lambda name, obj: candidates.append(name)
        if isinstance(obj, h5py.Group) and name.split("/")[-1] == "layers"
        else None
    )
    def conv_count(name):
        return sum(1 for key in f[name] if key.startswith("conv2d"))
    best = max(candidates, key=conv_count)
    model_layers = _backbone_layers(like)
    configs = [
        {"class_name": type(layer).__name__, "config": {"name": layer.name}}
        for layer in model_layers
    ]
    layers = {}
    _collect_by_config(f[best], configs, layers)
    # Counting what the file holds lets a mismatch say which architecture it is.
    layers["__counts__"] = {
        "conv": conv_count(best),
        "bn": sum(1 for key in f[best] if key.startswith("batch_normalization")),
        # The first convolution (conv1_conv) has a bias in v1 and v2, not in v1.5.
        "conv_bias": len(_read_vars(f[best]["conv2d"])) == 2 if "conv2d" in f[best] else None,
    }
    return layers


# ---------------------------------------------------------------- identifying


_BLOCK_NAME = re.compile(r"^(conv[2-5])_block(\d+)_")
_PADDED_3X3 = re.compile(r"^conv[2-5]_block\d+_2_pad$")


def identify_architecture(layer_names):
    """Guess (depth, version name) from layer names or Keras 3 layer counts.

    `layer_names` is a model's list of layer names, or a file's {layer name: arrays}.
    v1 and v1.5 share their weighted layers' names: a model tells them apart by v1.5's
    `_2_pad` layers, a file (which lists only layers with weights) by v1.5's
    convolutions having no bias.
    """
    names = list(layer_names)
    if "__counts__" in layer_names:
        counts = layer_names["__counts__"]
        for depth in BLOCKS_PER_STAGE:
            for version in VERSIONS.values():
                conv, bn = _layer_counts(get_architecture(depth, version.name))
                if (conv, bn) == (counts["conv"], counts["bn"]) and counts["conv_bias"] in (
                    None, version.conv_bias
                ):
                    return depth, version.name
        return None
    last_block = {}
    for name in names:
        match = _BLOCK_NAME.match(name)
        if match:
            stage, block = match.group(1), int(match.group(2))
            last_block[stage] = max(last_block.get(stage, 0), block)
    blocks = tuple(last_block.get(stage, 0) for stage in STAGES)
    depth = next((d for d, b in BLOCKS_PER_STAGE.items() if b == blocks), None)
    if depth is None:
        return None
    is_preact = any(name.endswith("_preact_bn") for name in names)
    if isinstance(layer_names, dict) and "conv1_conv" in layer_names:
        conv_bias = len(layer_names["conv1_conv"]) == 2
    else:
        padded = any(_PADDED_3X3.match(name) for name in names)
        conv_bias = is_preact or not padded  # v1 blocks have no pad, v1.5 blocks do
    version = next((v.name for v in VERSIONS.values()
                    if v.preact == is_preact and v.conv_bias == conv_bias), None)
    return None if version is None else (depth, version)


def _layer_counts(architecture):
    """(convolutions, batch normalisations) of an architecture, from the table."""
    blocks = sum(architecture.blocks)
    conv = 1 + 3 * blocks + len(STAGES)
    if architecture.version.preact:
        return conv, 3 * blocks + 1
    return conv, conv


def _describe(found):
    if found is None:
        return "an unknown architecture"
    depth, version = found
    return get_architecture(depth, version).display_name


# ---------------------------------------------------------------- loading


def _backbone_layers(model):
    """Layers of `model` that carry the ResNet's names, looking inside a classifier."""
    from transfer.models.groups import find_backbone

    return find_backbone(model).layers


def load_weights(model, weights, architecture=None, weights_dir=None):
    """Load `weights` ("imagenet" or a file path) into a ResNet built by `transfer`.

    Layers are matched by name, so the file may come from keras.applications,
    tf-keras, Keras 3 or a `transfer` classifier; a torchvision/timm checkpoint (v1.5)
    is mapped to those names first. A classifier (`predictions`) with a different
    number of classes is skipped with a warning, and a whole model's (`.keras`,
    PyTorch) is left out of a model without a top; any other mismatch raises
    `WeightsError` naming the architecture expected and the one found.
    """
    from transfer.models.groups import architecture_of, find_backbone

    backbone = find_backbone(model)
    architecture = architecture or architecture_of(backbone)
    has_top = any(layer.name == CLASSIFIER_LAYER for layer in backbone.layers)
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
            f"{path.name} holds weights for {_describe(found)}, but the model is "
            f"{architecture.display_name}. Build a {_describe(found)} "
            f"(--depth {found[0]} --version {found[1]}) or use weights made for "
            f"{architecture.display_name}."
        )
    file_layers = {k: v for k, v in source.layers.items() if not k.startswith("__")}
    file_has_top = CLASSIFIER_LAYER in file_layers
    if file_has_top and not has_top and source.format not in WHOLE_MODEL_FORMATS:
        raise WeightsError(
            f"{path.name} holds {architecture.display_name} with its classifier (a top "
            f"with {file_layers[CLASSIFIER_LAYER][-1].shape[-1]} classes), but the model "
            "has no top. Build it with include_top=True, or use the notop file "
            f"({imagenet_file_name(architecture, include_top=False)})."
        )
    missing, loaded = [], 0
    for layer in backbone.layers:
        if not layer.weights:
            continue
        values = file_layers.get(layer.name)
        if layer.name == CLASSIFIER_LAYER:
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
                    path.name, values[-1].shape[-1], layer.weights[-1].shape[-1],
                )
                continue
        if values is None:
            missing.append(layer.name)
            continue
        _assign(layer, values, path)
        loaded += 1
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise WeightsError(
            f"{path.name} has no weights for {len(missing)} layers of "
            f"{architecture.display_name} ({shown}); it holds {_describe(found)}."
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
