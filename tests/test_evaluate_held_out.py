"""Scores are held-out scores unless asked otherwise:
`evaluate` on a run's own data scores its held-out split; images the run trained on
are left out of other data, or counted where they are scored (on screen, in
metrics.json, in the report and in export's comparison); and an evaluation's report is
built from the model and the images it evaluated, from any folder, or refused."""

import csv
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_image_folder, mocked_tfds, run_cli
from transfer.io import save_model
from transfer.runs import read_config, read_model_metadata, reopen_data

pytestmark = pytest.mark.heavy


def metrics_of(folder):
    return json.loads((Path(folder) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project folder with images/ (3 classes, 10 images each) and a small run trained
    on them, both given relative to the project folder as a user would."""
    root = tmp_path_factory.mktemp("project")
    make_image_folder(root / "images", {"cat": 10, "dog": 10, "fox": 10}, size=(32, 32))
    rows = [["path", "label"]] + [
        [f"images/{c}/{p.name}", c]
        for c in ("cat", "dog", "fox")
        for p in sorted((root / "images" / c).iterdir())
    ]
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    here = os.getcwd()
    os.chdir(root)
    try:
        result = run_cli(
            "finetune",
            "--data",
            "images",
            "--out",
            "run",
            "--no-report",
            "--arch",
            "mobilenet_v3_small",
            "--weights",
            "none",
            "--image-size",
            32,
            "--head-epochs",
            1,
            "--fine-tune-from",
            "none",
        )
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output
    splits = read_config(root / "run")["dataset"]["splits"]
    assert splits["train"] + splits["val"] == 30 and "test" not in splits
    return root, splits


def test_evaluate_on_the_runs_own_data_scores_its_held_out_split(project, monkeypatch):
    root, splits = project
    monkeypatch.chdir(root)
    for model in ("run", "run/model.keras"):
        result = run_cli("evaluate", model, "--data", "images", "--out", "ev-own", "--overwrite")
        assert result.exit_code == 0, result.output
        metrics = metrics_of(root / "ev-own")
        assert (metrics["split"], metrics["images"]) == ("val", splits["val"])
        assert metrics["training_images_scored"] == 0
        assert f"val split ({splits['val']} images)" in result.output
        assert "training images" not in result.output


def test_split_all_scores_the_training_images_and_says_how_many(project, monkeypatch):
    root, splits = project
    monkeypatch.chdir(root)
    result = run_cli("evaluate", "run", "--data", "images", "--out", "ev-all", "--split", "all")
    assert result.exit_code == 0, result.output
    metrics = metrics_of(root / "ev-all")
    train = splits["train"]
    assert (metrics["split"], metrics["images"]) == ("all", 30)
    assert metrics["training_images_scored"] == train
    assert f"Warning: {train} of the 30 images scored are training images of run" in result.output
    assert f"training images scored: {train} of 30 (not a held-out score)" in result.output
    # ... and the report of that folder says so too
    result = run_cli("report", "ev-all")
    assert result.exit_code == 0, result.output
    assert f"training images scored: {train} of 30 (not a held-out score)" in result.output
    page = (root / "ev-all" / "report.html").read_text()
    assert (
        f"<th>training images scored</th><td>{train} of 30: the run trained on them, so "
        "these scores are not held-out</td>"
    ) in page


def test_a_split_the_run_does_not_have_is_refused(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    result = run_cli("evaluate", "run", "--data", "images", "--out", "ev-test", "--split", "test")
    assert result.exit_code == 2, result.output
    assert "has no test images" in result.output.strip().splitlines()[-1]


def test_other_data_holding_training_images_leaves_them_out(project, monkeypatch):
    root, splits = project
    monkeypatch.chdir(root)
    train = splits["train"]
    result = run_cli("evaluate", "run", "--data", "labels.csv", "--out", "ev-csv")
    assert result.exit_code == 0, result.output
    metrics = metrics_of(root / "ev-csv")
    assert metrics["images"] == 30 - train and metrics["training_images_scored"] == 0
    assert metrics["training_images_left_out"] == train
    assert f"training images left out: {train} (--split all scores them)" in result.output
    result = run_cli(
        "evaluate", "run", "--data", "labels.csv", "--out", "ev-csv-all", "--split", "all"
    )
    assert result.exit_code == 0, result.output
    metrics = metrics_of(root / "ev-csv-all")
    assert metrics["images"] == 30 and metrics["training_images_scored"] == train


def test_exports_comparison_on_other_data_counts_the_training_images(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    trained = {os.path.realpath(p) for p in reopen_data(root / "run").splits["train"].paths}
    compared = reopen_data(root / "run", "labels.csv").splits["val"].paths
    overlap = sum(os.path.realpath(p) in trained for p in compared)
    assert overlap > 0  # the CSV's hash split is not the folder's
    result = run_cli(
        "export", "run", "--format", "keras", "--out", "m.keras", "--data", "labels.csv"
    )
    assert result.exit_code == 0, result.output
    assert (
        f"Warning: {overlap} of the {len(compared)} images compared are training images "
        "of the model's run"
    ) in result.output
    result = run_cli("export", "run", "--format", "keras", "--out", "m2.keras")
    assert result.exit_code == 0 and "training images" not in result.output


def test_the_runs_data_is_found_from_any_folder(project, monkeypatch):
    from transfer.runs import is_run_data

    root, splits = project
    monkeypatch.chdir(root.parent)  # config.json says "images", relative to the project
    assert is_run_data(root / "run", root / "images")
    assert not is_run_data(root / "run", "images")
    assert len(reopen_data(root / "run").splits["val"]) == splits["val"]
    assert is_run_data({"data": "tfds:mnist"}, "tfds:mnist")
    assert not is_run_data({"data": "tfds:mnist"}, "tfds:cifar10")


def other_model(root, folder):
    """The run's model with its classes' outputs reversed, saved in `folder`."""
    import keras

    source = root / "run" / "model.keras"
    model = keras.models.load_model(source, safe_mode=True, compile=False)
    layer = model.get_layer("predictions")
    weights, bias = layer.get_weights()
    layer.set_weights([5 * weights[:, ::-1], 5 * bias[::-1]])
    folder.mkdir(parents=True, exist_ok=True)
    return save_model(model, folder / "model.keras", read_model_metadata(source))


def test_report_from_another_folder_uses_the_model_and_images_evaluated(
    project, monkeypatch, tmp_path
):
    root, _ = project
    monkeypatch.chdir(root)
    result = run_cli("evaluate", "run", "--data", "images", "--out", "ev-moved")
    assert result.exit_code == 0, result.output
    evaluated = metrics_of(root / "ev-moved")
    # Another project with a run and images at the same relative paths.
    elsewhere = tmp_path / "elsewhere"
    other_model(root, elsewhere / "run")
    shutil.copytree(root / "images", elsewhere / "images")
    monkeypatch.chdir(elsewhere)
    result = run_cli("report", os.path.relpath(root / "ev-moved", elsewhere))
    assert result.exit_code == 0, result.output
    reported = metrics_of(root / "ev-moved")
    assert reported["calibration"]["ece"] == pytest.approx(evaluated["calibration"]["ece"])
    page = (root / "ev-moved" / "report.html").read_text()
    assert str(elsewhere) not in page and str(root / "images") in page
    # the model is recorded relative to the evaluation's folder
    assert evaluated["model"] == os.path.join("..", "run", "model.keras")


def test_report_refuses_a_model_that_is_not_the_one_evaluated(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    copy = root / "copy"
    copy.mkdir(exist_ok=True)
    shutil.copy(root / "run" / "model.keras", copy / "model.keras")
    result = run_cli("evaluate", copy / "model.keras", "--data", "images", "--out", "ev-copy")
    assert result.exit_code == 0, result.output
    before = (root / "ev-copy" / "metrics.json").read_text()
    other_model(root, copy)  # the file evaluated is replaced by another model
    result = run_cli("report", "ev-copy")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: {(copy / 'model.keras').resolve()} is not the model "
        f"{Path('ev-copy')} was evaluated with (its size or SHA-256 differs from the "
        "model_file of metrics.json). Evaluate it again to report on it."
    )
    assert (root / "ev-copy" / "metrics.json").read_text() == before  # nothing overwritten
    os.remove(copy / "model.keras")
    result = run_cli("report", "ev-copy")
    assert result.exit_code == 2 and "does not exist any more" in result.output


def test_an_older_evaluation_folder_reports_where_its_model_path_resolves(project, monkeypatch):
    root, _ = project
    monkeypatch.chdir(root)
    result = run_cli("evaluate", "run", "--data", "images", "--out", "ev-old")
    assert result.exit_code == 0, result.output
    metrics = metrics_of(root / "ev-old")
    for key in ("model_file", "working_dir", "training_images_scored"):
        metrics.pop(key, None)
    metrics["model"] = "run/model.keras"  # as evaluate wrote it: relative to where it ran
    (root / "ev-old" / "metrics.json").write_text(json.dumps(metrics))
    result = run_cli("report", "ev-old")
    assert result.exit_code == 0, result.output


def test_a_tfds_run_is_evaluated_on_its_held_out_split_by_name(tmp_path):
    with mocked_tfds(tmp_path / "tfds", splits=(("train", 20), ("test", 10))):
        result = run_cli(
            "finetune",
            "--data",
            "tfds:mnist",
            "--tfds-data-dir",
            tmp_path / "tfds",
            "--arch",
            "mobilenet_v3_small",
            "--weights",
            "none",
            "--out",
            tmp_path / "run",
            "--image-size",
            32,
            "--head-epochs",
            1,
            "--fine-tune-from",
            "none",
            "--no-report",
        )
        assert result.exit_code == 0, result.output
        splits = read_config(tmp_path / "run")["dataset"]["splits"]
        scored = {}
        for split in (None, "val", "all"):
            out = tmp_path / f"ev-{split}"
            result = run_cli(
                "evaluate",
                tmp_path / "run",
                "--data",
                "tfds:mnist",
                "--out",
                out,
                *(("--split", split) if split else ()),
            )
            assert result.exit_code == 0, result.output
            metrics = metrics_of(out)
            scored[split] = (metrics["split"], metrics["images"], metrics["training_images_scored"])
    assert scored == {
        None: ("test", splits["test"], 0),
        "val": ("val", splits["val"], 0),
        "all": ("all", sum(splits.values()), splits["train"]),
    }
