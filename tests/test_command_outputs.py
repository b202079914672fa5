"""What the commands print and where: results alone on stdout, reports that fail as
warnings, labels that travel with exports, refusals of bad arguments, Ctrl-C."""

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_FLAGS, make_image_folder, run_cli


@pytest.mark.heavy
@pytest.mark.parametrize("output_format", ["csv", "json"])
def test_predict_prints_results_alone_on_stdout(tmp_path, tiny_run, monkeypatch, output_format):
    # As on a terminal, where Keras draws its progress bar on sys.stdout.
    monkeypatch.setattr("transfer.progress.interactive", lambda: True)
    folder = make_image_folder(tmp_path / "images", {"cat": 3}, size=(32, 32))
    result = run_cli("predict", tiny_run, folder, "--format", output_format, "--batch-size", 1)
    assert result.exit_code == 0, result.output
    if output_format == "csv":
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
    else:
        rows = json.loads(result.stdout)
    assert len(rows) == 3 and all(row["path"].startswith(str(folder)) for row in rows)
    assert "3/3" in result.stderr  # the progress bar went to stderr


class DiskTrouble(OSError):
    pass


def _failing_plot(*args, **kwargs):
    raise DiskTrouble("the report could not be drawn")


@pytest.mark.heavy
def test_evaluate_keeps_its_metrics_when_a_report_fails(tmp_path, tiny_run, monkeypatch):
    from transfer.commands.evaluate import evaluate

    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    monkeypatch.setattr("transfer.report.metrics.plot_confusion_matrix", _failing_plot)
    evaluate(tiny_run, data, tmp_path / "reports")  # the failing step is a warning
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text())["images"] == 4


@pytest.mark.heavy
def test_export_keeps_its_labels_with_it_and_respects_overwrite(tmp_path, tiny_run):
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / "labels.txt").write_text("someone else's\n")
    out = exports / "model.keras"
    assert run_cli("export", tiny_run, "--out", out, "--no-compare").exit_code == 0
    assert (exports / "model.keras.labels.txt").read_text().split() == ["cat", "dog"]
    assert (exports / "labels.txt").read_text() == "someone else's\n"
    # the exported file predicts with its own labels
    image = make_image_folder(tmp_path / "images", {"cat": 1}, size=(32, 32))
    result = run_cli("predict", out, image, "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["predictions"][0]["label"] in ("cat", "dog")
    # a second export there is refused without --overwrite, even where only the labels remain
    out.unlink()
    result = run_cli("export", tiny_run, "--out", out)
    assert result.exit_code == 2 and "model.keras.labels.txt exists" in result.stderr
    assert run_cli("export", tiny_run, "--out", out, "--overwrite", "--no-compare").exit_code == 0


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--head-lr", "nan"),
        ("--fine-tune-lr", "inf"),
        ("--head-lr", "0"),
        ("--dropout", "nan"),
        ("--val-split", "nan"),
    ],
)
def test_numeric_options_must_be_finite(tmp_path, flag, value):
    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    result = run_cli(
        "finetune", "--data", data, "--out", tmp_path / "run", *TINY_FLAGS, flag, value
    )
    assert result.exit_code == 2, result.output
    assert (
        result.stderr.strip().splitlines()[-1].startswith(f"Error: Invalid value for '{flag}'")
    ), result.stderr
    assert not (tmp_path / "run").exists()


def _embeddings(path, **changes):
    """A small .npz in the layout of `transfer embed` (3 classes, train and val)."""
    rng = np.random.default_rng(0)
    arrays = dict(
        features=rng.normal(size=(60, 8)).astype("float32"),
        labels=np.arange(60) % 3,
        paths=np.array([f"p{i}.png" for i in range(60)]),
        splits=np.array(["train"] * 40 + ["val"] * 20),
        class_names=np.array(["a", "b", "c"]),
        source=np.array("test"),
    )
    np.savez(path, **{**arrays, **changes})
    return path


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"labels": np.arange(60) % 4},
            "labels must be in [0, 3), one of its 3 class_names. Received labels from 0 to 3.",
        ),
        (
            {"labels": np.arange(59) % 3},
            "features, labels, paths and splits must have one entry per image",
        ),
    ],
)
def test_probe_refuses_embeddings_that_disagree(tmp_path, changes, message):
    path = _embeddings(tmp_path / "e.npz", **changes)
    result = run_cli("probe", path, "--out", tmp_path / "probe")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {path}: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_probe_prints_no_scikit_learn_warnings(tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_cli("probe", _embeddings(tmp_path / "e.npz"), "--out", tmp_path / "probe")
    assert result.exit_code == 0, result.output
    assert not [w for w in caught if issubclass(w.category, (FutureWarning, UserWarning))]
    assert "Warning" not in result.stderr


def test_embed_refuses_an_existing_out_without_overwrite(tmp_path):
    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    out = tmp_path / "e.npz"
    out.write_bytes(b"precious")
    args = [
        "embed",
        "--data",
        data,
        "--out",
        out,
        "--weights",
        "none",
        "--image-size",
        32,
        "--depth",
        50,
    ]
    result = run_cli(*args)
    assert (
        result.exit_code == 2
        and result.stderr
        == f"Error: --out {out} exists. Choose another path or pass --overwrite.\n"
    )
    assert out.read_bytes() == b"precious"
    assert run_cli(*args, "--overwrite").exit_code == 0
    assert len(np.load(out)["labels"]) == 4


@pytest.mark.heavy
def test_predict_reports_files_in_folders_that_are_not_images(tmp_path, tiny_run):
    from PIL import Image

    folder = make_image_folder(tmp_path / "photos", {"cat": 1}, size=(32, 32))
    Image.new("RGB", (32, 32)).save(folder / "cat" / "photo.webp")
    Image.new("RGB", (32, 32)).save(folder / "cat" / "scan.tiff")
    result = run_cli("predict", tiny_run, folder, "--format", "json")
    assert result.exit_code == 1, result.output  # some inputs could not be predicted
    errors = {Path(r["path"]).name: r["error"] for r in json.loads(result.stdout)}
    assert errors["img_000.png"] is None
    assert (
        errors["photo.webp"]
        == errors["scan.tiff"]
        == "not an image file (expected .jpg, .jpeg, .png, .bmp, .gif)"
    )
    assert "2 of 3 files could not be read." in result.stderr


@pytest.mark.heavy
def test_ctrl_c_in_any_command_exits_130(tmp_path, tiny_run, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transfer.commands.predict.run_inference", interrupted)
    folder = make_image_folder(tmp_path / "images", {"cat": 1}, size=(32, 32))
    result = run_cli("predict", tiny_run, folder)
    assert result.exit_code == 130 and result.stderr == "Error: Interrupted.\n"
