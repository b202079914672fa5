"""scripts/demo without the ImageNet weights: it fine-tunes the stand-in backbone in
data/standin/ (made by scripts/make_standin), not a randomly initialised ResNet50 whose
phase 2 only shows fine-tuning failing."""

import csv
import shlex
from pathlib import Path

import h5py
import numpy as np
import pytest

import transfer
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent


def offline_demo_arguments():
    """The arguments of the demo's `transfer finetune` when the ImageNet weights cannot
    be fetched (the branch after `else`), without the script's own variables."""
    script = (ROOT / "scripts" / "demo").read_text()
    branch = script.split("\nelse\n", 1)[1].split("\nfi\n", 1)[0]
    command = branch[branch.index(".venv/bin/transfer finetune") :].replace("\\\n", " ")
    words = shlex.split(command.splitlines()[0])[2:]  # after `.venv/bin/transfer finetune`
    return [w for w in words if "$" not in w and w not in ("--out", "--overwrite")]


def option(arguments, name):
    return arguments[arguments.index(name) + 1]


def test_the_offline_demo_starts_from_the_trained_standin_backbone():
    arguments = offline_demo_arguments()
    assert option(arguments, "--weights") != "none"
    standin = ROOT / option(arguments, "--weights")
    assert standin.is_file() and standin.stat().st_size < 8 * 2**20  # small enough to ship
    model = transfer.build_classifier(
        10,
        arch=option(arguments, "--arch"),
        weights=str(standin),
        image_size=int(option(arguments, "--image-size")),
    )
    loaded = {float(np.sum(np.abs(w))) for w in model.get_weights()}
    with h5py.File(standin, "r") as f:
        stored = []
        f.visit(lambda k: stored.append(f[k][()]) if isinstance(f[k], h5py.Dataset) else None)
    # Every array of the file is in the model: the run starts from the stand-in's
    # training, not from random initialisation.
    assert len(stored) > 100
    missing = [a.shape for a in stored if float(np.sum(np.abs(a))) not in loaded]
    assert not missing


@pytest.mark.heavy
def test_the_offline_demo_shows_phase_two_learning(tmp_path):
    """The demo's own command on the sample: phase 2's loss stays in the range of a
    working fine-tune (random initialisation reached 23) and its validation accuracy
    is far above chance."""
    result = run_cli(
        "finetune", *offline_demo_arguments(), "--out", tmp_path / "demo", "--no-report"
    )
    assert result.exit_code == 0, result.output
    with open(tmp_path / "demo" / "history.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["phase"] == "fine-tune"]
    assert rows
    assert max(float(r["loss"]) for r in rows) < 3.0
    assert max(float(r["val_accuracy"]) for r in rows) > 0.5
