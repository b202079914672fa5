"""Phase 1: standardised features in the model, the head's epochs planned from the data,
the linear probe as the head and its refit on all labels."""

import math

import keras
import numpy as np
import pytest

import transfer
from tests.conftest import random_images
from transfer.data.pipeline import images_only
from transfer.models.heads import set_standardization
from transfer.models.names import HEAD_STANDARDIZE
from transfer.train import head as phase1
from transfer.train import standardize
from transfer.train.options import FinetuneOptions


@pytest.mark.heavy
def test_standardization_lives_in_the_model_and_reloads_in_safe_mode(tmp_path):
    model = transfer.build_classifier(3, weights=None, image_size=32, standardize=True)
    rng = np.random.default_rng(0)
    mean, variance = rng.normal(5, 2, 2048), rng.uniform(1, 9, 2048)
    images = random_images((4, 32, 32, 3))
    before = np.asarray(model(images))
    set_standardization(model, mean, variance)
    after = np.asarray(model(images))
    assert not np.allclose(before, after)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(images)), after, rtol=1e-6, atol=1e-6)
    layer = loaded.get_layer(HEAD_STANDARDIZE)
    np.testing.assert_allclose(np.asarray(layer.mean).ravel(), mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.variance).ravel(), variance, rtol=1e-6)


def test_feature_statistics_match_numpy_in_chunks():
    features = np.random.default_rng(1).normal(3, 4, (1000, 7)).astype("float32")
    mean, variance = standardize.feature_statistics(features, chunk=128)
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(variance, features.var(axis=0), rtol=1e-4)
    # Several arrays (the refit's train and val features) count as their rows stacked.
    parts = [features[:300], features[300:]]
    np.testing.assert_allclose(standardize.feature_statistics(parts, chunk=128)[0], mean)
    standardized = standardize.standardizer(mean, np.sqrt(variance))(parts, np.float64)
    assert standardized.dtype == np.float64
    np.testing.assert_allclose(standardized, (features - mean) / np.sqrt(variance), rtol=1e-6)


@pytest.mark.parametrize(
    "images,cached,expected",
    [
        (240, True, 75),  # 8 steps an epoch: 600 steps take 75 epochs
        (100_000, True, 10),  # 3125 steps an epoch: the floor of 10 epochs
        (16, True, 200),  # 1 step an epoch: capped at 200 (early stopping ends it sooner)
        (240, False, 10),  # through the backbone an epoch costs a pass over the images
    ],
)
def test_head_epochs_auto_plans_from_the_data(images, cached, expected):
    options = FinetuneOptions(batch_size=32)
    assert options.head_epochs == "auto"
    planned = phase1.head_epochs(options, images, cached)
    assert planned == expected
    if cached and expected not in (phase1.HEAD_MIN_EPOCHS, phase1.HEAD_MAX_EPOCHS):
        assert planned * math.ceil(images / options.batch_size) >= phase1.HEAD_STEPS
    options.head_epochs = 3
    assert phase1.head_epochs(options, images, cached) == 3


@pytest.mark.parametrize("classes", [2, 4])
def test_the_probe_becomes_a_dense_softmax_with_the_same_probabilities(classes):
    from transfer.train.logistic import fit_logistic_regression, softmax_weights

    rng = np.random.default_rng(classes)
    labels = np.arange(120) % classes
    features = rng.normal(size=(120, 16)) + labels[:, None] * 0.7
    classifier = fit_logistic_regression(features, labels, classes, folds=3, standardize=False)
    kernel, bias = softmax_weights(classifier, classes)
    dense = keras.layers.Dense(classes, activation="softmax")
    dense.build((None, 16))
    dense.set_weights([kernel, bias])
    np.testing.assert_allclose(
        np.asarray(dense(features.astype("float32"))),
        classifier.predict_proba(features),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.heavy
def test_phase_one_from_the_probe_matches_the_probe(tmp_path, image_folder):
    result = transfer.finetune(
        image_folder,
        report=False,
        out=tmp_path / "run",
        weights=None,
        image_size=32,
        batch_size=8,
        fine_tune_from="none",
        seed=1,
    )
    rows = result.history
    assert len(rows) == 1 and rows[0]["phase"] == "head" and rows[0]["probe_C"] > 0
    # The head is the regression: its validation accuracy is the run's (validation
    # judges the model before the refit).
    assert rows[0]["val_accuracy"] == pytest.approx(result.metrics["val"]["accuracy"])


@pytest.mark.heavy
def test_a_kept_probe_is_refit_on_training_and_validation_images(tmp_path, image_folder):
    from transfer.data.sources import load_dataset
    from transfer.models.heads import pooled_features

    result = transfer.finetune(
        image_folder,
        report=False,
        out=tmp_path / "run",
        weights=None,
        image_size=32,
        batch_size=8,
        fine_tune_from="none",
        seed=1,
    )
    splits = load_dataset(image_folder, val_split=FinetuneOptions.val_split).splits
    train, val = splits["train"], splits["val"]
    assert result.metrics["kept"]["refit"]["images"] == len(train) + len(val)
    # With phase 1's C, as a search's refit fits the C it chose.
    assert result.metrics["kept"]["refit"]["C"] == result.history[0]["probe_C"]
    # The standardisation now has the statistics of the training and validation images.
    extractor = pooled_features(result.model)
    features = np.concatenate(
        [
            np.asarray(extractor(batch))
            for split in (train, val)
            for batch in images_only(split, 32, 8)
        ]
    )
    mean = np.asarray(result.model.get_layer(HEAD_STANDARDIZE).mean).ravel()
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-4, atol=1e-5)
    # ... and the refit model is the one saved.
    reloaded = keras.models.load_model(result.run_dir / "model.keras", safe_mode=True)
    images = next(iter(images_only(val, 32, 8)))
    np.testing.assert_allclose(
        np.asarray(reloaded(images)), np.asarray(result.model(images)), rtol=1e-5, atol=1e-6
    )
    plain = transfer.finetune(
        image_folder,
        report=False,
        out=tmp_path / "plain",
        weights=None,
        image_size=32,
        batch_size=8,
        fine_tune_from="none",
        seed=1,
        refit=False,
    )
    assert "refit" not in plain.metrics["kept"]
    assert plain.metrics["val"] == result.metrics["val"]
