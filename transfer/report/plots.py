"""Plots for a run: confusion matrix and training curves, drawn with matplotlib.

Every text in them is drawn as written: a class name such as `$x^$` is not matplotlib
mathtext (nor LaTeX, whatever the user's matplotlibrc says). The figures a run or an
evaluation writes at its end go through `report_step`: one that cannot be drawn is a
warning, never a failed run."""

import functools
import io
import logging

import numpy as np

from transfer.errors import first_line
from transfer.io import atomic_path

logger = logging.getLogger("transfer")


def report_step(what, step, *args, **kwargs):
    """`step(*args, **kwargs)`, one step that writes a report file of a run or an
    evaluation (a figure, the classification report), after its model and metrics are
    safe: a failure is a warning that names `what`, not a failed run. Returns the step's
    result, None when it failed."""
    try:
        return step(*args, **kwargs)
    except Exception as exc:  # the model and metrics do not depend on it
        logger.warning(
            "%s could not be written (%s: %s); the rest of the run is kept.",
            what,
            type(exc).__name__,
            first_line(exc),
        )
        return None


def _plain_text(plot):
    """Draw `plot`'s texts as written: no mathtext, no LaTeX (both are read when a text
    is made, so the whole plot runs under these settings)."""

    @functools.wraps(plot)
    def draw(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return plot(*args, **kwargs)

    return draw


def _pyplot():
    """matplotlib's pyplot, drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    _pyplot().close(fig)


# The confusion matrix grows with the square of the class count: its figure stops
# growing at MAX_MATRIX_INCHES (drawing it takes memory in proportion to its area),
# cells lose their count above MAX_CELL_LABELS classes and the axes their class names
# above MAX_TICK_LABELS (confusion_matrix.csv has them all). Names are cut so that
# none widens the figure.
DPI = 120
MAX_MATRIX_INCHES = 16
MAX_CELL_LABELS = 30
MAX_TICK_LABELS = 100
MAX_NAME_CHARS = 24


@_plain_text
def plot_confusion_matrix(matrix, class_names, path):
    """Counts and row-normalised colours, so small classes stay readable."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    size = min(max(4.0, 0.55 * n + 2), MAX_MATRIX_INCHES)
    fig, ax = _pyplot().subplots(figsize=(size + 1, size))
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= MAX_TICK_LABELS:
        names = [_shorten(name) for name in class_names]
        fontsize = min(10.0, 0.8 * 72 * size / n)  # at most one row high
        ax.set_xticks(range(n), names, rotation=45, ha="right", fontsize=fontsize)
        ax.set_yticks(range(n), names, fontsize=fontsize)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= MAX_CELL_LABELS:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if normalised[i, j] > 0.5 else "black",
                )
    ax.set_title(f"Confusion matrix ({int(matrix.sum())} images, {n} classes)")
    _save(fig, path)


def _shorten(name):
    name = str(name)
    return name if len(name) <= MAX_NAME_CHARS else name[: MAX_NAME_CHARS - 1] + "…"


KEPT_PHASE_ONE = "kept: phase 1 (phase 2 did not beat it)"
# A phase-2 loss above this many times phase 1's highest is drawn clipped at the top of
# the plot (and marked), so that phase 1's curve keeps its height.
SPIKE_FACTOR = 2.0


@_plain_text
def plot_training_curves(history_rows, path, kept=None):
    """Loss and accuracy per epoch for both phases, with the phase boundary marked and,
    when phase 2 did not beat phase 1, a note that phase 1's model was kept. The legend
    is above both plots and the note below them: neither covers a curve or the other."""
    from matplotlib.ticker import MaxNLocator
    from matplotlib.transforms import blended_transform_factory, offset_copy

    fig, axes = _pyplot().subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    epochs = np.arange(1, len(history_rows) + 1)
    phases = [row["phase"] for row in history_rows]
    boundaries = [i for i in range(1, len(phases)) if phases[i] != phases[i - 1]]
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [row.get(prefix + key) for row in history_rows]
            if any(v is not None for v in values):
                ax.plot(
                    epochs,
                    [np.nan if v is None else float(v) for v in values],
                    style,
                    marker="o",
                    markersize=3,
                    label="validation" if prefix else "training",
                )
        ax.set_xlim(0.5, len(history_rows) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(key)
        if key == "loss" and boundaries:
            _clip_spikes(ax, boundaries[0])
        along_line = offset_copy(
            blended_transform_factory(ax.transData, ax.transAxes), fig=fig, x=2, units="points"
        )
        for i in boundaries:
            ax.axvline(i + 0.5, color="gray", linestyle=":", linewidth=1)
            ax.text(
                i + 0.5,
                0.98,
                "fine-tune",
                transform=along_line,
                rotation=90,
                ha="left",
                va="top",
                fontsize=8,
                color="gray",
                clip_on=True,
            )
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncol=len(handles), frameon=False)
    if kept == "head" and boundaries:
        fig.supxlabel(KEPT_PHASE_ONE, fontsize=9, color="firebrick")
    _save(fig, path)


def _clip_spikes(ax, phase_two_start):
    """Clip the y-range of a loss plot at SPIKE_FACTOR times phase 1's highest value
    where phase 2 goes above it; the clipped points are drawn as triangles on the top
    edge, and the title says where it was cut."""
    values = np.array([line.get_ydata() for line in ax.get_lines()], dtype=float)
    phase_one = values[:, :phase_two_start]
    if not np.isfinite(phase_one).any() or not np.isfinite(values).any():
        return
    low, highest = np.nanmin(values), np.nanmax(values)
    top = SPIKE_FACTOR * np.nanmax(phase_one)
    if not top > 0 or highest <= top:
        return
    ax.set_ylim(low - 0.05 * (top - low), top)
    for line in list(ax.get_lines()):
        x, y = np.asarray(line.get_xdata()), np.asarray(line.get_ydata(), dtype=float)
        over = np.nan_to_num(y, nan=-np.inf) > top
        ax.plot(
            x[over],
            np.full(over.sum(), top),
            "^",
            color=line.get_color(),
            markersize=6,
            clip_on=False,
        )
    ax.set_title(f"loss (cut at {top:.3g}; highest {highest:.3g})")


@_plain_text
def plot_image_grid(images, path, columns=8, title=None):
    """A grid of images (0-255 pixels), e.g. augmented training images."""
    images = np.clip(np.asarray(images), 0, 255).astype("uint8")
    rows = int(np.ceil(len(images) / columns))
    fig, axes = _pyplot().subplots(
        rows, columns, figsize=(1.4 * columns, 1.4 * rows + 0.4), squeeze=False
    )
    for ax, image in zip(axes.flat, images):
        ax.imshow(image)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


@_plain_text
def plot_lr_find(learning_rates, losses, suggested, path):
    """The range test's smoothed loss against the learning rate (log scale)."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    ax.plot(learning_rates, losses)
    ax.set_xscale("log")
    ax.axvline(suggested, color="firebrick", linestyle="--", linewidth=1)
    ax.text(
        suggested,
        ax.get_ylim()[1],
        f" suggested {suggested:.2g}",
        va="top",
        fontsize=8,
        color="firebrick",
    )
    finite = [loss for loss in losses if np.isfinite(loss)]
    if finite:  # the run-away end would hide the valley
        ax.set_ylim(min(finite) * 0.95, min(max(finite), 4 * min(finite)) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3)
    _save(fig, path)


@_plain_text
def plot_trials(rows, dimensions, path, best=None):
    """`transfer tune`'s trials: validation accuracy against each option of the space
    (complete trials filled, pruned ones hollow, the best a star), then the best so far
    against the trials' seconds, added up in the order they ran. `rows` are the search's
    table rows; `dimensions` its `Dimension`s (choices, or a range with `log`)."""
    panels = len(dimensions) + 1
    columns = min(3, panels)
    lines = int(np.ceil(panels / columns))
    fig, axes = _pyplot().subplots(
        lines, columns, figsize=(4.2 * columns, 3.3 * lines), squeeze=False, layout="constrained"
    )
    scored = [r for r in rows if r["validation_accuracy"] is not None]
    for ax, dimension in zip(axes.flat, dimensions):
        name, choices = dimension.name, dimension.choices
        for state, filled in (("complete", True), ("pruned", False)):
            points = [r for r in scored if r["state"] == state and name in r["params"]]
            x = [r["params"][name] for r in points]
            if choices is not None:
                x = [list(choices).index(v) for v in x]
            ax.scatter(
                x,
                [r["validation_accuracy"] for r in points],
                s=28,
                facecolors="tab:blue" if filled else "none",
                edgecolors="tab:blue" if filled else "gray",
                label=state,
            )
        chosen = next((r for r in scored if r["number"] == best), None)
        if chosen is not None and name in chosen["params"]:
            value = chosen["params"][name]
            ax.scatter(
                [list(choices).index(value) if choices is not None else value],
                [chosen["validation_accuracy"]],
                marker="*",
                s=160,
                color="firebrick",
                zorder=3,
                label=f"best (trial {best})",
            )
        if choices is not None:
            ax.set_xticks(range(len(choices)), [str(c) for c in choices], fontsize=8)
            ax.set_xlim(-0.5, len(choices) - 0.5)
        elif dimension.log:
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log")  # ticks as numbers: mathtext is off (_plain_text)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(_two_and_five))
        ax.set_xlabel(name)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    ax = axes.flat[len(dimensions)]
    timed = [r for r in rows if r["seconds"] is not None]
    elapsed = np.cumsum([r["seconds"] for r in timed])
    accuracy = np.array([r["validation_accuracy"] for r in timed], dtype=float)
    complete = np.where([r["state"] == "complete" for r in timed], accuracy, np.nan)
    ax.step(elapsed, np.fmax.accumulate(complete), where="post", color="firebrick")
    ax.scatter(elapsed, accuracy, s=18, color="tab:blue")
    ax.set_title("best so far (line), each trial (dots)", fontsize=9)
    ax.set_xlabel("seconds of trials, added up")
    ax.set_ylabel("validation accuracy")
    ax.grid(alpha=0.3)
    for extra in list(axes.flat)[panels:]:
        extra.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside upper center", ncol=len(handles), frameon=False)
    _save(fig, path)


def _two_and_five(value, _):
    """The labels of a log axis's minor ticks at 2 and 5 times a power of ten."""
    leading = round(value / 10 ** np.floor(np.log10(value))) if value > 0 else 0
    return f"{value:g}" if leading in (2, 5) else ""


def png_of(fig):
    """A figure as PNG bytes, for pages that carry their images inline."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


@_plain_text
def plot_reliability(bins, ece, ece_before=None):
    """Reliability diagram: accuracy against confidence per bin, with the diagonal of a
    calibrated model and the share of images per bin below. PNG bytes."""
    fig, (ax, count_ax) = _pyplot().subplots(
        2, 1, figsize=(4.6, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    lower = np.array([b[0] for b in bins])
    width = bins[0][1] - bins[0][0]
    accuracy = np.array([b[3] for b in bins], dtype=float)
    counts = np.array([b[4] for b in bins])
    ax.bar(
        lower,
        np.nan_to_num(accuracy),
        width=width,
        align="edge",
        edgecolor="navy",
        color="cornflowerblue",
        label="accuracy",
    )
    ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    title = (
        f"ECE {ece:.3f}"
        if ece_before is None
        else f"ECE {ece:.3f} (before temperature scaling {ece_before:.3f})"
    )
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    count_ax.bar(lower, counts / max(counts.sum(), 1), width=width, align="edge", color="gray")
    count_ax.set_xlabel("confidence")
    count_ax.set_ylabel("images")
    return png_of(fig)


@_plain_text
def plot_coverage(coverage, accuracy, thresholds):
    """Accuracy of the images kept against the share kept when the model abstains
    below a confidence threshold (some thresholds marked, each label placed where it
    covers neither the curve nor another label). PNG bytes."""
    fig, ax = _pyplot().subplots(figsize=(4.6, 3.6))
    ax.plot(coverage, accuracy, color="navy")
    marked = []
    for p in (0.5, 0.7, 0.9):
        kept = np.flatnonzero(thresholds >= p)
        if len(kept):
            i = kept[-1]
            ax.plot(coverage[i], accuracy[i], "o", color="firebrick", markersize=4)
            marked.append(((coverage[i], accuracy[i]), f"P={p}"))
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy on the images answered")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(ax.get_ylim())  # fixed before the labels are placed in screen space
    ax.grid(alpha=0.3)
    _label_clear_of(ax, np.column_stack([coverage, accuracy]), marked)
    return png_of(fig)


# Where a point's label may go, in points from it (right of, left of or centred on it;
# below, above or beside it), in the order tried.
LABEL_OFFSETS = (
    (6, -10),
    (-6, -10),
    (0, -14),
    (6, 10),
    (-6, 10),
    (0, 14),
    (8, -22),
    (-8, -22),
    (0, -26),
    (8, 22),
    (-8, 22),
    (0, 26),
    (14, 0),
    (-14, 0),
)


def _label_clear_of(ax, curve, marked):
    """Annotate each (xy, text) of `marked` at the first of LABEL_OFFSETS where its box
    stays inside the axes and covers neither the curve nor a label placed before."""
    renderer = ax.figure.canvas.get_renderer()
    shown = _densified(ax.transData.transform(curve[np.isfinite(curve).all(axis=1)]))
    inside, placed = ax.get_window_extent(renderer), []
    for xy, text in marked:
        for dx, dy in LABEL_OFFSETS:
            label = ax.annotate(
                text,
                xy,
                fontsize=8,
                textcoords="offset points",
                xytext=(dx, dy),
                va="center",
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
            )
            box = label.get_window_extent(renderer).padded(2)
            if (
                inside.containsx(box.x0)
                and inside.containsx(box.x1)
                and inside.containsy(box.y0)
                and inside.containsy(box.y1)
                and not box.count_contains(shown)
                and not any(box.overlaps(other) for other in placed)
            ):
                break
            if (dx, dy) != LABEL_OFFSETS[-1]:
                label.remove()
        placed.append(box)


def _densified(points, step=1.0):
    """The points of a polyline (screen pixels) with points added every `step` pixels
    along its segments, so that a box that a segment crosses contains one of them."""
    if len(points) < 2:
        return points
    gaps = np.diff(points, axis=0)
    counts = np.maximum(1, np.ceil(np.hypot(*gaps.T) / step).astype(int))
    parts = [
        start + np.arange(n)[:, None] / n * gap for start, gap, n in zip(points[:-1], gaps, counts)
    ]
    return np.concatenate([*parts, points[-1:]])


@_plain_text
def plot_explanation(image, overlays, labels, path, group):
    """An image, then its Grad-CAM overlay for each of its top classes, titled with
    the class and its probability."""
    fig, axes = _pyplot().subplots(
        1, 1 + len(overlays), figsize=(2.4 * (1 + len(overlays)), 2.8), squeeze=False
    )
    axes[0, 0].imshow(np.clip(image, 0, 255).astype("uint8"))
    axes[0, 0].set_title("image", fontsize=9)
    for ax, overlay, (label, probability) in zip(axes[0, 1:], overlays, labels):
        ax.imshow(overlay)
        ax.set_title(f"{_shorten(label)} {probability:.1%}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"Grad-CAM on {group}", fontsize=8, color="gray")
    _save(fig, path)
