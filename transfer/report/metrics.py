"""Classification metrics and reports with scikit-learn, and the files they go to."""

from pathlib import Path

import numpy as np

from transfer.io import write_csv, write_text
from transfer.report.plots import plot_confusion_matrix
from transfer.runs import report_file


def top_k_accuracy(y_true, probabilities, k):
    top = np.argsort(-probabilities, axis=1)[:, :k]
    return float(np.mean([label in row for label, row in zip(y_true, top)]))


def compute_metrics(y_true, probabilities, class_names):
    """Accuracy, top-5 (with at least 5 classes), macro F1, log loss, per class."""
    from sklearn import metrics as skm

    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    # float32 softmax sums to 1 only within rounding; scikit-learn checks it strictly.
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    result = {
        "images": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="macro",
                                       zero_division=0)),
        "weighted_f1": float(skm.f1_score(y_true, y_pred, labels=labels, average="weighted",
                                          zero_division=0)),
        "log_loss": float(skm.log_loss(y_true, probabilities, labels=labels)),
    }
    if len(class_names) >= 5:
        result["top5_accuracy"] = top_k_accuracy(y_true, probabilities, 5)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0)
    result["per_class"] = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
    }
    return result


def write_reports(out_dir, y_true, probabilities, class_names, paths, prefix=""):
    """classification_report.txt, confusion_matrix.csv/.png and predictions.csv."""
    from sklearn import metrics as skm

    out_dir = Path(out_dir)
    y_true = np.asarray(y_true)
    probabilities = np.asarray(probabilities)
    y_pred = probabilities.argmax(axis=1)
    labels = list(range(len(class_names)))
    report = skm.classification_report(y_true, y_pred, labels=labels, target_names=class_names,
                                       digits=4, zero_division=0)
    write_text(out_dir / report_file("classification_report.txt", prefix), report)
    matrix = skm.confusion_matrix(y_true, y_pred, labels=labels)
    write_csv(out_dir / report_file("confusion_matrix.csv", prefix),
              ["true \\ predicted", *class_names],
              [[name, *row] for name, row in zip(class_names, matrix.tolist())])
    plot_confusion_matrix(matrix, class_names, out_dir / report_file("confusion_matrix.png", prefix))
    write_csv(
        out_dir / report_file("predictions.csv", prefix), ["path", "true_label", "predicted_label", "confidence"],
        [[path, class_names[t], class_names[p], f"{probs[p]:.6f}"]
         for path, t, p, probs in zip(paths, y_true, y_pred, probabilities)],
    )
    return report
