"""report.html, Grad-CAM, calibration, leaked duplicates, `transfer report`, `explain`
and `predict --min-confidence`, on one real run over Fashion-MNIST images with
planted copies across splits."""

import csv
import io
import json
import re
import shutil
from pathlib import Path

import click
import keras
import numpy as np
import pytest
from PIL import Image

from tests.conftest import SAMPLE_DATA, chrome, run_cli
from transfer.cli import PREDICTION_PRINTERS, cli
from transfer.commands.predict import UNKNOWN, predict
from transfer.data.dataset import Split
from transfer.data.pipeline import images_only
from transfer.models.groups import groups
from transfer.models.identify import find_backbone
from transfer.report import calibration, gradcam
from transfer.report.gather import summary_rows
from transfer.report.html import SECTIONS
from transfer.runs import load_model, read_model_metadata

FAST = [
    "--image-size",
    "32",
    "--batch-size",
    "16",
    "--head-epochs",
    "3",
    "--fine-tune-from",
    "none",
]


def last_line(result):
    return result.output.strip().splitlines()[-1]


def planted_folder(root):
    """train/ val/ test/ from the sample (20, 6 and 4 images per class), then copies of
    training images planted in val/ and test/: exact, enlarged 2x, re-encoded as JPEG.
    Returns (root, {(copy, original)})."""
    classes = sorted(p for p in Path(SAMPLE_DATA).iterdir() if p.is_dir())
    for folder in classes:
        files = sorted(folder.glob("*.png"))
        for split, part in (("train", files[:20]), ("val", files[20:26]), ("test", files[26:30])):
            (root / split / folder.name).mkdir(parents=True, exist_ok=True)
            for f in part:
                shutil.copy(f, root / split / folder.name / f.name)
    planted = set()
    for i, (split, kind) in enumerate(
        (
            ("val", "exact"),
            ("val", "exact"),
            ("val", "larger"),
            ("val", "larger"),
            ("test", "exact"),
            ("test", "jpeg"),
        )
    ):
        folder = classes[i].name
        original = sorted((root / "train" / folder).glob("*.png"))[3 * i]
        image = Image.open(original)
        copy = root / split / folder / f"copy_{kind}_{i}.{'jpg' if kind == 'jpeg' else 'png'}"
        if kind == "larger":
            image = image.resize((2 * image.width, 2 * image.height), Image.BILINEAR)
        image.convert("RGB").save(copy, **({"quality": 75} if kind == "jpeg" else {}))
        planted.add((str(copy), str(original)))
    (root / "train" / "Bag" / "broken.png").write_bytes(b"not a PNG")  # skipped, reported
    return root, planted


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """One real run (with --calibrate) on the planted folder, shared by every test here."""
    root = tmp_path_factory.mktemp("report")
    data, planted = planted_folder(root / "data")
    out = root / "run"
    result = run_cli(
        "finetune", "--data", data, "--weights", "none", "--out", out, "--calibrate", *FAST
    )
    assert result.exit_code == 0, result.output
    return out, data, planted


@pytest.mark.heavy
def test_run_writes_a_self_contained_report_with_every_section(planted_run):
    run, data, _ = planted_run
    page = (run / "report.html").read_text()
    for anchor, title in SECTIONS:
        assert f'<section id="{anchor}"><h2>{title}</h2>' in page
    assert "Not available" not in page and "Not checked" not in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) > 20 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(href|src)=\"(https?:)?//", page)  # nothing fetched from anywhere
    for item in (
        "random initialisation",
        "head 3 epochs",
        "Sandal",
        "test (42 images)",
        "train 200",
        "val 64",
        "test 42",
    ):
        assert item in page
    skipped = json.loads((run / "metrics.json").read_text())["skipped_files"]
    assert [s["path"] for s in skipped] == [str(data / "train" / "Bag" / "broken.png")]
    assert re.search(r'<td class="path">[^<]*broken.png</td><td>not a readable image', page)


def test_leaked_duplicates_are_exactly_the_planted_copies(planted_run):
    run, _, planted = planted_run
    leaked = json.loads((run / "metrics.json").read_text())["leaked_duplicates"]
    found = {(pair["path"], pair["train_path"]) for pair in leaked["pairs"]}
    assert found == planted
    assert (leaked["val"], leaked["test"]) == (4, 2)
    assert all(pair["similarity"] >= leaked["threshold"] for pair in leaked["pairs"])


def test_calibration_is_stored_in_the_model_and_loads_in_safe_mode(planted_run):
    run, _, _ = planted_run
    metrics = json.loads((run / "metrics.json").read_text())
    stored = metrics["calibration"]
    assert stored["fitted_on"] == "val" and stored["temperature"] > 0
    assert stored["ece_after"] <= stored["ece_before"]
    assert stored["ece"] == pytest.approx(stored["ece_after"])
    # The model on disk gives the calibrated probabilities: its ECE is the "after".
    loaded = load_model(run)  # safe mode
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    labels = np.array([loaded.class_names.index(r["true_label"]) for r in rows])
    images = images_only(Split([r["path"] for r in rows], labels), (32, 32), 64)
    probabilities = np.concatenate([np.asarray(loaded.model(x)) for x in images])
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(
        stored["ece_after"], abs=1e-4
    )
    # Saved again with the class names inside it, as the run saved it first.
    assert read_model_metadata(run / "model.keras")["class_names"] == loaded.class_names


@pytest.mark.parametrize(
    "options,expected",
    [
        ({"arch": "efficientnet_b0", "depth": None, "version": None}, "EfficientNetB0"),
        ({"arch": None, "depth": 50, "version": "v1"}, "ResNet50"),
        ({"arch": None, "depth": 101, "version": "v2"}, "ResNet101V2"),
    ],
)
def test_the_report_names_the_runs_backbone(options, expected):
    config = {
        "data": "flowers",
        "options": {**options, "head_epochs": 3, "fine_tune_from": "none"},
        "dataset": {"splits": {"train": 8, "val": 2}},
    }
    rows = dict(summary_rows(config, {"kept": {"phase": "head", "reason": "r"}}, ["a", "b"]))
    assert rows["model"] == expected
    assert rows["model kept"] == "phase 1 (head): r"


def test_expected_calibration_error_and_temperature_on_known_cases():
    labels = np.array([0, 1] * 50)
    # Always 80% sure, right half the time: 0.3 over-confident.
    probabilities = np.tile([0.8, 0.2], (100, 1))
    assert calibration.expected_calibration_error(probabilities, labels) == pytest.approx(0.3)
    # Logits that a true temperature of 3 made over-confident: the fit recovers it.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 2
    true = np.array([rng.choice(5, p=p) for p in calibration.scaled(np.exp(logits), 1.0)])
    sharpened = calibration.scaled(np.exp(logits), 1 / 3)
    assert calibration.fit_temperature(sharpened, true) == pytest.approx(3.0, rel=0.1)


def test_gradcam_puts_the_mass_where_the_evidence_is():
    """A model whose class-1 score is the mean brightness its convolution sees, and an
    image dark but for its top-right corner: class 1's map is all in that corner
    (a transposed or flipped map would miss it), and class 0, which that brightness
    argues against, gets no map at all."""
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(2, 3, padding="same", activation="relu")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    logits = keras.layers.Dense(2)(pooled)
    model = keras.Model(inputs, [features, logits])
    conv, dense = model.layers[1], model.layers[3]
    conv.set_weights([np.full((3, 3, 3, 2), 1 / 27, np.float32), np.zeros(2, np.float32)])
    dense.set_weights([np.array([[-1, 1], [-1, 1]], np.float32), np.zeros(2, np.float32)])
    image = np.zeros((1, 16, 16, 3), np.float32)
    image[0, :4, -4:] = 255.0
    class_1, class_0 = gradcam.heatmaps(model, np.concatenate([image, image]), [1, 0])
    assert class_1.shape == (16, 16) and class_1.max() == pytest.approx(1.0)
    assert class_1[:8, 8:].sum() / class_1.sum() > 0.97
    assert class_0.max() == 0.0


def test_gradcam_of_a_run_uses_a_convolutional_group_wide_enough(planted_run):
    run, data, _ = planted_run
    model = load_model(run).model
    # At 32 px conv5 is 1x1 and conv4 2x2: conv3 (4x4) is the last with a "where".
    assert gradcam.cam_group(model) == "conv3"
    cam = gradcam.cam_model(model)
    last = groups(find_backbone(model))["conv3"][-1]
    assert tuple(cam.output[0].shape[1:]) == tuple(last.output.shape[1:])
    image = np.asarray(
        Image.open(next((data / "val" / "Bag").glob("*.png"))).convert("RGB").resize((32, 32)),
        np.float32,
    )[None]
    _, logits = cam(image)
    probabilities = np.asarray(model(image))
    assert np.allclose(keras.ops.softmax(logits), probabilities, atol=1e-5)
    heat = gradcam.heatmaps(cam, image, [int(probabilities.argmax())])
    assert heat.shape == (1, 32, 32) and heat.max() == pytest.approx(1.0) and heat.min() >= 0
    # The tape covers only the layers after the group; through the whole model, the same.
    del cam.halves
    whole = gradcam.heatmaps(cam, image, [int(probabilities.argmax())])
    np.testing.assert_allclose(heat, whole, atol=1e-5)


def test_report_command_rebuilds_the_page_and_rejects_other_folders(planted_run, tmp_path):
    run, _, _ = planted_run
    # The run's page reused the features the run computed; the command computes them
    # again from the saved model, and must find the same pairs.
    from_the_run = json.loads((run / "metrics.json").read_text())["leaked_duplicates"]
    (run / "report.html").unlink()
    result = run_cli("report", run)
    assert result.exit_code == 0, result.output
    assert "leaked duplicates: val 4, test 2" in result.output
    rebuilt = json.loads((run / "metrics.json").read_text())["leaked_duplicates"]
    assert [(p["path"], p["train_path"]) for p in rebuilt["pairs"]] == [
        (p["path"], p["train_path"]) for p in from_the_run["pairs"]
    ]
    assert np.allclose(
        [p["similarity"] for p in rebuilt["pairs"]],
        [p["similarity"] for p in from_the_run["pairs"]],
        atol=1e-4,
    )
    assert (run / "report.html").stat().st_size > 10_000
    result = run_cli("report", tmp_path)
    assert result.exit_code == 2
    assert last_line(result) == (
        f"Error: {tmp_path} holds no metrics.json. Expected a run "
        "directory of `transfer finetune` or the --out folder of "
        "`transfer evaluate`."
    )


def test_evaluate_writes_a_report_and_cannot_calibrate(planted_run, tmp_path):
    run, data, _ = planted_run
    out = tmp_path / "eval"
    result = run_cli("evaluate", run, "--data", data / "test", "--out", out)
    assert result.exit_code == 0, result.output
    page = (out / "report.html").read_text()
    assert 'id="calibration"' in page and "this folder is not a run directory" in page
    result = run_cli("report", out, "--calibrate")
    assert result.exit_code == 2
    assert last_line(result).startswith(f"Error: --calibrate: {out} is not a run directory")


def test_explain_writes_an_overlay_per_image_with_its_top_k(planted_run, tmp_path):
    run, data, _ = planted_run
    images = sorted((data / "val" / "Coat").glob("*.png"))[:2]
    result = run_cli(
        "explain",
        run,
        *images,
        tmp_path / "missing.png",
        "--out",
        tmp_path / "cams",
        "--top-k",
        "2",
        "--group",
        "conv4",
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1] == f"{tmp_path / 'missing.png'}  error: file not found"
    for image, line in zip(images, lines):
        written = tmp_path / "cams" / f"{image.stem}.gradcam.png"
        assert line.startswith(str(image)) and line.endswith(f"-> {written}")
        assert len(re.findall(r" \d\.\d{3}", line)) == 2
        assert Image.open(written).size[0] > 2 * Image.open(written).size[1]  # 3 panels
    result = run_cli("explain", run, images[0], "--out", tmp_path, "--group", "head")
    assert result.exit_code == 2 and "Unknown group: --group 'head'" in last_line(result)


@pytest.mark.heavy
def test_predict_abstains_below_min_confidence_in_every_format(planted_run, capsys):
    run, data, _ = planted_run
    folder = data / "val" / "Shirt"
    confidences = sorted(r["predictions"][0][1] for r in predict(run, [folder]))
    threshold = (confidences[2] + confidences[3]) / 2  # three abstentions
    rows = predict(run, [folder], min_confidence=threshold)
    expected = {
        r["path"]: r["predictions"][0][0] if r["predictions"][0][1] >= threshold else UNKNOWN
        for r in rows
    }
    assert [r["label"] for r in rows] == list(expected.values())
    assert list(expected.values()).count(UNKNOWN) == 3
    outputs = {}
    for name, printer in PREDICTION_PRINTERS.items():  # what the command line prints
        with click.Context(cli):
            printer(rows)
        outputs[name] = capsys.readouterr().out
    assert {r["path"]: r["label"] for r in json.loads(outputs["json"])} == expected
    assert {r["path"]: r["label"] for r in csv.DictReader(io.StringIO(outputs["csv"]))} == expected
    for path, label in expected.items():
        assert re.search(rf"^{re.escape(path)}\s+{re.escape(label)}:  ", outputs["table"], re.M)
    result = run_cli("predict", run, folder, "--min-confidence", "1.5")
    assert result.exit_code == 2
    assert last_line(result) == (
        "Error: Invalid value for '--min-confidence': 1.5 is not in the range 0.0<=x<=1.0."
    )


def test_report_opens_in_a_real_browser_without_errors_or_requests(planted_run, tmp_path):
    from selenium.webdriver.common.by import By

    page = (planted_run[0] / "report.html").resolve()
    if not page.exists():  # the report command's test rebuilds it; never left absent
        pytest.fail(f"{page} is missing")
    driver = chrome(tmp_path)
    try:
        driver.get(page.as_uri())
        for anchor, title in SECTIONS:
            assert driver.find_element(By.ID, anchor).find_element(By.TAG_NAME, "h2").text == title
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight])"
        )
        assert len(images) > 20 and all(ok and w > 0 and h > 0 for ok, w, h in images)
        # The per-class table sorts by F1, highest first, on a click.
        driver.find_element(By.XPATH, "//section[@id='per-class']//th[text()='F1']").click()
        f1 = [
            float(c.text)
            for c in driver.find_elements(By.CSS_SELECTOR, "#per-class tbody tr td:nth-child(4)")
        ]
        assert len(f1) == 10 and f1 == sorted(f1, reverse=True)
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1200, min(height + 100, 8000))
        assert driver.save_screenshot(str(tmp_path / "report.png"))
        assert Image.open(tmp_path / "report.png").size[1] > 2000
        console = driver.get_log("browser")
        requests = [
            json.loads(entry["message"])["message"] for entry in driver.get_log("performance")
        ]
    finally:
        driver.quit()
    assert [entry for entry in console if entry["level"] in ("SEVERE", "WARNING")] == []
    # Every request the page made (the browser's own new-tab page makes others).
    urls = {
        event["params"]["request"]["url"]
        for event in requests
        if event["method"] == "Network.requestWillBeSent"
        and event["params"].get("documentURL") == page.as_uri()
    }
    assert {url for url in urls if not url.startswith("data:")} == {page.as_uri()}
