"""Exports of a trained model, one module per format (the table FORMATS), and the
runners that read an exported file back for evaluate and the comparison with the
Keras model."""

from pathlib import Path

from transfer.errors import InvalidArgumentError, TransferError, first_line
from transfer.export import backbone_h5, keras_format, onnx_format, savedmodel, tflite
from transfer.export.common import ExportInfo, Runner, check_classifier
from transfer.export.tflite import QUANTIZATIONS
from transfer.models.architectures import image_size_pair
from transfer.runs import MARKER_FILE, is_ours

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


def open_model(path, image_size=None, trust_model=False):
    """A Runner for a run directory, a .keras file, a SavedModel folder, a .tflite or
    an .onnx file: probabilities from uint8 pixels, with its class names.

    A .keras file loads in Keras' safe mode and runs no code of its own. A SavedModel
    runs its TensorFlow graph, and a graph can do what a program can (read and write
    files): one that transfer did not write (no MARKER_FILE in it) is refused unless
    `trust_model`. Files that are not a classifier of uint8 or float images are refused
    with the reason, before any image is read."""
    format = format_of(path)
    if format == "savedmodel" and not trust_model and not is_ours(path):
        raise InvalidArgumentError(
            f"{path} is a SavedModel that transfer did not write (no {MARKER_FILE} in it), "
            "and running a SavedModel runs its graph, which can read and write files. Pass "
            "trust_model=True if you trust where it came from."
        )
    if image_size:  # an int (the command line's) or (height, width)
        image_size = image_size_pair(image_size)
    try:
        runner = FORMATS[format].load(path, image_size)
    except TransferError:
        raise
    except Exception as exc:  # each runtime raises its own types for a file it cannot read
        raise InvalidArgumentError(
            f"{path} is not a {FORMATS[format].KIND} model that can be read ({first_line(exc)})."
        ) from exc
    if not runner.image_size:
        raise InvalidArgumentError(
            f"{path} takes images of any size; pass image_size to choose one."
        )
    if not runner.class_names:
        raise InvalidArgumentError(
            f"{path} carries no class names (no labels.txt beside or inside it): expected "
            "a classifier exported by transfer."
        )
    check_classifier(runner)
    return runner
