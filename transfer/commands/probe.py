"""`transfer probe`: a linear probe, scikit-learn's logistic regression on embeddings
from `transfer embed`, the fast baseline to run before fine-tuning."""

import logging
from pathlib import Path

import numpy as np

from transfer.data.embeddings import load_embeddings
from transfer.errors import DataError
from transfer.io import write_json
from transfer.report.metrics import compute_metrics, tune_thresholds, write_reports
from transfer.runs import METRICS_FILE, TEST_PREFIX, prepare_run_dir
from transfer.train.logistic import FOLDS, fit_logistic_regression, fitted_c

logger = logging.getLogger("transfer")

SEED = 0


def probe(embeddings, out, folds=FOLDS, seed=SEED, overwrite=False):
    """Logistic regression on standardised embeddings, C chosen by cross-validation.

    Trains on the train split; reports on val (and test) like `evaluate`. Multi-label
    embeddings get one regression per label (one-vs-rest) and per-label thresholds
    tuned on the first split reported on.
    """
    data = load_embeddings(embeddings) if not isinstance(embeddings, dict) else embeddings
    class_names = [str(c) for c in data["class_names"]]
    train = data["splits"] == "train"
    evaluated = [s for s in ("val", "test") if (data["splits"] == s).any()]
    if not train.any() or not evaluated:
        raise DataError(
            "The embeddings need a train split and a val or test split; embed "
            "with val_split above 0."
        )
    classifier = fit_logistic_regression(
        data["features"][train], data["labels"][train], len(class_names), folds, seed
    )
    out = prepare_run_dir(out, overwrite=overwrite)
    fitted = classifier[-1]
    multi_label = data["labels"].ndim == 2
    metrics = {"classes": class_names, "C": fitted_c(classifier), "train_images": int(train.sum())}
    thresholds = None
    for split in evaluated:
        rows = data["splits"] == split
        if multi_label:
            probabilities = classifier.predict_proba(data["features"][rows])
            if thresholds is None:
                thresholds = tune_thresholds(data["labels"][rows], probabilities)
        else:
            probabilities = np.zeros((int(rows.sum()), len(class_names)))
            probabilities[:, fitted.classes_] = classifier.predict_proba(data["features"][rows])
        metrics[split] = compute_metrics(
            data["labels"][rows], probabilities, class_names, thresholds
        )
        write_reports(
            out,
            data["labels"][rows],
            probabilities,
            class_names,
            [str(p) for p in data["paths"][rows]],
            prefix="" if split == evaluated[0] else TEST_PREFIX,
            thresholds=thresholds,
        )
    write_json(Path(out) / METRICS_FILE, metrics)
    return metrics
