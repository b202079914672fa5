"""Reports of a run: scikit-learn metrics, plots and the run directory's files."""

from transfer.report.metrics import compute_metrics, write_reports
from transfer.report.plots import plot_confusion_matrix, plot_training_curves
from transfer.report.rundir import (
    atomic_path,
    prepare_run_dir,
    save_model,
    save_weights,
    write_csv,
    write_json,
    write_text,
)
