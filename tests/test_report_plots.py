"""The report's figures as a person reads them: whole-epoch ticks, a
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
            rows.append(
                {
                    "phase": phase,
                    "epoch": epoch,
                    "loss": loss,
                    "val_loss": loss + 0.05,
                    "accuracy": accuracy,
                    "val_accuracy": accuracy - 0.02,
                }
            )
    return rows


def drawn_curves(drawn, rows, kept="head"):
    plots.plot_training_curves(rows, Path("training_curves.png"), kept=kept)
    fig = drawn[-1]
    fig.canvas.draw()
    return fig


def extent(artist):
    return artist.get_window_extent(artist.figure.canvas.get_renderer())


def densified(points, step=1.0):
    """A polyline's points (pixels) with more every `step` pixels along its segments."""
    parts = [points[:1]]
    for start, end in zip(points[:-1], points[1:]):
        count = max(1, int(np.ceil(np.hypot(*(end - start)) / step)))
        parts.append(start + np.arange(1, count + 1)[:, None] / count * (end - start))
    return np.concatenate(parts)


def curve_points(ax, x=None, y=None):
    """Every curve of a plot, in pixels, densified (or the one given by x and y)."""
    lines = (
        [np.column_stack(line.get_data()) for line in ax.get_lines()]
        if x is None
        else [np.column_stack([x, y])]
    )
    lines = [line[np.isfinite(line.astype(float)).all(axis=1)] for line in lines]
    return np.concatenate(
        [
            densified(ax.transData.transform(line))
            for line in lines
            if len(line) > 1 and np.ptp(line[:, 0]) > 0
        ]
    )


def test_epoch_ticks_are_whole_numbers(drawn):
    fig = drawn_curves(drawn, history([1.0, 0.8], [0.7, 0.6]))
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_a_loss_spike_in_phase_two_does_not_flatten_phase_one(drawn):
    fig = drawn_curves(drawn, history([1.0, 0.8, 0.7, 0.6], [20.0, 9.0]))
    bottom, top = fig.axes[0].get_ylim()
    assert top < 20 and bottom <= 0.6 and top >= 1.05  # phase 1 in view, the spike cut
    assert (1.05 - 0.6) / (top - bottom) > 0.15  # and it keeps a fair share of the height


def test_the_phase_label_stays_inside_its_plot(drawn):
    fig = drawn_curves(drawn, history([1.0] * 9, [0.5]))  # the boundary by the right edge
    labels = [t for ax in fig.axes for t in ax.texts if "fine-tune" in t.get_text()]
    assert len(labels) == 2
    for label in labels:
        box, inside = extent(label), extent(label.axes)
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 + 0.5, (box, inside)


def test_the_legend_and_the_kept_note_cover_no_curve_and_not_each_other(drawn):
    rows = [
        {
            "phase": "head" if i < 10 else "fine-tune",
            "epoch": i,
            "loss": 0.3,
            "val_loss": 0.3 if i < 10 else 2.0,
            "accuracy": 0.9,
            "val_accuracy": 0.9 if i < 10 else 0.1,
        }
        for i in range(20)
    ]
    fig = drawn_curves(drawn, rows)
    notes = [
        t
        for t in [*fig.texts, *(t for ax in fig.axes for t in ax.texts)]
        if "kept: phase 1" in t.get_text()
    ]
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert notes and legends
    for legend in legends:
        assert not any(extent(legend).overlaps(extent(note)) for note in notes)
    for box in [extent(artist) for artist in [*notes, *legends]]:
        for ax in fig.axes:
            assert not box.count_contains(curve_points(ax))


def test_coverage_labels_stay_off_the_curve(drawn):
    coverage = np.linspace(0.02, 1, 60)
    accuracy = 0.95 - 0.3 * np.linspace(0, 1, 60) ** 2
    plots.plot_coverage(coverage, accuracy, np.linspace(1, 0.1, 60))
    fig = drawn[0]
    fig.canvas.draw()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text().startswith("P=")]
    assert [t.get_text() for t in labels] == ["P=0.5", "P=0.7", "P=0.9"]
    curve = curve_points(ax, coverage, accuracy)
    for label in labels:
        assert not extent(label).count_contains(curve), label.get_text()


@pytest.mark.skipif(
    not shutil.which("chromedriver") and not Path("/usr/bin/chromedriver").exists(),
    reason="needs Debian's chromium-driver",
)
def test_the_page_uses_the_width_of_a_1280_pixel_window(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from transfer.report.html import render

    page = tmp_path / "report.html"
    page.write_text(
        render(
            {
                "title": "transfer report",
                "generated": "now",
                "summary": [("data", "x")],
                "curves": None,
                "confusion_png": None,
                "per_class": [],
                "skipped": [],
                "matrix": None,
                "confused": [],
            }
        )
    )
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_window_size(1280, 900)
        driver.get(page.as_uri())
        window = driver.execute_script("return window.innerWidth")
        width = driver.execute_script(
            "return document.getElementById('summary').getBoundingClientRect().width"
        )
    finally:
        driver.quit()
    assert window == 1280
    assert width >= 0.95 * window, width
