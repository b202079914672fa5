"""How far an exported model's outputs are from the Keras model it came from, on the
same images: the check that catches accuracy lost in conversion or quantisation."""

import numpy as np

from transfer.runtime import correct_predictions

MAX_DROP = 1.0  # accuracy points an export may lose before `export` warns


def agreement(labels, reference, exported):
    """Top-1 agreement, both accuracies and their difference (in points) and the
    largest difference of a probability, between two models' probabilities."""
    reference_accuracy = float(np.mean(correct_predictions(labels, reference)))
    accuracy = float(np.mean(correct_predictions(labels, exported)))
    return {
        "images": len(labels),
        "top1_agreement": float(np.mean(reference.argmax(axis=1) == exported.argmax(axis=1))),
        "reference_accuracy": reference_accuracy,
        "accuracy": accuracy,
        "accuracy_difference_points": 100 * (accuracy - reference_accuracy),
        "max_probability_difference": float(np.max(np.abs(reference - exported))),
    }


def describe(result):
    return (
        f"top-1 agreement {result['top1_agreement']:.2%} on {result['images']} images, "
        f"accuracy {result['accuracy']:.4f} vs {result['reference_accuracy']:.4f} "
        f"({result['accuracy_difference_points']:+.2f} points), largest probability "
        f"difference {result['max_probability_difference']:.2g}"
    )
