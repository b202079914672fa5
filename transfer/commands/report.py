"""`transfer report`: rebuild report.html from a run directory (or an `evaluate`
folder), e.g. after a change of template or for an older run."""

from transfer.report.html import write_report
from transfer.runtime import INFERENCE_BATCH_SIZE


def report(run_dir, calibrate=False, batch_size=INFERENCE_BATCH_SIZE):
    """Write `run_dir`/report.html; `calibrate` first fits a temperature on validation
    and stores it in the run's model. Returns (path of the page, metrics)."""
    return write_report(run_dir, calibrate=calibrate, batch_size=batch_size)
