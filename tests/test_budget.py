"""A run planned to a deadline (--time-limit), presets, the futility stop of phase 2, and
the refusals that come before TensorFlow loads."""

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import transfer
from tests.conftest import make_image_folder
from transfer.cli import cli
from transfer.errors import InvalidArgumentError
from transfer.train import budget
from transfer.train.options import RECIPE_PRESETS, FinetuneOptions, resolve_options


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("90s", 90),
        ("10m", 600),
        ("2h", 7200),
        ("1h30m", 5400),
        ("45", 45),
        (12.5, 12.5),
        ("1.5m", 90),
    ],
)
def test_durations_read_as_people_write_them(text, seconds):
    assert budget.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "m10", "0s", "-5", "10m5"])
def test_a_bad_duration_names_the_value(text):
    with pytest.raises(InvalidArgumentError, match="time_limit"):
        budget.parse_duration(text)


def test_the_planned_cosine_is_the_cosine_and_follows_a_new_plan():
    from transfer.train.optim import WARMUP_FRACTION, warmup_cosine

    steps, epochs = 20, 5
    planned = budget.planned_cosine(1e-3, steps, epochs, WARMUP_FRACTION)
    reference = warmup_cosine(1e-3, steps * epochs, steps)
    for step in (0, 5, 10, 20, 50, 99, 100):
        assert float(planned(step)) == pytest.approx(float(reference(step)), abs=1e-9)
    planned.set_epochs(3)  # a slower phase than planned: the decay ends at epoch 3
    assert float(planned(3 * steps)) == pytest.approx(0.0, abs=1e-9)
    assert float(planned(2 * steps)) > 0.0


@pytest.mark.parametrize(
    "head, accuracies, left, stops",
    [
        (0.80, [0.50, 0.52], 3, True),  # far behind, creeping: cannot make it up
        (0.80, [0.50, 0.70], 3, False),  # catching up fast: could
        (0.80, [0.78, 0.79], 1, False),  # an image or two short, one epoch left
        (0.80, [0.30], 10, False),  # one epoch is too little to judge
        (0.80, [0.20, 0.10], 8, True),  # diverging
        (1.00, [0.67, 1.00], 6, True),  # phase 1 is right on every image: nothing to win
    ],
)
def test_phase_two_stops_only_when_it_cannot_plausibly_win(head, accuracies, left, stops):
    assert budget.cannot_win(head, accuracies, left, val_images=100, margin=1.0) is stops


def test_a_phase_two_that_did_not_run_keeps_phase_one():
    from transfer.train.selection import choose_phase

    head = {"accuracy": 0.8, "loss": 0.5, "correct": np.array([True, False])}
    kept = choose_phase(FinetuneOptions(), head, None)
    assert kept == {"phase": "head", "reason": "phase 2 did not run"}


def test_a_preset_fills_what_is_not_given_and_given_options_win():
    fast = resolve_options(preset="fast", weights=None)
    assert (fast.fine_tune_epochs, fast.augment) == (3, "flip")
    best = resolve_options(FinetuneOptions(fine_tune_epochs=7), preset="best", weights=None)
    assert best.fine_tune_epochs == 7 and best.augment == "strong" and best.ema
    assert resolve_options(preset="balanced", weights=None) == resolve_options(
        weights=None, preset="balanced"
    )
    assert set(RECIPE_PRESETS) == {"fast", "balanced", "best"}
    with pytest.raises(InvalidArgumentError, match="preset"):
        resolve_options(preset="fastest", weights=None)


def test_the_command_line_passes_only_the_options_given(monkeypatch):
    seen = {}

    def finetune(data, **kwargs):
        seen.update(kwargs)
        raise transfer.DataError("stop here")

    monkeypatch.setattr("transfer.commands.finetune.finetune", finetune)
    result = CliRunner().invoke(
        cli,
        [
            "finetune",
            "--data",
            "x",
            "--preset",
            "fast",
            "--fine-tune-epochs",
            "2",
            "--time-limit",
            "10m",
        ],
    )
    assert result.exit_code == 2, result.output
    assert seen["preset"] == "fast" and seen["fine_tune_epochs"] == 2
    assert seen["time_limit"] == "10m" and "augment" not in seen and "seed" not in seen


def test_missing_data_and_a_used_out_are_refused_before_tensorflow_loads(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("x")
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from transfer.cli import cli\n"
        f"a = CliRunner().invoke(cli, ['finetune', '--data', {str(tmp_path / 'nope')!r}])\n"
        f"b = CliRunner().invoke(cli, ['finetune', '--data', {str(tmp_path)!r}, "
        f"'--out', {str(used)!r}])\n"
        "print(a.exit_code, b.exit_code, 'tensorflow' in sys.modules)\n"
        "print(a.output.strip().splitlines()[-1]); print(b.output.strip().splitlines()[-1])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = done.stdout.splitlines()
    assert lines[0] == "2 2 False", done.stdout + done.stderr
    assert lines[1] == f"Error: --data {tmp_path / 'nope'} does not exist."
    assert "is not empty" in lines[2]


@pytest.mark.heavy
def test_a_limit_too_short_for_phase_one_is_refused_before_it_starts(tmp_path):
    data = make_image_folder(tmp_path / "images", {"cat": 6, "dog": 6}, size=(32, 32))
    out = tmp_path / "run"
    with pytest.raises(transfer.RunFailedError, match="too short: phase 1 needs about"):
        transfer.finetune(data, out=out, weights=None, image_size=32, time_limit="1s", report=False)
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "failed" and "time_limit" in config["reason"]
    assert not (out / "history.csv").exists()
    assert not list((out / "checkpoints").glob("*")) if (out / "checkpoints").exists() else True


@pytest.mark.heavy
def test_a_time_limited_run_plans_phase_two_and_ends_in_time(tmp_path):
    data = make_image_folder(tmp_path / "images", {"cat": 10, "dog": 10}, size=(32, 32))
    limit = 45.0
    result = transfer.finetune(
        data,
        out=tmp_path / "run",
        weights=None,
        image_size=32,
        batch_size=8,
        fine_tune_epochs=200,
        augment="none",
        early_stopping_patience=0,
        futility_stop=False,
        time_limit=limit,
        report=False,
    )
    plan = result.metrics["time_plan"]
    assert plan["time_limit_seconds"] == limit
    assert 1 <= plan["fine_tune_epochs_planned"] < 200
    assert plan["stopped"].startswith("the time limit")
    # Not timed tightly: the limit, 10% and the process's start-up.
    assert plan["spent_seconds"] <= 1.1 * limit + 10
    epochs = [row for row in result.history if row["phase"] == "fine-tune"]
    assert len(epochs) == plan["fine_tune_epochs_planned"]


@pytest.mark.heavy
def test_phase_two_that_cannot_win_stops_early_and_phase_one_is_kept(tmp_path, image_folder):
    # Phase 1 gets every validation image of the tinted classes right: phase 2 cannot
    # get clearly more right, and stops once it has been judged.
    result = transfer.finetune(
        image_folder,
        out=tmp_path / "run",
        weights=None,
        image_size=32,
        batch_size=8,
        head_epochs=3,
        head_learning_rate=1e-2,
        fine_tune_epochs=8,
        early_stopping_patience=0,
        augment="none",
        report=False,
    )
    assert (
        result.history[0]["val_accuracy"] == 1.0
        or result.metrics["kept"]["validation"]["head"]["accuracy"] == 1.0
    )
    kept = result.metrics["kept"]
    assert kept["phase"] == "head"
    assert "could not beat phase 1" in kept["fine_tune_stopped"]
    epochs = [row for row in result.history if row["phase"] == "fine-tune"]
    assert budget.MIN_EPOCHS_JUDGED <= len(epochs) < 8
    assert np.isfinite(result.metrics["val"]["accuracy"])
