"""Phase 1: a new head on the frozen backbone. While the backbone is frozen and the
images are not augmented its pooled features cannot change, so they are computed once
and the head trains on them (or, by default, is the linear probe fitted on them); the
head's layers are shared with the full model, which therefore ends phase 1 holding
the trained head."""

import logging
import math

import numpy as np

from transfer.allocator import return_freed_memory
from transfer.data.pipeline import images_only, labelled
from transfer.models import names
from transfer.models.heads import has_hidden_layer, has_standardization, head_model
from transfer.progress import seconds_since_start
from transfer.runs import HEAD
from transfer.runtime import run_inference, score
from transfer.train.callbacks import ELAPSED
from transfer.train.features import cached_features, run_extractor
from transfer.train.logistic import fit_logistic_regression, fitted_c, output_weights
from transfer.train.options import AUTO
from transfer.train.phase import Schedule
from transfer.train.standardize import standardize_head

logger = logging.getLogger("transfer")

# Phase 1 with head_epochs="auto": on cached features a step costs next to nothing,
# so the head gets enough optimizer steps to converge like a linear probe
# (HEAD_STEPS), in at least HEAD_MIN_EPOCHS and at most HEAD_MAX_EPOCHS epochs;
# early stopping ends it sooner. Through the backbone an epoch costs a pass over
# the images, so it gets HEAD_EPOCHS_ON_IMAGES.
HEAD_STEPS = 600
HEAD_MIN_EPOCHS, HEAD_MAX_EPOCHS = 10, 200
HEAD_EPOCHS_ON_IMAGES = 10
PROBE_C = "probe_C"  # the history column of a phase 1 that is the probe


def head_epochs(options, train_count, on_cached_features):
    """Phase 1's epochs: the option's number, or planned from the data for "auto"."""
    if options.head_epochs != AUTO:
        return options.head_epochs
    if not on_cached_features:
        return HEAD_EPOCHS_ON_IMAGES
    steps_per_epoch = math.ceil(train_count / options.batch_size)
    return int(min(HEAD_MAX_EPOCHS, max(HEAD_MIN_EPOCHS, math.ceil(HEAD_STEPS / steps_per_epoch))))


def train_head_on_cached_features(run, phase):
    """Phase 1 with the frozen backbone's features computed once.

    The batches are shuffled exactly as images would be, so with the same seed the
    head comes out the same (within float tolerance) as training through the frozen
    backbone, only much faster.
    """
    model, dataset, options = run.model, run.dataset, run.options
    extractor, name = run_extractor(run)
    train, val = dataset.splits["train"], dataset.splits["val"]
    logger.info(
        "Phase 1: computing the frozen backbone's features once "
        "(train %d, validation %d images)...",
        len(train),
        len(val),
    )
    train_x = cached_features(extractor, train, options, name)
    val_x = cached_features(extractor, val, options, name)
    standardized = standardize_head(model, train_x)
    with run.strategy.scope():  # a model made outside the scope fails to train in it
        head = head_model(model)
    # The probe is phase 1 unless told otherwise: a number of head epochs asks for training.
    if options.head_init == "probe" and options.head_epochs == AUTO and not has_hidden_layer(model):
        return fit_head_as_probe(
            run, head, standardized, (train_x, train.labels), (val_x, val.labels)
        )
    epochs = head_epochs(options, len(train), on_cached_features=True)
    logger.info("Phase 1: training the head on cached features (%d epochs at most)...", epochs)
    num_classes = dataset.num_classes
    return phase.fit(
        head,
        labelled(train_x, train.labels, num_classes),
        len(train),
        labelled(val_x, val.labels, num_classes).batch(options.batch_size),
        Schedule(epochs, options.head_learning_rate),
    )


def train_head_on_images(run, phase):
    """Phase 1 through the frozen backbone (no feature cache)."""
    options = run.options
    train = run.dataset.splits["train"]
    if has_standardization(run.model):
        extractor, _ = run_extractor(run)
        standardize_head(
            run.model,
            run_inference(extractor, images_only(train, options.image_size, options.batch_size)),
        )
    logger.info("Phase 1: training the head through the frozen backbone...")
    epochs = head_epochs(options, len(train), on_cached_features=False)
    return phase.fit_on_images(run.model, Schedule(epochs, options.head_learning_rate))


def fit_head_as_probe(run, head, standardized, train, val):
    """Phase 1 as LP-FT's linear probe: a logistic regression with C chosen by
    cross-validation on the (standardised) training features becomes the head's
    output layer. `train` and `val` are (features, labels). Returns a history row
    with its training and validation scores."""
    (train_x, train_labels), (val_x, val_labels) = train, val
    # The features as they are (memory-mapped when large), standardised a block at a
    # time as the model does: no copy of them all.
    c = _set_probe_head(run, train_x, train_labels, standardized)
    logger.info("Phase 1: the head is the logistic regression (C = %.4g).", c)
    batch = run.options.batch_size
    train_score = score(train_labels, run_inference(head, _batches(train_x, batch)))
    val_score = score(val_labels, run_inference(head, _batches(val_x, batch)))
    return [
        {
            "phase": HEAD,
            "epoch": 1,
            "accuracy": train_score["accuracy"],
            "loss": train_score["loss"],
            "val_accuracy": val_score["accuracy"],
            "val_loss": val_score["loss"],
            PROBE_C: c,
            ELAPSED: seconds_since_start(),
        }
    ]


def _set_probe_head(run, features, labels, standardized, c=None):
    """Fit the logistic regression on `features` as `standardized` makes them (with C
    chosen by cross-validation, or `c`) and make it the classifier layer; returns its C."""
    num_classes = run.dataset.num_classes
    classifier = fit_logistic_regression(
        features, labels, num_classes, seed=run.options.seed, c=c, prepare=standardized
    )
    run.model.get_layer(names.CLASSIFIER).set_weights(list(output_weights(classifier, num_classes)))
    return fitted_c(classifier)


def _batches(features, batch_size):
    """Blocks of rows of `features` (memory-mapped when large): no copy of them all
    (tf.data's from_tensor_slices would hold one)."""
    return (
        np.asarray(features[start : start + batch_size], dtype=np.float32)
        for start in range(0, len(features), batch_size)
    )


def head_is_probe(history):
    return probe_c(history) is not None


def probe_c(history):
    """The C that cross-validation chose for phase 1's probe; None if phase 1 trained."""
    return next((row[PROBE_C] for row in history if row["phase"] == HEAD and PROBE_C in row), None)


def refit_probe_on_all_labels(run, c):
    """Fit phase 1's probe again, with its C, on the training and validation images
    together, once validation has chosen phase 1: its labels then train rather than
    judge, as scikit-learn's `refit=True` fits the chosen C on all the data after a
    search. At 10 labels per class the hold-out is a fifth of the labels. The model's
    standardisation takes the statistics of all of them. Returns what metrics.json
    records of the refit."""
    extractor, name = run_extractor(run)
    splits = [run.dataset.splits["train"], run.dataset.splits["val"]]
    logger.info(
        "Refitting phase 1's probe (C = %.4g) on the training and validation images (%d)...",
        c,
        sum(len(split) for split in splits),
    )
    features = [cached_features(extractor, split, run.options, name) for split in splits]
    labels = np.concatenate([split.labels for split in splits])
    standardized = standardize_head(run.model, features)
    _set_probe_head(run, features, labels, standardized, c=c)
    return_freed_memory()  # the fit's arrays, before the reports
    return {
        "images": int(len(labels)),
        "C": c,
        "note": "validation scores are of the model before the refit",
    }
