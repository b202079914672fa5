"""ResNet v1.5 against torchvision itself: its randomly initialised resnet50/101/152,
saved as a state_dict, loaded into our model, give the same outputs on the same images.

Needs PyTorch and torchvision (the `torch` extra), so it is outside the default run:

    pip install -e ".[test,torch]"
    pytest -m torch tests/test_torchvision.py -s
"""

import sys

import numpy as np
import pytest

import transfer
from tests.conftest import TORCHVISION_RESNETS, random_images, torchvision_state_dict

# PyTorch's CUDA builds bring triton, a GPU compiler that these CPU comparisons never
# use and whose import crashes (segfault) a process that loaded TensorFlow first;
# torch and torchvision run without it.
sys.modules.setdefault("triton", None)
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.torch

# Float32 through up to 152 blocks, different kernels on each side. Seen on CPU: logits
# <= 7.5e-7; feature maps <= 1.7e-6 (resnet50), 3.1e-6 (101), 6.2e-6 (152, values to 6.8).
TOLERANCE = 1e-4
DEPTHS = [50, 101, 152]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_resnet(depth, seed=0):
    """torchvision's resnet{depth}, randomly initialised, with random BN statistics too
    (fresh ones are 0 and 1, which would hide a mix-up of mean, variance and epsilon)."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, f"resnet{depth}")(weights=None)
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            gamma = torch.rand(n, generator=generator) * 0.4 + 0.2
            variance = torch.rand(n, generator=generator) + 0.5
            # Some near-constant channels, as trained networks have: there epsilon is most
            # of the denominator, so Keras' 1.001e-5 instead of PyTorch's 1e-5 shows
            # (2.5e-4 in resnet50's logits; TF's "same" padding instead of PyTorch's: 1e-2).
            few = torch.rand(n, generator=generator) < 0.05
            variance[few] = torch.rand(int(few.sum()), generator=generator) * 1e-6
            gamma[few] *= 4 * torch.sqrt(variance[few] + module.eps)  # a few times the rest
            module.weight.data = gamma
            module.bias.data = torch.randn(n, generator=generator) * 0.1
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(variance)
    return model.eval()


def run_torch(model, images_nhwc):
    with torch.no_grad():  # NHWC (Keras) -> NCHW (PyTorch)
        return model(
            torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
        ).numpy()


def normalize_torch(pixels_nhwc):
    """torchvision's preprocessing of 0-255 pixels: ToTensor (/255), then Normalize."""
    from torchvision.transforms import functional

    x = torch.from_numpy(pixels_nhwc.transpose(0, 3, 1, 2).astype("float32")) / 255.0
    return functional.normalize(x, IMAGENET_MEAN, IMAGENET_STD).numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module", params=DEPTHS, ids=[f"resnet{d}" for d in DEPTHS])
def checkpoint(request, tmp_path_factory):
    depth = request.param
    model = torchvision_resnet(depth)
    path = tmp_path_factory.mktemp("torchvision") / f"resnet{depth}.pth"
    torch.save(model.state_dict(), path)
    return depth, model, path


def report(name, difference, reference):
    print(f"\n{name}: max abs difference {difference:.3g} (outputs up to {reference:.3g})")


def test_outputs_equal_torchvisions(checkpoint):
    depth, reference, path = checkpoint
    ours = transfer.ResNet(depth, "v1.5", weights=str(path), classifier_activation=None)
    x = random_images((2, 224, 224, 3), seed=depth).astype("float32") / 64.0 - 2.0
    expected, got = run_torch(reference, x), np.asarray(ours(x, training=False))
    assert got.shape == expected.shape == (2, 1000)
    assert np.abs(expected).max() > 0.1  # the comparison is not between zeros
    difference = np.abs(got - expected).max()
    report(f"resnet{depth} logits at 224x224", difference, np.abs(expected).max())
    assert difference <= TOLERANCE


def test_features_equal_at_odd_sizes(checkpoint):
    # 75x61: odd and even sizes at different stages, where TF's "same" would shift.
    depth, reference, path = checkpoint
    ours = transfer.ResNet(
        depth, "v1.5", weights=str(path), include_top=False, input_shape=(75, 61, 3)
    )
    features = torch.nn.Sequential(*list(reference.children())[:-2]).eval()  # up to layer4
    x = random_images((2, 75, 61, 3), seed=1).astype("float32") / 64.0 - 2.0
    expected = run_torch(features, x).transpose(0, 2, 3, 1)  # back to NHWC
    got = np.asarray(ours(x, training=False))
    assert got.shape == expected.shape == (2, 3, 2, 2048)
    difference = np.abs(got - expected).max()
    report(f"resnet{depth} feature map at 75x61", difference, np.abs(expected).max())
    assert difference <= TOLERANCE


def test_raw_pixels_through_our_preprocessing(checkpoint):
    """Raw 0-255 pixels into our feature extractor (its preprocessing layer included)
    equal torchvision's model on its own normalisation of the same pixels."""
    import keras

    depth, reference, path = checkpoint
    backbone = transfer.ResNet(
        depth, "v1.5", weights=str(path), include_top=False, input_shape=(64, 64, 3)
    )
    extractor = transfer.feature_extractor(backbone)
    classifier = keras.Sequential(
        [
            keras.Input((224, 224, 3)),
            transfer.preprocessing_layer("torch"),
            transfer.ResNet(depth, "v1.5", weights=str(path), classifier_activation=None),
        ]
    )
    pixels = random_images((2, 64, 64, 3), seed=2)
    pooled = torch.nn.Sequential(*list(reference.children())[:-1], torch.nn.Flatten()).eval()
    expected = run_torch(pooled, normalize_torch(pixels))
    difference = np.abs(np.asarray(extractor(pixels)) - expected).max()
    report(f"resnet{depth} pooled features from raw pixels", difference, np.abs(expected).max())
    assert difference <= TOLERANCE

    pixels = random_images((2, 224, 224, 3), seed=3)
    expected = run_torch(reference, normalize_torch(pixels))
    difference = np.abs(np.asarray(classifier(pixels)) - expected).max()
    report(f"resnet{depth} logits from raw pixels", difference, np.abs(expected).max())
    assert difference <= TOLERANCE


def test_state_dict_keys_and_shapes_match_the_default_suites_helper():
    """`torchvision_state_dict` (used without PyTorch in the default suite) is exact."""
    for depth in TORCHVISION_RESNETS:
        real = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
        made = torchvision_state_dict(depth, zeros=True)
        assert list(real) == list(made), depth
        assert [tuple(v.shape) for v in real.values()] == [v.shape for v in made.values()]


@pytest.mark.parametrize(
    "variant", ["legacy-pickle", "wrapped", "data-parallel", "safetensors.torch"]
)
def test_checkpoint_variants(tmp_path, variant):
    model = torchvision_resnet(50, seed=4)
    state = model.state_dict()
    path = tmp_path / "checkpoint.pth"
    if variant == "legacy-pickle":  # torch.save's format before PyTorch 1.6
        torch.save(state, path, _use_new_zipfile_serialization=False)
    elif variant == "wrapped":  # a training checkpoint
        torch.save({"epoch": 90, "state_dict": state}, path)
    elif variant == "data-parallel":
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    ours = transfer.ResNet(
        50, "v1.5", weights=str(path), include_top=False, input_shape=(32, 32, 3)
    )
    np.testing.assert_array_equal(
        np.asarray(ours.get_layer("conv4_block2_2_conv").kernel),
        state["layer3.1.conv2.weight"].numpy().transpose(2, 3, 1, 0),
    )


def test_whole_pickled_model_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(torchvision.models.resnet50(weights=None), path)
    with pytest.raises(
        transfer.WeightsError,
        match="could not be loaded as a PyTorch state_dict with "
        "weights_only=True .*Save model.state_dict\\(\\)",
    ):
        transfer.ResNet(50, "v1.5", weights=str(path), include_top=False)
