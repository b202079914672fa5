"""Image issues, file by file: unreadable (the data check's skips), tiny, far from
square, nearly constant, greyscale mixed with colour, and an EXIF orientation, with
whether transfer's pipeline turns the image upright (`transfer.data.images`)."""

import warnings

import numpy as np
from PIL import Image

from transfer.data.dataset import Split
from transfer.data.images import exif_orientation, needs_upright
from transfer.data.pipeline import images_only
from transfer.findings.table import Finding
from transfer.lazy import tf

STATS_SIZE = 32  # pixels: images are decoded this small, as the pipeline does, for their statistics
TINY_FRACTION = 0.25  # of the median shorter side
EXTREME_ASPECT = 3.0  # long side / short side
CONSTANT_STD = 4.0  # the pixels' standard deviation, in levels of 0-255
GREY_LEVELS = 2.0  # mean difference between colour channels, in levels: below it, greyscale
ORIENTATION_TAG = 0x0112  # EXIF


def unreadable(skipped):
    """The files the data check skipped (`Dataset.skipped`), with its reason."""
    return [Finding("unreadable", s["path"], 1.0, detail=s["reason"]) for s in skipped]


def image_issues(images, batch_size):
    """Findings of the image files themselves (none for TFDS data or shards: no files)."""
    if not images.files or not len(images):
        return []
    sizes, orientations = zip(*(_header(path) for path in images.paths))
    sizes = np.array(sizes, dtype=np.float64)
    std, mean, grey = _pixel_statistics(images.paths, batch_size)
    shorter, longer = sizes.min(axis=1), sizes.max(axis=1)
    typical = np.nanmedian(shorter)
    share_grey = grey[std >= CONSTANT_STD].mean() if (std >= CONSTANT_STD).any() else 0.0
    findings = []

    def add(kind, i, score, detail):
        findings.append(
            Finding(
                kind,
                images.paths[i],
                float(score),
                split=str(images.splits[i]),
                given_label=images.label_of(i),
                detail=detail,
            )
        )

    for i in range(len(images)):
        w, h = (int(v) if np.isfinite(v) else "?" for v in sizes[i])
        if shorter[i] < TINY_FRACTION * typical:
            add(
                "tiny",
                i,
                1 - shorter[i] / typical,
                f"{w}x{h}; the median shorter side is {typical:.0f}",
            )
        if longer[i] > EXTREME_ASPECT * shorter[i]:
            add("aspect_ratio", i, 1 - shorter[i] / longer[i], f"{w}x{h}")
        if std[i] < CONSTANT_STD:
            add(
                "constant",
                i,
                1 - std[i] / 255,
                f"mean level {mean[i]:.0f}, standard deviation {std[i]:.1f}",
            )
        # The rarer mode, among images with colours to see (not the nearly constant).
        if 0 < share_grey < 1 and grey[i] == (share_grey < 0.5) and std[i] >= CONSTANT_STD:
            share = share_grey if grey[i] else 1 - share_grey
            mode = "greyscale among colour images" if grey[i] else "colour among greyscale images"
            add("colour_mode", i, 1 - share, f"{mode} ({100 * share:.1f}% are like it)")
        if orientations[i] not in (None, 1):
            applied = _pipeline_orientation(images.paths[i]) == orientations[i]
            add(
                "exif_orientation",
                i,
                0.5 if applied else 1.0,
                f"EXIF orientation {orientations[i]}: "
                + (
                    "transfer turns it upright, as browsers show it"
                    if applied
                    else "transfer does not read it and sees the image as stored, turned"
                ),
            )
    return findings


def _header(path):
    """((width, height) as stored, EXIF orientation or None), from the file's header;
    sizes NaN where Pillow cannot read it (the pipeline did)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                exif = image.getexif() if "exif" in image.info else {}
                return image.size, exif.get(ORIENTATION_TAG)
    except Exception:  # noqa: BLE001 - a size is missing, no more
        return (np.nan, np.nan), None


def _pipeline_orientation(path):
    """The orientation transfer's decoding applies to the file (1: none)."""
    if not needs_upright(path):
        return 1
    return int(exif_orientation(tf.io.read_file(path)))


def _pixel_statistics(paths, batch_size):
    """(standard deviation, mean, is greyscale) of each image's pixels, decoded by the
    pipeline (upright, on white) at STATS_SIZE."""
    split = Split(list(paths), np.zeros(len(paths), np.int64))
    std, mean, grey = [], [], []
    for batch in images_only(split, STATS_SIZE, batch_size):
        pixels = np.asarray(batch, dtype=np.float32).reshape(len(batch), -1, 3)
        std.append(pixels.std(axis=(1, 2)))
        mean.append(pixels.mean(axis=(1, 2)))
        spread = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).mean(axis=(1, 2))
        grey.append(spread < GREY_LEVELS)
    return np.concatenate(std), np.concatenate(mean), np.concatenate(grey)
