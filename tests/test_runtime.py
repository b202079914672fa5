"""The runtime: the compiled inference path, mixed precision and XLA on a CPU, oneDNN
turned on at import."""

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner

import transfer
from tests.conftest import random_images, randomize
from transfer.cli import cli
from transfer.commands.finetune import finetune
from transfer.runtime import run_inference


@pytest.mark.heavy
@pytest.mark.parametrize("jit_compile", [True, False])
def test_inference_path_equals_predict(jit_compile):
    model = transfer.attach_head(
        randomize(transfer.ResNet50V2(weights=None, include_top=False, input_shape=(32, 32, 3))), 4
    )
    images = np.random.default_rng(1).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    expected = model.predict(images, verbose=0)
    got = run_inference(
        model, tf.data.Dataset.from_tensor_slices(images).batch(2), jit_compile=jit_compile
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.heavy
def test_mixed_precision_on_cpu_says_what_it_does_and_jit_off_trains(image_folder, tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--no-report",
            "--data",
            str(image_folder),
            "--weights",
            "none",
            "--out",
            str(tmp_path / "run"),
            "--image-size",
            "32",
            "--head-epochs",
            "1",
            "--fine-tune-from",
            "none",
            "--mixed-precision",
            "--jit-compile",
            "off",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "Warning: --mixed-precision: no GPU here, and a CPU emulates float16 more slowly "
        "than it computes float32, so this run stays in float32."
    ) in result.output
    bad = CliRunner().invoke(
        cli,
        ["finetune", "--data", str(image_folder), "--weights", "none", "--jit-compile", "maybe"],
    )
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1] == (
        "Error: Unknown jit_compile: 'maybe'. Expected one of auto, on, off."
    )


@pytest.mark.heavy
def test_jit_compile_on_trains_with_xla_and_auto_does_not_on_cpu(image_folder, tmp_path):
    """`on` trains with XLA-compiled steps (batch 7 leaves a partial batch, which
    XLA training drops); `auto` is Keras' choice, no XLA on a CPU. The run records which."""
    runs = {
        mode: finetune(
            image_folder,
            report=False,
            out=tmp_path / mode,
            weights=None,
            image_size=32,
            batch_size=7,
            head_epochs=1,
            fine_tune_from="none",
            early_stopping_patience=0,
            jit_compile=mode,
            cache_dir=str(tmp_path / "cache"),
        )
        for mode in ("on", "auto")
    }
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
    code = (
        "import transfer\n"
        "from tensorflow.python.util import _pywrap_util_port\n"
        "print(_pywrap_util_port.IsMklEnabled())\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert output.strip().splitlines()[-1] == str(enabled)


@pytest.mark.heavy
def test_tta_averages_each_image_with_its_mirror():
    import tensorflow as tf

    from transfer.runtime import run_inference

    model = transfer.build_classifier(3, weights=None, image_size=32)
    images = random_images((6, 32, 32, 3)).astype("float32")
    batches = tf.data.Dataset.from_tensor_slices(images).batch(4)
    plain = np.asarray(model(images))
    mirrored = np.asarray(model(images[:, :, ::-1]))
    np.testing.assert_allclose(
        run_inference(model, batches, tta=True), (plain + mirrored) / 2, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(run_inference(model, batches), plain, rtol=1e-5, atol=1e-6)
