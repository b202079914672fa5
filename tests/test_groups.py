"""Layer groups, and freezing checked by real training steps."""

import keras
import numpy as np
import pytest

import transfer
from tests.conftest import random_images, randomize


def _classifier(version="v1", size=32):
    backbone = transfer.ResNet(
        50, version, weights=None, include_top=False, input_shape=(size, size, 3)
    )
    randomize(backbone, seed=5)
    return transfer.attach_head(backbone, 3)


def _snapshot(model):
    return {w.path: np.array(w) for w in model.weights}


def _group_of_weight(model):
    owner = {}
    for group, layers in transfer.groups(model).items():
        for layer in layers:
            for w in layer.weights:
                owner[w.path] = (group, layer)
    return owner


def _train_steps(model, steps=2):
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    x = random_images((8, 32, 32, 3), seed=6)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    model.fit(x, y, batch_size=4, epochs=1, steps_per_epoch=steps, verbose=0, shuffle=False)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_groups_cover_every_layer_once_in_order(version):
    backbone = transfer.ResNet(50, version, weights=None, input_shape=(64, 64, 3))
    found = transfer.groups(backbone)
    expected = ["stem", "conv2", "conv3", "conv4", "conv5"] + (["post"] if version == "v2" else [])
    assert list(found) == expected + ["head"]
    flat = [layer for layers in found.values() for layer in layers]
    assert flat == backbone.layers
    assert [layer.name for layer in found["stem"]][1:] == (
        ["conv1_pad", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pad", "pool1_pool"]
        if version == "v1"
        else ["conv1_pad", "conv1_conv", "pool1_pad", "pool1_pool"]
    )
    assert [layer.name for layer in found["head"]] == ["avg_pool", "predictions"]
    for stage in ("conv2", "conv3", "conv4", "conv5"):
        named = [layer.name for layer in found[stage] if not layer.name.startswith("max_pooling2d")]
        assert all(name.startswith(stage + "_") for name in named)
    if version == "v2":  # the unnamed shortcut pools sit in the stage of their block
        pools = {
            g: [layer for layer in ls if isinstance(layer, keras.layers.MaxPooling2D)]
            for g, ls in found.items()
        }
        assert [len(pools[g]) for g in ("conv2", "conv3", "conv4", "conv5")] == [1, 1, 1, 0]


def test_groups_of_a_classifier_include_preprocessing_and_head():
    found = transfer.groups(_classifier())
    assert list(found) == ["stem", "conv2", "conv3", "conv4", "conv5", "head"]
    assert [layer.name for layer in found["stem"][:2]] == ["pixels", "preprocess"]
    assert [layer.name for layer in found["head"]] == ["head_pool", "predictions"]


@pytest.mark.heavy
@pytest.mark.parametrize("version", ["v1", "v1.5", "v2"])
def test_freeze_until_conv4_trains_only_conv5_and_head(version):
    model = _classifier(version)
    transfer.freeze(model, until="conv4")
    before = _snapshot(model)
    _train_steps(model)
    after = _snapshot(model)
    owner = _group_of_weight(model)
    trainable_groups = {"conv5", "post", "head"}
    for path, value in before.items():
        group, layer = owner[path]
        unchanged = np.array_equal(value, after[path])
        is_bn = isinstance(layer, keras.layers.BatchNormalization)
        if group not in trainable_groups or is_bn:
            # Frozen groups, and BN everywhere by default (inference mode): bit-identical.
            assert unchanged, f"{path} ({group}) changed"
    changed = [p for p in before if not np.array_equal(before[p], after[p])]
    assert any(owner[p][0] == "conv5" for p in changed)
    assert any(owner[p][0] == "head" for p in changed)
    if version == "v2":
        assert all(owner[p][0] != "post" or "bn" not in p for p in changed)


@pytest.mark.heavy
def test_train_bn_updates_statistics_only_in_unfrozen_groups():
    model = _classifier("v1")
    transfer.freeze(model, until="conv4", train_bn=True)
    before = _snapshot(model)
    _train_steps(model)
    after = _snapshot(model)
    owner = _group_of_weight(model)
    for path in before:
        if path.endswith("moving_mean"):
            unchanged = np.array_equal(before[path], after[path])
            assert unchanged == (owner[path][0] != "conv5"), path


@pytest.mark.heavy
def test_freeze_everything_but_head_then_unfreeze():
    model = _classifier()
    transfer.freeze(model)
    head_weights = {w.path for layer in transfer.groups(model)["head"] for w in layer.weights}
    assert {w.path for w in model.trainable_weights} == head_weights
    transfer.unfreeze(model)
    # Everything trains again except BN, which stays in inference mode by default.
    bn_weights = {
        w.path
        for layer in transfer.find_backbone(model).layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in layer.weights
    }
    all_weights = {w.path for w in model.weights}
    assert {w.path for w in model.trainable_weights} == {
        p for p in all_weights - bn_weights if not p.startswith("preprocess/")
    }
    assert not model.get_layer("preprocess").trainable  # fixed arithmetic, never trained
    transfer.unfreeze(model, "conv3", train_bn=True)
    trainable_groups = {_group_of_weight(model)[w.path][0] for w in model.trainable_weights}
    assert trainable_groups == {"conv3", "conv4", "conv5", "head"}


@pytest.mark.heavy
def test_freezing_survives_save_and_load(tmp_path):
    model = _classifier()
    transfer.freeze(model, until="conv3")
    path = tmp_path / "frozen.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    assert [w.path for w in loaded.trainable_weights] == [w.path for w in model.trainable_weights]


@pytest.mark.heavy
def test_unknown_group_names_the_groups():
    model = _classifier()
    with pytest.raises(
        ValueError, match="Unknown group: until='conv6'.*stem, conv2, conv3, conv4, conv5, head"
    ):
        transfer.freeze(model, until="conv6")
    with pytest.raises(ValueError, match="Unknown group: from='post'"):
        transfer.unfreeze(model, "post")


def test_model_without_resnet_layers_is_refused():
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(ValueError, match="is not a ResNet built by transfer"):
        transfer.groups(model)
