"""The feature cache: reused across runs with the same backbone and images, memory-mapped
when large, recomputed when damaged."""

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import transfer
from tests.conftest import randomize
from transfer.commands.finetune import finetune
from transfer.train.feature_cache import cache_key, compute_features, weights_identity


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other shape"])
def test_a_damaged_feature_cache_is_recomputed_and_stale_partials_removed(tmp_path, damage):
    import tensorflow as tf

    from transfer.train.feature_cache import STALE_PARTIAL_SECONDS, compute_features

    extractor = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    batches = tf.data.Dataset.from_tensor_slices(np.ones((5, 4), "float32")).batch(2)
    cache = tmp_path / "cache"
    cache.mkdir()
    entry = cache / "key.npy"
    if damage == "garbage":
        entry.write_bytes(b"not numpy at all")
    else:
        np.save(entry, np.zeros((5, 3) if damage == "truncated" else (4, 3), "float32"))
        if damage == "truncated":
            entry.write_bytes(entry.read_bytes()[:-7])
    stale, fresh = cache / ".key.abc.partial.npy", cache / ".other.def.partial.npy"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    old = stale.stat().st_mtime - STALE_PARTIAL_SECONDS - 60
    os.utime(stale, (old, old))

    features = compute_features(extractor, batches, 5, 3, cache_dir=cache, key="key", verbose=0)
    expected = np.asarray(extractor(np.ones((5, 4), "float32")))
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    np.testing.assert_allclose(np.load(entry), expected, rtol=1e-6)  # the entry is good again
    assert not stale.exists() and fresh.exists()


@pytest.fixture
def weights_file(tmp_path):
    backbone = randomize(transfer.ResNet50(weights=None, include_top=False), seed=3)
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    return path


def _phase1(image_folder, tmp_path, weights_file, cache, name):
    return finetune(
        image_folder,
        report=False,
        out=tmp_path / name,
        weights=str(weights_file),
        image_size=32,
        batch_size=8,
        head_epochs=3,
        fine_tune_from="none",
        cache_features=cache,
        early_stopping_patience=0,
    )


@pytest.mark.heavy
def test_cached_features_train_the_same_head_and_a_second_run_reuses_them(
    image_folder, tmp_path, weights_file, feature_cache_dir, caplog
):
    """Same seed: the head trained on cached features equals the one trained through
    the frozen backbone (dropout included), within float tolerance."""
    cached = _phase1(image_folder, tmp_path, weights_file, True, "cached")
    files = sorted(feature_cache_dir.glob("*.npy"))
    assert len(files) == 2  # train and validation
    direct = _phase1(image_folder, tmp_path, weights_file, False, "direct")
    for a, b in zip(
        cached.model.get_layer("predictions").weights, direct.model.get_layer("predictions").weights
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)  # seen: 4e-7
    np.testing.assert_allclose(
        [r["loss"] for r in cached.history], [r["loss"] for r in direct.history], rtol=1e-5
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="transfer"):
        _phase1(image_folder, tmp_path, weights_file, True, "second")
    # Both of phase 1's files again (the run's end reads validation's once more), and
    # no features computed.
    assert caplog.text.count("Reusing cached features") == 3
    assert "Features:" not in caplog.text
    # Other weights (a file of other content), another key: not reused.
    other = randomize(transfer.ResNet50(weights=None, include_top=False), seed=4)
    other.save_weights(tmp_path / "other.weights.h5")
    paths = sorted(str(p) for p in image_folder.rglob("*") if p.is_file())
    keys = {
        cache_key(weights_identity(str(w), 0), "resnet50", 32, "avg", paths)
        for w in (weights_file, tmp_path / "other.weights.h5")
    }
    assert len(keys) == 2


@pytest.mark.heavy
def test_features_too_large_for_memory_go_to_a_memory_mapped_file(tmp_path):
    extractor = transfer.feature_extractor(
        randomize(transfer.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3)))
    )
    images = tf.data.Dataset.from_tensor_slices(
        np.random.default_rng(0).uniform(0, 255, (10, 32, 32, 3)).astype("float32")
    ).batch(4)
    in_memory = compute_features(extractor, images, 10, 2048)
    mapped = compute_features(
        extractor, images, 10, 2048, cache_dir=tmp_path, key="k", memory_fraction=0.0
    )
    assert isinstance(mapped, np.memmap)
    assert (tmp_path / "k.npy").exists()
    np.testing.assert_allclose(np.asarray(mapped), in_memory, rtol=1e-5, atol=1e-5)
