"""`transfer export`: a classifier, or its backbone as a feature extractor, as Keras
(.keras), TensorFlow SavedModel (TF Serving) or TFLite; or the backbone's weights as
a keras.applications notop file (h5), to start other runs from.

Every model export takes raw RGB pixels; the SavedModel and TFLite exports take
uint8 images directly. A classifier export keeps its class names with it: labels.txt
inside a SavedModel folder, `<file>.labels.txt` beside a file.
"""

import logging
import shutil
import tempfile
from pathlib import Path

from transfer.errors import InvalidArgumentError, unknown_choice
from transfer.io import atomic_path, save_model, write_bytes, write_failure
from transfer.lazy import keras, tf
from transfer.models.heads import feature_extractor as feature_extractor_of
from transfer.models.heads import is_classifier
from transfer.models.weights.formats import write_legacy_h5
from transfer.runs import (
    LABELS_FILE,
    MARKER_FILE,
    is_ours,
    load_model,
    mark_as_ours,
    model_metadata,
    own_labels_path,
    write_labels,
)

logger = logging.getLogger("transfer")

FORMATS = ("keras", "savedmodel", "tflite", "h5")
SUFFIXES = {"keras": ".keras", "tflite": ".tflite"}  # what --out must end in
SERVING_INPUT = "images"
POOLING = "avg"  # of feature extractors


def export(run_or_model, out, format="keras", feature_extractor=False, group=None,
           pooling=POOLING, image_size=None, overwrite=False):
    """Export a classifier (or, with `feature_extractor`, its backbone) to `out`.

    Returns the path written. `group` (stem, conv2..conv5, post) exports that
    group's feature map instead of the last one; `pooling` None keeps it spatial.
    `format="h5"` writes the backbone's weights in the layout of keras.applications'
    `_notop.h5` files: `weights=FILE` of another run, or keras.applications and
    tf-keras, load it as they load the ImageNet file.
    """
    if format not in FORMATS:
        raise unknown_choice("export format", format, FORMATS)
    out = Path(out)
    if format == "h5":
        return _export_backbone_weights(run_or_model, out, group, overwrite)
    if not feature_extractor and group is not None:
        raise InvalidArgumentError(
            f"group={group!r} applies to feature_extractor=True exports only.")
    loaded = load_model(run_or_model, need_classifier=not feature_extractor,
                        image_size=image_size)
    model = (feature_extractor_of(loaded.model, pooling=pooling, group=group)
             if feature_extractor else loaded.model)
    _check_out(out, format, overwrite, labels=not feature_extractor)
    if format == "keras":  # a classifier keeps its class names, task and thresholds inside
        save_model(model, out, None if feature_extractor else model_metadata(
            loaded.class_names, loaded.task, loaded.thresholds))
    elif format == "savedmodel":
        _write_savedmodel_atomically(model, out, loaded.image_size)
    else:
        write_bytes(out, _tflite_flatbuffer(model, loaded.image_size))
    if not feature_extractor:
        write_labels(_labels_path(out, format), loaded.class_names)
    elif format != "savedmodel":  # a classifier's labels would now describe the wrong model
        own_labels_path(out).unlink(missing_ok=True)
    logger.info("Exported %s to %s (%s).",
                "feature extractor" if feature_extractor else "classifier", out, format)
    return out


def _labels_path(out, format):
    """A classifier export's class names: inside a SavedModel, beside a file."""
    return out / LABELS_FILE if format == "savedmodel" else own_labels_path(out)


def _check_out(out, format, overwrite, labels):
    suffix = SUFFIXES.get(format)
    if suffix and out.suffix != suffix:
        kind = {"keras": "Keras", "tflite": "TFLite"}[format]
        raise InvalidArgumentError(f"out={out}: a {kind} export needs a name ending in {suffix}.")
    if out.exists() and not overwrite:
        raise InvalidArgumentError(
            f"out={out} exists. Choose another path or pass overwrite=True.")
    if out.is_dir() and not (format == "savedmodel" and is_ours(out)):
        raise InvalidArgumentError(
            f"out={out} is a folder that is not a SavedModel export of transfer (no "
            f"{MARKER_FILE} in it): overwrite=True replaces only an export of ours. Choose "
            "another path, or remove it yourself.")
    labels_path = _labels_path(out, format)
    if labels and labels_path.exists() and not overwrite:
        raise InvalidArgumentError(
            f"{labels_path} exists. Choose another out or pass overwrite=True.")


def _serving_function(model, image_size):
    """uint8 images of any size -> resized like training -> model outputs."""
    output_name = "probabilities" if is_classifier(model) else "features"

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                name=SERVING_INPUT)])
    def serve(images):
        pixels = tf.image.resize(tf.cast(images, tf.float32), image_size, method="bilinear")
        return {output_name: model(pixels, training=False)}

    return serve


def _write_savedmodel(model, directory, image_size):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", _serving_function(model, image_size))
    archive.write_out(str(directory), verbose=False)


def _tflite_flatbuffer(model, image_size):
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "savedmodel"
        archive = keras.export.ExportArchive()
        archive.track(model)
        fixed = tf.TensorSpec([None, *image_size, 3], tf.uint8, name=SERVING_INPUT)
        archive.add_endpoint("serve", tf.function(
            lambda images: model(tf.cast(images, tf.float32), training=False),
            input_signature=[fixed]))
        archive.write_out(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        return converter.convert()


def _export_backbone_weights(run_or_model, out, group, overwrite):
    if group is not None:
        raise InvalidArgumentError("format='h5' writes the whole backbone, not one group.")
    if out.suffix != ".h5" or out.name.endswith(".weights.h5"):
        raise InvalidArgumentError(
            f"out={out}: the backbone's weights are written as a legacy .h5 file "
            "(e.g. source_notop.h5).")
    if out.exists() and not overwrite:
        raise InvalidArgumentError(
            f"out={out} exists. Choose another path or pass overwrite=True.")
    loaded = load_model(run_or_model, need_classifier=False)
    with atomic_path(out) as tmp_path:
        write_legacy_h5(loaded.model, tmp_path)
    logger.info("Exported the backbone's weights to %s (keras.applications notop H5).", out)
    return out


def _write_savedmodel_atomically(model, out, image_size):
    """Write the SavedModel folder beside `out`, then swap it into place."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise write_failure(out, exc) from exc
    try:
        _write_savedmodel(model, tmp / "export", image_size)
        mark_as_ours(tmp / "export")
        if out.exists():
            shutil.rmtree(out)
        (tmp / "export").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
