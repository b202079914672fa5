"""ResNet v1.5: v1's layers and groups with the stride on the 3x3 convolution and
PyTorch's padding; `info`, `weights` and `finetune` on it."""

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import transfer
from tests.conftest import build_fresh, make_image_folder, save_safetensors, torchvision_state_dict
from transfer.cli import cli

DEPTHS = [50, 101, 152]


def pair(depth, **kwargs):
    v1 = build_fresh(transfer.ResNet, depth=depth, version="v1", weights=None, **kwargs)
    v15 = build_fresh(transfer.ResNet, depth=depth, version="v1.5", weights=None, **kwargs)
    return v1, v15


@pytest.fixture(scope="module", params=DEPTHS, ids=[f"{d}" for d in DEPTHS])
def depth_pair(request):
    """(depth, v1, v1.5), built once per depth for the tests that only read them
    (ResNet152's pair takes 10 s)."""
    return (request.param, *pair(request.param, input_shape=(64, 64, 3)))


@pytest.mark.heavy
def test_layers_are_v1s_plus_one_pad_per_block(depth_pair):
    depth, v1, v15 = depth_pair
    assert v15.name == f"resnet{depth}v1.5"
    expected = []
    for layer in v1.layers:  # the pad comes between the 1x1 block's ReLU and the 3x3 conv
        expected.append(layer.name)
        if layer.name.endswith("_1_relu"):
            expected.append(layer.name.replace("_1_relu", "_2_pad"))
    assert [layer.name for layer in v15.layers] == expected
    assert len(v15.layers) - len(v1.layers) == sum(transfer.get_architecture(depth).blocks)
    # The same weights, less the convolutions' biases (PyTorch's ResNet has none).
    without_bias = [
        w.path for w in v1.weights if not (w.path.endswith("bias") and "_conv/" in w.path)
    ]
    assert [w.path for w in v15.weights] == without_bias
    assert v15.count_params() == {50: 25_610_152, 101: 44_654_504, 152: 60_344_232}[depth]


def test_stride_padding_and_epsilon():
    model = transfer.ResNet(50, "v1.5", weights=None, include_top=False, input_shape=(64, 64, 3))
    for stage, stride in zip(("conv2", "conv3", "conv4", "conv5"), (1, 2, 2, 2)):
        first = f"{stage}_block1"
        assert model.get_layer(f"{first}_1_conv").strides == (1, 1)
        assert model.get_layer(f"{first}_2_conv").strides == (stride, stride)
        assert model.get_layer(f"{first}_0_conv").strides == (stride, stride)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias and layer.padding == "valid", layer.name
        if isinstance(layer, keras.layers.ZeroPadding2D) and layer.name.endswith("_2_pad"):
            assert layer.padding == ((1, 1), (1, 1)), layer.name
        if isinstance(layer, keras.layers.BatchNormalization):
            assert layer.epsilon == 1e-5, layer.name


@pytest.mark.parametrize(
    "shape,expected", [((64, 64, 3), (2, 2)), ((75, 61, 3), (3, 2)), ((32, 33, 3), (1, 2))]
)
def test_output_shapes_follow_pytorchs_arithmetic(shape, expected):
    # floor((n + 2 * pad - kernel) / stride) + 1 at every strided layer, as in PyTorch.
    model = transfer.ResNet(50, "v1.5", weights=None, include_top=False, input_shape=shape)
    assert model.output_shape == (None, *expected, 2048)
    assert model(np.zeros((1, *shape), "float32")).shape == (1, *expected, 2048)


def test_padding_is_symmetric_where_same_would_not_be():
    # A strided 3x3 block on an even size: TF's "same" pads 0 before and 1 after, PyTorch
    # 1 and 1. An impulse at the top-left corner shows which one the model does.
    model = transfer.ResNet(50, "v1.5", weights=None, include_top=False, input_shape=(64, 64, 3))
    conv = model.get_layer("conv3_block1_2_conv")
    pad = model.get_layer("conv3_block1_2_pad")
    x = np.zeros((1, 4, 4, 128), "float32")
    x[0, 0, 0, 0] = 1.0
    kernel = np.zeros((3, 3, 128, 128), "float32")
    kernel[1, 1, 0, 0] = 1.0  # the centre tap: picks the input under the window's centre
    conv.kernel.assign(kernel)
    out = np.asarray(conv(pad(x)))[0, :, :, 0]
    assert out.shape == (2, 2) and out[0, 0] == 1.0  # window centred on (0, 0): pad 1 before


@pytest.mark.heavy
def test_groups_have_v1s_names(depth_pair):
    def names(layers):  # bar the pads, and the input (named by Keras' session counter)
        return [
            layer.name
            for layer in layers
            if not layer.name.endswith("_2_pad") and not isinstance(layer, keras.layers.InputLayer)
        ]

    depth, v1, v15 = depth_pair
    g1, g15 = transfer.groups(v1), transfer.groups(v15)
    assert list(g15) == list(g1) == ["stem", "conv2", "conv3", "conv4", "conv5", "head"]
    assert {name: names(layers) for name, layers in g15.items()} == {
        name: names(layers) for name, layers in g1.items()
    }
    assert transfer.architecture_of(v15) == transfer.get_architecture(depth, "v1.5")
    assert transfer.architecture_of(v1) == transfer.get_architecture(depth, "v1")


@pytest.mark.heavy
def test_info_for_v15():
    result = CliRunner().invoke(cli, ["info", "--depth", "50", "--version", "v1.5", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["name"], info["version"], info["preprocessing"]) == (
        "ResNet50V1.5",
        "v1.5",
        "torch",
    )
    assert [g["name"] for g in info["groups"]] == [
        "stem",
        "conv2",
        "conv3",
        "conv4",
        "conv5",
        "head",
    ]
    assert info["layers"] == 177 + 16  # keras.applications' ResNet50, plus 16 pads
    assert info["trainable_params"] == 25_557_032  # torchvision's resnet50
    assert info["groups"][3]["output_shape"] == [14, 14, 1024]
    assert info["weights"] == []
    assert [w["url"] for w in info["torch_weights"]] == [
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
        "https://huggingface.co/timm/resnet50.a1_in1k/resolve/main/model.safetensors",
    ]

    table = CliRunner().invoke(cli, ["info", "--depth", "152", "--version", "v1.5"])
    assert table.exit_code == 0, table.output
    assert table.output.startswith(
        "ResNet152V1.5 (depth 152, version v1.5, input 224x224x3, preprocessing 'torch')"
    )
    assert (
        "ImageNet weights: no keras.applications file exists for v1.5; use torchvision/timm"
        in table.output
    )
    assert (
        "IMAGENET1K_V2     top-1 82.3%   https://download.pytorch.org/models/"
        "resnet152-f82ba261.pth" in table.output
    )


def test_weights_command_for_v15_explains():
    result = CliRunner().invoke(cli, ["weights", "--version", "v1.5"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: No keras.applications ImageNet file exists for v1.5 (ResNet50V1.5); use "
        "torchvision/timm weights: --weights PATH to a .pth or .safetensors "
        "checkpoint, e.g. https://download.pytorch.org/models/resnet50-11ad3fa6.pth, or "
        "--weights none for random initialisation."
    )


@pytest.mark.heavy
def test_finetune_from_a_pytorch_checkpoint(tmp_path):
    state = torchvision_state_dict(50, seed=3)
    checkpoint = save_safetensors(state, tmp_path / "resnet50.safetensors")
    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6})
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--data",
            str(data),
            "--version",
            "v1.5",
            "--weights",
            str(checkpoint),
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--head-epochs",
            "1",
            "--fine-tune-from",
            "none",
            "--no-report",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "complete"
    assert config["options"]["version"] == "v1.5"
    assert config["options"]["weights"] == str(checkpoint)
    assert {"labels.txt", "metrics.json", "predictions.csv", "history.csv"} <= {
        p.name for p in out.iterdir()
    }
    model = keras.models.load_model(out / "model.keras", safe_mode=True)
    backbone = transfer.find_backbone(model)
    assert transfer.architecture_of(backbone).version.name == "v1.5"
    np.testing.assert_array_equal(
        np.asarray(backbone.get_layer("conv5_block3_2_conv").kernel),
        state["layer4.2.conv2.weight"].transpose(2, 3, 1, 0),
    )
    assert model(np.full((1, 32, 32, 3), 100, "uint8")).shape == (1, 2)


def test_finetune_v15_without_weights_option_says_imagenet_is_missing(tmp_path):
    data = make_image_folder(tmp_path / "images", {"cat": 2, "dog": 2})
    result = CliRunner().invoke(
        cli, ["finetune", "--data", str(data), "--version", "v1.5", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code == 2
    assert result.output.strip().startswith(
        "Error: No keras.applications ImageNet file exists for v1.5"
    )
    assert not (tmp_path / "run").exists()  # refused before anything was written
