"""Experiment tracking: a run sent to MLflow as it goes, one MLflow run per `finetune`
run. Its resolved options and data are the MLflow run's parameters; every epoch of
both phases is a step of its metrics (the steps of each phase are tags); the final
validation and test metrics, the timings, and the run directory's files (report.html,
plots, model, config.json, metrics.json, history.csv) come at the end; an interrupted
or failed run is marked so.

Tracking never costs the run: a tracking server that is down or refuses is a warning,
and the run goes on untracked (its run directory holds everything).
"""

import contextlib
import json
import logging
import os
import time

from transfer.errors import InvalidArgumentError, first_line, unknown_choice
from transfer.export.optional import optional_module
from transfer.runs import (
    COMPLETE,
    FAILED,
    FINE_TUNE,
    HEAD,
    INTERRUPTED,
    RUN_FILES,
    read_config,
)
from transfer.version import __version__

logger = logging.getLogger("transfer")

MLFLOW = "mlflow"
TRACKERS = (MLFLOW,)  # finetune's track=
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
DEFAULT_EXPERIMENT = "transfer"
# MLflow retries a request 7 times over minutes by default: a server that does not
# answer would hold the run up at every call. Used where the environment sets none.
HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",  # stdout holds a command's results
}
# A run's status (config.json) -> the MLflow run's
MLFLOW_STATUS = {COMPLETE: "FINISHED", FAILED: "FAILED", INTERRUPTED: "KILLED"}
BATCH = 100  # parameters (and metrics, tags) per request: MLflow takes at most 100 params
TAG = "transfer."  # the prefix of our tags
NOT_METRICS = ("phase", "epoch")  # history columns that say which epoch a row is


def tracker(track=None, tracking_uri=None):
    """The tracker of a run: `track` "mlflow" (or a `tracking_uri` given alone) tracks
    in MLflow at `tracking_uri`, else $MLFLOW_TRACKING_URI, else MLflow's own local
    default in the current folder; None tracks nothing. MLflow missing is a
    MissingExtraError at once, before the run starts."""
    if track is None and tracking_uri is not None:
        track = MLFLOW
    if track is None or str(track).lower() == "none":
        return NoTracking()
    if str(track).lower() != MLFLOW:
        raise unknown_choice("tracker", track, TRACKERS)
    if tracking_uri is not None and not str(tracking_uri).strip():
        raise InvalidArgumentError("tracking_uri='' names no tracking server or folder.")
    return MlflowTracking(tracking_uri)


class NoTracking:
    """A run that is not tracked."""

    def start(self, run):
        pass

    def log_epochs(self, rows):
        pass

    def finish(self, run_dir, metrics):
        pass

    def stop(self, run):
        pass


class MlflowTracking(NoTracking):
    """A run tracked as one MLflow run, through MLflow's client (REST for a server).
    The first call that fails is a warning, and tracking stops there."""

    def __init__(self, uri=None):
        self.mlflow = optional_module("mlflow")
        optional_module("mlflow.entities")
        optional_module("mlflow.tracking")
        self.uri = uri  # None: $MLFLOW_TRACKING_URI, else MLflow's local default
        self.client = self.run_id = None
        self.steps = {}  # phase -> [first, last] run-wide step of its epochs logged
        self.logged = set()  # (phase, epoch) of the epochs logged

    # ---------------------------------------------------------------- the run's steps

    def start(self, run):
        """Open the MLflow run: the options and data as parameters, tags that say
        where the run is. `run` is a `Run` whose config.json is written."""
        config = run.config
        with self._calls("at the start"):
            self.uri = self.uri or self.mlflow.get_tracking_uri()
            self.client = self.mlflow.tracking.MlflowClient(tracking_uri=self.uri)
            experiment = self._experiment(os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT)
            entities = self.mlflow.entities
            created = self.client.create_run(
                experiment,
                run_name=run.paths.root.name,
                tags={
                    f"{TAG}run_dir": str(run.paths.root.resolve()),
                    f"{TAG}status": "running",
                    f"{TAG}version": __version__,
                },
            )
            self.run_id = created.info.run_id
            params = {
                **config["options"],
                "data": config["data"],
                "data_fingerprint": config["dataset"]["fingerprint"],
            }
            params = [entities.Param(k, _text(v)) for k, v in params.items()]
            for start in range(0, len(params), BATCH):
                self.client.log_batch(self.run_id, params=params[start : start + BATCH])
            logger.info(
                "Tracking in MLflow at %s: experiment %s, run %s.",
                self.uri,
                created.info.experiment_id,
                self.run_id,
            )

    def log_epochs(self, rows):
        """Each epoch in `rows` (history rows, both phases) not logged yet, at its
        run-wide step: phase 1's epochs first, phase 2's after them."""
        if self.run_id is None:
            return
        entities, now = self.mlflow.entities, int(time.time() * 1000)
        metrics = []
        for row in rows:
            key = (row["phase"], row["epoch"])
            if key in self.logged:
                continue
            self.logged.add(key)
            offset = self.steps.get(HEAD, [0, 0])[1] if row["phase"] == FINE_TUNE else 0
            step = offset + int(row["epoch"])
            first, last = self.steps.get(row["phase"], [step, step])
            self.steps[row["phase"]] = [min(first, step), max(last, step)]
            metrics += [
                entities.Metric(name, float(value), now, step)
                for name, value in row.items()
                if name not in NOT_METRICS and _is_number(value)
            ]
        if not metrics:
            return
        tags = [
            entities.RunTag(f"{TAG}phase.{phase}", f"steps {first}-{last}")
            for phase, (first, last) in self.steps.items()
        ]
        with self._calls("logging the epochs"):
            for start in range(0, len(metrics), BATCH):
                self.client.log_batch(
                    self.run_id,
                    metrics=metrics[start : start + BATCH],
                    tags=tags if start == 0 else [],
                )

    def finish(self, run_dir, metrics):
        """The final metrics and timings, the run directory's files as artifacts, and
        the MLflow run finished."""
        if self.run_id is None:
            return
        entities, now = self.mlflow.entities, int(time.time() * 1000)
        final = [
            entities.Metric(f"final/{split}_{name}", float(value), now, 0)
            for split in ("val", "test")
            for name, value in (metrics.get(split) or {}).items()
            if name != "images" and _is_number(value)
        ]
        final += [
            entities.Metric(name, float(value), now, 0)
            for name, value in (metrics.get("timings") or {}).items()
            if _is_number(value)
        ]
        tags = [entities.RunTag(f"{TAG}status", COMPLETE)]
        kept = (metrics.get("kept") or {}).get("phase")
        if kept:
            tags.append(entities.RunTag(f"{TAG}kept", kept))
        with self._calls("logging the results"):
            self.client.log_batch(self.run_id, metrics=final, tags=tags)
            for name in RUN_FILES:
                if (run_dir / name).is_file():
                    self.client.log_artifact(self.run_id, str(run_dir / name))
            self.client.set_terminated(self.run_id, MLFLOW_STATUS[COMPLETE])
            logger.info("MLflow run %s finished, with the run directory's files.", self.run_id)

    def stop(self, run):
        """A run that stopped early: the epochs it did, and the MLflow run marked
        interrupted (KILLED) or failed, with the reason its config.json gives."""
        if self.run_id is None:
            return
        self.log_epochs(run.history)
        try:
            config = read_config(run.paths.root)
        except (OSError, ValueError):
            config = {}
        status = config.get("status") if config.get("status") == INTERRUPTED else FAILED
        entities = self.mlflow.entities
        tags = [entities.RunTag(f"{TAG}status", status)]
        if config.get("reason"):
            tags.append(entities.RunTag(f"{TAG}reason", config["reason"]))
        with self._calls("marking the run stopped"):
            self.client.log_batch(self.run_id, tags=tags)
            self.client.set_terminated(self.run_id, MLFLOW_STATUS[status])

    # ---------------------------------------------------------------- helpers

    def _experiment(self, name):
        """The id of experiment `name`, created if it does not exist."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            try:
                return self.client.create_experiment(name)
            except self.mlflow.exceptions.MlflowException:  # created meanwhile by another
                found = self.client.get_experiment_by_name(name)
                if found is None:
                    raise
        return found.experiment_id

    @contextlib.contextmanager
    def _calls(self, what):
        """MLflow calls that must not cost the run: the first failure is a warning, and
        tracking stops there."""
        saved = {name: os.environ.get(name) for name in HTTP_SETTINGS}
        for name, value in HTTP_SETTINGS.items():
            os.environ.setdefault(name, value)
        try:
            yield
        except Exception as exc:  # a server down or refusing, a full disk, a bad URI...
            logger.warning(
                "MLflow tracking at %s failed %s (%s): the run goes on untracked; its run "
                "directory holds everything.",
                self.uri or "the default tracking URI",
                what,
                first_line(exc),
            )
            self.run_id = None
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _text(value):
    """A parameter's value as MLflow stores it: text as it is, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)
