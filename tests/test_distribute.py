"""tf.distribute (MirroredStrategy on 2 logical CPUs, MultiWorkerMirroredStrategy with
two local worker processes) and resuming a killed run, all on CPU, in subprocesses."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

import transfer
from tests.conftest import make_image_folder, randomize
from transfer.cli import cli

ROOT = Path(__file__).resolve().parent.parent
SMALL = [
    "--no-report",
    "--image-size",
    "32",
    "--batch-size",
    "8",
    "--early-stopping",
    "0",
    "--dropout",
    "0",
    "--augment",
    "none",
]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", **extra)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _weights(path):
    model = keras.models.load_model(path, safe_mode=True)
    return {w.path: np.array(w) for w in model.weights}


@pytest.fixture
def backbone_file(tmp_path):
    path = tmp_path / "backbone.weights.h5"
    randomize(transfer.ResNet50(weights=None, include_top=False), seed=8).save_weights(path)
    return path


# Two minutes; the default run keeps two replicas in the multi-worker test below.
@pytest.mark.slow
def test_mirrored_on_two_cpus_equals_one_device(tmp_path, backbone_file):
    # 16 training images: whole batches of 8, which both strategies see alike.
    image_folder = tmp_path / "images"
    make_image_folder(image_folder / "train", {"a": 8, "b": 8})
    make_image_folder(image_folder / "val", {"a": 2, "b": 1})
    script = f"""
import logging
logging.basicConfig(level=logging.INFO)
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from transfer.commands.finetune import finetune
for strategy in ("one", "mirrored"):
    result = finetune({str(image_folder)!r}, report=False, out={str(tmp_path)!r} + "/" + strategy,
                      weights={str(backbone_file)!r}, image_size=32, batch_size=8,
                      head_epochs=2, fine_tune_from="conv5", fine_tune_epochs=1, dropout=0.0,
                      augment="none", early_stopping_patience=0, strategy=strategy)
    print(strategy, result.metrics["val"]["accuracy"], flush=True)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Training on 2 replicas (MirroredStrategy)" in done.stderr
    one, mirrored = (
        _weights(tmp_path / "one" / "model.keras"),
        _weights(tmp_path / "mirrored" / "model.keras"),
    )
    assert one.keys() == mirrored.keys()
    changed = 0
    for path, value in one.items():
        np.testing.assert_allclose(mirrored[path], value, rtol=1e-4, atol=1e-5, err_msg=path)
        changed += "conv5" in path
    assert changed


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.heavy
def test_multiworker_on_localhost_only_the_chief_writes(tmp_path, image_folder):
    """Two local workers: each computes the frozen backbone's features of half of the
    images, both get them all (equal to one process' computation of them), and only
    the chief writes the run and the feature cache."""
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    out = tmp_path / "run"
    processes = []
    for index in range(2):
        config = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        )
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "transfer",
                    "finetune",
                    "--data",
                    str(image_folder),
                    "--weights",
                    "none",
                    "--out",
                    str(out),
                    "--strategy",
                    "multiworker",
                    "--head-epochs",
                    "2",
                    "--fine-tune-from",
                    "none",
                    *SMALL,
                ],
                env=_env(TF_CONFIG=config),
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    for p, output in zip(processes, outputs):
        assert p.returncode == 0, output[-3000:]
    assert "Training on 2 replicas" in outputs[0], outputs[0][-3000:]
    assert f"run directory: {out}" in outputs[0]
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "complete" and config["replicas"] == 2
    assert (out / "model.keras").exists()
    # No stray worker output beside the run (the images and the feature cache are the test's).
    assert {p.name for p in tmp_path.iterdir()} - {"images", "feature-cache"} == {"run"}
    # Each pass over a split's images: worker 1 its first half, worker 2 the rest.
    splits = config["dataset"]["splits"]
    shares = [
        [tuple(map(int, m)) for m in re.findall(r"Features of images (\d+) to (\d+) of (\d+)", o)]
        for o in outputs
    ]
    assert sorted(total for *_, total in shares[0]) == sorted([splits["train"], splits["val"]])
    for first, second in zip(shares[0], shares[1]):
        assert first[0] == 1 and second[0] == first[1] + 1 and second[1] == second[2] == first[2]
    computed = json.loads((out / "metrics.json").read_text())["features_computed"]
    assert computed == {"workers": 2, "images_this_worker": sum(s[1] for s in shares[0])}
    assert computed["images_this_worker"] <= (splits["train"] + splits["val"] + 2) // 2
    # The gathered features, which the chief cached, are one process' features of them.
    from transfer.data.pipeline import images_only
    from transfer.data.sources import load_folder
    from transfer.models.heads import pooled_features

    model = keras.models.load_model(out / "model.keras", safe_mode=True)  # a frozen backbone
    extractor = pooled_features(model)
    cached = {np.load(f).shape[0]: np.load(f) for f in (tmp_path / "feature-cache").glob("*.npy")}
    for name, split in load_folder(image_folder).splits.items():
        expected = np.concatenate([extractor(x, training=False) for x in images_only(split, 32, 8)])
        np.testing.assert_allclose(cached[len(split)], expected, rtol=1e-4, atol=1e-4, err_msg=name)


def _finetune_command(folder, out, backbone_file, *extra):
    return [
        sys.executable,
        "-m",
        "transfer",
        "finetune",
        "--data",
        str(folder),
        "--weights",
        str(backbone_file),
        "--out",
        str(out),
        "--head-epochs",
        "2",
        "--fine-tune-from",
        "conv5",
        "--fine-tune-epochs",
        "5",
        "--backup-interval",
        "0",
        "--no-futility-stop",  # phase 2 runs all its epochs, to be killed in one
        *SMALL,
        *extra,
    ]


@pytest.mark.heavy
def test_killed_run_resumes_to_the_same_result(tmp_path, image_folder, backbone_file):
    env = _env(TRANSFER_CACHE_DIR=str(tmp_path / "cache"))
    reference = subprocess.run(
        _finetune_command(image_folder, tmp_path / "straight", backbone_file),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]

    out = tmp_path / "interrupted"
    process = subprocess.Popen(
        _finetune_command(image_folder, out, backbone_file),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metadata = out / "checkpoints" / "backup-fine-tune" / "backup.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, "training ended before it could be interrupted"
    process.send_signal(signal.SIGKILL)  # as hard as a machine loss
    process.wait()
    assert not (out / "model.keras").exists()
    assert json.loads((out / "config.json").read_text())["status"] == "running"

    # In this process: the refusal comes before any training (a subprocess costs 10 s).
    refused = CliRunner().invoke(cli, _finetune_command(image_folder, out, backbone_file)[3:])
    assert refused.exit_code == 2 and "is not empty" in refused.output

    resumed = subprocess.run(
        _finetune_command(image_folder, out, backbone_file, "--resume"),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Phase 1 finished before the interruption" in resumed.stderr
    assert "Resuming fine-tune from epoch" in resumed.stderr
    straight, again = _weights(tmp_path / "straight" / "model.keras"), _weights(out / "model.keras")
    for path, value in straight.items():
        np.testing.assert_allclose(again[path], value, rtol=1e-5, atol=1e-6, err_msg=path)
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "complete" and config["resumed"] is True
    assert not (out / "checkpoints").exists()
    with open(out / "history.csv") as f:
        assert [line.split(",")[0] for line in f.read().split()[1:]] == ["head"] * 2 + [
            "fine-tune"
        ] * 5
