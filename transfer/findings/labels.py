"""Likely label errors: each image's class probabilities from a linear probe that did
not see it (out-of-fold, cross-validated), ranked by cleanlab's confident learning
(Northcutt et al., JAIR 2021), with an estimate of each class's label-noise rate."""

import logging
import warnings

import numpy as np
from joblib import parallel_backend
from threadpoolctl import threadpool_limits

from transfer.data.duplicates import normalised
from transfer.export.optional import optional_module
from transfer.findings.table import Finding
from transfer.train.logistic import FOLDS, available_cores, fit_logistic_regression, fitted_c

logger = logging.getLogger("transfer")

# A class is checked when cross-validation can hold out one of its images and still
# train on another.
MIN_CLASS_IMAGES = 2
NEAREST_SHOWN = 3  # images of the suggested class shown beside a label issue
# cleanlab's rule: "both" flags an image that both of its pruning rules flag (by class,
# by noise rate). On Fashion-MNIST with 10% of the labels flipped it found 92% of them
# at 72% precision; its default, "prune_by_noise_rate", 93% at 69%
# (docs/benchmarks.md, "Audit").
FILTER_BY = "both"


def cleanlab():
    """cleanlab's filter and count modules, or MissingExtraError naming the `audit` extra."""
    return optional_module("cleanlab.filter"), optional_module("cleanlab.count")


def out_of_fold_probabilities(features, labels, num_classes, folds=FOLDS, seed=0):
    """(probabilities, C): each image's class probabilities from a probe (standardised
    features, logistic regression) fitted on the other folds, with the C that the
    probe's own cross-validation chose on all of them. Every class needs
    MIN_CLASS_IMAGES images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features = np.asarray(features, dtype=np.float32)
    c = fitted_c(fit_logistic_regression(features, labels, num_classes, folds, seed))
    present = np.unique(labels)
    fewest = int(np.bincount(labels)[present].min())
    cv = StratifiedKFold(n_splits=max(2, min(folds, fewest)), shuffle=True, random_state=seed)
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed)
    )
    jobs = min(cv.get_n_splits(), available_cores())
    logger.info("Out-of-fold probabilities (%d folds, C=%.3g)...", cv.get_n_splits(), c)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        # As the probe fits (transfer.train.logistic): one BLAS thread, folds in threads.
        with (
            threadpool_limits(limits=1, user_api="blas"),
            parallel_backend("threading", n_jobs=jobs),
        ):
            found = cross_val_predict(
                probe, features, labels, cv=cv, method="predict_proba", n_jobs=jobs
            )
    probabilities = np.zeros((len(labels), num_classes), dtype=np.float32)
    probabilities[:, present] = found
    return probabilities, c


def label_issues(images, folds=FOLDS, seed=0):
    """(findings, {class name: estimated label-noise rate}, note): the images whose
    given label is likely wrong, most likely first, with the likelier label; the note
    says which classes were not checked, and why ("" when all were)."""
    filters, count = cleanlab()
    sizes = np.bincount(images.labels, minlength=len(images.class_names))
    checked = np.flatnonzero(sizes >= MIN_CLASS_IMAGES)
    left = [images.class_names[c] for c in np.flatnonzero(sizes < MIN_CLASS_IMAGES)]
    note = f"not checked (fewer than {MIN_CLASS_IMAGES} images): {', '.join(left)}" if left else ""
    if len(checked) < 2:
        return [], {}, "not checked: fewer than two classes with enough images"
    rows = np.flatnonzero(np.isin(images.labels, checked))
    # cleanlab wants classes 0..K-1, each present: the checked ones, renumbered.
    compact = np.searchsorted(checked, images.labels[rows])
    probabilities, c = out_of_fold_probabilities(
        images.features[rows], compact, len(checked), folds, seed
    )
    ranked = filters.find_label_issues(
        compact,
        probabilities,
        filter_by=FILTER_BY,
        return_indices_ranked_by="self_confidence",
        n_jobs=1,
    )
    joint = count.estimate_joint(compact, probabilities)
    noise = {
        images.class_names[checked[k]]: float(1.0 - joint[k, k] / joint[k].sum())
        for k in range(len(checked))
    }
    others = probabilities.copy()
    others[np.arange(len(rows)), compact] = -1.0  # the suggestion is another label
    suggested = others.argmax(axis=1)
    unit = normalised(images.features, images.features.mean(axis=0))
    findings = []
    for k in ranked:
        index, given = rows[k], probabilities[k, compact[k]]
        label = images.class_names[checked[suggested[k]]]
        nearest = nearest_of_class(unit, index, images.labels == checked[suggested[k]], 1)
        findings.append(
            Finding(
                "label_issue",
                images.paths[index],
                float(1.0 - given),
                split=str(images.splits[index]),
                given_label=images.label_of(index),
                suggested_label=label,
                other_path=images.paths[nearest[0]] if len(nearest) else "",
                detail=f"p({images.label_of(index)}) = {given:.3f}, "
                f"p({label}) = {probabilities[k, suggested[k]]:.3f}",
            )
        )
    return findings, noise, note


def nearest_of_class(unit, index, members, count=NEAREST_SHOWN):
    """The `count` images among `members` (a mask) most similar to image `index`, by
    the cosine of their centred features (`unit`: `normalised` rows), itself left out."""
    members = members.copy()
    members[index] = False
    candidates = np.flatnonzero(members)
    similarity = unit[candidates] @ unit[index]
    return candidates[np.argsort(-similarity, kind="stable")[:count]]
