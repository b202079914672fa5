"""`transfer export`: a classifier, or its backbone as a feature extractor, as Keras
(.keras), TensorFlow SavedModel (TF Serving), TFLite (float or quantised) or ONNX; or
the backbone's weights as a keras.applications notop file (h5), to start other runs.

Every model export takes raw RGB pixels; the SavedModel, TFLite and ONNX exports take
uint8 images directly. A classifier export keeps its class names with it: labels.txt
beside a file (`<file>.labels.txt`), and inside the SavedModel folder, the .tflite
file and the .onnx file's metadata. After a classifier export, the exported file runs
on the run's validation images beside the Keras model, and a drop in accuracy of
more than `max_drop` points is a warning.
"""

import logging
from pathlib import Path

import numpy as np

from transfer.data.pipeline import drop_unreadable, images_only
from transfer.errors import DataError, InvalidArgumentError, first_line, unknown_choice
from transfer.export import FORMATS, QUANTIZATIONS, ExportInfo, keras_format, open_model
from transfer.export import compare as comparison
from transfer.export.tflite import CALIBRATED, REPRESENTATIVE_IMAGES
from transfer.models.heads import feature_extractor as feature_extractor_of
from transfer.runs import (
    CONFIG_FILE,
    LABELS_FILE,
    MARKER_FILE,
    is_ours,
    is_run_data,
    load_model,
    own_labels_path,
    path_key,
    read_config,
    reopen_data,
    run_of_model,
    training_images,
    write_labels,
)
from transfer.runtime import INFERENCE_BATCH_SIZE

logger = logging.getLogger("transfer")

POOLING = "avg"  # of feature extractors
MAX_DROP = comparison.MAX_DROP


def export(
    run_or_model,
    out,
    format="keras",
    feature_extractor=False,
    group=None,
    pooling=POOLING,
    image_size=None,
    overwrite=False,
    quantize="none",
    data=None,
    max_drop=MAX_DROP,
    compare=True,
):
    """Export a classifier (or, with `feature_extractor`, its backbone) to `out`.

    Returns the path written. `group` (stem, conv2..conv5, post) exports that
    group's feature map instead of the last one; `pooling` None keeps it spatial.
    `format="h5"` writes the backbone's weights in the layout of keras.applications'
    `_notop.h5` files: `weights=FILE` of another run, or keras.applications and
    tf-keras, load it as they load the ImageNet file. `quantize` (TFLite): none,
    float16, dynamic, int8 or int16x8 (both calibrated on a seeded sample of the training
    images; int16x8 keeps int8 weights with 16-bit activations, closer to the float model).
    `data` replaces the run's own images (config.json) for calibration and the
    comparison; `compare=False` skips the comparison.
    """
    if format not in FORMATS:
        raise unknown_choice("export format", format, tuple(FORMATS))
    if quantize not in QUANTIZATIONS:
        raise unknown_choice("quantization", quantize, QUANTIZATIONS)
    if quantize != "none" and format != "tflite":
        raise InvalidArgumentError(f"quantize={quantize!r} applies to format='tflite' only.")
    writer, out = FORMATS[format], Path(out)
    if format == "h5":
        return _export_backbone_weights(run_or_model, out, group, overwrite)
    if not feature_extractor and group is not None:
        raise InvalidArgumentError(
            f"group={group!r} applies to feature_extractor=True exports only."
        )
    loaded = load_model(run_or_model, need_classifier=not feature_extractor, image_size=image_size)
    model = (
        feature_extractor_of(loaded.model, pooling=pooling, group=group)
        if feature_extractor
        else loaded.model
    )
    _check_out(out, format, overwrite, labels=not feature_extractor)
    dataset = run_dataset(loaded.path, data) if compare or quantize in CALIBRATED else None
    info = ExportInfo(
        loaded.image_size,
        None if feature_extractor else loaded.class_names,
        source=str(Path(run_or_model).resolve()),
        quantize=quantize,
        task=loaded.task,
        thresholds=loaded.thresholds,
        representative=_representative(dataset, loaded.image_size),
    )
    writer.write(model, out, info)
    if not feature_extractor:
        write_labels(_labels_path(out, format), loaded.class_names)
    elif format != "savedmodel":  # a classifier's labels would now describe the wrong model
        own_labels_path(out).unlink(missing_ok=True)
    logger.info(
        "Exported %s to %s (%s%s).",
        "feature extractor" if feature_extractor else "classifier",
        out,
        format,
        f", {quantize} quantisation" if quantize != "none" else "",
    )
    if compare and not feature_extractor and dataset is not None:
        compare_with_keras(
            loaded, out, dataset, max_drop, training=_training_images_of(loaded.path, data)
        )
    return out


def _training_images_of(model_path, data):
    """The `path_key`s of the training images of the model's run, where `data` is other
    images than the run's own (which are split as the run split them); else None."""
    run = run_of_model(model_path)
    if data is None or run is None or is_run_data(run, data):
        return None
    return training_images(run)


def _labels_path(out, format):
    """A classifier export's class names: inside a SavedModel, beside a file."""
    return out / LABELS_FILE if format == "savedmodel" else own_labels_path(out)


def _check_out(out, format, overwrite, labels):
    suffix, kind = FORMATS[format].SUFFIX, FORMATS[format].KIND
    if suffix and out.suffix != suffix:
        raise InvalidArgumentError(f"out={out}: a {kind} export needs a name ending in {suffix}.")
    if out.exists() and not overwrite:
        raise InvalidArgumentError(f"out={out} exists. Choose another path or pass overwrite=True.")
    if out.is_dir() and not (format == "savedmodel" and is_ours(out)):
        raise InvalidArgumentError(
            f"out={out} is a folder that is not a SavedModel export of transfer (no "
            f"{MARKER_FILE} in it): overwrite=True replaces only an export of ours. Choose "
            "another path, or remove it yourself."
        )
    labels_path = _labels_path(out, format)
    if labels and labels_path.exists() and not overwrite:
        raise InvalidArgumentError(
            f"{labels_path} exists. Choose another out or pass overwrite=True."
        )


def run_dataset(model_path, data):
    """The images the model was trained on, reopened from its run's config.json
    (`transfer.runs.reopen_data`); or `data`, split with the run's fractions (the
    default ones without a run). None, with a warning, where there are none."""
    config_path = Path(model_path).parent / CONFIG_FILE
    config = read_config(config_path.parent) if config_path.exists() else {}
    if data is None and config.get("data") is None:
        logger.warning(
            "%s has no %s beside it naming its images: pass data= to compare the export with it.",
            model_path,
            CONFIG_FILE,
        )
        return None
    try:
        # the run's folder, not only its config: its relative paths are found from it
        dataset = reopen_data(config_path.parent if config else {}, data, min_classes=1)
        drop_unreadable(dataset, progress=False)
    except (DataError, InvalidArgumentError) as exc:
        logger.warning(
            "The images of %s cannot be read (%s): pass data= to compare the export with it.",
            model_path,
            first_line(exc),
        )
        return None
    return dataset


def _representative(dataset, image_size, count=REPRESENTATIVE_IMAGES, seed=0):
    """A callable giving a seeded sample of the training images as uint8 batches of
    one, for calibration (int8, int16x8); None without a dataset."""
    if dataset is None:
        return None
    sample = dataset.splits["train"].sample(count, seed)
    return lambda: (
        np.asarray(batch).astype(np.uint8)
        for batch in images_only(sample, image_size, batch_size=1)
    )


INT8_HINT_AGREEMENT = 0.98  # below it, export suggests int16x8


def compare_with_keras(loaded, out, dataset, max_drop=MAX_DROP, training=None):
    """Run the export and the Keras model on the validation images (all images where
    the run had no validation split); log the agreement, warn on a drop. `training`
    (the `path_key`s of the run's training images, for data other than the run's own):
    those among the images compared are counted (`training_images_compared`) and
    named in a warning."""
    split_name = "val" if len(dataset.splits.get("val", ())) else "train"
    split = dataset.splits[split_name]
    trained = sum(path_key(p) in training for p in split.paths) if training else 0
    if list(dataset.class_names) != list(loaded.class_names):
        logger.warning("Not compared: the classes of %s are not the model's.", dataset.name)
        return None
    exported = open_model(out, loaded.image_size)
    reference = keras_format.KerasRunner(loaded).predict_split(split, INFERENCE_BATCH_SIZE)
    probabilities = exported.predict_split(split, INFERENCE_BATCH_SIZE)
    result = comparison.agreement(np.asarray(split.labels), reference, probabilities)
    logger.info(
        "Compared with the Keras model on the %s split: %s.",
        split_name,
        comparison.describe(result),
    )
    if training is not None:
        result["training_images_compared"] = trained
    if trained:
        logger.warning(
            "%d of the %d images compared are training images of the model's run: "
            "the accuracies are not held-out ones (the agreement still holds).",
            trained,
            len(split),
        )
    drop = 0.0 - result["accuracy_difference_points"]
    if drop > max_drop:
        logger.warning(
            "The export is %.2f accuracy points below the Keras model (more than max_drop=%g).",
            drop,
            max_drop,
        )
    if (
        exported.metadata.get("quantization") == "int8"
        and result["top1_agreement"] < INT8_HINT_AGREEMENT
    ):
        logger.warning(
            "int8 changes %.1f%% of the top-1 predictions: --quantize int16x8 (int8 "
            "weights, 16-bit activations: the same size, much closer to the Keras "
            "model, slower on CPUs) or dynamic may serve better; compare them.",
            100 * (1 - result["top1_agreement"]),
        )
    return result


def _export_backbone_weights(run_or_model, out, group, overwrite):
    FORMATS["h5"].check_out(out, group)
    if out.exists() and not overwrite:
        raise InvalidArgumentError(f"out={out} exists. Choose another path or pass overwrite=True.")
    loaded = load_model(run_or_model, need_classifier=False)
    FORMATS["h5"].write(loaded.model, out)
    logger.info("Exported the backbone's weights to %s (keras.applications notop H5).", out)
    return out
