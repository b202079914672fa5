"""Preprocessing equals keras.applications' preprocess_input, bit for bit."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.applications import resnet, resnet_v2

import transfer
from tests.conftest import random_images

REFERENCE = {"v1": resnet.preprocess_input, "v2": resnet_v2.preprocess_input}
SHAPES = [(1, 32, 32, 3), (2, 61, 75, 3), (5, 3), (7, 1, 9, 3)]
DTYPES = ["uint8", "int32", "float32", "float64"]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_function_equals_keras_on_numpy(version, shape, dtype):
    x = random_images(shape, seed=len(shape), dtype=dtype)
    expected = REFERENCE[version](x.copy())
    got = transfer.preprocess_input(x, version)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(x, random_images(shape, seed=len(shape), dtype=dtype))


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("shape", SHAPES)
def test_function_and_layer_equal_keras_on_tensors(version, shape):
    x = random_images(shape, seed=3)
    expected = np.asarray(REFERENCE[version](tf.constant(x, tf.float32)))
    np.testing.assert_array_equal(
        np.asarray(transfer.preprocess_input(tf.constant(x), version)), expected
    )
    if len(shape) != 4:
        return  # the layer takes batches of images
    mode = {"v1": "caffe", "v2": "tf"}[version]
    layer = transfer.preprocessing_layer(mode)
    for dtype in ("uint8", "float32", "float64"):
        np.testing.assert_array_equal(np.asarray(layer(x.astype(dtype))), expected)


def test_torch_mode_layer_matches_keras_within_rounding():
    from keras.applications import imagenet_utils

    x = random_images((2, 9, 7, 3), seed=4)
    expected = imagenet_utils.preprocess_input(x.astype("float32"), mode="torch")
    np.testing.assert_allclose(transfer.preprocess_input(x, "torch"), expected, rtol=0, atol=0)
    # The layer divides by 255*std in one step: ~1 ulp from keras' two divisions.
    np.testing.assert_allclose(
        np.asarray(transfer.preprocessing_layer("torch")(x)), expected, rtol=0, atol=1e-6
    )


def test_modes_accept_versions_and_reject_unknown():
    x = random_images((1, 4, 4, 3))
    np.testing.assert_array_equal(
        transfer.preprocess_input(x, "caffe"), transfer.preprocess_input(x, "v1")
    )
    with pytest.raises(ValueError, match="Unknown preprocessing mode: 'bgr'.*caffe, tf, torch"):
        transfer.preprocess_input(x, "bgr")
    with pytest.raises(ValueError, match="'bgr'"):
        transfer.preprocessing_layer("bgr")


@pytest.mark.heavy
@pytest.mark.parametrize("mode", ["caffe", "tf"])
def test_layer_saves_with_model_and_reloads_without_transfer(tmp_path, mode):
    """Built-in layers only: plain Keras, in a process that never imports transfer."""
    import subprocess
    import sys

    inputs = keras.Input((8, 8, 3), dtype="uint8")
    model = keras.Model(inputs, transfer.preprocessing_layer(mode)(inputs))
    path = tmp_path / "pre.keras"
    model.save(path)
    x = random_images((2, 8, 8, 3))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", np.asarray(model(x)))
    script = (
        "import sys, numpy as np, keras\n"
        f"m = keras.models.load_model({str(path)!r}, safe_mode=True)\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        f"assert np.array_equal(np.asarray(m(x)), np.load({str(tmp_path / 'expected.npy')!r}))\n"
        "assert 'transfer' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_layer_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = transfer.preprocessing_layer("caffe")
        out = layer(random_images((1, 4, 4, 3)))
        assert out.dtype == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")
