"""Optional extras of the package (the converters and runtimes of some export formats,
the audit's cleanlab): imported on first use, and a missing one names the extra that
installs it."""

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
    "cleanlab": "audit",  # transfer audit's label issues
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
