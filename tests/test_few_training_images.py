"""Classes with few training images are named in one warning line, however many they
are."""

import logging

import numpy as np

from transfer.data.dataset import Dataset, Split
from transfer.data.sources import check_training_classes


def warnings_for(counts, caplog):
    names = [f"class{i:03d}" for i in range(len(counts))]
    labels = np.repeat(np.arange(len(counts)), counts)
    train = Split([f"{names[c]}/{i}.png" for i, c in enumerate(labels)], labels)
    dataset = Dataset("images", "folder", names, {"train": train, "val": train})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="transfer"):
        check_training_classes(dataset)
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_many_classes_with_few_images_give_one_line(caplog):
    warnings = warnings_for([1] * 600 + [10], caplog)
    assert len(warnings) == 1, warnings[:3]
    assert warnings[0].startswith("600 classes have fewer than 5 training images")
    assert "'class000' 1" in warnings[0] and "more" in warnings[0]


def test_one_class_with_few_images_is_named(caplog):
    assert warnings_for([10, 2, 10], caplog) == [
        "Class 'class001' has only 2 training images: the model will hardly learn it."
    ]
    assert warnings_for([10, 10], caplog) == []
