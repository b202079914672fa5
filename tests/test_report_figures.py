"""The report's figures stay readable and bounded at any number of classes."""

import numpy as np
import pytest


@pytest.mark.heavy
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
