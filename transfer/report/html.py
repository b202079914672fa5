"""report.html: one self-contained page per run directory (or `evaluate` folder),
rendered with a jinja template from what `transfer.report.gather` collected. Images
are inline; there are no requests and no script beyond sorting a table."""

import html
import logging

import jinja2

from transfer.errors import first_line
from transfer.io import write_json, write_text
from transfer.report.gather import gather_report
from transfer.runs import METRICS_FILE, REPORT_HTML
from transfer.runtime import INFERENCE_BATCH_SIZE

logger = logging.getLogger("transfer")

TEMPLATE = "report.html.j2"
# Sections in page order: (anchor, title); the template and the browser test read it.
SECTIONS = (
    ("summary", "Summary"),
    ("training", "Training curves"),
    ("confusion", "Confusion matrix"),
    ("per-class", "Per-class metrics"),
    ("confused", "Most confused pairs"),
    ("top-losses", "Highest-loss images"),
    ("gradcam", "Grad-CAM"),
    ("calibration", "Calibration"),
    ("duplicates", "Leaked duplicates"),
    ("skipped", "Skipped files"),
)


def render(page, template=TEMPLATE, sections=SECTIONS):
    """A page's HTML from its gathered data (a plain dict): report.html by default,
    or another page of ours (`template`, its `sections`) in the same style."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("transfer.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["pct"] = lambda v: f"{100 * v:.1f}%"
    environment.filters["num"] = lambda v, d=3: f"{v:.{d}f}"
    return environment.get_template(template).render(escape=html.escape, sections=sections, **page)


def write_page(gathered):
    """metrics.json (with what the report added to it), then report.html, of a
    `GatheredReport`. Returns the page's path."""
    write_json(gathered.folder / METRICS_FILE, gathered.metrics)
    path = gathered.folder / REPORT_HTML
    write_text(path, render(gathered.page))
    return path


def write_report_or_warn(
    folder, metrics, calibrate=False, model=None, batch_size=INFERENCE_BATCH_SIZE, features=None
):
    """report.html at the end of a run or an evaluation: `gather_report`, then
    `write_page`. A page that fails to build is a warning, not a failed run (`transfer
    report` builds it again). Returns the metrics and the model calibration changed
    (None without `calibrate`): saving it is the caller's to decide."""
    try:
        gathered = gather_report(
            folder, calibrate=calibrate, batch_size=batch_size, model=model, features=features
        )
        write_page(gathered)
        return gathered.metrics, gathered.calibrated
    except Exception as exc:  # the run's own files are complete and must stay so
        logger.warning(
            "%s could not be written (%s: %s); `transfer report %s` builds it again.",
            REPORT_HTML,
            type(exc).__name__,
            first_line(exc),
            folder,
        )
        return metrics, None
