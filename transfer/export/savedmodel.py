"""SavedModel (a folder) for TF Serving: uint8 images of any size, or encoded image
bytes, in; probabilities and the top-k class names and scores (TF Serving's
classify outputs, `classes` and `scores`) out. labels.txt and metadata.json inside."""

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from transfer.data.pipeline import RESIZE_METHOD, decode_image
from transfer.errors import InvalidArgumentError, RunFailedError, first_line
from transfer.export.common import (
    METADATA_FILE,
    SERVING_INPUT,
    Runner,
    metadata_json,
    output_name,
)
from transfer.io import write_failure, write_text
from transfer.lazy import keras, tf
from transfer.runs import LABELS_FILE, mark_as_ours, read_labels

SUFFIX = None  # a folder
KIND = "SavedModel"
BYTES_INPUT = "image_bytes"
BYTES_SIGNATURE = "serve_bytes"
TOP_K = 5  # class names and scores returned, at most the number of classes
SERVING_SIGNATURE = "serving_default"  # the signature that evaluate runs
PROBABILITIES = "probabilities"  # its output, a classifier's (common.output_name)


def _outputs(model, class_names):
    """pixels -> {probabilities (or features), and for a classifier classes, scores}."""
    name = output_name(model)

    def outputs(pixels):
        result = {name: model(pixels, training=False)}
        if class_names:
            scores, indices = tf.math.top_k(result[name], k=min(TOP_K, len(class_names)))
            result.update(classes=tf.gather(tf.constant(class_names), indices), scores=scores)
        return result

    return outputs


def serving_functions(model, image_size, class_names=None):
    """{endpoint: tf.function}: uint8 images of any size, resized like training, and a
    batch of encoded JPEG/PNG/BMP/GIF images, decoded like training."""
    outputs = _outputs(model, class_names)

    @tf.function(
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=SERVING_INPUT)]
    )
    def serve(images):
        return outputs(
            tf.image.resize(tf.cast(images, tf.float32), image_size, method=RESIZE_METHOD)
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    def serve_bytes(image_bytes):
        return outputs(
            tf.map_fn(
                lambda contents: decode_image(contents, image_size),
                image_bytes,
                fn_output_signature=tf.TensorSpec([*image_size, 3], tf.float32),
            )
        )

    return {"serve": serve, BYTES_SIGNATURE: serve_bytes}


def write(model, out, info):
    """Write the folder beside `out`, then swap it into place."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise write_failure(out, exc) from exc
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for endpoint, function in serving_functions(
            model, info.image_size, info.class_names
        ).items():
            archive.add_endpoint(endpoint, function)
        try:
            archive.write_out(str(tmp / "export"), verbose=False)
        except tf.errors.OpError as exc:  # a full disk is ResourceExhaustedError, 65 lines
            raise RunFailedError(f"Cannot write {out}: {_reason(exc)}.") from exc
        write_text(tmp / "export" / METADATA_FILE, metadata_json(info.metadata()))
        mark_as_ours(tmp / "export")
        if out.exists():
            shutil.rmtree(out)
        (tmp / "export").rename(out)
    except OSError as exc:
        raise write_failure(out, exc) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _reason(error):
    """What a TensorFlow error says after the op and file it names: "No space left on
    device" from "{{function_node ...}} path/...; No space left on device [Op:SaveV2]"."""
    lines = str(getattr(error, "message", error)).strip().splitlines()
    message = re.sub(r"\s*\[Op:\w+\]$", "", lines[0]) if lines else type(error).__name__
    return first_line(message.rsplit("; ", 1)[-1])


def is_savedmodel(path):
    return (Path(path) / "saved_model.pb").is_file()


class SavedModelRunner(Runner):
    format = "savedmodel"

    def __init__(self, path, image_size=None):
        self.path = Path(path)
        metadata_path = self.path / METADATA_FILE
        self.metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
        self.class_names = self.metadata.get("class_names") or read_labels(self.path / LABELS_FILE)
        self.image_size = tuple(image_size or self.metadata.get("image_size") or ())
        signatures = tf.saved_model.load(str(path)).signatures
        if SERVING_SIGNATURE not in signatures:
            raise InvalidArgumentError(
                f"{path} has no {SERVING_SIGNATURE} signature (it has "
                f"{', '.join(signatures) or 'none'}): expected a SavedModel exported by "
                "transfer."
            )
        self.serve = signatures[SERVING_SIGNATURE]
        inputs = self.serve.structured_input_signature[1]
        outputs = self.serve.structured_outputs
        if SERVING_INPUT not in inputs or PROBABILITIES not in outputs:
            raise InvalidArgumentError(
                f"{path}: its {SERVING_SIGNATURE} signature takes {', '.join(inputs)} and "
                f"gives {', '.join(outputs)}; expected '{SERVING_INPUT}' in and "
                f"'{PROBABILITIES}' out, as a classifier exported by transfer."
            )
        self.input_shape = tuple(inputs[SERVING_INPUT].shape)
        self.output_shapes = [tuple(outputs[PROBABILITIES].shape)]

    def predict(self, images):
        return np.asarray(self.serve(**{SERVING_INPUT: tf.constant(images)})[PROBABILITIES])


def load(path, image_size=None):
    return SavedModelRunner(path, image_size)
