"""The audit's checks in feature space and of the class counts: duplicates and leaks
(report.html's check, `transfer.data.duplicates`, plus files with the same bytes),
outliers, and classes too small or too rare."""

import numpy as np

from transfer.data.dataset import label_counts
from transfer.data.duplicates import find_duplicates, normalised, same_bytes
from transfer.data.sources import FEW_TRAINING_IMAGES
from transfer.findings.table import SPLIT_ORDER, Finding

# Outliers: an image whose mean cosine distance to its nearest images is this many
# (scaled) median absolute deviations above the median image's. Measured on
# Fashion-MNIST (docs/benchmarks.md, "Audit").
OUTLIER_NEIGHBOURS = 10
OUTLIER_MADS = 6.0
MIN_VALIDATION_IMAGES = 5  # per class: fewer, and its validation accuracy moves in 20-point steps
IMBALANCE_RATIO = 10  # a class with under a tenth of the largest class's training images


def duplicates(images):
    """Leaks (a copy in a later split of an image of an earlier one: report.html's
    check), exact copies (the same bytes) and near-duplicates within a split."""
    exact = dict(same_bytes(images.paths)) if images.files else {}  # the first is earlier
    findings = []
    for position, split in enumerate(SPLIT_ORDER):
        rows = np.flatnonzero(images.splits == split)
        earlier = np.flatnonzero(np.isin(images.splits, SPLIT_ORDER[:position]))
        copied = {int(i): exact[i] for i in rows if i in exact}
        for i, first in copied.items():
            kind = "leak" if images.splits[first] != split else "exact_copy"
            findings.append(_pair(images, kind, i, first, 1.0, "the same bytes"))
        if not len(rows):
            continue
        for q, t, s in find_duplicates(images.features[rows]):
            if rows[q] not in copied:
                findings.append(_pair(images, "near_duplicate", rows[q], rows[t], s))
        if len(earlier):
            for q, t, s in find_duplicates(images.features[earlier], images.features[rows]):
                if rows[q] not in copied:
                    findings.append(_pair(images, "leak", rows[q], earlier[t], s))
    return findings


def _pair(images, kind, index, original, similarity, how=None):
    labels = (images.label_of(index), images.label_of(original))
    detail = how or f"cosine similarity {similarity:.4f}"
    if labels[0] != labels[1]:
        detail += f"; labelled {labels[1]} there"
    return Finding(
        kind,
        images.paths[index],
        float(similarity),
        split=str(images.splits[index]),
        given_label=labels[0],
        other_path=images.paths[original],
        detail=f"{detail} ({images.splits[original]})",
    )


def outliers(images):
    """Images far from every class: the mean cosine distance to their nearest images
    (centred features; as many as the smallest class has others, OUTLIER_NEIGHBOURS
    at most) is more than OUTLIER_MADS scaled median absolute deviations above the
    median image's."""
    from sklearn.neighbors import NearestNeighbors

    # As many neighbours as the smallest class (of two images or more) has others.
    sizes = np.bincount(images.labels)
    sizes = sizes[sizes >= 2]
    if not len(sizes) or len(images) < 3:
        return []
    neighbours = min(OUTLIER_NEIGHBOURS, int(sizes.min()) - 1)
    train = images.splits == "train"
    unit = normalised(images.features, images.features[train].mean(axis=0))
    # Unit rows: the euclidean distance orders as the cosine's; cosine distance = d^2 / 2.
    found = NearestNeighbors(n_neighbors=neighbours + 1).fit(unit).kneighbors(unit)
    distances, nearest = found[0][:, 1:] ** 2 / 2, found[1][:, 1:]  # less itself
    isolation = distances.mean(axis=1)
    median = np.median(isolation)
    spread = 1.4826 * np.median(np.abs(isolation - median))  # a standard deviation, robustly
    cutoff = median + OUTLIER_MADS * max(spread, 1e-6)
    rank = np.argsort(np.argsort(isolation, kind="stable"), kind="stable") / len(images)
    return [
        Finding(
            "outlier",
            images.paths[i],
            float(rank[i]),
            split=str(images.splits[i]),
            given_label=images.label_of(i),
            other_path=images.paths[nearest[i, 0]],
            detail=f"mean cosine distance to its {neighbours} nearest images "
            f"{isolation[i]:.3f}; the median image's {median:.3f}",
        )
        for i in np.flatnonzero(isolation > cutoff)
    ]


def class_balance(images):
    """(findings, {class: {split: images}}): classes with too few training images to
    learn (the data checks' warning) or validation images to validate, and classes
    under a tenth of the largest one's training images."""
    names = images.class_names
    per_split = {
        split: label_counts(images.labels[images.splits == split], len(names))
        for split in SPLIT_ORDER
        if (images.splits == split).any()
    }
    table = {
        name: {split: int(c[k]) for split, c in per_split.items()} for k, name in enumerate(names)
    }
    train = per_split["train"]
    findings = []
    for k, name in enumerate(names):
        needs = [("train", FEW_TRAINING_IMAGES, "to learn it")]
        if "val" in per_split:
            needs.append(("val", MIN_VALIDATION_IMAGES, "to validate it"))
        short = [(split, n, why) for split, n, why in needs if per_split[split][k] < n]
        if short:
            split, needed, _ = short[0]
            findings.append(
                Finding(
                    "small_class",
                    "",
                    1.0 - per_split[split][k] / needed,
                    split=split,
                    given_label=name,
                    detail="; ".join(
                        f"{per_split[s][k]} {s} images, fewer than {n} {why}" for s, n, why in short
                    ),
                )
            )
        if train[k] * IMBALANCE_RATIO < train.max():
            findings.append(
                Finding(
                    "imbalance",
                    "",
                    1.0 - train[k] / train.max(),
                    split="train",
                    given_label=name,
                    detail=f"{train[k]} training images; the largest class has {train.max()}",
                )
            )
    return findings, table
