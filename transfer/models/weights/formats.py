"""Weight files read as {Keras layer name: arrays}, whatever format wrote them, and
the one format we write: keras.applications' legacy H5.

Formats read (detected from the file's content, not its suffix):
- legacy Keras H5 (`layer_names`/`weight_names` attributes): the official ImageNet
  files, tf-keras' `save_weights("x.h5")`, and whole-model `.h5` saves;
- Keras 3 `.weights.h5`, whose groups are named by layer class and position;
- Keras 3 `.keras` archives, whose `config.json` gives the layer names;
- PyTorch checkpoints of ResNet v1.5, torchvision's `.pth` and timm's `.safetensors`
  (see `transfer.models.weights.torch`).
"""

import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from transfer.errors import InvalidArgumentError, WeightsError, first_line
from transfer.lazy import keras
from transfer.models import names
from transfer.models.identify import (
    LayerCounts,
    find_backbone,
    identify_architecture,
    identify_from_counts,
)
from transfer.models.pretrained import TORCH_VERSION
from transfer.models.weights import torch as torch_files

LEGACY_H5 = "legacy-h5"
KERAS3_WEIGHTS_H5 = "keras3-weights-h5"
KERAS_ARCHIVE = "keras"
# Formats that hold a whole trained model: a model without a top takes the backbone
# and leaves the classifier (keras.applications' H5 files come as top and notop).
WHOLE_MODEL_FORMATS = (KERAS_ARCHIVE, torch_files.TORCH_FORMAT, torch_files.SAFETENSORS_FORMAT)


@dataclass
class WeightsFile:
    """Arrays of a weights file, keyed by the Keras layer name they belong to."""

    path: Path
    format: str
    layers: dict = field(default_factory=dict)  # layer name -> [np.ndarray, ...]
    found: tuple = None  # (depth, version), where the reader knows it from the file
    counts: LayerCounts = None  # a Keras 3 .weights.h5 file's layer counts

    def architecture(self):
        """The (depth, version) this file describes, or None if unknown."""
        if self.found is not None:
            return self.found
        if self.counts is not None:
            return identify_from_counts(self.counts)
        return identify_architecture(self.layers)


def read_weights_file(path, like=None):
    """Read every layer's arrays from a weights file of any supported format.

    `like` is a model whose layer list decides the names in a Keras 3 `.weights.h5`
    file, which stores positions, not names.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Weights file not found: {path}")
    try:
        torch_format = torch_files.detect_format(path)
        if torch_format:
            layers, depth = torch_files.read_checkpoint(path, torch_format)
            return WeightsFile(path, torch_format, layers, found=(depth, TORCH_VERSION))
        if zipfile.is_zipfile(path):
            return _read_keras_archive(path)
        if not h5py.is_hdf5(path):
            raise WeightsError(
                f"{path} is not a weights file: expected HDF5 (.h5, .weights.h5), a "
                ".keras archive, or a PyTorch checkpoint (.pth, .safetensors)."
            )
        with h5py.File(path, "r") as f:
            check_self_contained(f, path)
            root = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in root.attrs:
                return WeightsFile(path, LEGACY_H5, _read_legacy_h5(root))
            if "layers" in f:
                layers, counts = _read_keras3_by_model(f, like)
                return WeightsFile(path, KERAS3_WEIGHTS_H5, layers, counts=counts)
        raise WeightsError(f"{path} is an HDF5 file but holds no Keras weights.")
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise WeightsError(
            f"{path} could not be read: the file is truncated or corrupt ({first_line(exc)})."
        ) from exc


# No tensor of a ResNet comes near this (the largest, a 1000-class top, is 8 MB); a
# larger declared size is a crafted file that would exhaust memory when read.
MAX_TENSOR_BYTES = 2**30


def check_self_contained(group, path):
    """Refuse an HDF5 file whose data is not all inside it, as Keras 3.15 does: an
    external link, external storage or a virtual dataset would make reading it return
    the bytes of another local file. Also refuse implausibly large datasets."""
    for name in group:
        link = group.get(name, getlink=True)
        where = f"{group.name.rstrip('/')}/{name}"
        if isinstance(link, h5py.ExternalLink):
            raise WeightsError(f"Not allowed: H5 file with external link ({path}: {where}).")
        if isinstance(link, h5py.SoftLink):
            continue  # points inside the file, whose every object is checked
        item = group[name]
        if isinstance(item, h5py.Group):
            check_self_contained(item, path)
        elif isinstance(item, h5py.Dataset):
            if item.external or item.is_virtual:
                raise WeightsError(f"Not allowed: H5 file with external Dataset ({path}: {where}).")
            if item.size * item.dtype.itemsize > MAX_TENSOR_BYTES:
                raise WeightsError(
                    f"Not allowed: H5 file with a dataset of implausible size {item.shape} "
                    f"({path}: {where})."
                )


def _decode(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_legacy_h5(root):
    layers = {}
    for layer_name in root.attrs["layer_names"]:
        layer_name = _decode(layer_name)
        group = root[layer_name]
        weight_names = [_decode(n) for n in group.attrs.get("weight_names", [])]
        if weight_names:
            layers[layer_name] = [np.asarray(group[n]) for n in weight_names]
    return layers


def write_legacy_h5(model, path, include_top=False):
    """Write a ResNet's weights as keras.applications' official files are written.

    The layout is tf-keras' legacy H5 (`layer_names`, per-layer `weight_names` such as
    `conv1_conv/kernel:0`), so the file loads as `weights=FILE` here, with
    `keras.applications.ResNet50(weights=FILE)` and with tf-keras. Without
    `include_top` only the backbone is written, like the `_notop` files.
    """
    layers = [
        layer
        for layer in find_backbone(model).layers
        if include_top or layer.name != names.CLASSIFIER
    ]
    if include_top and all(layer.name != names.CLASSIFIER for layer in layers):
        raise InvalidArgumentError(
            f"The model has no `{names.CLASSIFIER}` layer of keras.applications: write it "
            "without the top."
        )
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = keras.__version__
        f.attrs["layer_names"] = np.array([layer.name.encode("utf8") for layer in layers])
        for layer in layers:
            group = f.create_group(layer.name)
            weight_names = [f"{layer.name}/{weight.name}:0" for weight in layer.weights]
            group.attrs["weight_names"] = np.array([n.encode("utf8") for n in weight_names])
            for name, weight in zip(weight_names, layer.weights):
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


# A .keras archive's members are read into memory: refuse, before reading, a member
# that declares more than any weights file holds, or that compresses better than
# weights ever do (a zip bomb: a few MB of zeros that unpack to many GB). Weights
# barely compress; below SMALL_MEMBER_BYTES any ratio is harmless.
MAX_MEMBER_BYTES = 8 << 30
MAX_COMPRESSION_RATIO = 100
SMALL_MEMBER_BYTES = 16 << 20


def _read_member(archive, name, path):
    """The bytes of one member of a zip archive, its declared sizes checked first
    (zipfile stops at the declared size, so the check bounds what is read)."""
    info = archive.getinfo(name)
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > MAX_MEMBER_BYTES or (
        info.file_size > SMALL_MEMBER_BYTES and ratio > MAX_COMPRESSION_RATIO
    ):
        raise WeightsError(
            f"Not allowed: {path} declares a {name} of {info.file_size:,} bytes, compressed "
            f"{ratio:,.0f}:1 into {info.compress_size:,}: no weights file is that large or "
            f"compresses better than {MAX_COMPRESSION_RATIO}:1 (a zip bomb?)."
        )
    return archive.read(name)


def _read_keras_archive(path):
    with zipfile.ZipFile(path) as archive:
        archive_names = archive.namelist()
        if "config.json" not in archive_names or "model.weights.h5" not in archive_names:
            raise WeightsError(f"{path} is a zip file but not a .keras model archive.")
        config = json.loads(_read_member(archive, "config.json", path))
        data = io.BytesIO(_read_member(archive, "model.weights.h5", path))
    layers = {}
    with h5py.File(data, "r") as f:
        check_self_contained(f, path)
        _collect_by_config(f["layers"], config["config"]["layers"], layers)
    return WeightsFile(Path(path), KERAS_ARCHIVE, layers)


def _read_keras3_by_model(f, like):
    """Map a `.weights.h5` file to layer names by the layer list of `like`.

    The file's backbone may sit at the top (`layers/conv2d`) or inside a classifier
    (`layers/functional/layers/conv2d`): take the group holding the most convolutions.
    Returns the layers and the counts that identify the architecture.
    """
    if like is None:
        raise WeightsError("A Keras 3 .weights.h5 file can only be read against a model.")
    candidates = []
    f.visititems(
        lambda name, obj: (
            candidates.append(name)
            if isinstance(obj, h5py.Group) and name.split("/")[-1] == "layers"
            else None
        )
    )

    def conv_count(name):
        return sum(1 for key in f[name] if key.startswith("conv2d"))

    best = max(candidates, key=conv_count)
    configs = [
        {"class_name": type(layer).__name__, "config": {"name": layer.name}}
        for layer in find_backbone(like).layers
    ]
    layers = {}
    _collect_by_config(f[best], configs, layers)
    counts = LayerCounts(
        conv=conv_count(best),
        bn=sum(1 for key in f[best] if key.startswith("batch_normalization")),
        # The first convolution (conv1_conv) has a bias in v1 and v2, not in v1.5.
        conv_bias=len(_read_vars(f[best]["conv2d"])) == 2 if "conv2d" in f[best] else None,
    )
    return layers, counts
