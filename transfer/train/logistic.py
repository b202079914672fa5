"""Multinomial logistic regression on features, with its regularisation chosen by
cross-validation: the linear probe of `transfer probe`, and phase 1's head when it
starts from the probe (LP-FT: Kumar et al., ICLR 2022)."""

import logging
import os
import warnings

import numpy as np
from joblib import parallel_backend
from threadpoolctl import threadpool_limits

from transfer.errors import DataError

logger = logging.getLogger("transfer")

FOLDS = 5
C_GRID = 10  # values of C tried, log-spaced from 1e-4 to 1e4 (scikit-learn's Cs=10)


def fit_logistic_regression(
    features, labels, num_classes, folds=FOLDS, seed=0, standardize=True, c=None
):
    """A fitted scikit-learn pipeline ([StandardScaler +] LogisticRegressionCV) with as
    many folds as the rarest class allows. Multi-label `labels` (rows of 0/1) get one
    binary regression per label, each with its own C (one-vs-rest). A given `c` (a C
    chosen before) is fitted once, with no cross-validation: no per-fold copies of the
    features, and a fifth of the time or less.

    Cross-validation works in float64 (float32 `features` are copied); a single fit
    keeps float32 (scikit-learn >= 1.8)."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    multi_label = labels.ndim == 2
    if multi_label:
        labels = _learnable_labels(labels)
        counts = np.concatenate([labels.sum(axis=0), len(labels) - labels.sum(axis=0)])
    else:
        counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    if len(present) < 2:
        raise DataError("The train split holds a single class: a probe needs at least two.")
    cv = StratifiedKFold(
        n_splits=max(2, min(folds, int(present.min()))), shuffle=True, random_state=seed
    )
    steps = [StandardScaler()] if standardize else []
    jobs = min(cv.get_n_splits(), available_cores()) if c is None else 1
    regression = (
        LogisticRegressionCV(
            Cs=C_GRID, cv=cv, max_iter=2000, random_state=seed, scoring="accuracy", n_jobs=jobs
        )
        if c is None
        else LogisticRegression(C=c, max_iter=2000, random_state=seed)
    )
    classifier = make_pipeline(
        *steps, OneVsRestClassifier(regression) if multi_label else regression
    )
    logger.info(
        "Fitting a logistic regression%s on %d feature vectors (%d features)...",
        " per label" if multi_label else "",
        len(labels),
        features.shape[1],
    )
    with warnings.catch_warnings():
        # scikit-learn 1.8 announces changes of LogisticRegressionCV's defaults and
        # attributes; the ones used here are set explicitly or read both ways.
        warnings.simplefilter("ignore", FutureWarning)
        # A class with fewer images than folds: the data checks have warned already.
        warnings.filterwarnings("ignore", message="The least populated class")
        warnings.filterwarnings("ignore", message="Label .* is present in all training")
        warnings.filterwarnings("ignore", message="Label not .* is present in all training")
        # One BLAS thread: lbfgs's small products spend more time syncing threads than
        # computing. The cores go to the folds instead, in threads (the same fits, in
        # parallel; no worker processes to start or copy the features to).
        with (
            threadpool_limits(limits=1, user_api="blas"),
            parallel_backend("threading", n_jobs=jobs),
        ):
            classifier.fit(features, labels)
    return classifier


def available_cores():
    """The cores this process may run on (its affinity, which containers set), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


MIN_POSITIVES = 2  # of a label, for a regression of its own: cross-validation needs two


def _learnable_labels(labels):
    """Multi-label rows with the labels too rare to fit (fewer than MIN_POSITIVES
    training images) set to 0: their regression then predicts (about) never."""
    labels = (labels > 0.5).astype(np.int64)
    rare = labels.sum(axis=0) < MIN_POSITIVES
    if rare.any():
        logger.warning(
            "%d label%s with fewer than %d training images: the probe predicts them never.",
            int(rare.sum()),
            "" if rare.sum() == 1 else "s",
            MIN_POSITIVES,
        )
        labels[:, rare] = 0
    return labels


def fitted_c(classifier):
    """The regularisation C chosen by cross-validation, or given (the median over labels
    for a one-vs-rest probe)."""
    fitted = classifier[-1]
    if hasattr(fitted, "estimators_"):  # one-vs-rest; a label seen always or never has no C
        found = [_c_of(e) for e in fitted.estimators_ if hasattr(e, "coef_")]
        return float(np.median(found)) if found else 1.0
    return _c_of(fitted)


def _c_of(regression):
    chosen = regression.C_ if hasattr(regression, "C_") else regression.C  # CV's, or given
    return float(np.atleast_1d(chosen)[0])


def output_weights(classifier, num_classes):
    """(kernel, bias) of the Dense output layer that computes the fitted regression's
    probabilities: softmax for one class per image, sigmoids for one-vs-rest."""
    if hasattr(classifier[-1], "estimators_"):
        return sigmoid_weights(classifier, num_classes)
    return softmax_weights(classifier, num_classes)


def sigmoid_weights(classifier, num_classes):
    """(kernel, bias) of a Dense sigmoid layer computing a one-vs-rest regression's
    per-label probabilities; a label seen always or never gets a bias of +-30."""
    estimators = classifier[-1].estimators_
    kernel = np.zeros((classifier[-1].n_features_in_, num_classes), dtype="float32")
    bias = np.full(num_classes, -30.0, dtype="float32")
    for label, estimator in enumerate(estimators):
        if hasattr(estimator, "coef_"):
            kernel[:, label] = estimator.coef_[0]
            bias[label] = estimator.intercept_[0]
        elif np.ravel(getattr(estimator, "y_", [0]))[0] == 1:  # sklearn's constant predictor
            bias[label] = 30.0
    return kernel, bias


def softmax_weights(classifier, num_classes):
    """(kernel (features, classes), bias (classes,)) of a Dense softmax layer that
    computes the fitted regression's probabilities; a class with no training
    image gets a bias that keeps its probability near 0."""
    fitted = classifier[-1]
    kernel = np.zeros((fitted.coef_.shape[1], num_classes), dtype="float32")
    bias = np.full(num_classes, -30.0, dtype="float32")
    coef, intercept = fitted.coef_, fitted.intercept_
    if len(fitted.classes_) == 2:  # scikit-learn keeps one row for two classes
        coef, intercept = (
            np.vstack([-coef / 2, coef / 2]),
            np.array([-intercept[0] / 2, intercept[0] / 2]),
        )
    kernel[:, fitted.classes_] = coef.T
    bias[fitted.classes_] = intercept
    return kernel, bias
