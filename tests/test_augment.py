"""Augmentation presets: the same draws for the same seed, the flip left out when asked,
unknown names refused."""

import numpy as np
import pytest

import transfer
from tests.conftest import random_images
from transfer.data.augment import PRESETS, augmentation


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
def test_presets_repeat_with_their_seed_and_leave_out_the_flip(preset):
    images = random_images((4, 32, 32, 3)).astype("float32")
    first = np.asarray(augmentation(seed=3, preset=preset)(images, training=True))
    again = np.asarray(augmentation(seed=3, preset=preset)(images, training=True))
    np.testing.assert_array_equal(first, again)
    assert first.shape == images.shape
    without_flip = augmentation(3, preset, flip=False)
    if preset == "flip":  # nothing left
        assert without_flip is None
    else:
        names = [type(layer).__name__ for layer in without_flip.layers]
        assert "RandomFlip" not in names and names
    assert augmentation(3, "none") is None


def test_unknown_preset_names_the_choices():
    with pytest.raises(
        transfer.InvalidArgumentError,
        match="Unknown augment: 'wild'. Expected one of none, flip, light, default, strong.",
    ):
        augmentation(0, "wild")
