"""`transfer tune`'s search: an Optuna study over phase 2's options, each trial a `Run`
that starts from one shared phase 1.

Phase 1 (the frozen backbone's features and the probe) is the same for every trial, so
it runs once, in `head/`, and each trial loads its head; the trials share the feature
cache and, within one process, the frozen groups' outputs (`fine_tune.SharedOutputs`).
A trial is phase 2 with the options that TPE suggests. Each epoch's validation accuracy
goes to the pruner, the median rule (Optuna's MedianPruner): from its second epoch on,
a trial stops when its best so far is below the median of the earlier trials at the
same epoch. With the handful of trials a CPU budget allows (5 to 20), the median of
the finished trials is a steady bar, where successive halving, which keeps a third at
each rung, would judge most trials after their first epoch, still in the warmup of
their schedule. The study lives in SQLite, so an interrupted search resumes.

A trial's value is its phase 2's validation accuracy (phase 1's where phase 2 did not
run), as the keep guard scores it, not the accuracy of the model the trial keeps: a
phase 2 that does not beat phase 1 gives phase 1's model whatever its options, and the
search would not tell a near miss from a collapse. The best trial's run, in `best/`,
keeps phase 2 only where it clearly beat phase 1 (`selection.choose_phase`).
"""

import contextlib
import dataclasses
import gc
import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from transfer.allocator import return_freed_memory
from transfer.errors import InvalidArgumentError, RunFailedError, first_line
from transfer.export.optional import optional_module
from transfer.io import write_csv, write_json
from transfer.lazy import keras
from transfer.models.groups import groups
from transfer.runs import FINE_TUNE, INTERRUPTED, RunPaths, prepare_run_dir, read_config
from transfer.train.budget import describe_seconds
from transfer.train.fine_tune import SharedOutputs
from transfer.train.head import head_is_probe
from transfer.train.options import AUGMENT_PRESETS, RESULT_NEUTRAL, FinetuneOptions, resolve_options
from transfer.train.run import Run, write_history

logger = logging.getLogger("transfer")

STUDY_NAME = "transfer-tune"
# The options a search may vary: phase 2's alone, so that every trial starts from the
# same phase 1.
TUNABLE = (
    "fine_tune_from",
    "fine_tune_epochs",
    "fine_tune_learning_rate",
    "lr_schedule",
    "layer_decay",
    "ema",
    "train_bn",
    "optimizer",
    "label_smoothing",
    "augment",
    "flip",
    "early_stopping_patience",
)
# ... of which these reach phase 1 too where it trains the head with the optimizer
# (head_epochs=N or head_init="train") instead of fitting the probe.
PHASE_ONE_WHEN_TRAINED = ("optimizer", "label_smoothing", "early_stopping_patience")
OPTION_TYPES = {field.name: field.type for field in dataclasses.fields(FinetuneOptions)}
RANGE_KEYS = {"low", "high", "log", "step"}
# TPE draws this many trials at random before it models the others: its default, 10,
# is more than a CPU budget gives, and the search would stay random.
STARTUP_TRIALS = 4
# The pruner judges a trial from its second epoch on (the first is the warmup of the
# cosine schedule), once two trials have finished. A trial reports epoch n as step n.
PRUNER_STARTUP_TRIALS, PRUNER_FIRST_EPOCH = 2, 2
TIME_LIMIT_STOP = "stopped at the search's time limit"
RERUN_OF = "rerun_of"  # user attribute of a trial that runs an interrupted one again
COMPLETE, PRUNED = "complete", "pruned"


def default_space(architecture):
    """The search space when none is given: option -> a range ({low, high, log}) or
    a list of choices; fine_tune_from over the backbone's groups below the head."""
    return {
        "fine_tune_learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
        "fine_tune_from": [g for g in architecture.groups if g not in ("post", "head")],
        "layer_decay": {"low": 0.5, "high": 1.0},
        "augment": list(AUGMENT_PRESETS),
        "label_smoothing": {"low": 0.0, "high": 0.2},
        "fine_tune_epochs": {"low": 2, "high": 10},
    }


@dataclass(frozen=True)
class Dimension:
    """One option of the search: its `choices`, or a range from `low` to `high`
    (sampled on a log scale with `log`, by `step` where given)."""

    name: str
    choices: tuple = None
    low: float = None
    high: float = None
    log: bool = False
    step: float = None

    def suggest(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if OPTION_TYPES[self.name] is int:
            return trial.suggest_int(
                self.name, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def contains(self, value):
        if self.choices is not None:
            return value in self.choices
        return self.low <= value <= self.high

    def spec(self):
        """As a space file writes it."""
        if self.choices is not None:
            return list(self.choices)
        found = {"low": self.low, "high": self.high}
        if self.log:
            found["log"] = True
        if self.step is not None:
            found["step"] = self.step
        return found


def read_space(path):
    """The mapping in a YAML space file (`transfer tune --space`)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"space={path} cannot be read: {first_line(exc)}.") from exc
    try:
        table = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidArgumentError(
            f"space={path} is not YAML: {' '.join(str(exc).split())}"
        ) from exc
    if not isinstance(table, dict) or not table:
        raise InvalidArgumentError(
            f"space={path} must map option names to a list of choices or a range "
            "{low, high}, as in `fine_tune_learning_rate: {low: 1.0e-5, high: 1.0e-3, "
            "log: true}`."
        )
    return table


def check_space(table, base, source):
    """[Dimension] of a space table ({option: choices or range}), each value checked as
    `finetune` checks the option; an InvalidArgumentError names the first bad entry."""
    return [_dimension(str(name), spec, base, source) for name, spec in table.items()]


def _dimension(name, spec, base, source):
    def bad(problem):
        return InvalidArgumentError(f"space={source}: {name}: {problem}")

    if name not in OPTION_TYPES:
        raise bad("not an option of finetune.")
    if name not in TUNABLE:
        raise bad(
            "not a phase-2 option; every trial starts from the same phase 1, so a "
            f"search varies only {', '.join(TUNABLE)}."
        )
    kind = OPTION_TYPES[name]
    if isinstance(spec, dict):
        unknown = sorted(set(map(str, spec)) - RANGE_KEYS)
        if unknown or not {"low", "high"} <= set(spec):
            raise bad(
                f"a range has low and high (and log or step), not {', '.join(map(str, spec))}."
            )
        if kind not in (int, float):
            raise bad(f"{kind.__name__} options take a list of choices, not a range.")
        low, high = (_typed(spec[k], kind, bad) for k in ("low", "high"))
        log, step = spec.get("log", False), spec.get("step")
        if not isinstance(log, bool):
            raise bad(f"log is true or false, not {log!r}.")
        if step is not None:
            step = _typed(step, kind, bad)
        if not low < high:
            raise bad(f"low ({low}) must be below high ({high}); a single value is a list of one.")
        if log and low <= 0:
            raise bad(f"a log range needs low above 0, not {low}.")
        if step is not None and (step <= 0 or log):
            raise bad("step must be above 0, and cannot go with log.")
        dimension = Dimension(name, low=low, high=high, log=log, step=step)
        values = [low, high]
    else:
        choices = spec if isinstance(spec, list) else [spec]
        if not choices:
            raise bad("an empty list of choices.")
        values = [_typed(value, kind, bad) for value in choices]
        if len(set(values)) < len(values):
            raise bad("a choice is listed twice.")
        dimension = Dimension(name, choices=tuple(values))
    for value in values:  # as finetune would check the option
        try:
            resolve_options(base, **{name: value})
        except InvalidArgumentError as exc:
            raise bad(str(exc)) from None
    return dimension


def _typed(value, kind, bad):
    """`value` as an option of type `kind` takes it (a whole float for an int)."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if isinstance(value, float) and value.is_integer():
            value, ok = int(value), True
    elif kind is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        ok = ok and math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise bad(f"{value!r} is not a{'n' if kind is int else ''} {kind.__name__}.")
    return value


def space_spec(dimensions):
    """{option: choices or range} of a checked space, as tune.json records it."""
    return {d.name: d.spec() for d in dimensions}


class TunePaths:
    """Where each file of a search's folder (`transfer tune --out`) goes."""

    def __init__(self, root):
        self.root = Path(root)

    study = property(lambda self: self.root / "study.db")
    record = property(lambda self: self.root / "tune.json")
    head = property(lambda self: self.root / "head")  # phase 1's checkpoint, shared
    trials = property(lambda self: self.root / "trials")
    best = property(lambda self: self.root / "best")  # the best trial's run directory
    table = property(lambda self: self.root / "trials.csv")
    plot = property(lambda self: self.root / "trials.png")
    best_config = property(lambda self: self.root / "best-config.json")
    # best/ is written here, then swapped in (the old one renamed out of the way first)
    best_partial = property(lambda self: self.root / ".best.partial")
    best_old = property(lambda self: self.root / ".best.old")

    def trial(self, number):
        return self.trials / str(number)

    def entries(self):
        """What a search writes in its folder; overwrite=True removes exactly these."""
        files = (self.study, self.record, self.table, self.plot, self.best_config)
        folders = (self.head, self.trials, self.best, self.best_partial, self.best_old)
        return files, folders

    def remove(self):
        files, folders = self.entries()
        for path in files:
            path.unlink(missing_ok=True)
        for path in folders:
            shutil.rmtree(path, ignore_errors=True)

    def recover_best(self):
        """best/ as the last complete write left it: a search stopped while it swapped
        a new best/ in has it under its old name."""
        if not self.best.exists() and self.best_old.exists():
            self.best_old.rename(self.best)
        shutil.rmtree(self.best_partial, ignore_errors=True)
        shutil.rmtree(self.best_old, ignore_errors=True)


class Search:
    """One search in `paths.root`: phase 1 once, then the study's trials, the best
    trial's run kept in `best/`. `space_given`: the space is the user's, not the
    default one."""

    def __init__(self, data, paths, base, space, strategy, plan=None, space_given=True):
        self.data, self.paths, self.base, self.space = data, paths, base, space
        self.strategy, self.plan, self.space_given = strategy, plan, space_given
        self.dataset = self.head = self.study = None  # the data read, phase 1's RunPaths
        self.prefix_outputs = SharedOutputs()
        self.best_value = None  # of the trial whose run is in best/
        # Kept for the end: publishing a new best/ (the end of a run) and the tables.
        self.reserve = plan.end_of_run_seconds(0) if plan is not None else 0.0

    # ------------------------------------------------------------------ steps

    def phase_one(self):
        """Phase 1 once, in head/: the data read, the head trained (or loaded, when an
        earlier session of the search trained it) and saved for the trials."""
        options = dataclasses.replace(
            self.base, time_limit=self.plan.limit if self.plan is not None else None
        )  # so that phase 1 is refused at once when it cannot fit
        paths = RunPaths(self.paths.head)
        started_before = paths.config.exists()
        prepare_run_dir(paths.root, keep=True)
        run = Run(options, paths, self.strategy, resume=started_before)
        keras.utils.set_random_seed(options.seed)
        run.prepare(self.data)
        self._check_groups(groups(run.model))
        if not started_before:
            run.record_start(self.data, paths.root)
        run.train_head()
        run.save_phase_one()
        self._check_phase_one(run.history)
        self.dataset, self.head = run.dataset, paths
        return run.history

    def open_study(self, resume):
        """The study in study.db: a new one whose first trial is the options as given
        (where the space holds them), or the earlier one with its unfinished trials
        queued to run again."""
        optuna = optional_module("optuna")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            storage=f"sqlite:///{self.paths.study.resolve()}",
            study_name=STUDY_NAME,
            direction="maximize",
            pruner=pruner(),
            load_if_exists=resume,
        )
        trials = study.get_trials(deepcopy=False)
        # Seeded from the seed and the trials so far: a resumed search draws on, not
        # the first trials' values again.
        study.sampler = optuna.samplers.TPESampler(
            seed=self.base.seed + len(trials), n_startup_trials=STARTUP_TRIALS
        )
        if not trials:
            given = {d.name: getattr(self.base, d.name) for d in self.space}
            study.enqueue_trial({k: v for k, v in given.items() if self._dimension(k).contains(v)})
        self.study = study
        self._queue_unfinished()
        best = self.best_trial()
        if best is not None and self.published_trial() == best.number:
            self.best_value = best.value
        return study

    def run_trials(self, trials=None):
        """Trials until the study holds `trials` finished ones or the time left would
        not fit another (one as long as the median so far, and the end kept)."""
        while True:
            finished = self.finished_trials()
            if trials is not None and len(finished) >= trials:
                return
            if self.plan is not None:
                seconds = [t.user_attrs["seconds"] for t in finished if "seconds" in t.user_attrs]
                typical = statistics.median(seconds) if seconds else 0.0
                if self.plan.left() < typical + self.reserve:
                    logger.info(
                        "No time for another trial (%s left; a trial took %s).",
                        describe_seconds(self.plan.left()),
                        describe_seconds(typical),
                    )
                    return
            self.study.optimize(self._trial, n_trials=1)

    def ensure_best(self):
        """best/ holds the run of the best trial; where a stopped session left another
        there, the best trial's options run again into it. Returns the best trial."""
        best = self.best_trial()
        if best is None:
            raise RunFailedError(
                "No trial finished, so there is no best recipe: raise trials or time_limit."
            )
        if self.published_trial() != best.number:
            logger.info("best/ does not hold trial %d's run: running it again.", best.number)
            paths = RunPaths(prepare_run_dir(self.paths.best_partial, overwrite=True))
            run = self._train(self.trial_options(best.params), paths, self.paths.best)
            run.keep_the_better_phase()
            self._publish(run, best.number, written=True)
            del run
            self._release()
        return best

    # ------------------------------------------------------------------ trials

    def trial_options(self, params):
        """The options of a trial: the search's, with the trial's params."""
        return resolve_options(self.base, **params)

    def best_config(self, best):
        """Every option of the best trial, resolved: what `finetune --config` takes (the
        preset's values are in it already)."""
        return {**self.trial_options(best.params).as_dict(), "preset": None}

    def _trial(self, trial):
        """Optuna's objective: one trial, recorded in trials/<number>/. Returns its value;
        raises TrialPruned when the pruner or the time limit stopped it."""
        optuna = optional_module("optuna")
        params = {d.name: d.suggest(trial) for d in self.space}
        paths = RunPaths(prepare_run_dir(self.paths.trial(trial.number)))
        logger.info(
            "Trial %d%s: %s.",
            trial.number,
            f" ({describe_seconds(self.plan.left())} left)" if self.plan is not None else "",
            ", ".join(f"{k}={shown_value(v)}" for k, v in params.items()),
        )
        started = time.monotonic()
        stops = trial_stops(trial, self.plan, self.reserve)
        run = None
        try:
            run = self._train(self.trial_options(params), paths, paths.root, stops)
            stopped = stops.stopped
            if stopped is None:
                run.keep_the_better_phase()
            value = trial_value(run, stopped)
            record = {
                "number": trial.number,
                "state": PRUNED if stopped else COMPLETE,
                "validation_accuracy": value,
                "phase_kept": None if stopped else run.kept["phase"],
                "epochs": sum(row["phase"] == FINE_TUNE for row in run.history),
                "seconds": round(time.monotonic() - started, 1),  # before best/ is written
                "stopped": stopped or run.phase_two.get("stopped"),
                "params": params,
            }
            self._record(run, paths, record)
            for key in ("phase_kept", "epochs", "seconds", "stopped"):
                trial.set_user_attr(key, record[key])
            if stopped is None and (self.best_value is None or value > self.best_value):
                self._publish(run, trial.number)
                self.best_value = value
        except BaseException as exc:
            if run is not None:
                run.record_stop(exc)
            raise
        finally:
            shutil.rmtree(paths.checkpoints, ignore_errors=True)
            del run
            self._release()
        logger.info(
            "Trial %d: validation accuracy %.4f after %d phase-2 epochs in %s%s.",
            trial.number,
            value,
            record["epochs"],
            describe_seconds(record["seconds"]),
            f"; {stopped}" if stopped else "",
        )
        if stopped:
            raise optuna.TrialPruned(stopped)
        return value

    def _train(self, options, paths, out, stops=None):
        """A run of `options` in `paths` from the shared phase 1, through phase 2."""
        run = Run(options, paths, self.strategy, phase_one=self.head)
        run.prefix_outputs = self.prefix_outputs
        if stops is not None:
            run.phase_two_stops.append(stops)
        keras.utils.set_random_seed(options.seed)
        run.prepare(self.data, dataset=self.dataset)
        run.record_start(self.data, out)
        run.train_head()
        run.fine_tune()
        return run

    def _record(self, run, paths, record):
        """A trial's folder: config.json with its state, metrics.json, history.csv."""
        write_json(paths.config, {**read_config(paths.root), "status": record["state"]})
        write_json(
            paths.metrics,
            {"trial": record, "kept": run.kept, "timings": run.timings, "phase_two": run.phase_two},
        )
        if run.history:
            write_history(paths.history, run.history)

    def _publish(self, run, number, written=False):
        """The end of `run` (predictions, refit, reports, model) into best/: written
        beside it, then swapped in. `written`: the run is in best_partial already."""
        paths = self.paths
        if not written:
            shutil.rmtree(paths.best_partial, ignore_errors=True)
            # The trial's run ends in best/'s folder: its phases wrote to the trial's.
            run.paths = RunPaths(prepare_run_dir(paths.best_partial))
            run.record_start(self.data, paths.best)
        result = run.finish(paths.best)
        write_json(run.paths.metrics, {**result.metrics, "tune": {"trial": number}})
        if paths.best.exists():
            paths.best.rename(paths.best_old)
        paths.best_partial.rename(paths.best)
        shutil.rmtree(paths.best_old, ignore_errors=True)
        logger.info("Trial %d is the best so far: its run is in %s.", number, paths.best)

    def _queue_unfinished(self):
        """Trials that a stopped session left unfinished (running when it was killed,
        failed when it was interrupted) run again, each once, with their options."""
        optuna = optional_module("optuna")
        states = optuna.trial.TrialState
        trials = self.study.get_trials(deepcopy=False)
        queued = {t.user_attrs.get(RERUN_OF) for t in trials}
        for trial in trials:
            if trial.state == states.RUNNING:  # the folder's lock says no process runs it
                self.study.tell(trial.number, state=states.FAIL)
            elif trial.state != states.FAIL:
                continue
            if trial.number in queued or not trial.params:
                continue
            self.study.enqueue_trial(trial.params, user_attrs={RERUN_OF: trial.number})
            with contextlib.suppress(OSError, ValueError):
                config_path = RunPaths(self.paths.trial(trial.number)).config
                config = read_config(config_path.parent)
                write_json(
                    config_path,
                    {**config, "status": INTERRUPTED, "reason": "the search stopped in it"},
                )
            logger.info("Trial %d did not finish: it runs again.", trial.number)

    # ------------------------------------------------------------------ reading

    def finished_trials(self):
        """The study's complete and pruned trials, by number."""
        optuna = optional_module("optuna")
        states = optuna.trial.TrialState
        return [
            t
            for t in self.study.get_trials(deepcopy=False)
            if t.state in (states.COMPLETE, states.PRUNED)
        ]

    def best_trial(self):
        """The complete trial of the highest value, the first of equals; None if none."""
        optuna = optional_module("optuna")
        complete = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        return max(complete, key=lambda t: (t.value, -t.number), default=None)

    def published_trial(self):
        """The number of the trial whose run best/ holds, or None."""
        try:
            return json.loads(RunPaths(self.paths.best).metrics.read_text())["tune"]["trial"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def table(self):
        """One row per trial, by number: number, state, validation accuracy (a pruned
        trial's last), phase kept, phase-2 epochs, seconds, then the params."""
        rows = []
        for t in self.study.get_trials(deepcopy=False):
            value = t.value
            if value is None and t.intermediate_values:
                value = t.intermediate_values[max(t.intermediate_values)]
            rerun = t.user_attrs.get(RERUN_OF)
            rows.append(
                {
                    "number": t.number,
                    "state": t.state.name.lower(),
                    "validation_accuracy": value,
                    "phase_kept": t.user_attrs.get("phase_kept"),
                    "epochs": t.user_attrs.get("epochs"),
                    "seconds": t.user_attrs.get("seconds"),
                    "params": dict(t.params),
                    "note": t.user_attrs.get("stopped")
                    or (f"runs trial {rerun} again" if rerun is not None else None),
                }
            )
        return rows

    # ------------------------------------------------------------------ checks

    def _dimension(self, name):
        return next(d for d in self.space if d.name == name)

    def _check_groups(self, model_groups):
        names = [g for g in model_groups if g != "head"]
        for dimension in self.space:
            if dimension.name != "fine_tune_from":
                continue
            values = dimension.choices
            unknown = [v for v in values if v not in names and v != "none"]
            if unknown:
                raise InvalidArgumentError(
                    f"space: fine_tune_from: {unknown[0]!r} is not a group of this model. "
                    f"Expected {', '.join(names)} or none."
                )

    def _check_phase_one(self, history):
        """A phase 1 that trained its head (not the probe) read options a trial would
        change: the default space leaves them out, a space given is refused."""
        varied = [d.name for d in self.space if d.name in PHASE_ONE_WHEN_TRAINED]
        if not varied or not history or head_is_probe(history):
            return
        if not self.space_given:
            logger.info(
                "Phase 1 trained the head (not the probe), with %s: the search leaves them "
                "as they are.",
                " and ".join(varied),
            )
            self.space = [d for d in self.space if d.name not in varied]
            return
        raise InvalidArgumentError(
            f"space: {', '.join(varied)} would change phase 1 too, which trains the head "
            "here (head_epochs, head_init or no feature cache), and the trials share one "
            f"phase 1. Leave {' and '.join(varied)} out of the space, or let phase 1 be "
            "the probe."
        )

    def _release(self):
        gc.collect()
        return_freed_memory()


def pruner():
    """The median rule, from PRUNER_FIRST_EPOCH (Optuna's earliest step to prune at is
    n_warmup_steps) once PRUNER_STARTUP_TRIALS trials have finished."""
    optuna = optional_module("optuna")
    return optuna.pruners.MedianPruner(
        n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_FIRST_EPOCH
    )


def trial_value(run, stopped=None):
    """A trial's value: its phase 2's validation accuracy as the keep guard scored it;
    where the search stopped phase 2, its last epoch's; where phase 2 did not run (or
    phase 1 did not), the validation accuracy of the phase that did."""
    scores = run.kept.get("validation") if stopped is None else None
    if scores:
        return float(scores[FINE_TUNE]["accuracy"])
    phase = FINE_TUNE if stopped is not None else run.kept["phase"]
    rows = [row for row in run.history if "val_accuracy" in row and row["phase"] == phase]
    rows = rows or [row for row in run.history if "val_accuracy" in row]
    return float(rows[-1]["val_accuracy"]) if rows else 0.0


def trial_stops(trial, plan=None, reserve=0.0):
    """A Keras callback for a trial's phase 2: each epoch's validation accuracy goes to
    the study, and the trial stops where the pruner says so, or where the search's time
    limit would pass (mid-epoch at the reserve, or before an epoch that would not fit).
    `callback.stopped` says why it stopped, or is None."""
    clock = {}

    def stop(why):
        callback.model.stop_training = True
        callback.stopped = callback.stopped or why

    def on_epoch_begin(epoch, logs=None):
        clock["epoch"] = time.monotonic()

    def on_train_batch_end(batch, logs=None):
        if plan is not None and plan.left() < reserve:
            stop(TIME_LIMIT_STOP)

    def on_epoch_end(epoch, logs=None):
        more = epoch + 1 < callback.params.get("epochs", 0)
        accuracy = (logs or {}).get("val_accuracy")
        if accuracy is not None:
            trial.report(float(accuracy), epoch + 1)
            if more and trial.should_prune():
                stop(f"pruned after epoch {epoch + 1}: below the median of the trials before")
        seconds = time.monotonic() - clock["epoch"]
        if more and plan is not None and plan.left() - reserve < seconds:
            stop(TIME_LIMIT_STOP)

    callback = keras.callbacks.LambdaCallback(
        on_epoch_begin=on_epoch_begin,
        on_train_batch_end=on_train_batch_end,
        on_epoch_end=on_epoch_end,
    )
    callback.stopped = None
    return callback


def validation_warning(values, val_images):
    """A warning when the validation images are too few to tell the trials apart, or
    None. The best of K trials reads high by chance: about sigma * sqrt(2 ln K) for K
    equally good trials, sigma = sqrt(p (1 - p) / n) the standard error of an accuracy p
    on n images. When that exceeds the best trial's lead over the median trial, the
    search may have picked noise."""
    values = [v for v in values if v is not None]
    if len(values) < 2 or not val_images:
        return None
    best = max(values)
    sigma = math.sqrt(best * (1 - best) / val_images)
    optimism = sigma * math.sqrt(2 * math.log(len(values)))
    lead = best - statistics.median(values)
    if optimism <= lead:
        return None
    return (
        f"The validation split has {val_images} images: an accuracy of {best:.3f} on them is "
        f"uncertain by {sigma:.3f} (one standard error), and the best of {len(values)} trials "
        f"reads about {optimism:.3f} high by chance alone, more than its lead over the median "
        f"trial ({lead:.3f}). The chosen recipe may be no better than the others; more "
        "validation images (val_split) or fewer trials make the choice firmer."
    )


def write_table(path, rows, names):
    """trials.csv: one row per trial, a column per option of the space."""
    write_csv(
        path,
        [
            "number",
            "state",
            "validation_accuracy",
            "phase_kept",
            "epochs",
            "seconds",
            *names,
            "note",
        ],
        [
            [
                row["number"],
                row["state"],
                "" if row["validation_accuracy"] is None else f"{row['validation_accuracy']:.4f}",
                row["phase_kept"] or "",
                "" if row["epochs"] is None else row["epochs"],
                "" if row["seconds"] is None else row["seconds"],
                *[shown_value(row["params"].get(name, "")) for name in names],
                row["note"] or "",
            ]
            for row in rows
        ],
    )


def shown_value(value):
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def check_resume_record(record, base, space):
    """A search resumes with the options and the space it started with."""
    stored = record.get("options", {})
    differ = sorted(
        k
        for k, v in base.as_dict().items()
        if k in stored and stored[k] != v and k not in RESULT_NEUTRAL
    )
    if differ:
        raise InvalidArgumentError(
            f"resume=True: the search was started with other options ({', '.join(differ)}); "
            "run the same command again with resume=True."
        )
    if json.loads(json.dumps(space_spec(space))) != record.get("space"):
        raise InvalidArgumentError(
            "resume=True: the search was started with another search space; resume it "
            "with the space it started with."
        )
