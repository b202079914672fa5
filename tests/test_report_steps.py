"""A run's report steps never fail the run it reports on: class
names are plain text in every figure (no matplotlib mathtext), and a figure or the
classification report that cannot be written is a warning; the model and the metrics
are kept and the run is complete."""

import json
import logging

import numpy as np
import pytest

from tests.conftest import make_image_folder
from transfer.runs import RunPaths

SMALL = dict(arch="mobilenet_v3_small", weights="none", image_size=32, batch_size=8, head_epochs=1)
MATHTEXT_NAMES = ["$x^$", "a$b", r"$\frac{1}{$"]


@pytest.fixture
def warnings_logged():
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("transfer")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_class_names_are_plain_text_in_every_figure(tmp_path):
    from PIL import Image

    from transfer.report.plots import plot_confusion_matrix, plot_explanation

    plot_confusion_matrix(np.eye(3, dtype=np.int64) * 4, MATHTEXT_NAMES, tmp_path / "cm.png")
    plot_explanation(
        np.zeros((32, 32, 3)),
        [np.zeros((32, 32, 3), np.uint8)],
        [(MATHTEXT_NAMES[0], 0.5)],
        tmp_path / "explained.png",
        "conv3",
    )
    for name in ("cm.png", "explained.png"):
        assert Image.open(tmp_path / name).size[0] > 100


@pytest.mark.heavy
def test_a_run_whose_class_names_look_like_mathtext_completes(tmp_path):
    from transfer.commands.finetune import finetune

    data = tmp_path / "images"
    make_image_folder(data, {name: 6 for name in ("$x^$", "y$")}, size=(32, 32))
    result = finetune(data, out=tmp_path / "run", fine_tune_from="none", **SMALL)
    paths = RunPaths(result.run_dir)
    assert json.loads(paths.config.read_text())["status"] == "complete"
    for path in (
        paths.model,
        paths.metrics,
        paths.curves,
        paths.root / "confusion_matrix.png",
        paths.root / "report.html",
    ):
        assert path.is_file(), path
    assert "$x^$" in (paths.root / "report.html").read_text()


@pytest.mark.heavy
def test_a_report_step_that_fails_is_a_warning_not_a_failed_run(
    tmp_path, monkeypatch, warnings_logged
):
    from transfer.commands.finetune import finetune

    def broken(*args, **kwargs):
        raise ValueError("cannot draw this")

    for name in (
        "transfer.report.metrics.plot_confusion_matrix",
        "transfer.report.metrics._write_classification_report",
        "transfer.train.run.plot_training_curves",
        "transfer.train.run.plot_image_grid",
    ):
        monkeypatch.setattr(name, broken, raising=False)
    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    result = finetune(
        data,
        out=tmp_path / "run",
        report=False,
        fine_tune_from="conv5",
        fine_tune_epochs=1,
        augment="light",
        **SMALL,
    )
    paths = RunPaths(result.run_dir)
    assert json.loads(paths.config.read_text())["status"] == "complete"
    assert paths.model.is_file() and paths.history.is_file()
    assert json.loads(paths.metrics.read_text())["val"]["images"] == 2
    warned = "\n".join(r.getMessage() for r in warnings_logged)
    for name in (
        "confusion_matrix.png",
        "classification_report.txt",
        "training_curves.png",
        "augmentation_preview.png",
    ):
        assert f"{name} could not be written (ValueError: cannot draw this)" in warned, name


@pytest.mark.heavy
def test_an_error_in_training_itself_still_fails_the_run(tmp_path, monkeypatch):
    from transfer.commands.finetune import finetune

    def broken(*args, **kwargs):
        raise ValueError("training broke")

    monkeypatch.setattr("transfer.train.run.save_model", broken)
    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    with pytest.raises(ValueError, match="training broke"):
        finetune(data, out=tmp_path / "run", report=False, fine_tune_from="none", **SMALL)
    assert json.loads(RunPaths(tmp_path / "run").config.read_text())["status"] == "failed"
