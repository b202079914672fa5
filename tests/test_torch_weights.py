"""torchvision/timm checkpoints into ResNet v1.5, without PyTorch: safetensors files
written by the `safetensors` package from NumPy arrays with torchvision's names and
shapes (`tests/test_torchvision.py` checks the same against PyTorch itself)."""

import logging
import sys

import numpy as np
import pytest

import transfer
from tests.conftest import save_safetensors, torchvision_state_dict

SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def state50():
    return torchvision_state_dict(50, seed=0)


@pytest.fixture(scope="module")
def file50(state50, tmp_path_factory):
    return save_safetensors(state50, tmp_path_factory.mktemp("torch") / "resnet50.safetensors")


def kernel(model, name):
    return np.asarray(model.get_layer(name).kernel)


def test_every_tensor_lands_in_its_layer_transposed(state50, file50):
    model = transfer.ResNet(50, "v1.5", weights=str(file50), input_shape=SHAPE)
    # Convolutions: OIHW -> HWIO, on the stem, a strided 3x3, a shortcut and a 1x1.
    pairs = {
        "conv1_conv": "conv1.weight",
        "conv3_block1_2_conv": "layer2.0.conv2.weight",
        "conv4_block1_0_conv": "layer3.0.downsample.0.weight",
        "conv5_block3_3_conv": "layer4.2.conv3.weight",
    }
    for ours, theirs in pairs.items():
        np.testing.assert_array_equal(kernel(model, ours), state50[theirs].transpose(2, 3, 1, 0))
    assert kernel(model, "conv4_block6_2_conv").shape == (3, 3, 256, 256)
    # BatchNormalization: weight, bias, running mean and variance -> gamma, beta, moving.
    for ours, theirs in {
        "conv1_bn": "bn1",
        "conv2_block3_3_bn": "layer1.2.bn3",
        "conv4_block1_0_bn": "layer3.0.downsample.1",
    }.items():
        layer = model.get_layer(ours)
        for weight, name in zip(
            (layer.gamma, layer.beta, layer.moving_mean, layer.moving_variance),
            ("weight", "bias", "running_mean", "running_var"),
        ):
            np.testing.assert_array_equal(np.asarray(weight), state50[f"{theirs}.{name}"])
        assert layer.epsilon == 1e-5  # PyTorch's, not keras.applications' 1.001e-5
    # The classifier: (out, in) -> (in, out).
    np.testing.assert_array_equal(kernel(model, "predictions"), state50["fc.weight"].T)
    np.testing.assert_array_equal(
        np.asarray(model.get_layer("predictions").bias), state50["fc.bias"]
    )
    # Every tensor but BN's training counters is used, once.
    used = sum(int(np.prod(w.shape)) for w in model.weights)
    assert used == sum(v.size for k, v in state50.items() if "num_batches" not in k)


def test_notop_model_takes_the_backbone(state50, file50):
    model = transfer.ResNet(
        50, "v1.5", weights=str(file50), include_top=False, input_shape=SHAPE, pooling="avg"
    )
    np.testing.assert_array_equal(
        kernel(model, "conv2_block1_1_conv"), state50["layer1.0.conv1.weight"].transpose(2, 3, 1, 0)
    )
    assert model(np.zeros((1, *SHAPE), "float32")).shape == (1, 2048)


def test_classifier_builder_and_preprocessing(file50):
    model = transfer.build_classifier(
        3, depth=50, version="v1.5", weights=str(file50), image_size=32
    )
    assert [layer.name for layer in model.get_layer("preprocess").layers] == [
        "preprocess_scale",
        "preprocess_normalize",
    ]  # torch mode: /255, ImageNet mean/std
    out = model(np.full((2, *SHAPE), 128, "uint8"))
    assert out.shape == (2, 3)


@pytest.mark.heavy
def test_notop_checkpoint_into_model_with_top(state50, tmp_path):
    notop = {k: v for k, v in state50.items() if not k.startswith("fc.")}
    path = save_safetensors(notop, tmp_path / "notop.safetensors")
    with pytest.raises(transfer.WeightsError, match="without a classifier"):
        transfer.ResNet(50, "v1.5", weights=str(path), input_shape=SHAPE)
    transfer.ResNet(50, "v1.5", weights=str(path), include_top=False, input_shape=SHAPE)


def test_other_class_count_skips_the_classifier(file50, caplog, monkeypatch):
    # The CLI's logging set-up (in an earlier test) stops records reaching caplog.
    monkeypatch.setattr(logging.getLogger("transfer"), "propagate", True)
    model = transfer.ResNet(50, "v1.5", weights=str(file50), input_shape=SHAPE, classes=7)
    assert "it has 1000 classes and the model 7" in caplog.text
    assert kernel(model, "predictions").shape == (2048, 7)


def test_missing_and_unexpected_keys_are_named(state50, tmp_path):
    state = dict(state50)
    del state["layer2.1.bn2.running_var"]
    state["layer2.1.se.fc1.weight"] = np.zeros((8, 128, 1, 1), "float32")
    path = save_safetensors(state, tmp_path / "odd.safetensors")
    with pytest.raises(transfer.WeightsError) as info:
        transfer.ResNet(50, "v1.5", weights=str(path), input_shape=SHAPE)
    assert str(info.value) == (
        "odd.safetensors is not a state_dict of torchvision's resnet50: it has 1 unexpected "
        "keys (layer2.1.se.fc1.weight) and 1 missing keys (layer2.1.bn2.running_var)."
    )


def test_many_missing_keys_are_counted(state50, tmp_path):
    state = {k: v for k, v in state50.items() if not k.startswith("layer4.2.")}
    state["layer4.2.conv1.weight"] = state50["layer4.2.conv1.weight"]  # keep the depth
    path = save_safetensors(state, tmp_path / "cut.safetensors")
    with pytest.raises(
        transfer.WeightsError,
        match=r"it has 14 missing keys \(layer4\.2\.bn1"
        r"\.bias, .* and 9 more\)",
    ):
        transfer.ResNet(50, "v1.5", weights=str(path), input_shape=SHAPE)


@pytest.mark.heavy
def test_resnet101_checkpoint_into_resnet50(tmp_path):
    path = save_safetensors(torchvision_state_dict(101, zeros=True), tmp_path / "r101.safetensors")
    with pytest.raises(
        transfer.WeightsError,
        match=r"r101\.safetensors holds weights for ResNet101V1\.5, but the model "
        r"is ResNet50V1\.5\. Build a ResNet101V1\.5 \(depth=101, "
        r"version=v1\.5\)",
    ):
        transfer.ResNet(50, "v1.5", weights=str(path), include_top=False, input_shape=SHAPE)


def test_torchvision_checkpoint_into_v1_model(file50):
    with pytest.raises(
        transfer.WeightsError, match="holds weights for ResNet50V1.5, but the model is ResNet50\\."
    ):
        transfer.ResNet(50, "v1", weights=str(file50), input_shape=SHAPE)


@pytest.mark.parametrize("depth", [18, 34])
def test_basic_block_checkpoint_is_refused(tmp_path, depth):
    path = save_safetensors(
        torchvision_state_dict(depth, zeros=True), tmp_path / "small.safetensors"
    )
    with pytest.raises(
        transfer.WeightsError, match=f"small.safetensors holds resnet{depth}, made of basic blocks"
    ):
        transfer.ResNet(50, "v1.5", weights=str(path), include_top=False, input_shape=SHAPE)


def test_resnext_checkpoint_is_refused(state50, tmp_path):
    state = dict(state50)
    state["layer1.0.conv2.weight"] = np.zeros((64, 2, 3, 3), "float32")  # 32 groups
    path = save_safetensors(state, tmp_path / "resnext.safetensors")
    with pytest.raises(transfer.WeightsError, match="holds a ResNeXt .*32 groups"):
        transfer.ResNet(50, "v1.5", weights=str(path), include_top=False, input_shape=SHAPE)


def test_non_resnet_state_dict_is_refused(tmp_path):
    state = {
        "features.0.weight": np.zeros((64, 3, 3, 3), "float32"),
        "classifier.1.weight": np.zeros((10, 64), "float32"),
    }
    path = save_safetensors(state, tmp_path / "vgg.safetensors")
    with pytest.raises(
        transfer.WeightsError,
        match="vgg.safetensors does not hold a torchvision or timm ResNet: none of "
        "its 2 keys is named like layer1.0.conv1.weight",
    ):
        transfer.ResNet(50, "v1.5", weights=str(path), include_top=False, input_shape=SHAPE)


def test_pth_without_torch_says_how_to_install_it(tmp_path, monkeypatch):
    import zipfile

    path = tmp_path / "resnet50.pth"
    with zipfile.ZipFile(path, "w") as archive:  # torch.save's layout since PyTorch 1.6
        archive.writestr("resnet50/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("resnet50/version", "3\n")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    with pytest.raises(
        transfer.WeightsError,
        match="resnet50.pth is a PyTorch checkpoint, and reading it needs "
        "PyTorch: pip install torch",
    ):
        transfer.ResNet(50, "v1.5", weights=str(path), include_top=False, input_shape=SHAPE)


def test_imagenet_for_v15_points_to_pytorch_weights():
    with pytest.raises(
        transfer.WeightsError,
        match=r"No keras.applications ImageNet file exists for v1\.5 "
        r"\(ResNet50V1\.5\); use torchvision/timm weights: .*"
        r"resnet50-11ad3fa6\.pth",
    ):
        transfer.ResNet(50, "v1.5", weights="imagenet")


@pytest.mark.heavy
@pytest.mark.parametrize("fmt", ["weights.h5", "keras"])
def test_v15_keras_files_round_trip_and_are_told_from_v1(tmp_path, fmt, file50):
    source = transfer.ResNet(50, "v1.5", weights=str(file50), include_top=False, input_shape=SHAPE)
    path = tmp_path / f"v15.{fmt}"
    source.save_weights(path) if fmt == "weights.h5" else source.save(path)
    loaded = transfer.ResNet(50, "v1.5", weights=str(path), include_top=False, input_shape=SHAPE)
    for a, b in zip(loaded.weights, source.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    with pytest.raises(
        transfer.WeightsError, match="holds weights for ResNet50V1.5, but the model is ResNet50\\."
    ):
        transfer.ResNet(50, "v1", weights=str(path), include_top=False, input_shape=SHAPE)
