"""Classification metrics and reports with scikit-learn, and the files they go to;
for multi-label models also the per-label thresholds, tuned on validation; and the
words the command line and report.html both show them in."""

from pathlib import Path

import numpy as np

from transfer.io import write_csv, write_text
from transfer.report.plots import plot_confusion_matrix, report_step
from transfer.runs import report_file
from transfer.runtime import MULTI_LABEL_THRESHOLD, score


def scores_line(metrics, log_loss=True):
    """One split's scores on one line: accuracy, top-5 (where there is one), macro F1
    and log loss; for multi-label metrics the mean average precision (with chance's),
    micro and macro F1 and exact match."""
    m = metrics
    if "mean_average_precision" in m:
        parts = [
            f"mAP {m['mean_average_precision']:.4f} (chance {m['label_frequency']:.4f})",
            f"micro F1 {m['micro_f1']:.4f}",
            f"macro F1 {m['macro_f1']:.4f}",
            f"exact match {m['exact_match']:.4f}",
        ]
        return ", ".join(parts)
    parts = [f"accuracy {m['accuracy']:.4f}"]
    if "top5_accuracy" in m:
        parts.append(f"top-5 {m['top5_accuracy']:.4f}")
    parts.append(f"macro F1 {m['macro_f1']:.4f}")
    if log_loss:
        parts.append(f"log loss {m['log_loss']:.4f}")
    return ", ".join(parts)


def split_title(name, metrics):
    """ "validation (64 images)": a split's name and its number of images."""
    return f"{name} ({metrics['images']} images)"


def phase_label(phase):
    """How a run's phase ("head" or "fine-tune", as metrics.json's kept names it) is
    called where people read it."""
    return "phase 1 (head)" if phase == "head" else "phase 2 (fine-tune)"


def top_k_accuracy(y_true, probabilities, k):
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float(np.mean([label in row for label, row in zip(y_true, top)]))


def compute_metrics(y_true, probabilities, class_names, thresholds=None):
    """Accuracy, top-5 (with at least 5 classes), macro F1, log loss, per class.
    Multi-label `y_true` (rows of 0/1): see `multi_label_metrics`."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    if y_true.ndim == 2:
        return multi_label_metrics(y_true, probabilities, class_names, thresholds)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    # float32 softmax sums to 1 only within rounding; scikit-learn checks it strictly.
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    result = {
        "images": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            skm.f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "weighted_f1": float(
            skm.f1_score(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
        ),
        "log_loss": float(skm.log_loss(y_true, probabilities, labels=labels)),
    }
    if len(class_names) >= 5:
        result["top5_accuracy"] = top_k_accuracy(y_true, probabilities, 5)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    }
    return result


def write_reports(out_dir, y_true, probabilities, class_names, paths, prefix="", thresholds=None):
    """classification_report.txt, confusion_matrix.csv/.png and predictions.csv
    (multi-label: see `write_multi_label_reports`). The classification report and the
    figure are `report_step`s: a failure is a warning."""
    from sklearn import metrics as skm

    out_dir = Path(out_dir)
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    if y_true.ndim == 2:
        return write_multi_label_reports(
            out_dir, y_true, probabilities, class_names, paths, prefix, thresholds
        )
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    report_path = out_dir / report_file("classification_report.txt", prefix)
    report = report_step(
        report_path.name,
        _write_classification_report,
        report_path,
        y_true,
        y_pred,
        labels,
        class_names,
    )
    matrix = skm.confusion_matrix(y_true, y_pred, labels=labels)
    write_csv(
        out_dir / report_file("confusion_matrix.csv", prefix),
        ["true \\ predicted", *class_names],
        [[name, *row] for name, row in zip(class_names, matrix.tolist())],
    )
    figure = out_dir / report_file("confusion_matrix.png", prefix)
    report_step(figure.name, plot_confusion_matrix, matrix, class_names, figure)
    write_csv(
        out_dir / report_file("predictions.csv", prefix),
        ["path", "true_label", "predicted_label", "confidence"],
        [
            [path, class_names[t], class_names[p], f"{probs[p]:.6f}"]
            for path, t, p, probs in zip(paths, y_true, y_pred, probabilities)
        ],
    )
    return report


def _write_classification_report(path, y_true, y_pred, labels, class_names):
    from sklearn import metrics as skm

    report = skm.classification_report(
        y_true, y_pred, labels=labels, target_names=class_names, digits=4, zero_division=0
    )
    write_text(path, report)
    return report


# ---------------------------------------------------------------- multi-label


def tune_thresholds(y_true, probabilities, default=MULTI_LABEL_THRESHOLD):
    """Per label, the probability threshold with the best F1 on these (validation)
    images: halfway between the lowest probability it predicts and the next one down.
    A label without a positive image here keeps `default`."""
    y_true = np.asarray(y_true) > 0.5
    probabilities = np.nan_to_num(np.asarray(probabilities, dtype=np.float64))
    thresholds = np.full(y_true.shape[1], default)
    for label in range(y_true.shape[1]):
        positives = int(y_true[:, label].sum())
        if not positives:
            continue
        order = np.argsort(-probabilities[:, label], kind="stable")
        ranked, hits = probabilities[order, label], y_true[order, label]
        # Cut only between different probabilities: tied images are predicted together.
        cut = np.flatnonzero(np.r_[ranked[:-1] > ranked[1:], True])
        true_positives = np.cumsum(hits)[cut]
        f1 = 2 * true_positives / (cut + 1 + positives)
        best = cut[int(np.argmax(f1))]
        below = ranked[best + 1] if best + 1 < len(ranked) else 0.0
        thresholds[label] = (ranked[best] + below) / 2
    return thresholds


def predicted_labels(probabilities, thresholds=None):
    """Rows of booleans: each label whose probability reaches its threshold."""
    probabilities = np.nan_to_num(np.asarray(probabilities))
    if thresholds is None:
        thresholds = np.full(probabilities.shape[1], MULTI_LABEL_THRESHOLD)
    return probabilities >= np.asarray(thresholds)[None, :]


def multi_label_metrics(y_true, probabilities, class_names, thresholds=None):
    """Mean average precision (over labels with a positive image), micro and macro F1,
    exact match, Hamming loss, binary log loss, and per label precision, recall, F1,
    average precision, support and threshold (scikit-learn's)."""
    from sklearn import metrics as skm

    y_true = (np.asarray(y_true) > 0.5).astype(np.int64)
    probabilities = np.nan_to_num(np.asarray(probabilities, dtype=np.float64))
    thresholds = np.asarray(
        MULTI_LABEL_THRESHOLD if thresholds is None else thresholds, dtype=np.float64
    ) * np.ones(len(class_names))
    y_pred = predicted_labels(probabilities, thresholds).astype(np.int64)
    present = y_true.sum(axis=0) > 0
    precision_per_label = np.full(len(class_names), np.nan)
    if present.any():
        precision_per_label[present] = skm.average_precision_score(
            y_true[:, present], probabilities[:, present], average=None
        )
    average = dict(labels=list(range(len(class_names))), zero_division=0)
    result = {
        "images": int(len(y_true)),
        "task": "multi-label",
        "mean_average_precision": float(np.nanmean(precision_per_label))
        if present.any()
        else float("nan"),
        "micro_f1": float(skm.f1_score(y_true, y_pred, average="micro", **average)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", **average)),
        "exact_match": float(skm.accuracy_score(y_true, y_pred)),
        "hamming_loss": float(skm.hamming_loss(y_true, y_pred)),
        "log_loss": score(y_true, probabilities)["loss"],
        "label_frequency": float(y_true.mean()),
    }
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, **average)
    result["per_class"] = {
        name: {
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(n),
            "average_precision": None if np.isnan(ap) else float(ap),
            "threshold": float(t),
        }
        for name, p, r, f, n, ap, t in zip(
            class_names, precision, recall, f1, support, precision_per_label, thresholds
        )
    }
    return result


def write_multi_label_reports(
    out_dir, y_true, probabilities, class_names, paths, prefix="", thresholds=None
):
    """classification_report.txt (scikit-learn's, with micro, macro, weighted and
    sample averages, then the mean average precision), confusion_matrix.csv (per label:
    support, true and false positives and negatives, threshold) and predictions.csv
    (true and predicted labels joined by ';', then every label's probability)."""
    from sklearn import metrics as skm

    y_true = (np.asarray(y_true) > 0.5).astype(np.int64)
    metrics = multi_label_metrics(y_true, probabilities, class_names, thresholds)
    y_pred = predicted_labels(
        probabilities, [metrics["per_class"][name]["threshold"] for name in class_names]
    ).astype(np.int64)
    report = skm.classification_report(
        y_true,
        y_pred,
        labels=list(range(len(class_names))),
        target_names=class_names,
        digits=4,
        zero_division=0,
    )
    report += f"\nmean average precision: {metrics['mean_average_precision']:.4f}\n"
    write_text(out_dir / report_file("classification_report.txt", prefix), report)
    matrices = skm.multilabel_confusion_matrix(y_true, y_pred)
    write_csv(
        out_dir / report_file("confusion_matrix.csv", prefix),
        [
            "label",
            "support",
            "true_positives",
            "false_positives",
            "false_negatives",
            "true_negatives",
            "threshold",
        ],
        [
            [
                name,
                int(m[1].sum()),
                int(m[1, 1]),
                int(m[0, 1]),
                int(m[1, 0]),
                int(m[0, 0]),
                f"{metrics['per_class'][name]['threshold']:.6f}",
            ]
            for name, m in zip(class_names, matrices)
        ],
    )
    write_csv(
        out_dir / report_file("predictions.csv", prefix),
        ["path", "true_labels", "predicted_labels", *class_names],
        [
            [
                path,
                ";".join(n for n, t in zip(class_names, truth) if t),
                ";".join(n for n, p in zip(class_names, predicted) if p),
                *(f"{p:.6f}" for p in probs),
            ]
            for path, truth, predicted, probs in zip(paths, y_true, y_pred, probabilities)
        ],
    )
    return report
