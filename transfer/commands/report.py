"""`transfer report`: rebuild report.html from a run directory (or an `evaluate`
folder), e.g. after a change of template or for an older run."""

from transfer.report.gather import gather_report
from transfer.report.html import write_page
from transfer.runs import resave_model
from transfer.runtime import INFERENCE_BATCH_SIZE


def report(run_dir, calibrate=False, batch_size=INFERENCE_BATCH_SIZE):
    """Write `run_dir`/report.html; `calibrate` first fits a temperature on validation
    and stores it in the run's model. Returns (path of the page, metrics)."""
    gathered = gather_report(run_dir, calibrate=calibrate, batch_size=batch_size)
    if gathered.calibrated is not None:
        resave_model(run_dir, gathered.calibrated)
    return write_page(gathered), gathered.metrics
