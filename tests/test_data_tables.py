"""Labels from a CSV file or DataFrame, multi-label classification, and class names
inside model.keras: real Fashion-MNIST images, real runs, through the CLI."""

import csv
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLE_DATA, run_cli
from transfer.data.csv_labels import load_table
from transfer.io import MODEL_METADATA_MEMBER
from transfer.runs import class_names_of

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from fashion_mnist_pairs import tile_pairs  # noqa: E402

SPLITS = ("train", "train", "train", "val", "train", "test")  # by row, in turn
FAST = ("--weights", "none", "--image-size", "32", "--fine-tune-from", "none")


def last_line(result):
    return result.output.strip().splitlines()[-1]


def sample_files(per_class=None):
    """(class name, path relative to the sample folder) of the Fashion-MNIST sample."""
    root = Path(SAMPLE_DATA)
    return [
        (c.name, p.relative_to(root).as_posix())
        for c in sorted(root.iterdir())
        for p in sorted(c.glob("*.png"))[:per_class]
    ]


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """A single-label run from a CSV with a split column over the sample's images."""
    root = tmp_path_factory.mktemp("csv")
    rows = [
        (path, name, SPLITS[i % len(SPLITS)])
        for i, (name, path) in enumerate(sample_files(per_class=12))
    ]
    labels = write_csv(root / "labels.csv", ["file", "class", "split"], rows)
    result = run_cli(
        "finetune",
        "--labels",
        labels,
        "--images",
        SAMPLE_DATA,
        "--out",
        root / "run",
        "--head-epochs",
        "3",
        "--no-report",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    return root / "run", labels, rows, result.output


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
    """A multi-label run on tiled pairs of real images (no split column: by hash)."""
    root = tmp_path_factory.mktemp("multi")
    rows = tile_pairs(root, 200)  # "path,labels": the columns are found by name
    labels = root / "labels.csv"
    result = run_cli("finetune", "--data", labels, "--out", root / "run", *FAST)
    assert result.exit_code == 0, result.output
    return root / "run", labels, rows, result.output


@pytest.mark.heavy
def test_csv_with_a_split_column_trains_evaluates_and_predicts(single_run, tmp_path):
    run, labels, rows, output = single_run
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"]["source"] == "csv-splits"
    counts = {
        split: sum(1 for row in rows if row[2] == split) for split in ("train", "val", "test")
    }
    assert config["dataset"]["splits"] == counts  # the split column, used as given
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == sorted({row[1] for row in rows})
    assert metrics["val"]["images"] == counts["val"] and metrics["test"]["images"] == counts["test"]
    assert "task" not in config  # single-label runs keep their config.json

    result = run_cli(
        "evaluate", run, "--data", labels, "--images", SAMPLE_DATA, "--out", tmp_path / "eval"
    )
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["split"] == "test" and evaluated["images"] == counts["test"]
    assert evaluated["accuracy"] == pytest.approx(metrics["test"]["accuracy"])

    # A bare model.keras carries its class names: predict prints names, not indices.
    alone = tmp_path / "alone" / "model.keras"
    alone.parent.mkdir()
    shutil.copy(run / "model.keras", alone)
    image = Path(SAMPLE_DATA) / rows[0][0]
    result = run_cli("predict", alone, image, "--format", "json")
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.output)[0]["predictions"]
    assert {p["label"] for p in predicted} <= set(metrics["classes"]) and len(predicted) == 3
    assert class_names_of(alone) == metrics["classes"] == class_names_of(run)


@pytest.mark.heavy
def test_multi_label_trains_well_above_chance(multi_run):
    run, _, rows, output = multi_run
    metrics = json.loads((run / "metrics.json").read_text())
    val = metrics["val"]
    chance = val["label_frequency"]  # the mean average precision of random scores
    assert chance == pytest.approx(0.2, abs=0.05)
    assert val["mean_average_precision"] > chance + 0.3, val
    assert {"micro_f1", "macro_f1", "exact_match", "hamming_loss"} <= set(val)
    per_label = val["per_class"]
    assert sorted(per_label) == metrics["classes"] and len(per_label) == 10
    assert sum(v["support"] for v in per_label.values()) == 2 * val["images"]
    assert "mAP " in output and "micro F1" in output
    assert "refit" not in metrics["kept"]  # the thresholds need validation images unseen
    assert not (run / "report.html").exists()  # its sections are single-label ones
    refused = run_cli("report", run)
    assert refused.exit_code == 2 and "multi-label" in refused.output, refused.output
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "multi" and config["dataset"]["source"] == "csv"
    report = (run / "classification_report.txt").read_text()
    assert "micro avg" in report and "mean average precision" in report
    with open(run / "confusion_matrix.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["label"] for row in table] == metrics["classes"]
    with open(run / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == val["images"]
    assert all(len(row["true_labels"].split(";")) == 2 for row in predictions)


@pytest.mark.heavy
def test_thresholds_travel_in_the_model_for_evaluate_and_predict(multi_run, tmp_path):
    run, labels, rows, _ = multi_run
    with zipfile.ZipFile(run / "model.keras") as archive:
        stored = json.loads(archive.read(MODEL_METADATA_MEMBER))
    names = stored["class_names"]
    assert stored["task"] == "multi" and len(stored["thresholds"]) == len(names) == 10
    per_label = json.loads((run / "metrics.json").read_text())["val"]["per_class"]
    assert stored["thresholds"] == pytest.approx([per_label[name]["threshold"] for name in names])
    assert len(set(stored["thresholds"])) > 1  # tuned per label, not 0.5 for all

    # A bare model.keras (no labels.txt, no run directory), loaded in safe mode.
    alone = tmp_path / "model.keras"
    shutil.copy(run / "model.keras", alone)
    result = run_cli("evaluate", alone, "--data", labels, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    evaluated = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluated["split"] == "all" and evaluated["images"] == len(rows)
    assert evaluated["mean_average_precision"] > evaluated["label_frequency"] + 0.3
    assert [evaluated["per_class"][name]["threshold"] for name in names] == pytest.approx(
        stored["thresholds"]
    )
    assert "mAP " in result.output
    with open(tmp_path / "eval" / "predictions.csv") as f:
        probabilities = {row["path"]: row for row in csv.DictReader(f)}

    images = [str(labels.parent / row[0]) for row in rows[:12]]
    result = run_cli("predict", alone, *images, "--format", "json")
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert sum(1 for row in found if row["predictions"]) >= 6
    for row in found:  # every label at or above its threshold, most probable first
        probs = {name: float(probabilities[row["path"]][name]) for name in names}
        above = {name for name, t in zip(names, stored["thresholds"]) if probs[name] >= t}
        assert {p["label"] for p in row["predictions"]} == above
        shown = [p["probability"] for p in row["predictions"]]
        assert shown == sorted(shown, reverse=True)
        assert {p["label"]: p["probability"] for p in row["predictions"]} == pytest.approx(
            {name: probs[name] for name in above}, abs=1e-3
        )  # other batches, other rounding


def test_hash_split_of_a_csv_is_stable_and_stratified(tmp_path):
    rows = [(path, name) for name, path in sample_files()]
    some = load_table(
        write_csv(tmp_path / "some.csv", ["path", "label"], rows[::2]),
        images=SAMPLE_DATA,
        val_split=0.2,
    )
    every = load_table(
        write_csv(tmp_path / "every.csv", ["path", "label"], rows),
        images=SAMPLE_DATA,
        val_split=0.2,
    )
    assert every.source == "csv" and every.num_classes == 10
    val_counts = np.bincount(every.splits["val"].labels, minlength=10)
    assert val_counts.min() >= 1 and val_counts.sum() == len(every.splits["val"])
    # Images added later leave the others' split as it was: a validation image stays
    # one (a class with none gets its lowest-hash image, so a few more can join).
    earlier = {p for split in some.splits.values() for p in split.paths}
    assert set(every.splits["val"].paths) & earlier <= set(some.splits["val"].paths)
    assert len(set(some.splits["val"].paths) - set(every.splits["val"].paths)) <= 2


def test_missing_and_unreadable_rows_are_reported_and_skipped(tmp_path):
    from transfer.train.options import resolve_options
    from transfer.train.run import load_data

    files = sample_files(per_class=3)
    for _, path in files:
        (tmp_path / path).parent.mkdir(exist_ok=True)
        shutil.copy(Path(SAMPLE_DATA) / path, tmp_path / path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = [(path, name) for name, path in files] + [("missing.png", "Bag"), ("broken.png", "Coat")]
    labels = write_csv(tmp_path / "labels.csv", ["path", "label"], rows)
    dataset = load_data(labels, resolve_options(weights=None))
    reasons = {Path(s["path"]).name: s["reason"] for s in dataset.skipped}
    assert reasons["missing.png"] == f"file not found (row 32 of {labels})"
    assert reasons["broken.png"].startswith("not a readable image")
    assert sum(len(s) for s in dataset.splits.values()) == 30


BAD_CSVS = {
    # name: (header, rows, extra arguments, the error's start)
    "no usable rows": (
        ["path", "label"],
        [("gone.png", "a"), ("also-gone.png", "b")],
        (),
        "Error: {csv} has no usable rows: ",
    ),
    "unknown column": (
        ["path", "label"],
        [("x.png", "a")],
        ("--label-column", "kind"),
        "Error: Unknown label column: --label-column 'kind'. {csv} has the "
        "columns 'path', 'label'.",
    ),
    "no label column": (
        ["path", "name"],
        [("x.png", "a")],
        (),
        "Error: {csv} has no label column (looked for label, labels",
    ),
    "outside the folder": (
        ["path", "label"],
        [("../../etc/passwd", "a")],
        (),
        "Error: Paths outside the image folder ",
    ),
    "unknown split": (
        ["path", "label", "split"],
        [("{image}", "a", "holdout")],
        (),
        "Error: Unknown split 'holdout' in row 2 of {csv}: expected train, val",
    ),
    "one class": (
        ["path", "label"],
        [("{image}", "a")],
        (),
        "Error: {csv} names 1 class (a); a classifier needs at least two.",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CSVS))
def test_every_bad_csv_is_one_error_line(case, tmp_path):
    header, rows, extra, expected = BAD_CSVS[case]
    image = Path(SAMPLE_DATA) / sample_files(per_class=1)[0][1]
    shutil.copy(image, tmp_path / "image.png")
    rows = [[cell.format(image="image.png") for cell in row] for row in rows]
    labels = write_csv(tmp_path / "labels.csv", header, rows)
    result = run_cli("finetune", "--data", labels, "--out", tmp_path / "run", *FAST, *extra)
    assert result.exit_code == 2, result.output
    assert last_line(result).startswith(expected.format(csv=labels)), last_line(result)
    assert sum(line.startswith("Error:") for line in result.output.splitlines()) == 1


def test_a_dataframe_is_read_like_a_csv(tmp_path):
    pandas = pytest.importorskip("pandas")
    rows = [
        (path, name, SPLITS[i % len(SPLITS)])
        for i, (name, path) in enumerate(sample_files(per_class=6))
    ]
    frame = pandas.DataFrame(rows, columns=["filename", "label", "subset"])
    from_frame = load_table(frame, images=SAMPLE_DATA)
    from_csv = load_table(
        write_csv(tmp_path / "l.csv", ["filename", "label", "subset"], rows), images=SAMPLE_DATA
    )
    assert from_frame.class_names == from_csv.class_names
    for split in from_csv.splits:
        assert from_frame.splits[split].paths == from_csv.splits[split].paths
        assert (from_frame.splits[split].labels == from_csv.splits[split].labels).all()
    assert from_frame.fingerprint == from_csv.fingerprint


@pytest.mark.slow
def test_multi_label_embed_and_one_vs_rest_probe(multi_run, tmp_path):
    run, labels, rows, _ = multi_run
    result = run_cli("embed", "--data", labels, "--model", run, "--out", tmp_path / "e.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "e.npz") as arrays:
        assert arrays["labels"].shape == (len(rows), 10)
        assert (arrays["labels"].sum(axis=1) == 2).all()
    result = run_cli("probe", tmp_path / "e.npz", "--out", tmp_path / "probe")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert metrics["val"]["mean_average_precision"] > metrics["val"]["label_frequency"] + 0.3
    assert "mAP " in result.output


def test_thresholds_are_tuned_per_label_for_the_best_f1():
    from transfer.report.metrics import tune_thresholds

    labels = np.array([[1, 0], [1, 0], [0, 0], [0, 1], [0, 0]], dtype=np.float32)
    probabilities = np.array([[0.9, 0.2], [0.4, 0.1], [0.3, 0.3], [0.2, 0.05], [0.1, 0.6]])
    # Label 0: cutting below 0.4 catches both positives and no negative. Label 1: its one
    # positive is the lowest, so the best F1 (1/3) predicts every image. No positive at
    # all: the default stays.
    assert tune_thresholds(labels, probabilities) == pytest.approx([0.35, 0.025])
    assert tune_thresholds(labels[:, :1] * 0, probabilities[:, :1]) == pytest.approx([0.5])


def test_the_guard_counts_an_image_right_when_its_labels_rank_first():
    from transfer.runtime import correct_predictions
    from transfer.train.optim import labels_ranked_first

    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=np.float32)
    probabilities = np.array(
        [[0.9, 0.1, 0.5], [0.2, 0.3, 0.4], [0.6, 0.5, 0.55], [0.1, 0.1, 0.1]], dtype=np.float32
    )
    expected = [True, False, False, True]
    assert correct_predictions(labels, probabilities).tolist() == expected
    assert np.asarray(labels_ranked_first(labels, probabilities)).tolist() == [
        float(e) for e in expected
    ]
    # Predicting nothing at all is not right, however sparse the labels.
    assert not correct_predictions(labels[:3], np.zeros((3, 3))).any()


def test_a_row_listed_twice_is_reported_once(tmp_path):
    # The CSV reader and the file check both reported the rows they skip: each was said
    # twice.
    from tests.conftest import make_image_folder

    folder = make_image_folder(tmp_path / "images", {"cat": 3, "dog": 3}, size=(32, 32))
    rows = [[f"{c}/{p.name}", c] for c in ("cat", "dog") for p in sorted((folder / c).iterdir())]
    labels = tmp_path / "labels.csv"
    write_csv(labels, ["path", "label"], [*rows, rows[0]])
    result = run_cli(
        "embed",
        "--data",
        labels,
        "--images",
        folder,
        "--weights",
        "none",
        "--image-size",
        "32",
        "--out",
        tmp_path / "e.npz",
    )
    assert result.exit_code == 0, result.output
    reported = [line for line in result.stderr.splitlines() if "listed again" in line]
    assert len(reported) == 1, result.stderr
