"""`transfer predict`: top-k labels and probabilities for image files and folders."""

import numpy as np

from transfer.data.dataset import Split, printable_path
from transfer.data.files import images_to_read
from transfer.data.pipeline import images_only
from transfer.errors import InvalidArgumentError, check_whole_number
from transfer.models.heads import MULTI_LABEL
from transfer.runs import load_model
from transfer.runtime import INFERENCE_BATCH_SIZE, MULTI_LABEL_THRESHOLD, TOP_K, run_inference

OUTPUT_FORMATS = ("table", "csv", "json")  # how the command line prints the rows
UNKNOWN = "unknown"  # the label of an image below min_confidence: the model abstains


def predict(
    run_or_model,
    paths,
    top_k=TOP_K,
    batch_size=INFERENCE_BATCH_SIZE,
    image_size=None,
    progress=None,
    tta=False,
    min_confidence=None,
):
    """Top-k labels for image files and folders: one row per image, in order.

    A row is {"path", "predictions": [(label, probability), ...], "error": None}; an
    unreadable or missing file gets its error in its row and the others go on. A
    multi-label model's row holds every label at or above its threshold (stored in
    the model), most probable first, and no other.
    `tta` averages each image's probabilities with its horizontal mirror's.
    With `min_confidence`, each row also has a "label": the top class, or UNKNOWN where
    its probability is below `min_confidence` (report.html shows the trade-off).
    """
    top_k = check_whole_number("top_k", top_k)
    batch_size = check_whole_number("batch_size", batch_size)
    if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
        raise InvalidArgumentError(
            f"min_confidence={min_confidence!r} is not a probability: expected a value in [0, 1]."
        )
    loaded = load_model(run_or_model, image_size=image_size)
    if min_confidence is not None and loaded.task == MULTI_LABEL:
        raise InvalidArgumentError(
            f"min_confidence={min_confidence!r} is for single-label models: a multi-label "
            "model already abstains per label below the thresholds stored in it."
        )
    files, bad, good = images_to_read(paths)
    top_k = max(1, min(top_k, len(loaded.class_names)))
    probabilities = np.zeros((0, len(loaded.class_names)))
    if good:
        progress = len(good) > 2 * batch_size if progress is None else progress
        probabilities = run_inference(
            loaded.model,
            images_only(Split(good, np.zeros(len(good), np.int64)), loaded.image_size, batch_size),
            verbose=1 if progress else 0,
            description="Predicted",
            tta=tta,
        )
    results = {f: p for f, p in zip(good, probabilities)}
    thresholds = np.asarray(loaded.thresholds or MULTI_LABEL_THRESHOLD) * np.ones(
        len(loaded.class_names)
    )
    rows = []
    for path in files:
        if path in results:
            order = np.argsort(-results[path])[:top_k]
            if loaded.task == MULTI_LABEL:
                order = [i for i in np.argsort(-results[path]) if results[path][i] >= thresholds[i]]
            rows.append(
                {
                    "path": printable_path(path),
                    "error": None,
                    "predictions": [
                        (loaded.class_names[i], float(results[path][i])) for i in order
                    ],
                }
            )
            if min_confidence is not None:
                top = rows[-1]["predictions"][0]
                rows[-1]["label"] = top[0] if top[1] >= min_confidence else UNKNOWN
        else:
            rows.append({"path": printable_path(path), "predictions": [], "error": bad[path]})
            if min_confidence is not None:
                rows[-1]["label"] = None
    return rows
