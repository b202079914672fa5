"""`transfer audit`: what is wrong with a dataset before training on it. One pass of the
backbone (through the feature cache `finetune` shares) and the probe's
cross-validation find likely label errors, duplicates and leaks across splits,
outliers, classes too small, and image issues; the findings go to issues.csv,
audit.html and, with `write_clean`, a CSV of labels that `finetune` takes as it is."""

import logging
import os
import time
from pathlib import Path

import numpy as np

from transfer.config import apply_config
from transfer.data.csv_labels import is_table, table_name
from transfer.data.dataset import TFDS_PREFIX
from transfer.data.pipeline import images_only
from transfer.data.records import is_records
from transfer.data.sources import check_source_exists
from transfer.errors import InvalidArgumentError
from transfer.findings import checks, labels
from transfer.findings import images as image_checks
from transfer.findings.table import (
    LEAVE_OUT,
    RELABEL,
    SPLIT_ORDER,
    AuditImages,
    AuditResult,
    as_table,
    counts,
    decide,
    in_order,
    write_issues,
)
from transfer.io import write_csv, write_json
from transfer.lazy import keras
from transfer.models.heads import MULTI_LABEL, pooled_features
from transfer.models.identify import architecture_of
from transfer.report.audit_html import write_audit_page
from transfer.runs import check_run_dir, prepare_run_dir
from transfer.train.distribute import make_strategy
from transfer.train.feature_cache import compute_features
from transfer.train.features import cached_features
from transfer.train.logistic import FOLDS
from transfer.train.options import resolve_options
from transfer.train.run import build_model, load_data

logger = logging.getLogger("transfer")

__all__ = ["AuditResult", "audit"]

ISSUES_CSV, AUDIT_HTML, AUDIT_JSON = "issues.csv", "audit.html", "audit.json"
CLEAN_THRESHOLD = 0.5  # a clean CSV acts on a label issue scored at least this
CLEAN_COLUMNS = ("path", "label", "split", "audit")  # what finetune reads, and why a row changed


def audit(
    data=None,
    out=None,
    write_clean=None,
    relabel=False,
    clean_threshold=CLEAN_THRESHOLD,
    folds=FOLDS,
    overwrite=False,
    options=None,
    config=None,
    **overrides,
):
    """Audit `data` (a folder, `tfds:NAME`, or a CSV file or DataFrame of paths and
    labels, read as `finetune` reads it) and write issues.csv, audit.html and
    audit.json to the folder `out`.

    The backbone and the data options are the fields of `FinetuneOptions` (`options`,
    keywords, or a `config` file's, as finetune reads it), with finetune's defaults;
    the features come from the feature cache a run on the same data shares.
    `write_clean` (a .csv path) also writes the labels without the images of the
    findings a clean CSV acts on (`KINDS`; a label issue when its score is at least
    `clean_threshold`), or, with `relabel`, with a label issue's suggested label; nothing in the data's folder is
    moved or changed. `folds`: the probe's cross-validation. Returns an `AuditResult`:
    its `findings` are a table (a pandas DataFrame when pandas is installed), one row
    per finding.
    """
    started = time.monotonic()
    if out is None:
        raise InvalidArgumentError("out= is required: the folder for the audit's files.")
    given = dict(overrides)
    source, data, overrides = apply_config(config, data, overrides)
    options = resolve_options(options, **overrides)
    if not 0.0 <= clean_threshold <= 1.0:
        raise InvalidArgumentError(f"clean_threshold={clean_threshold} must be in [0, 1].")
    # Refused in a moment, before TensorFlow loads: no data, an --out in use, a clean CSV
    # that cannot be written where finetune would read it.
    check_source_exists(data)
    check_run_dir(out, overwrite=overwrite)
    clean = _clean_csv_path(write_clean, data, options, overwrite) if write_clean else None
    labels.cleanlab()  # the extra that finds label issues, before the long part
    keras.utils.set_random_seed(options.seed)  # random weights as finetune's, for the cache
    dataset = load_data(data, options)
    if source is not None:
        source.check_data(dataset, given)
    if dataset.task == MULTI_LABEL:
        raise InvalidArgumentError(
            f"{table_name(data)} is multi-label: the audit is for one label per image."
        )
    out = prepare_run_dir(out, overwrite=overwrite)
    found = AuditImages.of(dataset)
    found.features = _features(dataset, options)
    seconds = {"data and features": time.monotonic() - started}
    label_findings, noise, note = labels.label_issues(found, folds, options.seed)
    seconds["labels"] = time.monotonic() - started - sum(seconds.values())
    class_findings, class_counts = checks.class_balance(found)
    findings = label_findings + checks.duplicates(found) + checks.outliers(found)
    seconds["duplicates and outliers"] = time.monotonic() - started - sum(seconds.values())
    findings += (
        class_findings
        + image_checks.unreadable(dataset.skipped)
        + image_checks.image_issues(found, options.batch_size)
    )
    seconds["images"] = time.monotonic() - started - sum(seconds.values())
    findings = decide(in_order(findings), clean_threshold, relabel)
    result = AuditResult(
        data=table_name(data),
        out=out,
        findings=as_table(findings),
        rows=findings,
        counts=counts(findings),
        classes={
            name: {**class_counts[name], "label_noise": noise.get(name)}
            for name in dataset.class_names
        },
        notes={"labels": note} if note else {},
        images=len(found),
        backbone=f"{options.architecture.display_name}, weights {options.weights or 'none'}",
        image_size=options.image_size,
        clean_threshold=clean_threshold,
        relabel=relabel,
    )
    if not found.files:
        result.notes["images"] = "TFDS data or TFRecord shards: no image files to check"
    if clean is not None:
        result.clean_csv = _write_clean(clean, found, findings)
    write_issues(out / ISSUES_CSV, findings)
    write_audit_page(out / AUDIT_HTML, result, found, options.image_size, options.batch_size)
    seconds["page"] = time.monotonic() - started - sum(seconds.values())
    seconds["total"] = time.monotonic() - started
    result.seconds = {step: round(s, 1) for step, s in seconds.items()}
    write_json(out / AUDIT_JSON, result.record(options))
    return result


def _features(dataset, options):
    """The pooled backbone features of every image, split by split as phase 1 caches
    them: a run on the same data and backbone reuses them, and the other way round."""
    model = build_model(dataset, options, make_strategy(options.strategy))
    extractor, name = pooled_features(model), architecture_of(model).name
    features = []
    for split in SPLIT_ORDER:
        part = dataset.splits.get(split)
        if part is None or not len(part):
            continue
        if options.cache_features:
            values = cached_features(extractor, part, options, name)
        else:
            batches = images_only(part, options.image_size, options.batch_size)
            values = compute_features(extractor, batches, len(part), extractor.output.shape[-1])
        features.append(np.asarray(values, dtype=np.float32))
    return np.concatenate(features)


def _image_root(data, options):
    """The folder a dataset's image paths lie in."""
    if hasattr(data, "columns"):
        return Path(options.images or os.getcwd())
    if is_table(data):
        return Path(options.images) if options.images else Path(data).expanduser().parent
    return Path(data).expanduser()


def _clean_csv_path(path, data, options, overwrite):
    """`write_clean` as a Path, refused where finetune could not read it as it is (its
    paths are relative to its folder, which must hold every image) or where it would
    replace a file: the data's own CSV never, another only with `overwrite`."""
    path = Path(path).expanduser()
    if str(data).startswith(TFDS_PREFIX) or is_records(data):
        raise InvalidArgumentError(
            f"write_clean={path}: a clean CSV lists image files, and {data} has none."
        )
    if path.suffix.lower() != ".csv":
        raise InvalidArgumentError(f"write_clean={path}: the clean labels are written as .csv.")
    if is_table(data) and not hasattr(data, "columns") and _same_file(path, data):
        raise InvalidArgumentError(
            f"write_clean={path} is the data's own CSV: the audit changes nothing of it."
        )
    if path.exists() and not overwrite:
        raise InvalidArgumentError(
            f"write_clean={path} exists. Choose another path or pass overwrite=True."
        )
    root, folder = _image_root(data, options).absolute(), path.absolute().parent
    if os.path.commonpath([root, folder]) != str(folder):
        raise InvalidArgumentError(
            f"write_clean={path}: its folder must hold the images ({root}), as finetune "
            f"reads a CSV's paths inside its own folder; e.g. write_clean="
            f"{root.parent / path.name}."
        )
    return path


def _same_file(path, other):
    return os.path.abspath(path) == os.path.abspath(Path(other).expanduser())


def _write_clean(path, found, findings):
    """The clean CSV: every image with its split, less those left out; a relabelled
    image with its suggested label; the `audit` column names the findings of a row."""
    left_out = {f.path for f in findings if f.action == LEAVE_OUT}
    relabelled = {f.path: f.suggested_label for f in findings if f.action == RELABEL}
    notes = {}
    for f in findings:
        notes.setdefault(f.path, []).append(f"{f.kind} {f.score:.2f}")
    folder = path.absolute().parent
    rows = []
    for i, image in enumerate(found.paths):
        if image in left_out:
            continue
        why = "; ".join(notes.get(image, ()))
        if image in relabelled:
            why = f"relabelled from {found.label_of(i)}: {why}"
        rows.append(
            [
                os.path.relpath(os.path.abspath(image), folder),
                relabelled.get(image, found.label_of(i)),
                found.splits[i],
                why,
            ]
        )
    write_csv(path, list(CLEAN_COLUMNS), rows)
    return path
