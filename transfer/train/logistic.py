"""Multinomial logistic regression on features, with its regularisation chosen by
cross-validation: the linear probe of `transfer probe`, and phase 1's head when it
starts from the probe (LP-FT: Kumar et al., ICLR 2022).

Its cost must stay below the backbone pass that made the features, at every size:
C is chosen by cross-validation on a stratified subsample (`choose_c`: `CV_SAMPLE`
images, doubled while the chosen C moves, at most `CV_SAMPLE_MAX`), walking the grid
of C with warm starts and stopping past the best (`cross_validate_c`); then the
regression is fitted once on every image (`SoftmaxRegression`: scikit-learn's
objective, by L-BFGS on float32 features read in blocks, standardised block by
block, warm-started from the subsample's fit). Memory: the features themselves
(memory-mapped when large), the subsample and a block per core; no float64 or
per-fold copy of them all. Multi-label probes (one-vs-rest) stay with scikit-learn's
LogisticRegressionCV. docs/benchmarks.md ("The probe's cost") has the measurements.
"""

import logging
import math
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from joblib import Parallel, delayed, parallel_backend
from threadpoolctl import threadpool_limits

from transfer.errors import DataError
from transfer.train.standardize import feature_statistics

logger = logging.getLogger("transfer")

FOLDS = 5
C_GRID = 10  # values of C tried, log-spaced from 1e-4 to 1e4 (scikit-learn's Cs=10)
MAX_ITER = 2000
TOL = 1e-4  # scikit-learn's: L-BFGS stops when no gradient entry is larger
# C is chosen by cross-validation on a stratified subsample of CV_SAMPLE images,
# doubled while the chosen C moves, up to CV_SAMPLE_MAX (all images when fewer).
CV_SAMPLE = 1000
CV_SAMPLE_MAX = 16000
FIT_CHUNK = 4096  # rows of features a step of SoftmaxRegression holds at once
C_PATIENCE = 2  # values of C past the best before cross-validation stops
CV_TOL = 1e-3  # the folds' fits: enough to rank the values of C


def fit_logistic_regression(
    features, labels, num_classes, folds=FOLDS, seed=0, standardize=True, c=None, prepare=None
):
    """A fitted `Probe`: the regression (`probe[-1]`), with C chosen by cross-validation
    with as many folds as the rarest class allows. Multi-label `labels` (rows of 0/1) get one binary
    regression per label, each with its own C (one-vs-rest). A given `c` (a C chosen
    before) is fitted once, with no cross-validation.

    `features`: an array (float32, or a memory-mapped file) or a list of them whose
    rows go one after the other. `standardize` standardises them as StandardScaler
    does; `prepare`, a function of a block of rows (phase 1's standardisation, as its
    model computes it), is applied to them instead. The regression's coefficients are
    those of the standardised or prepared features."""
    labels = np.asarray(labels)
    if prepare is None:
        prepare = _standardizer(features) if standardize else _as_float32
    if labels.ndim == 2:
        return _fit_one_vs_rest(features, labels, folds, seed, c, prepare)
    counts = np.bincount(labels, minlength=num_classes)
    if np.count_nonzero(counts) < 2:
        raise DataError("The train split holds a single class: a probe needs at least two.")
    logger.info(
        "Fitting a logistic regression on %d feature vectors (%d features)...",
        len(labels),
        _width(features),
    )
    if c is None:
        c, start = choose_c(features, labels, folds, seed, prepare)
    else:
        start = None
    return Probe(prepare, SoftmaxRegression(c).fit(features, labels, start, prepare))


def choose_c(features, labels, folds, seed, prepare):
    """C by cross-validation (`cross_validate_c`) on a stratified subsample of
    `CV_SAMPLE` images (all when there are fewer), then twice as many, ... until the
    chosen C is the one before or `CV_SAMPLE_MAX` images. Returns C and a fold's
    regression with it, to start the fit on every image from."""
    order = stratified_order(labels, seed)
    size, previous = min(CV_SAMPLE, len(labels)), None
    while True:
        rows = np.sort(order[:size])
        c, start = cross_validate_c(prepare(_take(features, rows)), labels[rows], folds, seed)
        logger.info("C = %.4g by cross-validation on %d of the %d images.", c, size, len(labels))
        if c == previous or size >= min(len(labels), CV_SAMPLE_MAX):
            return c, start
        previous, size = c, min(2 * size, len(labels), CV_SAMPLE_MAX)


def cross_validate_c(features, labels, folds=FOLDS, seed=0):
    """The C of `C_GRID` (scikit-learn's Cs=10: 1e-4 to 1e4) with the best mean
    held-out accuracy over stratified folds (as many as the rarest class allows; the
    smallest C among equals), and a fold's regression with it.

    The folds walk the grid from the strongest regularisation up, each fit starting
    from the fold's fit at the C before (scikit-learn's path), and stop once
    `C_PATIENCE` values in a row have not beaten the best: the weakly regularised fits
    at the end of the grid are the slow ones, and past the best they only overfit."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels)
    folds = max(2, min(folds, int(counts[counts > 0].min())))
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(features, labels))
    jobs = min(folds, available_cores())

    def fit_fold(split, start, c):
        train, held_out = split
        fitted = SoftmaxRegression(c, tol=CV_TOL, threads=1)
        fitted.fit(features[train], labels[train], start)
        return fitted, float((fitted.predict(features[held_out]) == labels[held_out]).mean())

    fits, best, since_best = [None] * folds, (-1.0, None, None), 0
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # A class with fewer images than folds: the data checks have warned already.
        warnings.filterwarnings("ignore", message="The least populated class")
        for c in np.logspace(-4, 4, C_GRID):
            # One BLAS thread a fold, the folds in threads: lbfgs's small products
            # spend more time syncing BLAS threads than computing.
            done = Parallel(n_jobs=jobs, backend="threading")(
                delayed(fit_fold)(split, start, c) for split, start in zip(splits, fits)
            )
            fits = [fitted for fitted, _ in done]
            score = float(np.mean([accuracy for _, accuracy in done]))
            logger.debug("C = %.4g: held-out accuracy %.4f", c, score)
            if score > best[0]:
                best, since_best = (score, float(c), fits[0]), 0
            else:
                since_best += 1
                if since_best == C_PATIENCE:
                    break
    return best[1], best[2]


def stratified_order(labels, seed):
    """A permutation of the images whose every prefix holds each class in its share
    (each class shuffled, then its images spread evenly over the order)."""
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rank = rng.permutation(len(members))
        position[members] = (rank + rng.uniform(size=len(members))) / len(members)
    return np.argsort(position, kind="stable")


def _single_fit(c, seed):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=MAX_ITER, random_state=seed)


def _quiet_fit(estimator, features, labels, jobs):
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
            return estimator.fit(features, labels)


def _fit_one_vs_rest(features, labels, folds, seed, c, prepare):
    """One binary regression per label, each with its C chosen by cross-validation
    (or `c`), on the prepared features (in memory)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.multiclass import OneVsRestClassifier

    labels = _learnable_labels(labels)
    counts = np.concatenate([labels.sum(axis=0), len(labels) - labels.sum(axis=0)])
    present = counts[counts > 0]
    if len(present) < 2:
        raise DataError("The train split holds a single class: a probe needs at least two.")
    logger.info(
        "Fitting a logistic regression per label on %d feature vectors (%d features)...",
        len(labels),
        _width(features),
    )
    cv = StratifiedKFold(
        n_splits=max(2, min(folds, int(present.min()))), shuffle=True, random_state=seed
    )
    jobs = min(cv.get_n_splits(), available_cores()) if c is None else 1
    regression = (
        LogisticRegressionCV(
            Cs=C_GRID, cv=cv, max_iter=MAX_ITER, random_state=seed, scoring="accuracy", n_jobs=jobs
        )
        if c is None
        else _single_fit(c, seed)
    )
    x = prepare(_stacked(features)).astype(np.float64 if c is None else np.float32)
    return Probe(prepare, _quiet_fit(OneVsRestClassifier(regression), x, labels, jobs))


class SoftmaxRegression:
    """scikit-learn's multinomial LogisticRegression(C) (the same objective: the mean
    log-loss plus |W|^2 / (2 C n), the intercept not penalised, and the same L-BFGS
    stopping rule), fitted on features read `FIT_CHUNK` rows at a time in float32: the
    memory of a chunk, whatever the number of images, and the features may be a
    memory-mapped file or a list of arrays. Every class gets a row (two for two)."""

    def __init__(self, C=1.0, max_iter=MAX_ITER, tol=TOL, chunk=FIT_CHUNK, threads=None):
        self.C, self.max_iter, self.tol, self.chunk = C, max_iter, tol, chunk
        self.threads = threads or available_cores()

    def fit(self, features, labels, start=None, prepare=None):
        """`start`: a fitted regression to begin from (the subsample's); `prepare`:
        applied to each chunk of rows (standardisation)."""
        prepare = prepare or _as_float32
        self.classes_, targets = np.unique(labels, return_inverse=True)
        n, dim, k = len(targets), _width(features), len(self.classes_)
        weights = np.zeros((k, dim + 1))
        if start is not None:  # row by row: a rare class may be missing from the subsample
            coef, intercept = softmax_rows(start)
            rows = np.searchsorted(self.classes_, start.classes_)
            weights[rows, :dim], weights[rows, dim] = coef, intercept
        # Blocks of at most `chunk` rows, as many for each thread.
        rounds = math.ceil(n / (self.threads * self.chunk))
        chunk = max(1, math.ceil(n / (self.threads * rounds)))
        penalty = 1.0 / (self.C * n)
        if k == 2:  # scikit-learn fits one row, w; two rows of +-w/2 need twice the penalty
            penalty *= 2

        def block_terms(kernel, bias, rows, block):
            """The log-loss of a block of rows and its gradient (kernel, bias)."""
            x = prepare(block)
            logits = x @ kernel + bias
            logits -= logits.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(logits).sum(axis=1))
            index = np.arange(len(x)), targets[rows]
            residual = np.exp(logits - log_norm[:, None])
            residual[index] -= 1.0
            loss = float((log_norm - logits[index]).sum())
            return loss, residual.T @ x, residual.sum(axis=0)

        def loss_and_gradient(flat):
            w = flat.reshape(k, dim + 1)
            kernel, bias = w[:, :dim].T.astype(np.float32), w[:, dim].astype(np.float32)
            terms = pool.map(
                lambda part: block_terms(kernel, bias, *part), _blocks(features, chunk)
            )
            loss, gradient = 0.0, np.zeros_like(w)
            for block_loss, kernel_gradient, bias_gradient in terms:
                loss += block_loss
                gradient[:, :dim] += kernel_gradient
                gradient[:, dim] += bias_gradient
            gradient /= n
            gradient[:, :dim] += penalty * w[:, :dim]
            return loss / n + 0.5 * penalty * float(np.square(w[:, :dim]).sum()), gradient.ravel()

        # Blocks in threads, one BLAS thread each: a (rows x 2048) @ (2048 x classes)
        # product is too thin for BLAS's own threads to pay.
        with (
            ThreadPoolExecutor(self.threads) as pool,
            threadpool_limits(limits=1, user_api="blas"),
        ):
            began = time.monotonic()
            solution, self.n_iter_ = minimize_lbfgs(
                loss_and_gradient, weights.ravel(), self.max_iter, self.tol
            )
        logger.debug(
            "SoftmaxRegression(C=%.4g) on %d rows: %d iterations in %.1f s.",
            self.C,
            n,
            self.n_iter_,
            time.monotonic() - began,
        )
        fitted = solution.reshape(k, dim + 1)
        self.coef_, self.intercept_ = fitted[:, :dim].astype(np.float32), fitted[:, dim]
        self.n_features_in_ = dim
        return self

    def decision_function(self, features):
        return np.concatenate(
            [
                _as_float32(block) @ self.coef_.T + self.intercept_
                for _, block in _blocks(features, self.chunk)
            ]
        )

    def predict_proba(self, features):
        logits = self.decision_function(features)
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        return probabilities / probabilities.sum(axis=1, keepdims=True)

    def predict(self, features):
        return self.classes_[self.decision_function(features).argmax(axis=1)]


def minimize_lbfgs(function, start, max_iter=MAX_ITER, tol=TOL, memory=10):
    """The minimum of `function` (returning the value and the gradient) by L-BFGS
    (Nocedal and Wright, Algorithm 7.4) with backtracking steps (Armijo): enough for a
    strongly convex objective, where every step keeps the curvature positive. Stops
    as scikit-learn's lbfgs does: no gradient entry above `tol`. Returns the solution
    and the iterations. (scipy's L-BFGS-B spends more on its own bookkeeping than the
    gradient costs at 20,000 parameters: 15 ms an iteration.)"""
    x = np.array(start, dtype=np.float64)
    value, gradient = function(x)
    pairs = []  # (s, y, 1 / y.s) of the last `memory` steps
    iteration = 0
    for iteration in range(1, max_iter + 1):  # noqa: B007 (returned)
        if np.abs(gradient).max() <= tol:
            break
        direction = gradient.copy()
        alphas = []
        for s, y, rho in reversed(pairs):
            alphas.append(rho * s.dot(direction))
            direction -= alphas[-1] * y
        if pairs:
            s, y, _ = pairs[-1]
            direction *= s.dot(y) / y.dot(y)
        else:
            direction /= max(1.0, np.linalg.norm(gradient))
        for (s, y, rho), alpha in zip(pairs, reversed(alphas)):
            direction += (alpha - rho * y.dot(direction)) * s
        slope, step = -gradient.dot(direction), 1.0
        while True:
            candidate = x - step * direction
            new_value, new_gradient = function(candidate)
            if new_value <= value + 1e-4 * step * slope or step < 1e-10:
                break
            step /= 2
        s, y = candidate - x, new_gradient - gradient
        if s.dot(y) > 1e-12:
            pairs = [*pairs[-(memory - 1) :], (s, y, 1.0 / s.dot(y))]
        settled = value - new_value <= 64 * np.finfo(float).eps * max(abs(value), 1.0)
        x, value, gradient = candidate, new_value, new_gradient
        if settled:
            break
    return x, iteration


def softmax_rows(regression):
    """(coef, intercept) of a fitted scikit-learn regression with a row per class (a
    binary one keeps one row: it becomes two, half each way)."""
    coef, intercept = regression.coef_, regression.intercept_
    if coef.shape[0] == 1:
        return np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    return coef, intercept


class Probe:
    """A fitted probe: the function its features went through (standardisation) and
    the regression; `probe[-1]` is the regression, as in a scikit-learn pipeline."""

    def __init__(self, prepare, regression):
        self.prepare, self.regression = prepare, regression

    def __getitem__(self, index):
        return (self.prepare, self.regression)[index]

    def predict_proba(self, features):
        return self.regression.predict_proba(self.prepare(_stacked(features)))


def _as_float32(features):
    return np.asarray(features, dtype=np.float32)


def _standardizer(features):
    """StandardScaler's standardisation (a constant feature is left unscaled), with
    statistics computed in chunks."""
    mean, variance = feature_statistics(features)
    scale = np.sqrt(variance)
    scale[scale == 0] = 1.0
    mean, scale = mean.astype(np.float32), scale.astype(np.float32)

    def standardized(block):
        return (np.asarray(block, dtype=np.float32) - mean) / scale

    return standardized


def _parts(features):
    return list(features) if isinstance(features, (list, tuple)) else [features]


def _width(features):
    return _parts(features)[0].shape[1]


def _stacked(features):
    parts = _parts(features)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _blocks(features, chunk):
    """(row indices, block of rows) of `features` (one array or several), in order."""
    offset = 0
    for part in _parts(features):
        for start in range(0, len(part), chunk):
            block = part[start : start + chunk]
            yield slice(offset + start, offset + start + len(block)), block
        offset += len(part)


def _take(features, rows):
    """The rows `rows` (sorted) of `features` (one array or several)."""
    taken, offset = [], 0
    for part in _parts(features):
        inside = rows[(rows >= offset) & (rows < offset + len(part))] - offset
        taken.append(np.asarray(part[inside]))
        offset += len(part)
    return np.concatenate(taken)


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
    if coef.shape[0] == 1:  # scikit-learn keeps one row for two classes
        coef, intercept = (
            np.vstack([-coef / 2, coef / 2]),
            np.array([-intercept[0] / 2, intercept[0] / 2]),
        )
    kernel[:, fitted.classes_] = coef.T
    bias[fitted.classes_] = intercept
    return kernel, bias
