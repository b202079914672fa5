"""PyTorch ResNet checkpoints read as Keras weights of ResNet v1.5.

torchvision's `resnet50/101/152` state_dicts (`.pth`, `.pt`) and timm's or Hugging
Face's `.safetensors` files of the same models name their tensors alike
(`layer3.5.conv2.weight`). This module maps those names to the layer names of
`transfer`'s v1.5 models (`conv4_block6_2_conv`), converts the arrays to Keras'
layouts, and refuses checkpoints of other architectures, naming what it found.
"""

import re
import struct
import zipfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from transfer.errors import WeightsError, first_line, listing
from transfer.models import names
from transfer.models.architectures import BLOCKS_PER_STAGE, STAGE_FILTERS, STAGES

TORCH_FORMAT = "torch"
# torch.load(weights_only=True) is safe from 2.6 on (CVE-2025-32434); setup.cfg's torch
# extra asks for the same.
MIN_TORCH = (2, 6)
SAFETENSORS_FORMAT = "safetensors"

# Basic-block ResNets (two 3x3 convolutions per block), named only to refuse them.
BASIC_BLOCK_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 34}

# Our layer kind -> the torch parameter names, in the order of the Keras layer's weights.
PARAMETERS = {
    "conv": ("weight",),  # PyTorch's ResNet convolutions have no bias
    "bn": ("weight", "bias", "running_mean", "running_var"),
    "dense": ("weight", "bias"),
}
OPTIONAL_PARAMETERS = {"bn": ("num_batches_tracked",)}  # a training counter, not weights
CLASSIFIER_MODULE = "fc"

_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.")


# ---------------------------------------------------------------- formats


def detect_format(path):
    """TORCH_FORMAT, SAFETENSORS_FORMAT, or None, from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
        size = f.seek(0, 2)
    if len(head) == 9 and head[8:9] == b"{":
        # safetensors: an 8-byte little-endian header length, then a JSON header.
        (header_length,) = struct.unpack("<Q", head[:8])
        if 8 + header_length <= size:
            return SAFETENSORS_FORMAT
    if head[:1] == b"\x80":  # a pickle: torch.save's format before PyTorch 1.6
        return TORCH_FORMAT
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if any(name.endswith("data.pkl") for name in archive.namelist()):
                return TORCH_FORMAT
    return None


def _read_torch(path):
    try:
        import torch
    except ImportError as exc:
        raise WeightsError(
            f"{path.name} is a PyTorch checkpoint, and reading it needs PyTorch: "
            "pip install torch (the CPU build is enough). A .safetensors file of the same "
            "weights needs no PyTorch."
        ) from exc
    version = tuple(int(part) for part in re.findall(r"\d+", torch.__version__)[:2])
    if version < MIN_TORCH:
        raise WeightsError(
            f"{path.name} is a PyTorch checkpoint, and PyTorch {torch.__version__} can be "
            "made to run code while loading one despite weights_only=True (CVE-2025-32434). "
            f"Upgrade: pip install 'torch>={'.'.join(map(str, MIN_TORCH))}'."
        )
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled code.
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for pickled objects; RuntimeError if damaged
        raise WeightsError(
            f"{path.name} could not be loaded as a PyTorch state_dict with weights_only=True "
            f"({first_line(exc)}). Save model.state_dict() rather than the whole model."
        ) from exc
    if isinstance(data, dict):
        for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
            if isinstance(data.get(wrapper), dict):
                data = data[wrapper]
                break
    if not isinstance(data, dict) or not all(torch.is_tensor(v) for v in data.values()):
        raise WeightsError(
            f"{path.name} is a PyTorch file but not a state_dict (a mapping of names to "
            "tensors). Save model.state_dict()."
        )
    return {
        key: (value.detach().float() if value.is_floating_point() else value).numpy()
        for key, value in data.items()
    }


def _read_safetensors(path):
    try:
        return load_file(str(path))
    except Exception as exc:  # SafetensorError, or a dtype NumPy lacks (bfloat16)
        raise WeightsError(
            f"{path.name} could not be read as a safetensors file ({first_line(exc)})."
        ) from exc


# ---------------------------------------------------------------- names


def layer_names(depth):
    """{torch module name: our layer name} for torchvision's resnet{depth}."""
    layers = {"conv1": names.STEM_CONV, "bn1": "conv1_bn"}
    for stage_number, (stage, blocks) in enumerate(zip(STAGES, BLOCKS_PER_STAGE[depth]), 1):
        for i in range(blocks):
            theirs, ours = f"layer{stage_number}.{i}", f"{stage}_block{i + 1}"
            for j in (1, 2, 3):
                layers[f"{theirs}.conv{j}"] = f"{ours}_{j}_conv"
                layers[f"{theirs}.bn{j}"] = f"{ours}_{j}_bn"
            if i == 0:  # the projection shortcut: a strided 1x1 convolution and its BN
                layers[f"{theirs}.downsample.0"] = f"{ours}_0_conv"
                layers[f"{theirs}.downsample.1"] = f"{ours}_0_bn"
    layers[CLASSIFIER_MODULE] = names.CLASSIFIER
    return layers


def _kind(layer_name):
    if layer_name == names.CLASSIFIER:
        return "dense"
    return "conv" if layer_name.endswith("_conv") else "bn"


def _convert(kind, arrays):
    """torch layouts to Keras': kernels OIHW -> HWIO, Dense (out, in) -> (in, out)."""
    if kind == "conv":
        return [np.ascontiguousarray(arrays[0].transpose(2, 3, 1, 0))]
    if kind == "dense":
        return [np.ascontiguousarray(arrays[0].T), arrays[1]]
    return list(arrays)  # gamma, beta, moving mean, moving variance


def _shown(keys):
    return listing(sorted(keys))


def identify(state, path):
    """The depth of the torchvision bottleneck ResNet whose keys `state` has, or raise."""
    blocks = [0, 0, 0, 0]
    for key in state:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, block = int(match.group(1)) - 1, int(match.group(2))
            blocks[stage] = max(blocks[stage], block + 1)
    blocks = tuple(blocks)
    if not any(blocks):
        raise WeightsError(
            f"{path.name} does not hold a torchvision or timm ResNet: none of its "
            f"{len(state)} keys is named like layer1.0.conv1.weight (it has "
            f"{_shown(state)})."
        )
    if not any(_BLOCK_KEY.match(key) and ".conv3." in key for key in state):
        depth = BASIC_BLOCK_DEPTHS.get(blocks)
        found = f"resnet{depth}" if depth else f"a ResNet with {blocks} blocks per stage"
        raise WeightsError(
            f"{path.name} holds {found}, made of basic blocks (two 3x3 convolutions); "
            "transfer's v1.5 is the bottleneck ResNet50, 101 or 152 of torchvision."
        )
    depth = next((d for d, b in BLOCKS_PER_STAGE.items() if b == blocks), None)
    if depth is None:
        raise WeightsError(
            f"{path.name} holds a bottleneck ResNet with {blocks} blocks per stage; "
            "transfer's v1.5 is "
            + ", ".join(f"ResNet{d} {b}" for d, b in BLOCKS_PER_STAGE.items())
            + "."
        )
    conv1, conv2 = state.get("layer1.0.conv1.weight"), state.get("layer1.0.conv2.weight")
    if conv1 is None or conv2 is None or conv1.ndim != 4 or conv2.ndim != 4:
        return depth  # reported as missing or misshapen keys
    width, groups = conv1.shape[0], conv2.shape[0] // conv2.shape[1]
    if width != STAGE_FILTERS[0] or groups != 1:
        found = "a ResNeXt" if groups != 1 else "a wide ResNet"
        raise WeightsError(
            f"{path.name} holds {found} (bottleneck width {width}, {groups} groups in the "
            f"first block); transfer's v1.5 is torchvision's resnet{depth} (width "
            f"{STAGE_FILTERS[0]}, no groups)."
        )
    return depth


def convert(state, path):
    """{our layer name: Keras arrays} from a torchvision state_dict, and its depth.

    Every key must be one of torchvision's resnet{depth}: extra or missing keys are
    named. The classifier (`fc.*`) may be missing altogether (a notop checkpoint).
    """
    path = Path(path)
    prefix = "module."  # torch.nn.DataParallel's wrapper
    if state and all(key.startswith(prefix) for key in state):
        state = {key[len(prefix) :]: value for key, value in state.items()}
    depth = identify(state, path)
    modules = layer_names(depth)
    expected, optional = set(), set()
    for module, layer in modules.items():
        kind = _kind(layer)
        expected.update(f"{module}.{p}" for p in PARAMETERS[kind])
        optional.update(f"{module}.{p}" for p in OPTIONAL_PARAMETERS.get(kind, ()))
    top = {f"{CLASSIFIER_MODULE}.{p}" for p in PARAMETERS["dense"]}
    if not top & set(state):
        expected -= top
    unexpected = set(state) - expected - optional
    missing = expected - set(state)
    if unexpected or missing:
        problems = []
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_shown(unexpected)})")
        if missing:
            problems.append(f"{len(missing)} missing keys ({_shown(missing)})")
        raise WeightsError(
            f"{path.name} is not a state_dict of torchvision's resnet{depth}: it has "
            f"{' and '.join(problems)}."
        )
    layers = {}
    for module, layer in modules.items():
        kind = _kind(layer)
        keys = [f"{module}.{p}" for p in PARAMETERS[kind]]
        if keys[0] not in state:
            continue  # the classifier of a notop checkpoint
        arrays = [np.asarray(state[key], dtype="float32") for key in keys]
        expected_ndim = {"conv": 4, "dense": 2, "bn": 1}[kind]
        if arrays[0].ndim != expected_ndim:
            raise WeightsError(
                f"{path.name}: {keys[0]} has shape {arrays[0].shape}, not the "
                f"{expected_ndim}-dimensional tensor of torchvision's resnet{depth}."
            )
        layers[layer] = _convert(kind, arrays)
    return layers, depth


def read_checkpoint(path, file_format):
    """({our layer name: Keras arrays}, depth) of a torchvision/timm checkpoint."""
    path = Path(path)
    state = _read_safetensors(path) if file_format == SAFETENSORS_FORMAT else _read_torch(path)
    return convert(state, path)
