"""The speed features: the phase-1 feature cache (same head, reused across runs),
its memory-mapped form, the inference path, and the precision/XLA options."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import transfer
from tests.conftest import randomize
from transfer.cli import cli
from transfer.runtime import run_inference
from transfer.commands.finetune import finetune
from transfer.train.feature_cache import cache_key, compute_features, weights_identity


@pytest.fixture
def weights_file(tmp_path):
    backbone = randomize(transfer.ResNet50(weights=None, include_top=False), seed=3)
    path = tmp_path / "backbone.weights.h5"
    backbone.save_weights(path)
    return path


def _phase1(image_folder, tmp_path, weights_file, cache, name):
    return finetune(image_folder, report=False, out=tmp_path / name, weights=str(weights_file), image_size=32,
                    batch_size=8, head_epochs=3, fine_tune_from="none", cache_features=cache,
                    early_stopping_patience=0)


def test_cached_features_train_the_same_head_and_a_second_run_reuses_them(
        image_folder, tmp_path, weights_file, feature_cache_dir, caplog):
    """Same seed: the head trained on cached features equals the one trained through
    the frozen backbone (dropout included), within float tolerance."""
    cached = _phase1(image_folder, tmp_path, weights_file, True, "cached")
    files = sorted(feature_cache_dir.glob("*.npy"))
    assert len(files) == 2  # train and validation
    direct = _phase1(image_folder, tmp_path, weights_file, False, "direct")
    for a, b in zip(cached.model.get_layer("predictions").weights,
                    direct.model.get_layer("predictions").weights):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)  # seen: 4e-7
    np.testing.assert_allclose([r["loss"] for r in cached.history],
                               [r["loss"] for r in direct.history], rtol=1e-5)
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
    keys = {cache_key(weights_identity(str(w), 0), "resnet50", 32, "avg", paths)
            for w in (weights_file, tmp_path / "other.weights.h5")}
    assert len(keys) == 2


def test_features_too_large_for_memory_go_to_a_memory_mapped_file(tmp_path):
    extractor = transfer.feature_extractor(
        randomize(transfer.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))))
    images = tf.data.Dataset.from_tensor_slices(
        np.random.default_rng(0).uniform(0, 255, (10, 32, 32, 3)).astype("float32")).batch(4)
    in_memory = compute_features(extractor, images, 10, 2048)
    mapped = compute_features(extractor, images, 10, 2048, cache_dir=tmp_path, key="k",
                              memory_fraction=0.0)
    assert isinstance(mapped, np.memmap)
    assert (tmp_path / "k.npy").exists()
    np.testing.assert_allclose(np.asarray(mapped), in_memory, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("jit_compile", [True, False])
def test_inference_path_equals_predict(jit_compile):
    model = transfer.attach_head(randomize(transfer.ResNet50V2(
        weights=None, include_top=False, input_shape=(32, 32, 3))), 4)
    images = np.random.default_rng(1).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    got = run_inference(model, tf.data.Dataset.from_tensor_slices(images).batch(2),
                        jit_compile=jit_compile)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_mixed_precision_on_cpu_says_what_it_does_and_jit_off_trains(image_folder, tmp_path):
    result = CliRunner().invoke(cli, [
        "finetune", "--no-report", "--data", str(image_folder), "--weights", "none", "--out",
        str(tmp_path / "run"), "--image-size", "32", "--head-epochs", "1",
        "--fine-tune-from", "none", "--mixed-precision",
        "--jit-compile", "off"])
    assert result.exit_code == 0, result.output
    assert ("Warning: --mixed-precision: no GPU here, and a CPU emulates float16 more slowly "
            "than it computes float32, so this run stays in float32.") in result.output
    bad = CliRunner().invoke(cli, ["finetune", "--data", str(image_folder), "--weights", "none",
                                   "--jit-compile", "maybe"])
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1] == (
        "Error: Unknown jit_compile: 'maybe'. Expected one of auto, on, off.")


def test_jit_compile_on_trains_with_xla_and_auto_does_not_on_cpu(image_folder, tmp_path):
    """`on` trains with XLA-compiled steps (batch 7 leaves a partial batch, which
    XLA training drops); `auto` is Keras' choice, no XLA on a CPU. The run records which."""
    runs = {mode: finetune(image_folder, report=False, out=tmp_path / mode, weights=None, image_size=32,
                           batch_size=7, head_epochs=1, fine_tune_from="none",
                           early_stopping_patience=0, jit_compile=mode,
                           cache_dir=str(tmp_path / "cache"))
            for mode in ("on", "auto")}
    assert runs["on"].timings["head_xla"] is True
    assert runs["auto"].timings["head_xla"] is False
    for result in runs.values():
        assert [row["epoch"] for row in result.history] == [1]
        assert np.isfinite(result.history[0]["loss"])


@pytest.mark.parametrize("setting, enabled", [(None, True), ("0", False)])
def test_importing_transfer_turns_on_onednn_unless_told_not_to(setting, enabled):
    """TensorFlow leaves its oneDNN CPU kernels off on CPUs without AVX-512-class
    features; `transfer` turns them on before TensorFlow loads, and
    TF_ENABLE_ONEDNN_OPTS=0 keeps them off."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    code = ("import transfer\n"
            "from tensorflow.python.util import _pywrap_util_port\n"
            "print(_pywrap_util_port.IsMklEnabled())\n")
    output = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True).stdout
    assert output.strip().splitlines()[-1] == str(enabled)
