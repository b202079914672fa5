"""evaluate, predict, export, embed and probe, through the CLI, on a model trained here."""

import csv
import io
import json
import shutil
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
from PIL import Image

import transfer
from tests.conftest import make_image_folder, run_cli, write_image
from transfer.io import MODEL_METADATA_MEMBER


def last_line(result):
    return result.output.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small classifier trained by `transfer finetune`, and its data."""
    root = tmp_path_factory.mktemp("use")
    data = make_image_folder(root / "images", {"cat": 8, "dog": 8, "fox": 8})
    result = run_cli(
        "finetune",
        "--no-report",
        "--data",
        data,
        "--weights",
        "none",
        "--out",
        root / "run",
        "--image-size",
        "32",
        "--head-epochs",
        "3",
        "--fine-tune-from",
        "none",
    )
    assert result.exit_code == 0, result.output
    return root / "run", data, root


@pytest.mark.heavy
def test_evaluate_reports_and_unknown_classes(trained, tmp_path):
    run, data, _ = trained
    eval_data = tmp_path / "eval"
    shutil.copytree(data, eval_data)
    make_image_folder(eval_data, {"zebra": 3})
    result = run_cli("evaluate", run, "--data", eval_data, "--out", tmp_path / "report")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["images"] == 24
    assert metrics["unknown_classes"] == {"zebra": 3}
    assert {"accuracy", "macro_f1", "log_loss", "per_class"} <= set(metrics)
    for name in (
        "classification_report.txt",
        "confusion_matrix.png",
        "confusion_matrix.csv",
        "predictions.csv",
    ):
        assert (tmp_path / "report" / name).exists()
    assert "3 images of class 'zebra', which the model does not know" in result.output
    assert "images of unknown classes: 3 (zebra)" in result.output


@pytest.mark.heavy
def test_evaluate_and_predict_with_flip_tta(trained, tmp_path):
    run, data, _ = trained
    plain = run_cli("evaluate", run, "--data", data, "--out", tmp_path / "plain")
    tta = run_cli("evaluate", run, "--data", data, "--out", tmp_path / "tta", "--tta")
    assert plain.exit_code == 0 and tta.exit_code == 0, tta.output
    plain_metrics = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    tta_metrics = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert (plain_metrics["tta"], tta_metrics["tta"]) == (False, True)
    assert plain_metrics["log_loss"] != tta_metrics["log_loss"]  # other probabilities
    image = str(next((data / "cat").iterdir()))
    rows = {
        flag: json.loads(run_cli("predict", run, image, "--format", "json", *flag).output)
        for flag in [(), ("--tta",)]
    }
    assert rows[()][0]["predictions"] != rows[("--tta",)][0]["predictions"]


@pytest.mark.heavy
@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_predict_rows_for_files_folders_and_bad_files(trained, tmp_path, fmt):
    run, data, _ = trained
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    write_image(folder / "a.png")
    write_image(folder / "nested" / "b.JPG")
    (folder / "broken.jpg").write_bytes(b"not an image")
    single = data / "cat" / "img_000.png"
    result = run_cli(
        "predict", run, single, folder, tmp_path / "missing.png", "--format", fmt, "--top-k", "2"
    )
    assert result.exit_code == 1, result.output  # a broken and a missing file
    stdout = result.stdout
    expected_paths = [
        str(single),
        str(folder / "a.png"),
        str(folder / "broken.jpg"),
        str(folder / "nested" / "b.JPG"),
        str(tmp_path / "missing.png"),
    ]
    if fmt == "json":
        rows = json.loads(stdout)
        assert [r["path"] for r in rows] == expected_paths
        assert len(rows[0]["predictions"]) == 2
        assert rows[0]["predictions"][0]["label"] in {"cat", "dog", "fox"}
        assert rows[2]["error"].startswith("not a readable image")
        assert rows[4]["error"] == "file not found"
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(stdout)))
        assert [r["path"] for r in rows] == expected_paths
        assert set(rows[0]) == {
            "path",
            "label_1",
            "probability_1",
            "label_2",
            "probability_2",
            "error",
        }
        assert 0 <= float(rows[0]["probability_1"]) <= 1 and rows[0]["error"] == ""
        assert rows[2]["label_1"] == "" and rows[2]["error"]
    else:
        lines = stdout.strip().splitlines()
        assert len(lines) == 5 and lines[2].split()[1] == "error:"
    assert "2 of 5 files could not be read." in result.stderr


# Every format's round trip outside transfer is tests/test_export.py's, in the
# default run; this one, on a ResNet50 run with its feature extractors, is slow (ResNet50
# to TFLite and SavedModel: about a minute and a half).
@pytest.mark.slow
def test_exports_reload_outside_transfer_with_matching_outputs(trained, tmp_path):
    run, data, _ = trained
    exports = {
        "keras": tmp_path / "model.keras",
        "savedmodel": tmp_path / "savedmodel",
        "tflite": tmp_path / "model.tflite",
    }
    for fmt, out in exports.items():
        result = run_cli("export", run, "--format", fmt, "--out", out, "--no-compare")
        assert result.exit_code == 0, result.output
    features = tmp_path / "features.keras"
    conv4 = tmp_path / "conv4.keras"
    assert run_cli("export", run, "--feature-extractor", "--out", features).exit_code == 0
    assert (
        run_cli(
            "export",
            run,
            "--feature-extractor",
            "--group",
            "conv4",
            "--pooling",
            "none",
            "--out",
            conv4,
        ).exit_code
        == 0
    )
    for labels in ("model.keras.labels.txt", "model.tflite.labels.txt", "savedmodel/labels.txt"):
        assert (tmp_path / labels).read_text().split() == ["cat", "dog", "fox"]
    assert not (tmp_path / "labels.txt").exists()  # nothing outside the exports

    images = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR))
            for p in sorted((data / "dog").iterdir())[:4]
        ]
    ).astype("uint8")
    np.save(tmp_path / "images.npy", images)
    model = keras.models.load_model(run / "model.keras", safe_mode=True)
    expected = np.asarray(model(images.astype("float32")))
    backbone = model.get_layer("resnet50")
    pooled = keras.Model(model.input, model.get_layer("head_pool").output)
    expected_features = np.asarray(pooled(images.astype("float32")))
    script = f"""
import sys, json, numpy as np
import tensorflow as tf, keras
images = np.load({str(tmp_path / "images.npy")!r})
out = {{}}
out["keras"] = np.asarray(keras.models.load_model({str(exports["keras"])!r}, safe_mode=True)(images.astype("float32"))).tolist()
serving = tf.saved_model.load({str(exports["savedmodel"])!r}).signatures["serving_default"]
out["savedmodel"] = serving(images=tf.constant(images))["probabilities"].numpy().tolist()
interpreter = tf.lite.Interpreter(model_path={str(exports["tflite"])!r})
detail = interpreter.get_input_details()[0]
interpreter.resize_tensor_input(detail["index"], images.shape)
interpreter.allocate_tensors()
interpreter.set_tensor(detail["index"], images)
interpreter.invoke()
out["tflite"] = interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).tolist()
out["features"] = np.asarray(keras.models.load_model({str(features)!r}, safe_mode=True)(images)).tolist()
out["conv4_shape"] = list(keras.models.load_model({str(conv4)!r}, safe_mode=True)(images).shape)
assert "transfer" not in sys.modules
print(json.dumps(out))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for fmt in ("keras", "savedmodel", "tflite"):
        np.testing.assert_allclose(np.array(got[fmt]), expected, atol=1e-4, err_msg=fmt)
    np.testing.assert_allclose(np.array(got["features"]), expected_features, rtol=1e-4, atol=1e-4)
    assert got["conv4_shape"] == [4, 2, 2, 1024]
    assert backbone is not None


@pytest.mark.heavy
def test_backbone_weights_export_starts_another_model(trained, tmp_path):
    run, _, _ = trained
    out = tmp_path / "source_notop.h5"
    result = run_cli("export", run, "--format", "h5", "--out", out)
    assert result.exit_code == 0, result.output
    trained_backbone = keras.models.load_model(run / "model.keras").get_layer("resnet50")
    started = transfer.ResNet50(weights=str(out), include_top=False, input_shape=(32, 32, 3))
    for ours, theirs in zip(started.weights, trained_backbone.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    for bad_out, message in ((tmp_path / "w.weights.h5", "legacy .h5"), (out, "exists")):
        result = run_cli("export", run, "--format", "h5", "--out", bad_out)
        assert result.exit_code == 2 and message in last_line(result), result.output


@pytest.mark.heavy
def test_embed_and_probe(trained, tmp_path):
    run, data, _ = trained
    npz = tmp_path / "emb.npz"
    result = run_cli("embed", "--data", data, "--model", run, "--out", npz, "--val-split", "0.25")
    assert result.exit_code == 0, result.output
    assert f"embedded 24 images (2048 features each, 3 classes) to {npz}" in result.output
    with np.load(npz) as f:
        assert f["features"].shape == (24, 2048)
        assert sorted(set(f["splits"].tolist())) == ["train", "val"]
        assert f["class_names"].tolist() == ["cat", "dog", "fox"]
        assert all(p.startswith(str(data)) for p in f["paths"].tolist())
    result = run_cli("probe", npz, "--out", tmp_path / "probe", "--folds", "3")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert metrics["C"] > 0 and metrics["val"]["images"] >= 3
    assert metrics["val"]["accuracy"] >= 2 / 3  # the classes differ in colour: easy
    assert (tmp_path / "probe" / "confusion_matrix.png").exists()


@pytest.mark.heavy
def test_embed_fresh_backbone_in_python(trained):
    from transfer.commands.embed import embed

    _, data, _ = trained
    result = embed(data, depth=50, version="v2", weights=None, image_size=32, pooling="max")
    assert result["features"].shape == (24, 2048)
    assert result["labels"].tolist().count(0) == 8


@pytest.mark.heavy
def test_bad_model_inputs(trained, tmp_path):
    run, data, _ = trained
    fake = tmp_path / "fake.keras"
    fake.write_text("not a model")
    result = run_cli("predict", fake, data)
    assert result.exit_code == 2
    assert last_line(result).startswith(f"Error: {fake} is not a Keras model that can be loaded")

    alone = tmp_path / "alone"
    alone.mkdir()
    # The model file without the class names that transfer keeps inside it.
    with (
        zipfile.ZipFile(run / "model.keras") as source,
        zipfile.ZipFile(alone / "model.keras", "w") as copy,
    ):
        for item in source.infolist():
            if item.filename != MODEL_METADATA_MEMBER:
                copy.writestr(item, source.read(item))
    result = run_cli("evaluate", alone / "model.keras", "--data", data, "--out", tmp_path / "e")
    assert result.exit_code == 2
    assert last_line(result).startswith(
        f"Error: {alone / 'model.keras'} has no class names inside it and no labels.txt"
    )

    features = tmp_path / "fx" / "features.keras"
    assert run_cli("export", run, "--feature-extractor", "--out", features).exit_code == 0
    result = run_cli("predict", features, data)
    assert result.exit_code == 2
    assert "is a feature extractor (output shape (None, 2048)), not a classifier" in last_line(
        result
    )

    result = run_cli("export", run, "--format", "coreml", "--out", tmp_path / "m.mlmodel")
    assert result.exit_code == 2
    assert last_line(result) == (
        "Error: Unknown export format: 'coreml'. Expected one of keras, "
        "savedmodel, tflite, onnx, h5."
    )
    result = run_cli("export", run, "--format", "tflite", "--out", tmp_path / "m.keras")
    assert last_line(result) == (
        f"Error: --out {tmp_path / 'm.keras'}: a TFLite export needs a name ending in .tflite."
    )
    result = run_cli("probe", fake, "--out", tmp_path / "p")
    assert result.exit_code == 2 and "is not an .npz file of `transfer embed`" in last_line(result)


def test_model_files_never_run_code(tmp_path, trained):
    """A .keras file with a Lambda layer is refused: safe mode is always on."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2, name="predictions")(inputs))
    path = tmp_path / "lambda" / "model.keras"
    path.parent.mkdir()
    model.save(path)
    (path.parent / "labels.txt").write_text("a\nb\nc\nd\n")
    result = run_cli("predict", path, trained[1])
    assert result.exit_code == 2
    assert "is not a Keras model that can be loaded safely" in last_line(result)
