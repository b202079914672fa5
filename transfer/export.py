"""Exports for deployment: Keras (.keras), TensorFlow SavedModel (TF Serving) and
TFLite, of a classifier or of its backbone as a feature extractor; and the backbone's
weights as a keras.applications notop file (h5), to start other runs from.

Every model export takes raw RGB pixels; the SavedModel and TFLite exports take
uint8 images directly. A classifier export has labels.txt beside it.
"""

import logging
import shutil
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

from transfer.errors import InvalidArgumentError, RunFailedError
from transfer.inference import LABELS_FILE, load_model
from transfer.models.heads import feature_extractor as feature_extractor_of
from transfer.models.weights import write_legacy_h5
from transfer.report import atomic_path, save_model, write_text

logger = logging.getLogger("transfer")

FORMATS = ("keras", "savedmodel", "tflite", "h5")
SERVING_INPUT = "images"


def _serving_function(model, image_size):
    """uint8 images of any size -> resized like training -> model outputs."""
    output_name = "probabilities" if _is_probabilities(model) else "features"

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8,
                                                name=SERVING_INPUT)])
    def serve(images):
        pixels = tf.image.resize(tf.cast(images, tf.float32), image_size, method="bilinear")
        return {output_name: model(pixels, training=False)}

    return serve


def _is_probabilities(model):
    return any(layer.name == "predictions" for layer in model.layers)


def _write_savedmodel(model, directory, image_size):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", _serving_function(model, image_size))
    archive.write_out(str(directory), verbose=False)


def _write_tflite(model, path, image_size):
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
        flatbuffer = converter.convert()
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(flatbuffer)


def export(run_or_model, out, format="keras", feature_extractor=False, group=None,
           pooling="avg", image_size=None, overwrite=False):
    """Export a classifier (or, with `feature_extractor`, its backbone) to `out`.

    Returns the path written. `group` (stem, conv2..conv5, post) exports that
    group's feature map instead of the last one; `pooling` None keeps it spatial.
    `format="h5"` writes the backbone's weights in the layout of keras.applications'
    `_notop.h5` files: `--weights FILE` of another run, or keras.applications and
    tf-keras, load it as they load the ImageNet file.
    """
    if format not in FORMATS:
        raise InvalidArgumentError(
            f"Unknown export format: {format!r}. Expected one of {', '.join(FORMATS)}.")
    if format == "h5":
        return _export_backbone_weights(run_or_model, Path(out), group, overwrite)
    if not feature_extractor and group is not None:
        raise InvalidArgumentError("--group applies to --feature-extractor exports only.")
    loaded = load_model(run_or_model, need_classifier=not feature_extractor,
                        image_size=image_size)
    model = (feature_extractor_of(loaded.model, pooling=pooling, group=group)
             if feature_extractor else loaded.model)
    out = Path(out)
    if format == "keras" and out.suffix != ".keras":
        raise InvalidArgumentError(f"--out {out}: a Keras export needs a name ending in .keras.")
    if format == "tflite" and out.suffix != ".tflite":
        raise InvalidArgumentError(f"--out {out}: a TFLite export needs a name ending in .tflite.")
    if out.exists() and not overwrite:
        raise InvalidArgumentError(f"--out {out} exists. Choose another path or pass --overwrite.")
    if format == "keras":
        save_model(model, out)
    elif format == "savedmodel":
        _write_savedmodel_atomically(model, out, loaded.image_size)
    else:
        _write_tflite(model, out, loaded.image_size)
    if not feature_extractor:
        labels_dir = out if format == "savedmodel" else out.parent
        write_text(labels_dir / LABELS_FILE, "\n".join(loaded.class_names) + "\n")
    logger.info("Exported %s to %s (%s).",
                "feature extractor" if feature_extractor else "classifier", out, format)
    return out


def _export_backbone_weights(run_or_model, out, group, overwrite):
    if group is not None:
        raise InvalidArgumentError("--format h5 writes the whole backbone; drop --group.")
    if out.suffix != ".h5" or out.name.endswith(".weights.h5"):
        raise InvalidArgumentError(
            f"--out {out}: the backbone's weights are written as a legacy .h5 file "
            "(e.g. source_notop.h5).")
    if out.exists() and not overwrite:
        raise InvalidArgumentError(f"--out {out} exists. Choose another path or pass --overwrite.")
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
        raise RunFailedError(f"Cannot write {out}: {exc.strerror or exc}.") from exc
    try:
        _write_savedmodel(model, tmp / "export", image_size)
        if out.exists():
            shutil.rmtree(out)
        (tmp / "export").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
