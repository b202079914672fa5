"""Runs you can reproduce, compare and track: a run repeated from its own config.json
gets the same metrics, and changed data is named; `transfer runs` lists and compares
real run directories (older and killed ones too); MLflow tracking against a real
MLflow server that the test starts on 127.0.0.1 with a SQLite store (no mocks), and a
run that completes with that server stopped.

One module fixture makes every run, in order, and asks the server what it holds
before stopping it; the tests read what it gathered."""

import csv
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TINY_FLAGS, make_image_folder, run_cli
from transfer.commands.runs import list_runs
from transfer.errors import RunFailedError
from transfer.runs import RUNNING, RunPaths
from transfer.track import tracker
from transfer.train.options import resolve_options
from transfer.train.run import Run

HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_mlflow = pytest.mark.skipif(not HAVE_MLFLOW, reason="the mlflow extra is not installed")
SERVER_START_SECONDS = 180  # on a busy 2-core machine the server takes a while to import
# A short phase 2 (both phases have epochs) and the report: what tracking sends.
PHASE_TWO = ["--fine-tune-from", "conv5", "--fine-tune-epochs", 1, "--augment", "none"]
TIMING_COLUMNS = ("elapsed_seconds", "epoch_seconds", "step_seconds")


class MlflowServer:
    """`mlflow server` on a free port of 127.0.0.1, SQLite backend store, artifacts
    served from a folder: started at once, waited for when first needed."""

    def __init__(self, root):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.uri = f"http://127.0.0.1:{port}"
        self.log = root / "server.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlflow",
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{root / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(root / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                # MLflow 3's job runner is not needed, and costs a second process.
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its workers go with it in stop()
            )

    def wait(self):
        deadline = time.monotonic() + SERVER_START_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        pytest.fail(f"the MLflow server did not start: {self.log.read_text()[-3000:]}")

    def stop(self):
        """Gone at once, as a server that crashed or was shut down is (a graceful stop
        waits seconds for the client's idle connections)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Project:
    data: Path
    runs: Path
    results: dict  # run name -> click's Result of its `transfer finetune`
    tracked: dict = field(default_factory=dict)  # what the server held, per run name
    tracking_uri: str = None


def finetune(project, name, *args):
    result = run_cli("finetune", "--out", project.runs / name, *args)
    project.results[name] = result
    return result


def read(run, name):
    return json.loads((run / name).read_text())


def history(run):
    """history.csv's rows, without the columns of wall time."""
    with open(run / "history.csv") as f:
        return [
            {k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in csv.DictReader(f)
        ]


def what_the_server_holds(uri, run_dir, downloads):
    """The MLflow run of `run_dir`, as the server's REST API gives it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("transfer")
    [run] = client.search_runs(
        [experiment.experiment_id], f"tags.`transfer.run_dir` = '{run_dir.resolve()}'"
    )
    run_id = run.info.run_id
    names = {m for m in run.data.metrics if "/" not in m and not m.endswith("_seconds")}
    return {
        "status": run.info.status,
        "name": run.info.run_name,
        "params": run.data.params,
        "tags": run.data.tags,
        "metrics": run.data.metrics,
        "history": {
            name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)]
            for name in names
        },
        "artifacts": sorted(a.path for a in client.list_artifacts(run_id)),
        "report": Path(client.download_artifacts(run_id, "report.html", str(downloads)))
        if run.info.status == "FINISHED"
        else None,
    }


# Why a run stops -> the exception that stops it (`finetune` hands it to Run.record_stop,
# then to the tracker).
STOPS = {"interrupted": KeyboardInterrupt(), "failed": RunFailedError("No space left on device.")}


def stop_a_tracked_run(source, folder, uri):
    """A run with `source`'s options, tracked at `uri` from its start, stopped as
    `folder`'s name says, as `finetune` stops one (record_stop, then the tracker)."""
    import tensorflow as tf

    folder.mkdir()
    ended = ("kept", "timings", "resumed", "weights_used")  # what a run's end adds
    config = {k: v for k, v in read(source, "config.json").items() if k not in ended}
    config["status"] = RUNNING
    (folder / "config.json").write_text(json.dumps(config))
    run = Run(resolve_options(**config["options"]), RunPaths(folder), tf.distribute.get_strategy())
    run.config = config
    tracking = tracker("mlflow", uri)
    tracking.start(run)
    run.record_stop(STOPS[folder.name])
    tracking.stop(run)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow")) if HAVE_MLFLOW else None
    try:
        data = make_image_folder(root / "images", {"cat": 6, "dog": 6}, size=(32, 32))
        project = Project(data, root / "runs", {})
        a_config = project.runs / "a" / "config.json"
        assert finetune(project, "a", "--data", data, *TINY_FLAGS).exit_code == 0
        # run a again from its own record (report.html is not an option: left out)
        assert finetune(project, "b", "--config", a_config, "--no-report").exit_code == 0
        if server is not None:
            server.wait()
            project.tracking_uri = server.uri
            track = ["--track", "mlflow", "--tracking-uri", server.uri]
            tracked = finetune(
                project, "tracked", "--data", data, *TINY_FLAGS, *PHASE_TWO, "--report", *track
            )
            assert tracked.exit_code == 0, tracked.output
            for reason in STOPS:  # two runs that stop as they start: no training needed
                stop_a_tracked_run(project.runs / "a", project.runs / reason, server.uri)
            downloads = root / "downloads"
            project.tracked = {
                name: what_the_server_holds(server.uri, project.runs / name, downloads / name)
                for name in ("tracked", *STOPS)
            }
            server.stop()
        # The data changes (a file touched), and a flag given: then run a's config again,
        # tracked at the server that is no longer there.
        touched = next((data / "cat").iterdir())
        os.utime(touched, (time.time() + 10, time.time() + 10))
        stopped = track if server is not None else []
        changed = finetune(project, "c", "--config", a_config, "--seed", 7, "--no-report", *stopped)
        assert changed.exit_code == 0, changed.output
        return project
    finally:
        if server is not None:
            server.stop()


# ---------------------------------------------------------------- config files


def test_a_run_repeated_from_its_config_json_gets_the_same_metrics(project):
    a, b = project.runs / "a", project.runs / "b"
    first, again = read(a, "config.json"), read(b, "config.json")
    assert again["options"] == first["options"]
    assert again["dataset"]["fingerprint"] == first["dataset"]["fingerprint"]
    assert history(b) == history(a) and len(history(a)) == 1
    assert read(b, "metrics.json")["val"] == read(a, "metrics.json")["val"]
    assert f"Repeating the run in {a}: its options and seed, on the same data" in (
        project.results["b"].stderr
    )
    assert "has changed" not in project.results["b"].stderr


def test_flags_win_over_a_runs_config_and_changed_data_is_named(project):
    a, c = read(project.runs / "a", "config.json"), read(project.runs / "c", "config.json")
    assert c["options"] == {**a["options"], "seed": 7}
    assert c["dataset"]["fingerprint"] != a["dataset"]["fingerprint"]
    assert (
        f"Warning: The data has changed since the run in {project.runs / 'a'}: its images, "
        "splits or classes differ" in project.results["c"].stderr
    )


# ---------------------------------------------------------------- transfer runs


def test_runs_lists_every_run_directory_with_its_status_and_scores(project):
    result = run_cli("runs", project.runs)
    assert result.exit_code == 0, result.output
    header, *lines = result.stdout.splitlines()
    assert header.split() == [
        "run", "status", "started", "data", "backbone", "weights", "size", "val", "acc",
        "test", "acc", "kept", "seconds",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines}
    expected = {"a", "b", "c"} | ({"tracked", *STOPS} if HAVE_MLFLOW else set())
    assert set(rows) == expected
    a = read(project.runs / "a", "metrics.json")
    assert rows["a"][1] == "complete" and f"{a['val']['accuracy']:.4f}" in rows["a"]
    assert rows["a"][5:8] == ["resnet50", "none", "32"]
    if HAVE_MLFLOW:
        assert rows["failed"][1] == "failed" and rows["interrupted"][1] == "interrupted"
        assert rows["failed"][-4:] == ["-", "-", "-", "-"]  # no scores, phase or time
    listed = json.loads(run_cli("runs", "list", project.runs, "--format", "json").stdout)
    assert listed == list_runs(project.runs)
    by_score = [row["val_accuracy"] for row in list_runs(project.runs, sort="val_accuracy")]
    known = [score for score in by_score if score is not None]
    assert by_score == sorted(known, reverse=True) + [None] * (len(by_score) - len(known))
    table = list(
        csv.DictReader(io.StringIO(run_cli("runs", project.runs, "--format", "csv").stdout))
    )
    assert {row["run"]: row["status"] for row in table}["c"] == "complete"


def test_older_runs_and_killed_runs_still_list(project, tmp_path):
    a = project.runs / "a"
    older = tmp_path / "older"
    shutil.copytree(a, older)
    config = read(older, "config.json")
    for name in ("status", "started", "working_dir", "kept", "timings", "replicas"):
        config.pop(name, None)
    (older / "config.json").write_text(json.dumps(config))
    killed = tmp_path / "killed"
    shutil.copytree(a, killed)
    (killed / "metrics.json").unlink()
    (killed / "config.json").write_text(json.dumps({**read(a, "config.json"), "status": "running"}))
    rows = {row["run"]: row for row in list_runs(tmp_path)}
    assert rows["older"]["status"] == "complete" and rows["older"]["started"] is None
    assert rows["older"]["val_accuracy"] == read(a, "metrics.json")["val"]["accuracy"]
    assert rows["killed"]["status"] == "interrupted" and rows["killed"]["val_accuracy"] is None
    shown = run_cli("runs", tmp_path)
    assert shown.exit_code == 0 and len(shown.stdout.splitlines()) == 3


def test_runs_compare_shows_the_options_that_differ_and_the_metrics_side_by_side(project):
    a, b, c = (project.runs / name for name in "abc")
    fingerprint = {run: read(run, "config.json")["dataset"]["fingerprint"] for run in (a, c)}
    metrics = {run: read(run, "metrics.json") for run in (a, b, c)}
    compared = json.loads(run_cli("runs", "compare", a, c, "--format", "json").stdout)
    assert compared["runs"] == [str(a), str(c)]
    assert compared["options"] == {
        "data fingerprint": [fingerprint[a], fingerprint[c]],
        "seed": [42, 7],
    }
    assert compared["metrics"]["val accuracy"] == [metrics[r]["val"]["accuracy"] for r in (a, c)]
    assert compared["metrics"]["kept"] == ["head", "head"]
    assert "test accuracy" not in compared["metrics"]  # no run has a test split

    table = run_cli("runs", "compare", a, b, c)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    assert lines[0].split() == [str(a), str(b), str(c)]
    assert lines[1].split() == ["data", "fingerprint", *[fingerprint[r] for r in (a, a, c)]]
    assert lines[2].split() == ["seed", "42", "42", "7"]
    log_loss = [f"{metrics[r]['val']['log_loss']:.4f}" for r in (a, b, c)]
    assert ["val", "log", "loss", *log_loss] in [line.split() for line in lines]
    same = run_cli("runs", "compare", a, b)
    assert same.stdout.splitlines()[1].strip() == "(no option differs)"


@pytest.mark.parametrize(
    "args, error",
    [
        (["compare", "a"], "Error: Name two runs or more to compare."),
        (["compare", "a", "nowhere"], "Error: nowhere is not a run directory (no config.json)."),
        (["nowhere"], "Error: nowhere is not a folder of runs."),
        (["--sort", "size"], "Error: Unknown sort column: 'size'. Expected one of run, status"),
    ],
)
def test_runs_refuses_what_is_not_a_run_in_one_line(project, monkeypatch, args, error):
    monkeypatch.chdir(project.runs)
    result = run_cli("runs", *args)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()[-1:]
    assert line.startswith(error), result.stderr


# ---------------------------------------------------------------- MLflow


@needs_mlflow
def test_mlflow_gets_the_options_every_epoch_the_results_and_the_files(project):
    run_dir = project.runs / "tracked"
    held, config = project.tracked["tracked"], read(run_dir, "config.json")
    metrics = read(run_dir, "metrics.json")
    assert (held["status"], held["name"]) == ("FINISHED", "tracked")
    assert held["params"] == {
        **{k: v if isinstance(v, str) else json.dumps(v) for k, v in config["options"].items()},
        "data": str(project.data),
        "data_fingerprint": config["dataset"]["fingerprint"],
    }
    # every epoch of both phases, at its step of the run; each phase's steps a tag
    rows = history(run_dir)
    assert [row["phase"] for row in rows] == ["head", "fine-tune"]
    assert held["history"]["loss"] == [
        (1, pytest.approx(float(rows[0]["loss"]))),
        (2, pytest.approx(float(rows[1]["loss"]))),
    ]
    assert [step for step, _ in held["history"]["val_accuracy"]] == [1, 2]
    assert held["tags"]["transfer.phase.head"] == "steps 1-1"
    assert held["tags"]["transfer.phase.fine-tune"] == "steps 2-2"
    assert held["metrics"]["final/val_accuracy"] == pytest.approx(metrics["val"]["accuracy"])
    assert held["metrics"]["total_seconds"] == pytest.approx(metrics["timings"]["total_seconds"])
    assert held["tags"]["transfer.status"] == "complete"
    assert held["tags"]["transfer.kept"] == metrics["kept"]["phase"]
    assert {"report.html", "model.keras", "training_curves.png", "confusion_matrix.png",
            "config.json", "metrics.json", "history.csv"} <= set(held["artifacts"])  # fmt: skip
    assert held["report"].read_bytes() == (run_dir / "report.html").read_bytes()


@needs_mlflow
@pytest.mark.parametrize("name, status", [("failed", "FAILED"), ("interrupted", "KILLED")])
def test_a_failed_or_interrupted_run_is_marked_so_in_mlflow(project, name, status):
    held, config = project.tracked[name], read(project.runs / name, "config.json")
    assert config["status"] == name
    assert held["status"] == status and held["tags"]["transfer.status"] == name
    assert held["tags"]["transfer.reason"] == config["reason"]
    assert held["params"]["seed"] == "42" and held["name"] == name


@needs_mlflow
def test_a_tracking_server_that_is_down_costs_a_warning_never_the_run(project):
    result = project.results["c"]
    assert result.exit_code == 0
    warnings = [line for line in result.stderr.splitlines() if "MLflow" in line]
    assert len(warnings) == 1, result.stderr
    assert warnings[0].startswith(
        f"Warning: MLflow tracking at {project.tracking_uri} failed at the start ("
    )
    assert warnings[0].endswith("the run goes on untracked; its run directory holds everything.")
    assert read(project.runs / "c", "config.json")["status"] == "complete"
