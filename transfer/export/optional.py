"""The converters and runtimes of some formats are optional extras of the package:
imported on first use, and a missing one names the extra that installs it."""

import importlib

from transfer.errors import MissingExtraError
from transfer.version import DISTRIBUTION

# module -> the extra of setup.cfg that installs it
EXTRAS = {
    "tf2onnx": "onnx",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "ai_edge_litert": "litert",
    "mlflow": "mlflow",
    "optuna": "tune",
}


def optional_module(name):
    """Import `name`, or raise MissingExtraError naming `pip install 'DISTRIBUTION[extra]'`."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        extra = EXTRAS[name.split(".")[0]]
        raise MissingExtraError(
            f"{name} is not installed ({exc}); `pip install '{DISTRIBUTION}[{extra}]'` installs it."
        ) from exc
