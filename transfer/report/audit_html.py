"""audit.html: `transfer audit`'s findings on one self-contained page in report.html's
style, a section per kind of finding, each image beside the ones it is compared with
(a copy's original; a label issue's nearest images of the suggested class)."""

from datetime import datetime

import numpy as np

from transfer.data.duplicates import DUPLICATE_THRESHOLD, normalised
from transfer.findings.labels import nearest_of_class
from transfer.findings.table import KEEP, KINDS, SPLIT_ORDER
from transfer.io import write_text
from transfer.report.gather import pixels_of, thumbnail
from transfer.report.html import render

TEMPLATE = "audit.html.j2"
# Sections in page order: (anchor, title); the kinds of KINDS name theirs.
SECTIONS = (
    ("summary", "Summary"),
    ("labels", "Label issues"),
    ("duplicates", "Duplicates and leaks"),
    ("outliers", "Outliers"),
    ("classes", "Classes"),
    ("images", "Image issues"),
)
assert {kind.section for kind in KINDS.values()} <= {anchor for anchor, _ in SECTIONS}
MAX_SHOWN = 60  # findings drawn per section, highest scores first; issues.csv has all


def write_audit_page(path, audit, images, image_size, batch_size):
    """audit.html of an `AuditResult` (transfer.commands.audit) at `path`, with
    thumbnails of `images` (an `AuditImages` with features) decoded at `image_size`."""
    findings = audit.rows
    by_section = {anchor: [] for anchor, _ in SECTIONS}
    for finding in findings:
        by_section[KINDS[finding.kind].section].append(finding)
    shown = {anchor: rows[:MAX_SHOWN] for anchor, rows in by_section.items()}
    neighbours = _label_neighbours(shown["labels"], images)
    wanted = [f.path for rows in shown.values() for f in rows if f.path and f.kind != "unreadable"]
    wanted += [f.other_path for rows in shown.values() for f in rows if f.other_path]
    wanted += [p for paths in neighbours.values() for p in paths]
    thumbnails = _thumbnails(wanted, images.files, image_size, batch_size)

    def item(finding):
        return {
            **vars(finding),
            "title": finding.kind.replace("_", " "),
            "cleaned": finding.action != KEEP,
            "image": thumbnails.get(finding.path),
            "other": thumbnails.get(finding.other_path),
            "neighbours": [thumbnails.get(p) for p in neighbours.get(finding.path, ())],
        }

    page = {
        "title": f"transfer audit: {audit.data}",
        "generated": datetime.now().isoformat(timespec="seconds"),
        "summary": audit.summary_rows(),
        "kinds": {kind: vars(row) for kind, row in KINDS.items()},
        "counts": audit.counts,
        "notes": audit.notes,
        "items": {anchor: [item(f) for f in rows] for anchor, rows in shown.items()},
        "totals": {anchor: len(rows) for anchor, rows in by_section.items()},
        "classes": [
            {"name": name, **{s: row.get(s) for s in SPLIT_ORDER}, "noise": row["label_noise"]}
            for name, row in audit.classes.items()
        ],
        "splits": [s for s in SPLIT_ORDER if any(row.get(s) for row in audit.classes.values())],
        "threshold": audit.clean_threshold,
        "duplicate_threshold": DUPLICATE_THRESHOLD,
        "files": images.files,
        "max_shown": MAX_SHOWN,
    }
    return write_text(path, render(page, TEMPLATE, SECTIONS))


def _label_neighbours(findings, images):
    """{path of a label issue: the paths of its suggested class's nearest images}."""
    if not findings:
        return {}
    unit = normalised(images.features, images.features.mean(axis=0))
    index = {path: i for i, path in enumerate(images.paths)}
    names = {name: k for k, name in enumerate(images.class_names)}
    return {
        f.path: [
            images.paths[j]
            for j in nearest_of_class(
                unit, index[f.path], images.labels == names[f.suggested_label]
            )
        ]
        for f in findings
    }


def _thumbnails(paths, files, image_size, batch_size):
    """{path: inline thumbnail} of the distinct `paths`, decoded by the pipeline in one
    pass; none for TFDS data (no files to decode one by one)."""
    if not files:
        return {}
    distinct = list(dict.fromkeys(paths))
    size = (image_size, image_size) if np.ndim(image_size) == 0 else tuple(image_size)
    pixels = pixels_of(distinct, size, batch_size)
    return {path: thumbnail(image) for path, image in zip(distinct, pixels)}
