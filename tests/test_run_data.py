"""A run's data read again from its config.json (`transfer.runs.reopen_data`), by every
command that needs it: the report's leaked-duplicates check and int8 calibration, on
a run trained from a CSV whose columns have names that are not found by default."""

import csv
import json
import shutil
from pathlib import Path

import keras
import pytest

from tests.conftest import SAMPLE_DATA, run_cli
from transfer.data.csv_labels import LABEL_COLUMNS, PATH_COLUMNS
from transfer.runs import read_config, reopen_data

COLUMNS = ("picture", "kind")  # neither is looked for without --path-column, --label-column


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    """A run from a CSV of 12 sample images per class, its columns named by option."""
    assert COLUMNS[0] not in PATH_COLUMNS and COLUMNS[1] not in LABEL_COLUMNS
    root = tmp_path_factory.mktemp("csv-columns")
    labels = root / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for folder in sorted(p for p in Path(SAMPLE_DATA).iterdir() if p.is_dir()):
            writer.writerows(
                (f"{folder.name}/{image.name}", folder.name)
                for image in sorted(folder.glob("*.png"))[:12]
            )
    run = root / "run"
    result = run_cli(
        "finetune",
        "--labels",
        labels,
        "--images",
        SAMPLE_DATA,
        "--path-column",
        COLUMNS[0],
        "--label-column",
        COLUMNS[1],
        "--weights",
        "none",
        "--image-size",
        "32",
        "--head-epochs",
        "3",
        "--fine-tune-from",
        "none",
        "--out",
        run,
    )
    assert result.exit_code == 0, result.output
    return run


@pytest.mark.heavy
def test_a_csv_run_is_reopened_with_its_column_options(csv_run):
    config = read_config(csv_run)
    dataset = reopen_data(csv_run)
    assert dataset.fingerprint == config["dataset"]["fingerprint"]
    assert {name: len(split) for name, split in dataset.splits.items()} == config["dataset"][
        "splits"
    ]
    assert reopen_data(config).fingerprint == dataset.fingerprint  # a config dict too


@pytest.mark.heavy
def test_the_report_of_a_csv_run_checks_leaked_duplicates(csv_run):
    leaked = json.loads((csv_run / "metrics.json").read_text())["leaked_duplicates"]
    assert leaked["checked"] is True, leaked
    (csv_run / "report.html").unlink()
    result = run_cli("report", csv_run)
    assert result.exit_code == 0, result.output
    assert "leaked duplicates: val " in result.output
    assert json.loads((csv_run / "metrics.json").read_text())["leaked_duplicates"]["checked"]


@pytest.mark.heavy
def test_int8_export_of_a_csv_run_calibrates_on_its_own_images(csv_run, tmp_path):
    """The run's config.json beside a small model of the same classes (int8 of the
    run's ResNet50 takes longer): the export finds the run's images by itself."""
    folder = tmp_path / "small"
    folder.mkdir()
    for name in ("config.json", "labels.txt"):
        shutil.copy(csv_run / name, folder / name)
    classes = (folder / "labels.txt").read_text().split()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(classes), activation="softmax", name="predictions")(x)
    keras.Model(inputs, outputs).save(folder / "model.keras")
    result = run_cli(
        "export",
        folder / "model.keras",
        "--format",
        "tflite",
        "--quantize",
        "int8",
        "--out",
        tmp_path / "int8.tflite",
    )
    assert result.exit_code == 0, result.output
    assert "cannot be read" not in result.output
    compared = next(x for x in result.output.splitlines() if x.startswith("Compared with"))
    validation = read_config(csv_run)["dataset"]["splits"]["val"]
    assert "on the val split: top-1 agreement" in compared
    assert f" on {validation} images" in compared, compared
