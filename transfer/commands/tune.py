"""`transfer tune`: a search of phase 2's recipe (Optuna: TPE, a median pruner), phase 1
run once for every trial, within a number of trials or a time limit. Its folder:

    study.db          the Optuna study (SQLite): --resume continues it
    tune.json         the search: data, options, space, limits, status, best trial
    head/             phase 1, once: the checkpoint every trial starts from
    trials/<n>/       each trial: config.json, metrics.json, history.csv, logs/
    trials.csv        one row per trial: state, validation accuracy, epochs, seconds, options
    trials.png        validation accuracy against each option, and the best over time
    best-config.json  every option of the best trial (`finetune --config` takes it)
    best/             the best trial's run directory (predict, evaluate, export take it)
"""

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from transfer.config import apply_config
from transfer.data.csv_labels import table_name
from transfer.data.sources import check_source_exists
from transfer.errors import InvalidArgumentError, RunInterruptedError, check_whole_number
from transfer.export.optional import optional_module
from transfer.io import write_json
from transfer.report.plots import plot_trials, report_step
from transfer.runs import (
    COMPLETE,
    FAILED,
    INTERRUPTED,
    RUNNING,
    RunPaths,
    check_run_dir,
    claimed_run_dir,
    versions,
)
from transfer.train.budget import TimePlan, parse_duration
from transfer.train.distribute import in_a_cluster, make_strategy
from transfer.train.options import resolve_options
from transfer.train.search import (
    Search,
    TunePaths,
    check_resume_record,
    check_space,
    default_space,
    read_space,
    space_spec,
    validation_warning,
    write_table,
)

logger = logging.getLogger("transfer")

__all__ = ["TuneResult", "tune"]


@dataclass
class TuneResult:
    out: Path
    best_trial: int
    best_options: dict  # every option of the best trial (best-config.json)
    metrics: dict  # the best trial's run (best/metrics.json): validation, test, kept
    trials: list = field(default_factory=list)  # the rows of trials.csv
    warning: str = None  # the validation split is too small for the trials (or None)
    seconds: float = 0.0


def tune(
    data=None,
    out=None,
    trials=None,
    time_limit=None,
    space=None,
    resume=False,
    overwrite=False,
    options=None,
    config=None,
    **overrides,
):
    """Search phase 2's recipe on `data` and write the search's folder `out`.

    Runs phase 1 once, then trials of phase 2 from its head, each with the options that
    Optuna's TPE sampler suggests from the search space (`space`: a YAML file, default
    `search.default_space`), stopped early by a median pruner on each epoch's validation
    accuracy; until the study holds `trials` finished trials or `time_limit` ("30m") is
    spent. The first trial is the options as given. Options are `finetune`'s. `resume=True`
    continues a stopped search in `out` (with more `trials` or a new `time_limit`).
    `config` is a file of options, as `finetune` reads it (a config file's time_limit is
    a run's, and left out: a trial runs its epochs).
    Returns a `TuneResult`: the best trial, its options and its run's metrics.
    """
    optional_module("optuna")  # a missing extra says so before anything runs
    started = time.monotonic()
    if out is None:
        raise InvalidArgumentError("out= is required: the folder of the search.")
    plan_seconds = parse_duration(time_limit)
    if trials is None and plan_seconds is None:
        raise InvalidArgumentError(
            "A search needs an end: give trials=N, time_limit=DURATION (90s, 10m, 2h) or both."
        )
    if trials is not None:
        trials = check_whole_number("trials", trials)
    given = dict(overrides)
    source, data, overrides = apply_config(config, data, overrides)
    if overrides.pop("time_limit", None) is not None:
        logger.info("The time_limit of config=%s is a run's: the trials run their epochs.", config)
    options = resolve_options(options, **overrides)
    if options.time_limit is not None:  # given in `options`: the search's is time_limit
        raise InvalidArgumentError(
            "A trial runs its epochs out: give the search's time_limit to tune, not in options."
        )
    if in_a_cluster() or options.strategy == "multiworker":
        raise InvalidArgumentError("transfer tune runs on one machine: strategy=multiworker.")
    out = Path(out)
    check_source_exists(data)
    dimensions = check_space(
        read_space(space) if space else default_space(options.architecture),
        options,
        space or "the default space",
    )
    paths = TunePaths(out)
    # Refused in a moment, before TensorFlow loads: an --out in use, a search not there.
    if resume and not paths.record.exists():
        raise InvalidArgumentError(
            f"resume=True: {out} holds no search to resume (no {paths.record.name})."
        )
    if not resume:
        check_run_dir(out, overwrite=overwrite)
    strategy = make_strategy(options.strategy)
    with claimed_run_dir(out, overwrite=overwrite, keep=resume) as root:
        paths = TunePaths(root)
        if overwrite and not resume:
            paths.remove()
        record = _start_record(paths, data, options, dimensions, trials, plan_seconds, resume)
        plan = TimePlan(plan_seconds, started) if plan_seconds else None
        search = Search(data, paths, options, dimensions, strategy, plan, bool(space))
        try:
            paths.recover_best()
            search.phase_one()
            if source is not None:  # a run's config.json: its data, or other data?
                source.check_data(search.dataset, given)
            search.open_study(resume)
            search.run_trials(trials)
            best = search.ensure_best()
        except BaseException as exc:
            write_json(paths.record, {**record, "status": _stopped(exc)})
            if isinstance(exc, KeyboardInterrupt):
                raise RunInterruptedError(
                    f"The search was interrupted. resume=True out={out} continues it."
                ) from exc
            raise
        return _write_results(search, best, record, time.monotonic() - started)


def _write_results(search, best, record, seconds):
    """trials.csv, trials.png, best-config.json and tune.json saying the search is
    complete, with the warning when validation is too small for the trials."""
    paths, rows = search.paths, search.table()
    write_table(paths.table, rows, [d.name for d in search.space])
    report_step(paths.plot.name, plot_trials, rows, search.space, paths.plot, best.number)
    best_options = search.best_config(best)
    write_json(paths.best_config, best_options)
    metrics = json.loads(RunPaths(paths.best).metrics.read_text())
    values = [r["validation_accuracy"] for r in rows if r["state"] == COMPLETE]
    warning = validation_warning(values, len(search.dataset.splits["val"]))
    if warning:
        logger.warning(warning)
    write_json(
        paths.record,
        {
            **record,
            "status": COMPLETE,
            "best": {"trial": best.number, "validation_accuracy": best.value},
            "trials_finished": len(search.finished_trials()),
            "validation_warning": warning,
            "seconds": round(seconds, 1),
        },
    )
    return TuneResult(paths.root, best.number, best_options, metrics, rows, warning, seconds)


def _start_record(paths, data, options, dimensions, trials, time_limit, resume):
    """tune.json: what the search is, checked against the earlier one on resume."""
    record = {
        "data": table_name(data),
        "options": options.as_dict(),
        "space": space_spec(dimensions),
        "trials": trials,
        "time_limit_seconds": time_limit,
        "versions": versions(),
        "started": datetime.now().isoformat(timespec="seconds"),
        "status": RUNNING,
    }
    record["first_started"] = record["started"]
    if resume:
        earlier = json.loads(paths.record.read_text())
        check_resume_record(earlier, options, dimensions)
        record["first_started"] = earlier.get("first_started", earlier.get("started"))
    write_json(paths.record, record)
    return record


def _stopped(exc):
    return INTERRUPTED if isinstance(exc, KeyboardInterrupt) else FAILED
