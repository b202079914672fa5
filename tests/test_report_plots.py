"""The report's figures as a person reads them (issue 35, item 20): whole-epoch ticks, a
legend that covers neither the "kept: phase 1" note nor a curve, a phase-2 loss spike
that does not flatten phase 1, the phase label inside its plot, coverage labels off
the curve; and a page that uses the width of the window."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from transfer.report import plots


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions make, kept open instead of written."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    monkeypatch.setattr(plots, "png_of", lambda fig: figures.append(fig) or b"")
    yield figures
    for fig in figures:
        plots._pyplot().close(fig)


def history(head_losses, fine_tune_losses):
    """history.csv rows: accuracy rises in phase 1 and falls in phase 2 (which is not
    kept), validation a little below training."""
    rows = []
    for phase, losses in (("head", head_losses), ("fine-tune", fine_tune_losses)):
        for epoch, loss in enumerate(losses):
            accuracy = 0.9 - 0.1 * loss if phase == "head" else 0.3
            rows.append({"phase": phase, "epoch": epoch, "loss": loss, "val_loss": loss + 0.05,
                         "accuracy": accuracy, "val_accuracy": accuracy - 0.02})
    return rows


def extent(artist):
    return artist.get_window_extent(artist.figure.canvas.get_renderer())


def texts_of(fig):
    return [t for t in [*fig.texts, *(t for ax in fig.axes for t in ax.texts)]]


def test_training_curves_read_as_a_person_reads_them(drawn):
    # Phase 1's loss falls from 1 to 0.6; phase 2 starts with a spike of 20 in the
    # last epochs, at the right edge; accuracy falls in phase 2 towards the bottom left.
    plots.plot_training_curves(history([1.0, 0.8, 0.7, 0.6], [20.0, 9.0]), Path("curves.png"),
                               kept="head")
    fig = drawn[0]
    fig.canvas.draw()
    loss_ax, accuracy_ax = fig.axes
    for ax in (loss_ax, accuracy_ax):
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    # the spike does not flatten phase 1: the axis ends well below it, phase 1 in view
    # and spanning a fair share of the height
    bottom, top = loss_ax.get_ylim()
    assert top < 20 and bottom <= 0.6 and top >= 1.0
    assert (1.0 - 0.6) / (top - bottom) > 0.15
    # the note that phase 1 was kept is shown, and no legend covers it
    notes = [t for t in texts_of(fig) if "kept: phase 1" in t.get_text()]
    assert len(notes) >= 1
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    for legend in legends:
        for note in notes:
            assert not extent(legend).overlaps(extent(note))
    # the phase label stays inside its plot
    labels = [t for ax in fig.axes for t in ax.texts if "fine-tune" in t.get_text()]
    assert len(labels) == 2
    for label in labels:
        box, inside = extent(label), extent(label.axes)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 + 0.5, (box, inside)


def test_a_legend_never_covers_a_curve(drawn):
    plots.plot_training_curves(history([2.0, 1.0, 0.5], [0.45, 0.4]), Path("curves.png"))
    fig = drawn[0]
    fig.canvas.draw()
    for legend in [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]:
        for ax in fig.axes:
            for line in ax.get_lines():
                points = ax.transData.transform(np.column_stack(line.get_data()))
                assert not extent(legend).count_contains(points)


def test_coverage_labels_stay_off_the_curve(drawn):
    coverage = np.linspace(0.02, 1, 60)
    accuracy = 0.95 - 0.3 * np.linspace(0, 1, 60) ** 2
    plots.plot_coverage(coverage, accuracy, np.linspace(1, 0.1, 60))
    fig = drawn[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    curve = plots._densified(ax.transData.transform(np.column_stack([coverage, accuracy])))
    labels = [t for t in ax.texts if t.get_text().startswith("P=")]
    assert [t.get_text() for t in labels] == ["P=0.5", "P=0.7", "P=0.9"]
    for label in labels:
        assert not extent(label).count_contains(curve), label.get_text()


@pytest.mark.skipif(not shutil.which("chromedriver") and not Path("/usr/bin/chromedriver").exists(),
                    reason="needs Debian's chromium-driver")
def test_the_page_uses_the_width_of_a_1280_pixel_window(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from transfer.report.html import render

    page = tmp_path / "report.html"
    page.write_text(render({
        "title": "transfer report", "generated": "now", "summary": [("data", "x")],
        "curves": None, "confusion_png": None, "per_class": [], "skipped": [],
        "matrix": None, "confused": []}))
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_window_size(1280, 900)
        driver.get(page.as_uri())
        window = driver.execute_script("return window.innerWidth")
        width = driver.execute_script(
            "return document.getElementById('summary').getBoundingClientRect().width")
    finally:
        driver.quit()
    assert window == 1280
    assert width >= 0.95 * window, width
