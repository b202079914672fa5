"""What every export format shares: the metadata an exported classifier carries, the
uint8 pixel signature, and the runner interface that reads an exported file back
(probabilities from uint8 pixels), so that evaluate's reports are one code path."""

import json
import logging
from dataclasses import dataclass

import numpy as np

from transfer.data.pipeline import images_only
from transfer.errors import InvalidArgumentError
from transfer.lazy import tf
from transfer.models.heads import MULTI_LABEL, SINGLE_LABEL, is_classifier
from transfer.runtime import collect_outputs, flip_averaged
from transfer.version import __version__

logger = logging.getLogger("transfer")

SERVING_INPUT = "images"
METADATA_FILE = "metadata.json"  # inside a SavedModel folder and a .tflite file
# What the pixels of every export are: the preprocessing is a layer of the model.
INPUT = "RGB pixels 0-255, uint8, shape (batch, height, width, 3)"
NORMALIZATION = "none outside the model: it normalises its input itself (mean 0, std 1 here)"


@dataclass
class ExportInfo:
    """What a format needs besides the model: the classes, the input size, options."""

    image_size: tuple  # (height, width)
    class_names: list = None  # None for a feature extractor
    source: str = ""  # the run or model file exported
    quantize: str = "none"
    representative: object = None  # callable -> iterable of uint8 image batches (int8)
    task: str = SINGLE_LABEL  # a multi-label model's labels are each above a threshold
    thresholds: list = None  # per label, of a multi-label model

    def metadata(self):
        """The metadata embedded in exported files: the same keys in every format."""
        return {
            "class_names": self.class_names,
            "image_size": list(self.image_size),
            "input": INPUT,
            "normalization": NORMALIZATION,
            "quantization": self.quantize,
            "source": self.source,
            "transfer_version": __version__,
            **(
                {"task": self.task, "thresholds": self.thresholds}
                if self.task == MULTI_LABEL
                else {}
            ),
        }


def output_name(model):
    return "probabilities" if is_classifier(model) else "features"


def pixels_function(model, image_size):
    """uint8 images of `image_size` -> {output name: model outputs}: the signature of
    the converted (TFLite, ONNX) exports, with a dynamic batch size."""
    spec = tf.TensorSpec([None, *image_size, 3], tf.uint8, name=SERVING_INPUT)
    name = output_name(model)
    return tf.function(
        lambda images: {name: model(tf.cast(images, tf.float32), training=False)},
        input_signature=[spec],
    )


def metadata_json(metadata):
    return json.dumps(metadata, indent=2, ensure_ascii=False) + "\n"


class Runner:
    """An exported model read back: probabilities from uint8 pixels.

    Subclasses set `format`, `path`, `class_names`, `image_size` and `metadata`,
    and implement `predict`; those that read another runtime's file also set the
    shapes its input and outputs declare (None for a dimension of any size).
    """

    format = None
    path = None
    input_shape = None  # e.g. (None, 224, 224, 3); None: not declared
    output_shapes = None  # one shape per output; the first is the probabilities

    @property
    def task(self):
        """SINGLE_LABEL or MULTI_LABEL, as the export's metadata says."""
        return self.metadata.get("task", SINGLE_LABEL)

    @property
    def thresholds(self):
        """Per label, of a multi-label model (None otherwise)."""
        return self.metadata.get("thresholds")

    def predict(self, images):
        """Probabilities (float32, (batch, classes)) of uint8 images (batch, h, w, 3)."""
        raise NotImplementedError

    def predict_split(self, split, batch_size, tta=False, verbose=0, description="Inference"):
        """Probabilities of a Split's images, decoded and resized as for training;
        `tta` averages each image's with its horizontal mirror's."""
        predict = flip_averaged(self.predict, np.flip) if tta else self.predict
        probabilities = collect_outputs(
            # decoded pixels are whole levels 0-255: uint8 holds them exactly
            lambda batch: predict(np.asarray(batch).astype(np.uint8)),
            images_only(split, self.image_size, batch_size),
            (len(self.class_names or ()),),
            verbose,
            description,
            dtype=np.float32,
        )
        check_probabilities(self.path, probabilities)
        return probabilities


PROBABILITY_TOLERANCE = 1e-3  # float16 and int8 exports round their softmax outputs


def check_classifier(runner):
    """An InvalidArgumentError unless `runner` declares (where its file says) an input of
    images, (batch, height, width, 3), and a first output of one value per class."""
    classes = len(runner.class_names)
    shape = runner.input_shape
    if shape is not None and (len(shape) != 4 or shape[-1] not in (None, 3)):
        raise InvalidArgumentError(
            f"{runner.path} takes an input of shape {_shape(shape)}, not images: expected "
            "(batch, height, width, 3), as a classifier exported by transfer takes."
        )
    outputs = runner.output_shapes
    if outputs is not None and (
        not outputs or len(outputs[0]) != 2 or outputs[0][-1] not in (None, classes)
    ):
        found = ", ".join(_shape(s) for s in outputs) or "none"
        raise InvalidArgumentError(
            f"{runner.path} is not a classifier of its {classes} classes: it outputs "
            f"{found}; expected (batch, {classes}), one probability per class."
        )


def check_probabilities(path, probabilities):
    """An InvalidArgumentError when a model's outputs are not probabilities (logits, or
    a model that is not a classifier); non-finite outputs are left to the metrics."""
    finite = probabilities[np.isfinite(probabilities)]
    if finite.size and (
        finite.min() < -PROBABILITY_TOLERANCE or finite.max() > 1 + PROBABILITY_TOLERANCE
    ):
        raise InvalidArgumentError(
            f"{path} outputs values from {finite.min():.4g} to {finite.max():.4g}, not "
            "probabilities in [0, 1]: expected a classifier that ends in a softmax (or a "
            "sigmoid), as transfer's exports do; a model that outputs logits needs one."
        )


def _shape(shape):
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
