"""Standardised features for the head: per-feature statistics computed in chunks (the
features may be a memory-mapped file larger than memory), set in the model's head."""

import numpy as np

from transfer.models.heads import has_standardization, set_standardization

# Rows at a time: features may be a memory-mapped file, and a block's float64
# temporaries stay small.
STATISTICS_CHUNK = 512
# Floor of a feature's variance, relative to the mean variance of all features: a
# feature (a ReLU channel) nearly constant on the training images would otherwise be
# divided by almost 0 and blow up on an image where it is not.
VARIANCE_FLOOR = 0.01


def _parts(features):
    """One array of features, or several whose rows go one after the other."""
    return list(features) if isinstance(features, (list, tuple)) else [features]


def _chunks(features, chunk=STATISTICS_CHUNK):
    """float64 blocks of rows of `features` (one array or several), in order."""
    for part in _parts(features):
        for start in range(0, len(part), chunk):
            yield np.asarray(part[start : start + chunk], dtype=np.float64)


def feature_statistics(features, chunk=STATISTICS_CHUNK):
    """Per-feature mean and variance of `features` (one array or several), in float64
    and in chunks."""
    total = np.zeros(_parts(features)[0].shape[1])
    squares = np.zeros_like(total)
    count = 0
    for part in _chunks(features, chunk):
        total += part.sum(axis=0)
        squares += np.square(part).sum(axis=0)
        count += len(part)
    mean = total / max(1, count)
    return mean, np.maximum(squares / max(1, count) - np.square(mean), 0.0)


def standardize_head(model, train_features):
    """Set the head's standardisation to the training features' statistics (one array
    or several): a softmax on raw pooled features learns slowly, a linear probe
    standardises. Returns the function that standardises features as the model now
    does (the identity for a head without standardisation)."""
    dim = _parts(train_features)[0].shape[1]
    if not has_standardization(model):
        return standardizer(np.zeros(dim), np.ones(dim))
    mean, variance = feature_statistics(train_features)
    floor = VARIANCE_FLOOR * float(np.mean(variance)) if variance.size else 0.0
    variance = np.maximum(variance, floor)
    set_standardization(model, mean, variance)
    return standardizer(mean, np.sqrt(variance))


def standardizer(mean, scale):
    def standardized(features, dtype=np.float32):
        """(features - mean) / scale of `features` (one array or several, stacked) as
        one array of `dtype`, filled chunk by chunk: no whole-size temporaries."""
        out = np.empty((sum(len(part) for part in _parts(features)), len(mean)), dtype)
        row = 0
        for part in _chunks(features):
            out[row : row + len(part)] = (part - mean) / scale
            row += len(part)
        return out

    return standardized
