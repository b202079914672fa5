"""TFLite (.tflite), float or quantised, with its labels and input description inside.

The TFLite support library's metadata writer (tflite-support 0.4.4, the last release)
pins protobuf<4, which TensorFlow 2.21 cannot run with; so, as Ultralytics does, the
class names (labels.txt) and metadata.json are packed as a zip archive appended to
the flatbuffer, the same packing TFLite metadata uses for its associated files.
Interpreters ignore the archive; `zipfile.ZipFile(path)` reads it.
"""

import json
import logging
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from transfer.errors import InvalidArgumentError, unknown_choice
from transfer.export.common import METADATA_FILE, Runner, metadata_json, pixels_function
from transfer.export.optional import optional_module
from transfer.io import atomic_path
from transfer.lazy import keras, tf
from transfer.runs import LABELS_FILE, labels_beside, read_labels

SUFFIX = ".tflite"
KIND = "TFLite"
# int16x8 is TFLite's "16x8" mode: int8 weights (the size of int8) and int16
# activations. On a ResNet50 from source weights at 32 px it agreed with the Keras
# model on 100% of 60 validation images; int8 with only the output layer float on 93%,
# with the features and the whole head float (feature_and_head_layers) on 98.3%.
QUANTIZATIONS = ("none", "float16", "dynamic", "int8", "int16x8")
CALIBRATED = ("int8", "int16x8")  # need representative images
FLOAT_OPS = ["FULLY_CONNECTED", "SOFTMAX"]  # of any int8 export: a classifier's output
REPRESENTATIVE_IMAGES = 300  # calibration: a seeded sample of the training images
RANGE_SCALES = np.linspace(0.05, 1.0, 96)  # of min-max's range, tried by best_range
COARSE_STEP = 8  # best_range tries every 8th scale, then the 15 around the best
# How best_range adds up the calibration images' errors; int8 fits its ranges both
# ways and keeps the model closer to the Keras model's outputs on those images.
# "absolute" was closer on the tests' small CNN (98.7% top-1 agreement against 97.7%),
# "per image" on a source backbone whose activations were 100 times larger on 6% of
# the images (94.3% against 70.0%); they tied on the demo run. README: Export.
RANGE_WEIGHINGS = ("absolute", "per image")

# The warning tf.lite.Interpreter gives each time one is made (TensorFlow 2.16 on).
INTERPRETER_DEPRECATION = r"\s*Warning: tf\.lite\.Interpreter is deprecated"

logger = logging.getLogger("transfer")


def write(model, out, info):
    if info.quantize not in QUANTIZATIONS:
        raise unknown_choice("quantization", info.quantize, QUANTIZATIONS)
    flatbuffer = _convert(model, info)
    with atomic_path(out) as tmp_path:
        Path(tmp_path).write_bytes(flatbuffer)
        with zipfile.ZipFile(tmp_path, "a", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(METADATA_FILE, metadata_json(info.metadata()))
            if info.class_names is not None:
                archive.writestr(LABELS_FILE, "\n".join(info.class_names) + "\n")


def _convert(model, info):
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "savedmodel"
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", pixels_function(model, info.image_size))
        archive.write_out(str(saved), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if info.quantize in CALIBRATED:
            return _calibrated(converter, info, model)
        if info.quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if info.quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()


def _calibrated(converter, info, model):
    """Integer quantisation calibrated on the representative images. int8: full
    integer but for the backbone's output (the features) and the head after it
    (pooling, standardisation, output layer, softmax), which stay float. int8
    probabilities come in steps of 1/256, and the ties this made between the top two
    classes changed 4% of the top-1 predictions of a small CNN trained on the sample
    (2% with a float output layer). The features: per-tensor int8 gives all 2,048 of
    them one step, coarse for the ones with a small range, and the standardisation
    divides each by its spread; on a ResNet50 at 32 px (no pooling to average the
    error out) the top-1 agreement with the Keras model went from 93.3% to 98.3% of 60
    validation images, at the same file size. int16x8: every op with int16
    activations. Pixels stay uint8 in, probabilities float32 out."""
    if info.representative is None:
        raise InvalidArgumentError(
            f"quantize={info.quantize!r} calibrates on training images: pass data=FOLDER "
            "(the run's own data is not available)."
        )

    # Decoded once: TFLite's calibration, the values' pass and the candidates' check.
    images = np.concatenate([np.asarray(batch) for batch in info.representative()])

    def representative():
        return ([images[i : i + 1]] for i in range(len(images)))

    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    if info.quantize == "int16x8":
        # The debugger below converts to int8 only, so every op is 16x8 here, the head
        # too. TFLITE_BUILTINS: an op without a 16x8 kernel stays float.
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8,
            tf.lite.OpsSet.TFLITE_BUILTINS,
        ]
        return converter.convert()
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    # Minutes on a CPU (TFLite calibrates one image at a time), so say what it does.
    logger.info(
        "int8: calibrating on %d training images (TFLite runs them one at a "
        "time; minutes for a ResNet)...",
        len(images),
    )
    # TFLite's selective quantisation: the debugger calibrates once, then quantises
    # with these ops, and then these tensors, left float. It builds tf.lite
    # Interpreters of its own, each of which warns (7 lines) that it is deprecated.
    options = tf.lite.experimental.QuantizationDebugOptions
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=INTERPRETER_DEPRECATION)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter,
            debug_dataset=representative,
            debug_options=options(denylisted_ops=FLOAT_OPS),
        )
        float_layers = feature_and_head_layers(model)
        if float_layers:
            nodes = tensors_of_layers(debugger.get_nondebug_quantized_model(), float_layers)
            debugger.options = options(denylisted_ops=FLOAT_OPS, denylisted_nodes=nodes)
        calibrated = debugger.calibrated_model
        logger.info("int8: fitting each activation's range (%s)...", " and ".join(RANGE_WEIGHINGS))
        values = calibration_values(calibrated, images)
        expected = np.asarray(model.predict(images.astype(np.float32), verbose=0))
        candidates = []
        for weighing in RANGE_WEIGHINGS:
            debugger.calibrated_model = fitted_ranges(calibrated, values, weighing)
            candidates.append(debugger.get_nondebug_quantized_model())
    logger.info(
        "int8: keeping the one of %d quantised models closest to the Keras model "
        "on the calibration images...",
        len(candidates),
    )
    return max(candidates, key=lambda flatbuffer: fidelity(flatbuffer, images, expected))


def fidelity(flatbuffer, images, expected, batch_size=32):
    """How close a quantised model's outputs are to `expected`: (top-1 agreement,
    minus the mean squared difference), higher is closer."""
    interpreter = _interpreter(flatbuffer)
    target = interpreter.get_output_details()[0]["index"]
    got = np.concatenate(
        [
            np.array(
                _invoke(interpreter, images[start : start + batch_size]).get_tensor(target),
                np.float32,
            )
            for start in range(0, len(images), batch_size)
        ]
    ).reshape(expected.shape)
    agreement = float(np.mean(got.argmax(-1) == expected.argmax(-1)))
    return agreement, -float(np.mean((got - expected) ** 2))


def calibration_values(calibrated, images, samples_per_image=20_000, seed=0):
    """{tensor index: one array of its values per image of `images` (uint8 pixels)}
    for each of the calibrated model's activations (TFLite's calibration keeps only
    their min-max); at most `samples_per_image` values an image, seeded."""
    flat = _flatbuffer_utils().convert_bytearray_to_object(bytearray(calibrated))
    ranged = [
        index
        for index, tensor in enumerate(flat.subgraphs[0].tensors)
        if tensor.quantization is not None
        and tensor.quantization.min is not None
        and len(tensor.quantization.min) == 1
    ]
    interpreter = _interpreter(calibrated, experimental_preserve_all_tensors=True)
    rng = np.random.default_rng(seed)
    values = {index: [] for index in ranged}
    for start in range(len(images)):  # one at a time: every tensor is kept
        _invoke(interpreter, images[start : start + 1])
        for index in ranged:
            seen = interpreter.get_tensor(index).ravel()
            if seen.size > samples_per_image:
                seen = rng.choice(seen, samples_per_image, replace=False)
            values[index].append(seen.astype(np.float32))
    return values


def _invoke(interpreter, batch):
    """Run a tf.lite interpreter on a batch of its input (of any size); returns it."""
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], batch.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], np.asarray(batch).astype(source["dtype"]))
    interpreter.invoke()
    return interpreter


def fitted_ranges(calibrated, values, weighing="absolute"):
    """The calibrated model with each activation's int8 range chosen to minimise the
    squared quantisation error on the calibration values (`calibration_values`),
    instead of their min-max (TensorRT's and Wu et al. 2020's "MSE" calibration):
    with min-max, a few outliers set a tensor's step for all of its values. The range
    is scaled towards zero, its zero point kept, by the factor of RANGE_SCALES that
    fits best; `weighing` (RANGE_WEIGHINGS) says how the images' errors add up."""
    flat = _flatbuffer_utils().convert_bytearray_to_object(bytearray(calibrated))
    tensors = flat.subgraphs[0].tensors
    for index, images in values.items():
        stats = tensors[index].quantization
        stats.min[0], stats.max[0] = best_range(
            images, float(stats.min[0]), float(stats.max[0]), weighing
        )
    return bytes(_flatbuffer_utils().convert_object_to_bytearray(flat))


def _flatbuffer_utils():
    from tensorflow.lite.tools import flatbuffer_utils as utils

    return utils


def best_range(images, low, high, weighing="absolute", levels=256):
    """(low, high) scaled by the factor of RANGE_SCALES whose int8 rounding of the
    values (clipped to the range) has the least squared error (`images`: one array of
    values per image, or one array). weighing "absolute": every value's error counts
    the same; "per image": each image's error relative to its mean square, so every
    image counts the same, even where a few images' activations are 100 times the
    others' and would otherwise set the step for all of them. Every COARSE_STEP-th
    scale first, then the scales around the best of those: on the demo run's 79
    activations (89 million values) the same ranges as trying all 96, 12 times faster."""
    if weighing not in RANGE_WEIGHINGS:
        raise unknown_choice("range weighing", weighing, RANGE_WEIGHINGS)
    images = [images] if isinstance(images, np.ndarray) else images
    low, high = min(low, 0.0), max(high, 0.0)  # TFLite's ranges hold zero
    values = np.concatenate(images).astype(np.float32, copy=False)
    if weighing == "absolute":
        weights = np.float32(1.0 / values.size)
    else:  # an all-zero image rounds exactly: it weighs nothing
        weights = np.concatenate(
            [
                np.full(image.size, 1.0 / (image.size * energy) if energy else 0.0, np.float32)
                for image in images
                for energy in [float(np.mean(np.square(image)))]
            ]
        )
    errors = {}
    work = np.empty_like(values)  # in place: these arrays hold millions of values

    def error(i):
        if i not in errors:
            lo, hi = np.float32(low * RANGE_SCALES[i]), np.float32(high * RANGE_SCALES[i])
            step = np.float32((hi - lo) / (levels - 1) or 1.0)
            np.clip(values, lo, hi, out=work)
            np.subtract(work, lo, out=work)
            np.divide(work, step, out=work)
            np.round(work, out=work)
            np.multiply(work, step, out=work)
            np.add(work, lo, out=work)
            np.subtract(work, values, out=work)
            np.square(work, out=work)
            np.multiply(work, weights, out=work)
            errors[i] = float(work.sum(dtype=np.float64))
        return errors[i]

    count = len(RANGE_SCALES)
    coarse = min(range(0, count, COARSE_STEP), key=error)
    best = min(range(max(0, coarse - COARSE_STEP + 1), min(count, coarse + COARSE_STEP)), key=error)
    return low * RANGE_SCALES[best], high * RANGE_SCALES[best]


def _interpreter(flatbuffer, **options):
    """LiteRT's interpreter (the litert extra), else TensorFlow's deprecated one."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError:
        Interpreter = tf.lite.Interpreter  # noqa: N806
    with warnings.catch_warnings():  # the deprecation, preserve_all_tensors' memory note
        warnings.simplefilter("ignore")
        return Interpreter(model_content=flatbuffer, **options)


def feature_and_head_layers(model):
    """Names of the backbone's output layer and of the layers after the backbone; []
    for a model without a nested backbone."""
    nested = [index for index, layer in enumerate(model.layers) if isinstance(layer, keras.Model)]
    if not nested:
        return []
    backbone = model.layers[nested[-1]]
    return [backbone.layers[-1].name] + [layer.name for layer in model.layers[nested[-1] + 1 :]]


def tensors_of_layers(flatbuffer, layer_names):
    """Names of the tensors of a TFLite model that Keras layers `layer_names` computed:
    TensorFlow names an op `<model>_1/<layer>_1/<op>`, and a fused op joins its ops'
    names with ';'."""
    interpreter = _interpreter(flatbuffer)
    layer = re.compile(r"(^|/)(%s)(_\d+)?/" % "|".join(map(re.escape, layer_names)))
    return [
        tensor["name"]
        for tensor in interpreter.get_tensor_details()
        if any(layer.search(part) for part in tensor["name"].split(";"))
    ]


def read_metadata(path):
    """(metadata dict, class names) packed inside a .tflite file; ({}, None) if none."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            metadata = json.loads(archive.read(METADATA_FILE)) if METADATA_FILE in names else {}
            labels = (
                archive.read(LABELS_FILE).decode("utf8").split("\n")
                if LABELS_FILE in names
                else None
            )
    except zipfile.BadZipFile:
        return {}, None
    return metadata, [name for name in labels if name] if labels else None


class TFLiteRunner(Runner):
    format = "tflite"

    def __init__(self, path, image_size=None):
        interpreter_module = optional_module("ai_edge_litert.interpreter")
        self.path = Path(path)
        self.metadata, self.class_names = read_metadata(path)
        if self.class_names is None:
            self.class_names = read_labels(labels_beside(path))
        self.interpreter = interpreter_module.Interpreter(model_path=str(path))
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_shape = _declared(self._input)
        self.output_shapes = [_declared(d) for d in self.interpreter.get_output_details()]
        self.image_size = tuple(image_size or self._input["shape"][1:3])
        self._batch = None

    def predict(self, images):
        if len(images) != self._batch:  # resizing reallocates: only when the batch changes
            self.interpreter.resize_tensor_input(self._input["index"], images.shape)
            self.interpreter.allocate_tensors()
            self._batch = len(images)
        self.interpreter.set_tensor(self._input["index"], images.astype(self._input["dtype"]))
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self._output["index"]), dtype=np.float32)


def _declared(details):
    """A tensor's shape as the file declares it, None where any size goes."""
    shape = details.get("shape_signature", details["shape"])
    return tuple(None if d < 0 else int(d) for d in shape)


def load(path, image_size=None):
    return TFLiteRunner(path, image_size)
