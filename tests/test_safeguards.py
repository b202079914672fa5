"""Nothing lost, nothing leaked, nothing silently wrong: output modes, stdout kept for
results, bounded reports, claimed and protected folders, hostile inputs (issue 17)."""

import csv
import io
import json
import os
import stat

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import make_image_folder
from transfer.cli import cli
from transfer.io import save_model, write_npz, write_text
from transfer.models.heads import build_classifier
from transfer.runs import RunPaths, write_labels


def run_cli(*args):
    """The CLI, with standard output and standard error kept apart."""
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run directory with an untrained 32-pixel classifier of two classes (no training)."""
    paths = RunPaths(tmp_path_factory.mktemp("tiny-run"))
    save_model(build_classifier(2, weights=None, image_size=32), paths.model)
    write_labels(paths.labels, ["cat", "dog"])
    return paths.root


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask_like_model_save(tmp_path, umask, mask, mode):
    umask(mask)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    written = [write_text(tmp_path / "a.txt", "x"),
               write_npz(tmp_path / "a.npz", {"x": np.zeros(2)}),
               save_model(model, tmp_path / "model.keras")]
    model.save(tmp_path / "reference.keras")
    assert stat.S_IMODE(os.stat(tmp_path / "reference.keras").st_mode) == mode
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path


@pytest.mark.parametrize("output_format", ["csv", "json"])
def test_predict_prints_results_alone_on_stdout(tmp_path, tiny_run, monkeypatch, output_format):
    # As on a terminal, where Keras draws its progress bar on sys.stdout.
    monkeypatch.setattr("transfer.progress.interactive", lambda: True)
    folder = make_image_folder(tmp_path / "images", {"cat": 3}, size=(32, 32))
    result = run_cli("predict", tiny_run, folder, "--format", output_format,
                     "--batch-size", 1)
    assert result.exit_code == 0, result.output
    if output_format == "csv":
        rows = list(csv.DictReader(io.StringIO(result.stdout)))
    else:
        rows = json.loads(result.stdout)
    assert len(rows) == 3 and all(row["path"].startswith(str(folder)) for row in rows)
    assert "3/3" in result.stderr  # the progress bar went to stderr


@pytest.mark.parametrize("classes", [3, 60, 400])
def test_confusion_matrix_figure_stays_bounded(tmp_path, classes):
    from PIL import Image

    from transfer.report.plots import DPI, MAX_MATRIX_INCHES, plot_confusion_matrix

    rng = np.random.default_rng(0)
    true, predicted = rng.integers(0, classes, 5000), rng.integers(0, classes, 5000)
    matrix = np.zeros((classes, classes), np.int64)
    np.add.at(matrix, (true, predicted), 1)
    names = [f"class number {i} with a rather long descriptive name" for i in range(classes)]
    plot_confusion_matrix(matrix, names, tmp_path / "cm.png")
    width, height = Image.open(tmp_path / "cm.png").size
    # the figure (matrix and colour bar) plus room for cut class names
    assert width <= (MAX_MATRIX_INCHES + 4) * DPI and height <= (MAX_MATRIX_INCHES + 3) * DPI


TINY = dict(weights="none", image_size=32, batch_size=8, head_epochs=1, fine_tune_from="none")


class DiskTrouble(OSError):
    pass


def _failing_plot(*args, **kwargs):
    raise DiskTrouble("the report could not be drawn")


def test_a_failing_report_loses_neither_model_nor_history(tmp_path, monkeypatch):
    from transfer.commands.finetune import finetune

    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    monkeypatch.setattr("transfer.report.metrics.plot_confusion_matrix", _failing_plot)
    run = tmp_path / "run"
    with pytest.raises(DiskTrouble):
        finetune(data, out=run, **TINY)
    paths = RunPaths(run)
    assert paths.model.is_file() and paths.history.is_file()
    assert keras.models.load_model(paths.model).output.shape[-1] == 2


def test_evaluate_keeps_its_metrics_when_a_report_fails(tmp_path, tiny_run, monkeypatch):
    from transfer.commands.evaluate import evaluate

    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2}, size=(32, 32))
    monkeypatch.setattr("transfer.report.metrics.plot_confusion_matrix", _failing_plot)
    with pytest.raises(DiskTrouble):
        evaluate(tiny_run, data, tmp_path / "reports")
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text())["images"] == 4
