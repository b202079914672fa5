"""Multinomial logistic regression on features, with its regularisation chosen by
cross-validation: the linear probe of `transfer probe`, and phase 1's head when it
starts from the probe (LP-FT: Kumar et al., ICLR 2022)."""

import logging
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from transfer.errors import DataError

logger = logging.getLogger("transfer")

FOLDS = 5
C_GRID = 10  # values of C tried, log-spaced from 1e-4 to 1e4 (scikit-learn's Cs=10)


def fit_logistic_regression(features, labels, num_classes, folds=FOLDS, seed=0,
                            standardize=True):
    """A fitted scikit-learn pipeline ([StandardScaler +] LogisticRegressionCV) with as
    many folds as the rarest class allows."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=num_classes)
    present = counts[counts > 0]
    if len(present) < 2:
        raise DataError("The train split holds a single class: a probe needs at least two.")
    cv = StratifiedKFold(n_splits=max(2, min(folds, int(present.min()))), shuffle=True,
                         random_state=seed)
    steps = [StandardScaler()] if standardize else []
    classifier = make_pipeline(
        *steps, LogisticRegressionCV(Cs=C_GRID, cv=cv, max_iter=2000, random_state=seed,
                                     scoring="accuracy"))
    logger.info("Fitting a logistic regression on %d feature vectors (%d features)...",
                len(labels), features.shape[1])
    with warnings.catch_warnings():
        # scikit-learn 1.8 announces changes of LogisticRegressionCV's defaults and
        # attributes; the ones used here are set explicitly or read both ways.
        warnings.simplefilter("ignore", FutureWarning)
        # A class with fewer images than folds: the data checks have warned already.
        warnings.filterwarnings("ignore", message="The least populated class")
        # One BLAS thread: lbfgs's small products spend more time syncing threads than
        # computing (240 images x 2048 features on 2 cores: 74 s with two, 5 s with one).
        with threadpool_limits(limits=1, user_api="blas"):
            classifier.fit(features, labels)
    return classifier


def softmax_weights(classifier, num_classes):
    """(kernel (features, classes), bias (classes,)) of a Dense softmax layer that
    computes the fitted regression's probabilities; a class with no training
    image gets a bias that keeps its probability near 0."""
    fitted = classifier[-1]
    kernel = np.zeros((fitted.coef_.shape[1], num_classes), dtype="float32")
    bias = np.full(num_classes, -30.0, dtype="float32")
    coef, intercept = fitted.coef_, fitted.intercept_
    if len(fitted.classes_) == 2:  # scikit-learn keeps one row for two classes
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2,
                                                                       intercept[0] / 2])
    kernel[:, fitted.classes_] = coef.T
    bias[fitted.classes_] = intercept
    return kernel, bias
