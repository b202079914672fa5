"""`transfer tune`: phase 1 once for every trial, a search killed in a trial and
resumed, its files (table, plot, options, the best run), and bad search spaces."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import make_image_folder, run_cli
from transfer.config import apply_config
from transfer.train.options import FinetuneOptions, resolve_options
from transfer.train.search import PRUNER_STARTUP_TRIALS, RERUN_OF, pruner, trial_stops

optuna = pytest.importorskip("optuna", reason="the tune extra (optuna) is not installed")

# One phase-2 epoch a trial, on the frozen groups' cached outputs (augment none or
# flip); a batch larger than the training split: one traced step.
SPACE = """\
fine_tune_learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
fine_tune_from: [conv5]
augment: [none, flip]
fine_tune_epochs: [1]
"""
FLAGS = ["--weights", "none", "--image-size", 32, "--batch-size", 64, "--test-split", 0.2]
TRIALS = 2  # finished, after the first session's second trial is killed and run again


def _tune(data, out, cache, space, *extra):
    return ["tune", "--data", data, "--out", out, "--cache-dir", cache, "--space", space,
            "--trials", TRIALS, *FLAGS, *extra]  # fmt: skip


def _study(out):
    storage = f"sqlite:///{out / 'study.db'}"
    return optuna.load_study(study_name="transfer-tune", storage=storage).get_trials()


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A search killed (SIGKILL) in its second trial, then resumed in this process: three
    trials of one epoch, two finished."""
    root = tmp_path_factory.mktemp("tune")
    data = make_image_folder(root / "images", {"cat": 14, "dog": 14, "fox": 14}, size=(32, 32))
    out, cache, space = root / "search", root / "cache", root / "space.yaml"
    space.write_text(SPACE)
    command = [sys.executable, "-m", "transfer", *map(str, _tune(data, out, cache, space))]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = root / "first-session.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        # The second trial's phase 2 has begun (its TensorBoard folder): kill it there.
        second = out / "trials" / "1" / "logs" / "fine-tune"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and process.poll() is None and not second.exists():
            time.sleep(0.05)
        assert process.poll() is None, log.read_text()[-3000:]
        process.send_signal(signal.SIGKILL)  # as hard as a machine loss
        process.wait()
    first_session = log.read_text()
    before = _study(out)
    features = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    resumed = run_cli(*_tune(data, out, cache, space, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    return {
        "data": data,
        "out": out,
        "cache": cache,
        "first_session": first_session,
        "before": before,
        "features": features,
        "resumed": resumed,
    }


@pytest.mark.heavy
def test_phase_one_is_computed_once_for_every_trial(search):
    out, cache = search["out"], search["cache"]
    # The backbone's pass over the training and validation images wrote their features
    # to the cache before the first trial, and no trial of either session wrote them
    # again (the best run's end adds the test images').
    first_trial = (out / "trials" / "0" / "config.json").stat().st_mtime_ns
    written = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.npy")}
    assert written == search["features"]
    assert sum(mtime < first_trial for mtime in written.values()) == 2
    computing = "computing the frozen backbone's features once"
    assert search["first_session"].count(computing) == 1
    assert computing not in search["resumed"].stderr
    # Every trial of both sessions started from that one head.
    starts = "Phase 1: starting from the head in"
    assert search["first_session"].count(starts) == 2  # trial 0, and the killed trial 1
    assert search["resumed"].stderr.count(starts) == 1  # trial 1 again


@pytest.mark.heavy
def test_a_killed_search_resumes_where_it_was(search):
    before, after = search["before"], _study(search["out"])
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    assert after[0].params == before[0].params and after[0].value == before[0].value
    # The trial the kill stopped failed, and ran again with its options.
    assert after[1].state.name == "FAIL"
    rerun = next(t for t in after if t.user_attrs.get(RERUN_OF) == 1)
    assert rerun.params == before[1].params and rerun.state.name == "COMPLETE"
    assert [t.state.name for t in after].count("COMPLETE") == TRIALS
    assert (
        json.loads((search["out"] / "trials" / "1" / "config.json").read_text())["status"]
        == "interrupted"
    )
    # The first trial is the recipe as given.
    assert before[0].params["fine_tune_learning_rate"] == FinetuneOptions().fine_tune_learning_rate
    assert before[0].params["augment"] in ("none", "flip")  # "default" is not in the space


@pytest.mark.heavy
def test_the_search_writes_its_table_plot_options_and_best_run(search):
    out, after = search["out"], _study(search["out"])
    with open(out / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["number"]) for r in rows] == [t.number for t in after]
    assert [r["state"] for r in rows] == [t.state.name.lower() for t in after]
    assert {"validation_accuracy", "epochs", "seconds", "fine_tune_learning_rate"} <= set(rows[0])
    assert (out / "trials.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    best = max((t for t in after if t.value is not None), key=lambda t: (t.value, -t.number))
    config = json.loads((out / "best-config.json").read_text())
    assert set(config) == set(FinetuneOptions().as_dict())
    assert resolve_options(**config).as_dict() == config  # every option, resolved
    assert {k: config[k] for k in best.params} == best.params
    # finetune --config takes it as it is (transfer.config reads the file for finetune).
    _, _, taken = apply_config(out / "best-config.json", search["data"], {})
    assert resolve_options(**taken).as_dict() == config
    # best/ is the best trial's run directory, and only it holds a model and test scores.
    metrics = json.loads((out / "best" / "metrics.json").read_text())
    assert metrics["tune"]["trial"] == best.number and "test" in metrics
    assert (out / "best" / "model.keras").exists()
    for trial in after:
        folder = out / "trials" / str(trial.number)
        assert not (folder / "model.keras").exists()
        if trial.state.name == "COMPLETE":
            assert set(json.loads((folder / "metrics.json").read_text())) == {
                "trial", "kept", "timings", "phase_two"
            }  # fmt: skip
    assert json.loads((out / "best" / "config.json").read_text())["status"] == "complete"
    output = search["resumed"].stdout
    assert f"best: trial {best.number}" in output
    assert output.count("test, the chosen trial") == 1


def test_phase_ones_checkpoint_loads_into_a_new_model_with_its_standardisation(tmp_path):
    # Every trial builds its model and loads the head phase 1 saved: the head's
    # standardisation must apply phase 1's statistics, not its first ones.
    from transfer.io import load_weight_values, save_weight_values
    from transfer.models.heads import build_classifier, set_standardization

    first = build_classifier(3, weights=None, image_size=32, standardize=True)
    rng = np.random.default_rng(0)
    set_standardization(first, rng.normal(0, 3, 2048), rng.uniform(0.5, 4, 2048))
    save_weight_values(first, tmp_path / "after-head.weights.npz")
    second = build_classifier(3, weights=None, image_size=32, standardize=True)
    load_weight_values(second, tmp_path / "after-head.weights.npz")
    images = rng.integers(0, 256, (4, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(second(images), first(images), rtol=1e-5, atol=1e-6)


def test_the_pruner_spares_the_first_epoch_and_the_last_and_stops_a_trial_below_the_median():
    import keras

    study = optuna.create_study(direction="maximize", pruner=pruner())
    for _ in range(PRUNER_STARTUP_TRIALS):
        finished = study.ask()
        for epoch in (1, 2, 3):
            finished.report(0.8, epoch)
        study.tell(finished, 0.8)

    def epochs(accuracies, planned=3):
        """Keras' calls of a trial's phase 2 for epochs of these validation accuracies."""
        stops = trial_stops(study.ask())
        model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        model.stop_training = False  # as fit() starts it
        stops.set_model(model)
        stops.set_params({"epochs": planned})
        for epoch, accuracy in enumerate(accuracies):
            stops.on_epoch_begin(epoch)
            stops.on_epoch_end(epoch, {"val_accuracy": accuracy})
            if model.stop_training:
                return epoch + 1, stops.stopped
        return None, stops.stopped

    assert epochs([0.1]) == (None, None)  # the first epoch is the schedule's warmup
    stopped_at, why = epochs([0.1, 0.1, 0.1])
    assert stopped_at == 2 and why.startswith("pruned after epoch 2")
    assert epochs([0.1, 0.1], planned=2) == (None, None)  # its last epoch: it finishes
    assert epochs([0.9, 0.9, 0.9]) == (None, None)


BAD_SPACES = {
    "image_size: [32, 64]\n": "image_size: not a phase-2 option",
    "dropout_rate: [0.1]\n": "dropout_rate: not an option of finetune",
    "label_smoothing: {low: 0.0, high: 1.5}\n": "label_smoothing must be in [0, 1)",
    "fine_tune_epochs: {low: 5, high: 2}\n": "low (5) must be below high (2)",
    "augment: [none, wild]\n": "Unknown augment: 'wild'",
    "fine_tune_learning_rate: {low: 0, high: 1.0e-3, log: true}\n": "a log range needs low",
    "fine_tune_epochs: [two]\n": "'two' is not an int",
    "fine_tune_epochs: {low: 2, high: 10, by: 2}\n": "a range has low and high",
    "augment: [none\n": "is not YAML",
    "- augment\n": "must map option names",
}


@pytest.mark.parametrize("text", BAD_SPACES)
def test_a_bad_search_space_is_one_error_line(tmp_path, image_folder, text):
    space = tmp_path / "space.yaml"
    space.write_text(text)
    result = run_cli("tune", "--data", image_folder, "--out", tmp_path / "out", "--trials", 2,
                     "--space", space, "--weights", "none")  # fmt: skip
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and BAD_SPACES[text] in errors[0], result.stderr
    assert f"--space {space}" in errors[0]
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_a_search_needs_trials_or_a_time_limit(tmp_path, image_folder):
    result = run_cli("tune", "--data", image_folder, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "Error: Give --trials N, --time-limit DURATION or both." in result.stderr


def test_without_optuna_the_error_names_the_extra(tmp_path, image_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if it were not installed
    result = run_cli("tune", "--data", image_folder, "--out", tmp_path / "out", "--trials", 1)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1 and len(errors) == 1
    assert "pip install 'transfer-keras[tune]'" in errors[0]


def test_a_resume_with_nothing_to_resume_is_refused(tmp_path, image_folder):
    result = run_cli("tune", "--data", image_folder, "--out", tmp_path / "out", "--trials", 1,
                     "--resume")  # fmt: skip
    assert result.exit_code == 2 and "holds no search to resume" in result.stderr
