"""`transfer finetune`: two-phase fine-tuning of a backbone on a folder of images (or a
CSV, DataFrame or TFDS dataset), leaving a run directory (see `transfer.runs`)."""

import logging
from pathlib import Path

from transfer.config import apply_config
from transfer.data.csv_labels import table_name
from transfer.data.sources import check_source_exists
from transfer.errors import RunInterruptedError
from transfer.lazy import keras
from transfer.models.heads import MULTI_LABEL
from transfer.report.html import write_report_or_warn
from transfer.runs import REPORT_HTML, RunPaths, check_run_dir, default_run_dir, resave_model
from transfer.track import tracker
from transfer.train.distribute import in_a_cluster, is_chief, local_copy, make_strategy
from transfer.train.options import resolve_options
from transfer.train.run import Run, RunResult, claim_run_dir

logger = logging.getLogger("transfer")

__all__ = ["RunResult", "finetune"]


def finetune(
    data=None,
    out=None,
    overwrite=False,
    resume=False,
    options=None,
    calibrate=False,
    report=True,
    config=None,
    track=None,
    tracking_uri=None,
    **overrides,
):
    """Fine-tune a backbone on `data` (a folder, `tfds:NAME`, or a CSV file or pandas
    DataFrame of paths and labels) and write a run directory.

    Options are the fields of `FinetuneOptions`, given as an object or as keywords.
    `resume=True` continues an interrupted run in `out` from its last completed epoch.
    `calibrate=True` fits a temperature on validation and stores it in the model.
    `report=False` leaves out report.html (`transfer report` writes it later): it costs
    the training images' features for the leaked-duplicates check: a pass of the
    backbone over them when phase 2 is kept (phase 1's are cached).
    `config` is a YAML or JSON file of options (as the keywords name them, and `data`),
    or a run's config.json, which this run repeats: the keywords given win over it.
    `track="mlflow"` tracks the run in MLflow at `tracking_uri` (default:
    $MLFLOW_TRACKING_URI, else MLflow's local default); a tracking server that is
    down is a warning, never the run's end.
    Returns a `RunResult` with the run directory, the metrics and the model.
    """
    given = dict(overrides)
    source, data, overrides = apply_config(config, data, overrides)
    options = resolve_options(options, **overrides)
    out = Path(out or default_run_dir(table_name(data)))
    # Refused in a moment, before TensorFlow loads: data that is not there, an --out in use.
    check_source_exists(data)
    if not resume and not in_a_cluster():
        check_run_dir(out, overwrite=overwrite)
    tracking = tracker(track, tracking_uri)  # MLflow missing: refused before TensorFlow loads
    strategy = make_strategy(options.strategy)  # first: multi-worker needs it before any op
    chief = is_chief(strategy)
    with claim_run_dir(out, options, chief, overwrite, resume) as root:
        run = Run(options, RunPaths(root), strategy, chief, resume)
        keras.utils.set_random_seed(options.seed)
        run.prepare(data)
        if source is not None:
            source.check_data(run.dataset, given)
        run.record_start(data, out)
        if chief:
            tracking.start(run)
            run.epoch_listeners.append(tracking.log_epochs)
        single_label = run.dataset.task != MULTI_LABEL
        # The report's image sections need the training images' features too. Every
        # worker computes its share of them: a pass of the backbone is a collective one.
        run.report_features = (report or calibrate) and single_label
        try:
            run.train_head()
            tracking.log_epochs(run.history)  # a probe's, or a resumed run's: no epoch ended
            run.fine_tune()
            run.keep_the_better_phase()
            result = run.finish(out)
        except BaseException as exc:
            run.record_stop(exc)
            tracking.stop(run)
            if isinstance(exc, KeyboardInterrupt):
                raise RunInterruptedError(
                    f"The run was interrupted. resume=True out={out} continues it."
                ) from exc
            raise
        if chief and (report or calibrate) and not single_label:
            logger.info(
                "No %s: the report's sections are for single-label runs; "
                "metrics.json and the per-label reports hold the results.",
                REPORT_HTML,
            )
        elif chief and (report or calibrate):
            result.metrics, calibrated = write_report_or_warn(
                run.paths.root,
                result.metrics,
                calibrate,
                model=local_copy(run.model, strategy),
                features=run.features,
            )
            if calibrated is not None:  # the temperature goes into the run's model
                resave_model(run.paths.root, calibrated)
        tracking.finish(run.paths.root, result.metrics)
        return result
