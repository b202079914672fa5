"""Model files from elsewhere and exports that go wrong: a
SavedModel transfer did not write is refused unless trusted, a file that is not a
classifier is one `Error:` line, a full disk during a SavedModel export is one line,
an export's evaluation makes a report without running the export, and int8 exports
do not warn about TensorFlow's deprecated interpreter."""

import json
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import make_image_folder, run_cli
from transfer.commands.evaluate import evaluate
from transfer.errors import InvalidArgumentError
from transfer.export import ExportInfo, onnx_format, open_model, tflite
from transfer.io import save_model
from transfer.models.heads import build_classifier
from transfer.runs import RunPaths, mark_as_ours, write_labels

LABELS = "cat\ndog\n"


def _tflite(model, path):
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    Path(f"{path}.labels.txt").write_text(LABELS)
    return path


def _pixels_model(head):
    """A small Keras model of 32x32 RGB pixels: `head(pooled)` on their average colour."""
    images = keras.Input((32, 32, 3))
    return keras.Model(images, head(keras.layers.GlobalAveragePooling2D()(images)))


class _Writes(tf.Module):
    """A SavedModel whose serving signature also writes a file: what a graph may do."""

    def __init__(self, target):
        super().__init__()
        self.target = str(target)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve(self, images):
        tf.io.write_file(self.target, "written by the model")
        return {"probabilities": tf.ones([tf.shape(images)[0], 2]) / 2}


class _Unsigned(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def other(self, images):
        return {"probabilities": tf.ones([tf.shape(images)[0], 2]) / 2}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{name: path} of model files that are not what evaluate expects, and of one that is."""
    root = tmp_path_factory.mktemp("models")
    keras.utils.set_random_seed(0)
    made = {
        "classifier": _tflite(
            _pixels_model(lambda x: keras.layers.Dense(2, activation="softmax")(x)),
            root / "ok.tflite",
        ),
        "logits": _tflite(
            _pixels_model(lambda x: keras.layers.Dense(2)(x) * 100.0), root / "logits.tflite"
        ),
        "feature map": _tflite(
            keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3)]),
            root / "fmap.tflite",
        ),
        "junk": root / "junk.tflite",
    }
    made["junk"].write_bytes(b"not a model")
    Path(f"{made['junk']}.labels.txt").write_text(LABELS)
    writes = _Writes(root / "written-by-the-model.txt")
    tf.saved_model.save(writes, str(root / "foreign"), signatures={"serving_default": writes.serve})
    (root / "foreign" / "labels.txt").write_text(LABELS)
    (root / "foreign" / "metadata.json").write_text(json.dumps({"image_size": [32, 32]}))
    made["foreign"] = root / "foreign"
    unsigned = _Unsigned()
    tf.saved_model.save(unsigned, str(root / "unsigned"), signatures={"other": unsigned.other})
    (root / "unsigned" / "labels.txt").write_text(LABELS)
    made["unsigned"] = root / "unsigned"
    return made


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), {"cat": 3, "dog": 3}, size=(32, 32))


def _one_error_line(result, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    return errors[0]


# ------------------------------------------------------------------------ item 15


def test_a_savedmodel_transfer_did_not_write_is_refused_unless_trusted(tmp_path, models, data):
    written = models["foreign"].parent / "written-by-the-model.txt"
    written.unlink(missing_ok=True)
    result = run_cli("evaluate", models["foreign"], "--data", data, "--out", tmp_path / "ev")
    error = _one_error_line(result)
    assert error.startswith(
        f"Error: {models['foreign']} is a SavedModel that transfer did not write"
    ), error
    assert "--trust-model" in error
    assert not written.exists()
    with pytest.raises(InvalidArgumentError, match="trust_model=True"):
        evaluate(models["foreign"], data, tmp_path / "ev-python")
    assert not written.exists()
    # trusted: it runs, and its graph does what it does
    result = run_cli(
        "evaluate", models["foreign"], "--data", data, "--out", tmp_path / "ev", "--trust-model"
    )
    assert result.exit_code == 0, result.output
    assert written.exists()


def test_a_savedmodel_with_our_marker_needs_no_trust(tmp_path, models):
    ours = tmp_path / "ours"
    unsigned = _Unsigned()
    tf.saved_model.save(unsigned, str(ours), signatures={"other": unsigned.other})
    (ours / "labels.txt").write_text(LABELS)
    with pytest.raises(InvalidArgumentError, match="transfer did not write"):
        open_model(ours, image_size=32)
    mark_as_ours(ours)
    with pytest.raises(InvalidArgumentError, match="has no serving_default signature"):
        open_model(ours, image_size=32)


# ------------------------------------------------------------------------ item 14


@pytest.mark.parametrize(
    "name, message",
    [
        ("logits", "outputs values from "),
        ("feature map", "is not a classifier of its 2 classes: it outputs (?, 30, 30, 4)"),
        ("junk", "is not a TFLite model that can be read"),
        ("unsigned", "has no serving_default signature (it has other)"),
    ],
)
def test_a_model_that_is_not_a_classifier_is_one_error_line(tmp_path, models, data, name, message):
    result = run_cli(
        "evaluate", models[name], "--data", data, "--out", tmp_path / "ev", "--trust-model"
    )
    error = _one_error_line(result)
    assert error.startswith(f"Error: {models[name]}"), error
    assert message in error, error


def test_an_onnx_model_that_is_not_a_classifier_is_one_error_line(tmp_path, data):
    pytest.importorskip("tf2onnx")
    pytest.importorskip("onnxruntime")
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(4, 3)])
    path = tmp_path / "fmap.onnx"
    onnx_format.write(model, path, ExportInfo((32, 32)))  # a feature map, as ONNX
    Path(f"{path}.labels.txt").write_text(LABELS)
    error = _one_error_line(run_cli("evaluate", path, "--data", data, "--out", tmp_path / "ev"))
    assert error == (
        f"Error: {path} is not a classifier of its 2 classes: it outputs "
        "(?, 30, 30, 4); expected (batch, 2), one probability per class."
    )


def test_the_report_of_an_export_evaluation_comes_from_its_predictions(tmp_path, models, data):
    out = tmp_path / "ev"
    result = run_cli("evaluate", models["classifier"], "--data", data, "--out", out)
    assert result.exit_code == 0, result.output
    (out / "report.html").unlink()
    result = run_cli("report", out)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert "ok.tflite is an export, not a Keras model" in page
    assert "cat" in page and "dog" in page  # per-class rows from metrics.json


@pytest.mark.heavy
def test_a_savedmodel_export_to_a_full_disk_is_one_error_line(tmp_path, full_disk):
    paths = RunPaths(tmp_path / "run")
    paths.root.mkdir()
    save_model(build_classifier(2, weights=None, image_size=32), paths.model)
    write_labels(paths.labels, ["cat", "dog"])
    out = full_disk / "savedmodel"
    error = _one_error_line(
        run_cli("export", paths.root, "--format", "savedmodel", "--out", out, "--no-compare"),
        code=1,
    )
    assert error == f"Error: Cannot write {out}: No space left on device."
    assert list(full_disk.iterdir()) == []


# ------------------------------------------------------------------------ item 17


def test_int8_quantisation_does_not_warn_of_the_deprecated_interpreter(tmp_path):
    pytest.importorskip("ai_edge_litert")
    keras.utils.set_random_seed(0)
    model = _pixels_model(
        lambda x: keras.layers.Dense(2, activation="softmax")(
            keras.layers.Dense(8, activation="relu")(x)
        )
    )
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3)).astype(np.uint8)
    info = ExportInfo(
        (32, 32),
        ["cat", "dog"],
        quantize="int8",
        representative=lambda: (images[i : i + 1] for i in range(len(images))),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tflite.write(model, tmp_path / "m.tflite", info)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "Interpreter is deprecated" in m], messages
    assert type(tflite._interpreter((tmp_path / "m.tflite").read_bytes())).__module__.startswith(
        "ai_edge_litert"
    )
