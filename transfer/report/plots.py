"""Plots for a run: confusion matrix and training curves, drawn with matplotlib."""

import io

import numpy as np

from transfer.io import atomic_path


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
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_title(f"Confusion matrix ({int(matrix.sum())} images, {n} classes)")
    _save(fig, path)


def _shorten(name):
    name = str(name)
    return name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS - 1] + "…"


def plot_training_curves(history_rows, path, kept=None):
    """Loss and accuracy per epoch for both phases, with the phase boundary marked and,
    when phase 2 did not beat phase 1, a note that phase 1's model was kept."""
    fig, (loss_ax, acc_ax) = _pyplot().subplots(1, 2, figsize=(11, 4))
    epochs = np.arange(1, len(history_rows) + 1)
    for ax, key, title in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = [row.get(prefix + key) for row in history_rows]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, marker="o",
                        markersize=3, label="validation" if prefix else "training")
        phases = [row["phase"] for row in history_rows]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(i + 0.5, color="gray", linestyle=":", linewidth=1)
                ax.text(i + 0.6, ax.get_ylim()[1], " fine-tune", va="top", fontsize=8, color="gray")
        ax.set_xlabel("epoch")
        if kept == "head" and len(set(phases)) > 1:
            ax.text(0.02, 0.02, "kept: phase 1 (phase 2 did not beat it)",
                    transform=ax.transAxes, fontsize=8, color="firebrick")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_image_grid(images, path, columns=8, title=None):
    """A grid of images (0-255 pixels), e.g. augmented training images."""
    images = np.clip(np.asarray(images), 0, 255).astype("uint8")
    rows = int(np.ceil(len(images) / columns))
    fig, axes = _pyplot().subplots(rows, columns, figsize=(1.4 * columns, 1.4 * rows + 0.4),
                                   squeeze=False)
    for ax, image in zip(axes.flat, images):
        ax.imshow(image)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def plot_lr_find(learning_rates, losses, suggested, path):
    """The range test's smoothed loss against the learning rate (log scale)."""
    fig, ax = _pyplot().subplots(figsize=(6, 4))
    ax.plot(learning_rates, losses)
    ax.set_xscale("log")
    ax.axvline(suggested, color="firebrick", linestyle="--", linewidth=1)
    ax.text(suggested, ax.get_ylim()[1], f" suggested {suggested:.2g}", va="top", fontsize=8,
            color="firebrick")
    finite = [loss for loss in losses if np.isfinite(loss)]
    if finite:  # the run-away end would hide the valley
        ax.set_ylim(min(finite) * 0.95, min(max(finite), 4 * min(finite)) * 1.05)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3)
    _save(fig, path)


def png_of(fig):
    """A figure as PNG bytes, for pages that carry their images inline."""
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=DPI, bbox_inches="tight", format="png")
    _pyplot().close(fig)
    return buffer.getvalue()


def plot_reliability(bins, ece, ece_before=None):
    """Reliability diagram: accuracy against confidence per bin, with the diagonal of a
    calibrated model and the share of images per bin below. PNG bytes."""
    fig, (ax, count_ax) = _pyplot().subplots(
        2, 1, figsize=(4.6, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lower = np.array([b[0] for b in bins])
    width = bins[0][1] - bins[0][0]
    accuracy = np.array([b[3] for b in bins], dtype=float)
    counts = np.array([b[4] for b in bins])
    ax.bar(lower, np.nan_to_num(accuracy), width=width, align="edge", edgecolor="navy",
           color="cornflowerblue", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    title = f"ECE {ece:.3f}" if ece_before is None else \
        f"ECE {ece:.3f} (before temperature scaling {ece_before:.3f})"
    ax.set_title(title, fontsize=10)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    count_ax.bar(lower, counts / max(counts.sum(), 1), width=width, align="edge", color="gray")
    count_ax.set_xlabel("confidence")
    count_ax.set_ylabel("images")
    return png_of(fig)


def plot_coverage(coverage, accuracy, thresholds):
    """Accuracy of the images kept against the share kept when the model abstains
    below a confidence threshold (some thresholds marked). PNG bytes."""
    fig, ax = _pyplot().subplots(figsize=(4.6, 3.6))
    ax.plot(coverage, accuracy, color="navy")
    for p in (0.5, 0.7, 0.9):
        kept = np.flatnonzero(thresholds >= p)
        if len(kept):
            i = kept[-1]
            ax.plot(coverage[i], accuracy[i], "o", color="firebrick", markersize=4)
            ax.annotate(f"P={p}", (coverage[i], accuracy[i]), fontsize=8,
                        textcoords="offset points", xytext=(4, -10))
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy on the images answered")
    ax.set_xlim(0, 1.02)
    ax.grid(alpha=0.3)
    return png_of(fig)


def plot_explanation(image, overlays, labels, path, group):
    """An image, then its Grad-CAM overlay for each of its top classes, titled with
    the class and its probability."""
    fig, axes = _pyplot().subplots(1, 1 + len(overlays), figsize=(2.4 * (1 + len(overlays)), 2.8),
                                   squeeze=False)
    axes[0, 0].imshow(np.clip(image, 0, 255).astype("uint8"))
    axes[0, 0].set_title("image", fontsize=9)
    for ax, overlay, (label, probability) in zip(axes[0, 1:], overlays, labels):
        ax.imshow(overlay)
        ax.set_title(f"{_shorten(label)} {probability:.1%}", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(f"Grad-CAM on {group}", fontsize=8, color="gray")
    _save(fig, path)
