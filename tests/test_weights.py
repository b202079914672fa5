"""Weights in every real format, the ImageNet path offline, and mismatches explained.

Legacy H5 files are written by tf-keras' `save_weights("x.h5")`, the format of the
official keras.applications files; Keras 3 files by Keras 3 itself.
"""

import logging
import time

import keras
import numpy as np
import pytest
import tf_keras

import transfer
from tests.conftest import (
    VARIANT_IDS,
    VARIANTS,
    build_fresh,
    random_images,
    randomize,
    trust_notop_file,
)
from transfer.models import pretrained
from transfer.models.weights import formats

# tf-keras runs other kernels (fused BN) than Keras 3; the difference seen is ~2e-7.
TF_KERAS_TOLERANCE = 1e-5


def tf_keras_file(path, ref_name, include_top, input_shape, seed=0, **kwargs):
    """Write a legacy-H5 weights file with tf-keras; return (path, tf-keras model)."""
    model = getattr(tf_keras.applications, ref_name)(
        weights=None, include_top=include_top, input_shape=input_shape, **kwargs
    )
    randomize(model, seed)
    model.save_weights(str(path))
    return path, model


# The default run reads ResNet50's top and notop files and ResNet152's notop file (the
# one fine-tuning loads), for v1 and v2; the loader goes by layer name, the same at
# every depth, and test_resnet_compat checks every depth's names, shapes and outputs. The top
# adds the same `predictions` layer at every depth. The rest are in the slow run.
DEFAULT_LEGACY_CASES = {(50, True), (50, False), (152, False)}
LEGACY_CASES = [
    pytest.param(
        *variant,
        top,
        id=f"{variant_id}-{'top' if top else 'notop'}",
        marks=() if (variant[2], top) in DEFAULT_LEGACY_CASES else pytest.mark.slow,
    )
    for variant, variant_id in zip(VARIANTS, VARIANT_IDS)
    for top in (True, False)
]


@pytest.mark.heavy
@pytest.mark.parametrize("builder,ref_name,depth,version,include_top", LEGACY_CASES)
def test_legacy_h5_from_tf_keras_reproduces_its_outputs(
    tmp_path, builder, ref_name, depth, version, include_top
):
    shape = (64, 64, 3) if include_top else (64, 48, 3)
    extra = {"classifier_activation": None} if include_top else {"pooling": "avg"}
    path, ref = tf_keras_file(tmp_path / "w.h5", ref_name, include_top, shape, **extra)
    ours = build_fresh(
        builder, weights=str(path), include_top=include_top, input_shape=shape, **extra
    )
    x = random_images((2, *shape)).astype("float32") - 127.0
    expected = ref(x, training=False).numpy()
    got = np.asarray(ours(x, training=False))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= TF_KERAS_TOLERANCE * max(1.0, np.abs(expected).max())


@pytest.mark.heavy
@pytest.mark.parametrize("fmt", ["weights.h5", "keras"])
@pytest.mark.parametrize("builder", [transfer.ResNet50, transfer.ResNet50V2])
def test_keras3_formats_round_trip(tmp_path, builder, fmt):
    source = randomize(builder(weights=None, include_top=False, input_shape=(48, 48, 3)), seed=2)
    path = tmp_path / f"model.{fmt}"
    source.save_weights(path) if fmt == "weights.h5" else source.save(path)
    loaded = builder(weights=str(path), include_top=False, input_shape=(48, 48, 3))
    for a, b in zip(loaded.weights, source.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


@pytest.mark.heavy
@pytest.mark.parametrize("fmt", ["weights.h5", "keras"])
def test_backbone_weights_taken_from_a_saved_classifier(tmp_path, fmt):
    backbone = randomize(
        transfer.ResNet50V2(weights=None, include_top=False, input_shape=(32, 32, 3)), seed=3
    )
    classifier = transfer.attach_head(backbone, 4, hidden_units=8)
    path = tmp_path / f"classifier.{fmt}"
    classifier.save_weights(path) if fmt == "weights.h5" else classifier.save(path)
    loaded = transfer.ResNet50V2(weights=str(path), include_top=False)
    for a, b in zip(loaded.weights, backbone.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_none_gives_fresh_initialisation():
    a = transfer.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    assert np.asarray(a.get_layer("conv1_bn").moving_variance).tolist() == [1.0] * 64


def _official_notop_file(directory, ref_name="ResNet50"):
    arch = transfer.get_architecture(50, "v1" if ref_name == "ResNet50" else "v2")
    name = pretrained.imagenet_checkpoint(arch, include_top=False).file
    path, _ = tf_keras_file(directory / name, ref_name, False, (32, 32, 3), seed=4)
    return arch, path


@pytest.mark.heavy
def test_imagenet_taken_from_keras_cache_without_network(keras_home, monkeypatch, no_network):
    arch, path = _official_notop_file(keras_home / "models")
    # The real file's MD5 cannot match a locally made one: point the table at ours.
    trust_notop_file(monkeypatch, arch, path)
    model = transfer.ResNet50(weights="imagenet", include_top=False, input_shape=(32, 32, 3))
    expected = tf_keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(32, 32, 3)
    )
    expected.load_weights(str(path))
    for a, b in zip(model.weights, expected.weights):
        np.testing.assert_array_equal(np.asarray(a), b.numpy())


@pytest.mark.heavy
@pytest.mark.parametrize("via", ["argument", "environment"])
def test_imagenet_taken_from_weights_dir(tmp_path, keras_home, monkeypatch, no_network, via):
    arch, path = _official_notop_file(tmp_path)
    trust_notop_file(monkeypatch, arch, path)
    kwargs = {}
    if via == "argument":
        kwargs["weights_dir"] = str(tmp_path)
    else:
        monkeypatch.setenv("TRANSFER_WEIGHTS_DIR", str(tmp_path))
    transfer.ResNet(50, "v1", weights="imagenet", include_top=False, **kwargs)


@pytest.mark.heavy
def test_weights_dir_file_with_wrong_hash_is_refused(tmp_path, keras_home, no_network):
    _official_notop_file(tmp_path)
    with pytest.raises(transfer.WeightsError, match="does not have the MD5 hash"):
        transfer.ResNet(50, "v1", weights="imagenet", include_top=False, weights_dir=tmp_path)


def test_imagenet_offline_fails_fast_and_says_what_to_do(keras_home, no_network):
    start = time.monotonic()
    with pytest.raises(transfer.WeightsError) as info:
        transfer.ResNet101V2(weights="imagenet", include_top=False)
    assert time.monotonic() - start < 10
    message = str(info.value)
    assert "resnet101v2_weights_tf_dim_ordering_tf_kernels_notop.h5 is not available" in message
    assert str(keras_home / "models") in message
    assert "weights_dir=DIR" in message and "TRANSFER_WEIGHTS_DIR" in message
    assert "weights=PATH" in message


@pytest.fixture
def resnet50_top_file(tmp_path):
    return tf_keras_file(tmp_path / "resnet50_top.h5", "ResNet50", True, (32, 32, 3))[0]


@pytest.mark.heavy
@pytest.mark.parametrize(
    "ref_name,include_top,builder,message",
    [
        (
            "ResNet101",
            False,
            transfer.ResNet50,
            "holds weights for ResNet101, but the model is ResNet50",
        ),
        (
            "ResNet50V2",
            False,
            transfer.ResNet50,
            "holds weights for ResNet50V2, but the model is ResNet50",
        ),
        (
            "ResNet50",
            False,
            transfer.ResNet152V2,
            "holds weights for ResNet50, but the model is ResNet152V2",
        ),
    ],
)
def test_other_architecture_is_named(tmp_path, ref_name, include_top, builder, message):
    path, _ = tf_keras_file(tmp_path / "w.h5", ref_name, include_top, (32, 32, 3))
    with pytest.raises(transfer.WeightsError, match=message):
        builder(weights=str(path), include_top=False)


@pytest.mark.heavy
def test_other_architecture_is_named_for_keras3_files(tmp_path):
    path = tmp_path / "r101.weights.h5"
    transfer.ResNet101(weights=None, include_top=False).save_weights(path)
    with pytest.raises(
        transfer.WeightsError, match="holds weights for ResNet101, but the model is ResNet50"
    ):
        transfer.ResNet50(weights=str(path), include_top=False)


@pytest.mark.heavy
def test_top_file_into_model_without_top(resnet50_top_file):
    with pytest.raises(
        transfer.WeightsError, match="with its classifier .*1000 classes.*but the model has no top"
    ):
        transfer.ResNet50(weights=str(resnet50_top_file), include_top=False)


@pytest.mark.heavy
def test_notop_file_into_model_with_top(tmp_path):
    path, _ = tf_keras_file(tmp_path / "notop.h5", "ResNet50", False, (32, 32, 3))
    with pytest.raises(transfer.WeightsError, match="without a classifier \\(a notop file\\)"):
        transfer.ResNet50(weights=str(path), input_shape=(32, 32, 3))


@pytest.mark.heavy
def test_top_file_with_other_class_count_loads_backbone_and_says_so(resnet50_top_file, caplog):
    reference = tf_keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3))
    reference.load_weights(str(resnet50_top_file))
    with caplog.at_level(logging.WARNING, logger="transfer"):
        model = transfer.ResNet50(
            weights=str(resnet50_top_file), input_shape=(32, 32, 3), classes=7
        )
    assert (
        "Skipped the classifier of resnet50_top.h5: it has 1000 classes and the model 7"
        in caplog.text
    )
    np.testing.assert_array_equal(
        np.asarray(model.get_layer("conv5_block3_3_conv").kernel),
        reference.get_layer("conv5_block3_3_conv").kernel.numpy(),
    )
    assert model.get_layer("predictions").kernel.shape == (2048, 7)


@pytest.mark.heavy
def test_truncated_file(resnet50_top_file, tmp_path):
    data = resnet50_top_file.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(transfer.WeightsError, match="truncated or corrupt|not a weights file"):
        transfer.ResNet50(weights=str(truncated), input_shape=(32, 32, 3))


def test_not_hdf5(tmp_path):
    path = tmp_path / "weights.h5"
    path.write_text("these are not weights\n")
    with pytest.raises(
        transfer.WeightsError,
        match="is not a weights file: expected HDF5 .*, a .keras archive, or a PyTorch checkpoint",
    ):
        transfer.ResNet50(weights=str(path), include_top=False)


def test_zip_that_is_not_a_keras_archive(tmp_path):
    import zipfile

    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(transfer.WeightsError, match="not a .keras model archive"):
        transfer.ResNet50(weights=str(path), include_top=False)


@pytest.mark.heavy
def test_load_weights_into_existing_classifier(tmp_path):
    path, ref = tf_keras_file(tmp_path / "notop.h5", "ResNet50V2", False, (32, 32, 3))
    classifier = transfer.build_classifier(3, depth=50, version="v2", weights=None, image_size=32)
    transfer.load_weights(classifier, str(path))
    backbone = transfer.find_backbone(classifier)
    np.testing.assert_array_equal(
        np.asarray(backbone.get_layer("post_bn").moving_mean),
        ref.get_layer("post_bn").moving_mean.numpy(),
    )


def test_cli_weights_finds_the_file_or_explains(tmp_path, keras_home, no_network, monkeypatch):
    from click.testing import CliRunner

    from transfer.cli import cli

    result = CliRunner().invoke(cli, ["weights", "--depth", "50"])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].startswith(
        "Error: ImageNet weights file resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 "
        "is not available"
    )
    arch, path = _official_notop_file(tmp_path)
    trust_notop_file(monkeypatch, arch, path)
    result = CliRunner().invoke(cli, ["weights", "--depth", "50", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(path)


@pytest.mark.heavy
@pytest.mark.parametrize(
    "builder,ref_name", [(transfer.ResNet50, "ResNet50"), (transfer.ResNet50V2, "ResNet50V2")]
)
def test_written_notop_file_loads_like_the_official_one(tmp_path, builder, ref_name):
    """Our H5 writer's file is read by tf-keras, keras.applications and transfer alike."""
    shape = (32, 32, 3)
    ours = randomize(
        build_fresh(builder, weights=None, include_top=False, input_shape=shape, pooling="avg"),
        seed=5,
    )
    path = formats.write_legacy_h5(ours, tmp_path / "source_notop.h5")
    assert formats.read_weights_file(path).format == "legacy-h5"
    x = random_images((2, *shape), seed=1).astype("float32") - 127.0
    expected = np.asarray(ours(x, training=False))
    readers = [
        getattr(tf_keras.applications, ref_name)(
            weights=str(path), include_top=False, input_shape=shape, pooling="avg"
        ),
        getattr(keras.applications, ref_name)(
            weights=str(path), include_top=False, input_shape=shape, pooling="avg"
        ),
        build_fresh(
            builder, weights=str(path), include_top=False, input_shape=shape, pooling="avg"
        ),
    ]
    for reader in readers:
        got = np.asarray(reader(x, training=False))
        assert np.abs(got - expected).max() <= TF_KERAS_TOLERANCE * max(1.0, np.abs(expected).max())


def test_written_top_file_needs_a_classifier(tmp_path):
    backbone = build_fresh(
        transfer.ResNet50, weights=None, include_top=False, input_shape=(32, 32, 3)
    )
    with pytest.raises(transfer.InvalidArgumentError, match="without the top"):
        formats.write_legacy_h5(backbone, tmp_path / "top.h5", include_top=True)
