"""Which phase's model a run keeps: fine-tuning never hands back a worse model than its
own phase 1. Phase 2 is kept only when it gets clearly more validation images right."""

import logging

import numpy as np

from transfer.runs import FINE_TUNE, HEAD
from transfer.runtime import correct_predictions, score

logger = logging.getLogger("transfer")

# Phase 2 is kept when it gets more validation images right than phase 1 by more than
# this many standard errors of the paired difference (McNemar's statistic on the images
# where the two disagree): on 90 validation images, one image more is noise, and on the
# 100-label experiment a phase 2 kept for one image tested below phase 1.
KEEP_MARGIN = 1.0


def validation_score(probabilities, labels):
    """{"accuracy", "loss"} of a model's `probabilities` for the validation images, and
    "correct": which images it gets right, for the paired comparison of two phases."""
    return {**score(labels, probabilities), "correct": correct_predictions(labels, probabilities)}


def clearly_better(correct, baseline_correct, margin=KEEP_MARGIN):
    """Whether `correct` beats `baseline_correct` (per-image booleans on the same
    images) by more than `margin` standard errors of the paired difference."""
    gained = int(np.sum(correct & ~baseline_correct))
    lost = int(np.sum(baseline_correct & ~correct))
    return bool(gained - lost > margin * np.sqrt(gained + lost))


def choose_phase(options, head_score, fine_tune_score):
    """What the run keeps and why, for metrics.json and the summary: phase 2 unless
    it did not run, or (with keep="best") did not clearly beat a phase 1 that trained.
    The scores are `validation_score`s (None where that phase did not run)."""
    if not options.fine_tunes:
        return {"phase": HEAD, "reason": "no fine-tuning phase"}
    if head_score is None:
        return {"phase": FINE_TUNE, "reason": "phase 1 did not train (head_epochs=0)"}
    if fine_tune_score is None:  # no time was left for it
        return {"phase": HEAD, "reason": "phase 2 did not run"}
    better = clearly_better(fine_tune_score.pop("correct"), head_score.pop("correct"))
    scores = {HEAD: head_score, FINE_TUNE: fine_tune_score}
    if options.keep == "last":
        return {"phase": FINE_TUNE, "reason": "keep='last'", "validation": scores}
    if not better:
        logger.warning(
            "Fine-tuning did not clearly beat phase 1 on validation (accuracy %.4f against "
            "%.4f): keeping phase 1's model (keep=last keeps phase 2's).",
            fine_tune_score["accuracy"],
            head_score["accuracy"],
        )
        return {
            "phase": HEAD,
            "reason": "phase 2 did not clearly beat phase 1 on validation",
            "validation": scores,
        }
    return {
        "phase": FINE_TUNE,
        "reason": "phase 2 clearly beat phase 1 on validation",
        "validation": scores,
    }
