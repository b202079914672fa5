"""Exports of a trained model, one module per format (the table FORMATS), and the
runners that read an exported file back for evaluate and the comparison with the
Keras model."""

from pathlib import Path

from transfer.errors import InvalidArgumentError
from transfer.export import backbone_h5, keras_format, onnx_format, savedmodel, tflite
from transfer.export.common import ExportInfo, Runner
from transfer.export.tflite import QUANTIZATIONS

# format -> module with SUFFIX (None: a folder), KIND, write(model, out, info), load(path)
FORMATS = {
    "keras": keras_format,
    "savedmodel": savedmodel,
    "tflite": tflite,
    "onnx": onnx_format,
    "h5": backbone_h5,
}
READABLE = ("keras", "savedmodel", "tflite", "onnx")  # formats that evaluate and predict read

__all__ = ["FORMATS", "QUANTIZATIONS", "ExportInfo", "Runner", "format_of", "open_model"]


def format_of(path):
    """The export format of a file or folder, from its name (a run directory and a
    .keras file are "keras")."""
    path = Path(path)
    if path.is_dir():
        return "savedmodel" if savedmodel.is_savedmodel(path) else "keras"
    for name in READABLE:
        if FORMATS[name].SUFFIX == path.suffix:
            return name
    return "keras"  # load_model names what it expected


def open_model(path, image_size=None):
    """A Runner for a run directory, a .keras file, a SavedModel folder, a .tflite or
    an .onnx file: probabilities from uint8 pixels, with its class names."""
    runner = FORMATS[format_of(path)].load(path, image_size)
    if not runner.image_size:
        raise InvalidArgumentError(f"{path} takes images of any size; pass image_size to "
                                   "choose one.")
    if not runner.class_names:
        raise InvalidArgumentError(
            f"{path} carries no class names (no labels.txt beside or inside it): expected "
            "a classifier exported by transfer.")
    return runner
