"""Calibration: reliability bins, expected calibration error, the accuracy/coverage
trade-off of abstaining, and temperature scaling stored in the model's own weights."""

import numpy as np

from transfer.models.names import CLASSIFIER

# Guo et al. (2017), "On Calibration of Modern Neural Networks": 15 equal-width
# confidence bins, the usual choice, so our ECE compares with published numbers.
ECE_BINS = 15
# Temperatures searched (log scale): far beyond any a classifier needs in practice.
TEMPERATURE_RANGE = (0.05, 20.0)


def reliability_bins(probabilities, labels, bins=ECE_BINS):
    """Per confidence bin: (lower edge, upper edge, mean confidence, accuracy, count)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, the first one also holding 0: (0, 1/15], ..., (14/15, 1].
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        rows.append(
            (
                edges[b],
                edges[b + 1],
                float(confidence[inside].mean()) if count else np.nan,
                float(correct[inside].mean()) if count else np.nan,
                count,
            )
        )
    return rows


def expected_calibration_error(probabilities, labels, bins=ECE_BINS):
    """Σ over bins of (share of images) × |accuracy − mean confidence|."""
    total = len(labels)
    if not total:
        return float("nan")
    return float(
        sum(
            count / total * abs(accuracy - confidence)
            for _, _, confidence, accuracy, count in reliability_bins(probabilities, labels, bins)
            if count
        )
    )


def coverage_curve(probabilities, labels):
    """Abstaining below each confidence threshold: (thresholds, coverage, accuracy on
    the images kept). Thresholds are the images' own confidences, so every point of
    the trade-off is there."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    order = np.argsort(-confidence, kind="stable")
    kept = np.arange(1, len(order) + 1)
    accuracy = np.cumsum(correct[order]) / kept
    return confidence[order], kept / len(order), accuracy


def scaled(probabilities, temperature):
    """Softmax(logits / T) from softmax probabilities: log p is the logits up to a
    constant per image, which softmax ignores."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, None))
    logits = logits / temperature
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(probabilities, labels):
    """The temperature that minimises the negative log-likelihood of `labels`."""
    from scipy.optimize import minimize_scalar

    labels = np.asarray(labels)

    def nll(log_t):
        p = scaled(probabilities, np.exp(log_t))[np.arange(len(labels)), labels]
        return -np.mean(np.log(np.clip(p, 1e-12, None)))

    low, high = np.log(TEMPERATURE_RANGE)
    return float(np.exp(minimize_scalar(nll, bounds=(low, high), method="bounded").x))


def apply_temperature(model, temperature):
    """Divide the classifier's logits by `temperature` by scaling its kernel and bias:
    the model keeps its layers, so it still loads in safe mode with nothing of ours."""
    layer = model.get_layer(CLASSIFIER)
    layer.set_weights([np.asarray(w) / temperature for w in layer.get_weights()])
