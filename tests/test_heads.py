"""New heads: raw pixels in, probabilities out, saved and reloaded with safe mode on."""

import keras
import numpy as np
import pytest

import transfer
from tests.conftest import random_images, randomize


@pytest.fixture
def backbone():
    return randomize(
        transfer.ResNet50V2(weights=None, include_top=False, input_shape=(32, 32, 3)), seed=7
    )


@pytest.mark.heavy
@pytest.mark.parametrize(
    "options",
    [dict(), dict(pooling="max"), dict(dropout=0.3, hidden_units=16), dict(multi_label=True)],
    ids=["avg", "max", "hidden-dropout", "multi-label"],
)
def test_head_saves_and_reloads_with_same_outputs(tmp_path, backbone, options):
    model = transfer.attach_head(backbone, 5, **options)
    x = random_images((3, 32, 32, 3), seed=8)
    probabilities = np.asarray(model(x))
    assert probabilities.shape == (3, 5)
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    if options.get("multi_label"):
        assert model.get_layer("predictions").activation is keras.activations.sigmoid
    else:
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    path = tmp_path / "classifier.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(x)), probabilities, atol=1e-6)


@pytest.mark.heavy
def test_preprocessing_travels_inside_the_model(backbone):
    model = transfer.attach_head(backbone, 2, pooling="avg")
    x = random_images((2, 32, 32, 3), seed=9)
    features = np.asarray(backbone(transfer.preprocess_input(x, "v2"))).mean(axis=(1, 2))
    dense = model.get_layer("predictions")
    logits = features @ np.asarray(dense.kernel) + np.asarray(dense.bias)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-4, atol=1e-6)


def test_feature_extractor_gives_pooled_backbone_features(backbone):
    extractor = transfer.feature_extractor(transfer.attach_head(backbone, 2))
    x = random_images((2, 32, 32, 3), seed=10)
    expected = np.asarray(backbone(transfer.preprocess_input(x, "v2"))).mean(axis=(1, 2))
    np.testing.assert_allclose(np.asarray(extractor(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.heavy
def test_build_classifier_loads_weights(tmp_path):
    source = randomize(transfer.ResNet50(weights=None, include_top=False), seed=11)
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    model = transfer.build_classifier(4, depth=50, weights=str(path), image_size=(40, 36))
    assert model.input_shape == (None, 40, 36, 3)
    np.testing.assert_array_equal(
        np.asarray(transfer.find_backbone(model).get_layer("conv4_block6_3_bn").moving_mean),
        np.asarray(source.get_layer("conv4_block6_3_bn").moving_mean),
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(pooling="sum"), "Unknown head pooling: 'sum'"),
        (dict(num_classes=0), "num_classes must be a positive integer. Received: num_classes=0"),
        (dict(dropout=1.5), r"dropout must be in \[0, 1\). Received: dropout=1.5"),
    ],
)
def test_bad_head_options(backbone, kwargs, message):
    kwargs.setdefault("num_classes", 3)
    with pytest.raises(ValueError, match=message):
        transfer.attach_head(backbone, **kwargs)


def test_pooled_backbone_is_refused():
    pooled = transfer.ResNet50(weights=None, include_top=False, pooling="avg")
    with pytest.raises(ValueError, match="outputs a feature map.*pooling=None"):
        transfer.attach_head(pooled, 3)


@pytest.mark.heavy
def test_readme_example_runs(tmp_path, keras_home, no_network, monkeypatch):
    """The README's ten lines, with a local file standing in for the ImageNet download."""
    from tests.conftest import trust_notop_file
    from tests.test_weights import _official_notop_file

    arch, path = _official_notop_file(keras_home / "models")
    trust_notop_file(monkeypatch, arch, path)
    images = random_images((8, 32, 32, 3))
    labels = np.arange(8) % 5
    # --- README example starts
    backbone = transfer.ResNet50(weights="imagenet", include_top=False, input_shape=(32, 32, 3))
    model = transfer.attach_head(backbone, num_classes=5, dropout=0.2)
    transfer.freeze(model, until="conv4")  # train conv5 and the head
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, epochs=1, batch_size=4, verbose=0)
    model.save(tmp_path / "flowers.keras")
    # --- README example ends
    reloaded = keras.models.load_model(tmp_path / "flowers.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(reloaded(images)), np.asarray(model(images)), atol=1e-6)
