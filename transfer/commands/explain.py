"""`transfer explain`: Grad-CAM overlays (PNG) of a classifier's top-k classes for
any image files."""

from pathlib import Path

import numpy as np

from transfer.data.dataset import Split
from transfer.data.files import images_to_read
from transfer.data.pipeline import images_only
from transfer.errors import check_whole_number
from transfer.io import make_writable_dir
from transfer.report import gradcam
from transfer.report.plots import plot_explanation
from transfer.runs import load_model
from transfer.runtime import INFERENCE_BATCH_SIZE, TOP_K

SUFFIX = ".gradcam.png"


def explain(
    run_or_model,
    paths,
    out,
    top_k=TOP_K,
    group=None,
    image_size=None,
    batch_size=INFERENCE_BATCH_SIZE,
):
    """For each image, `out`/<name>.gradcam.png: the image, then its Grad-CAM for each
    of the top-k classes with their probabilities. Returns [(image, written file or
    None, top-k [(label, probability)], error or None)]."""
    top_k = check_whole_number("top_k", top_k)
    batch_size = check_whole_number("batch_size", batch_size)
    loaded = load_model(run_or_model, image_size=image_size)
    files, bad, good = images_to_read(paths)
    cam = gradcam.cam_model(loaded.model, group)
    top_k = max(1, min(top_k, len(loaded.class_names)))
    out = make_writable_dir(out)
    written, results = set(), {}
    for start in range(0, len(good), batch_size):
        batch = good[start : start + batch_size]
        split = Split(batch, np.zeros(len(batch), np.int64))
        pixels = np.concatenate(
            [np.asarray(b) for b in images_only(split, loaded.image_size, batch_size)]
        )
        probabilities = np.asarray(loaded.model(pixels, training=False))
        top = np.argsort(-probabilities, axis=1)[:, :top_k]
        maps = [gradcam.heatmaps(cam, pixels, top[:, k]) for k in range(top_k)]
        for i, path in enumerate(batch):
            labels = [(loaded.class_names[c], float(probabilities[i, c])) for c in top[i]]
            target = _unique_name(Path(out), Path(path).stem, written)
            plot_explanation(
                pixels[i],
                [gradcam.overlay(pixels[i], m[i]) for m in maps],
                labels,
                target,
                group=cam.name.split("_", 1)[1],
            )
            results[path] = (target, labels)
    return [
        (path, *results[path], None) if path in results else (path, None, [], bad[path])
        for path in files
    ]


def _unique_name(out, stem, written):
    """<stem>.gradcam.png, or <stem>-2.gradcam.png... when two images share a name."""
    name, n = stem + SUFFIX, 1
    while name in written:
        n += 1
        name = f"{stem}-{n}{SUFFIX}"
    written.add(name)
    return out / name
