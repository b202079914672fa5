"""What an audit finds: one row per finding, the one table of the kinds of finding (the
page's section, what it means, what a clean CSV does with the image), and the
findings as a table: a pandas DataFrame when pandas is installed, issues.csv."""

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from transfer.data.records import TFRECORD_SOURCE
from transfer.io import write_csv

LEAVE_OUT, RELABEL, KEEP = "left out", "relabelled", ""  # what a clean CSV does
SPLIT_ORDER = ("train", "val", "test")  # a copy in a later split leaks from an earlier one


@dataclass(frozen=True)
class Kind:
    section: str  # the anchor of its section of audit.html
    description: str  # what it means, and what its score is
    cleaned: bool  # a clean CSV leaves the image out (a label issue: or relabels it)


# kind -> Kind, in the order of the page and of issues.csv. Every score is in [0, 1]:
# higher is surer (or worse); a clean CSV acts on a label issue from its threshold.
KINDS = {
    "label_issue": Kind(
        "labels",
        "the given label is likely wrong (confident learning on out-of-fold probabilities); "
        "score: 1 - the probability of the given label",
        True,
    ),
    "leak": Kind(
        "duplicates",
        "a validation or test image is a copy or near-copy of an image of an earlier split "
        "(train, then val): it inflates the held-out scores; score: cosine similarity",
        True,
    ),
    "exact_copy": Kind(
        "duplicates", "the same bytes as an earlier file of the same split; score: 1", True
    ),
    "near_duplicate": Kind(
        "duplicates",
        "a near-copy of an earlier image of the same split; score: cosine similarity",
        False,
    ),
    "outlier": Kind(
        "outliers",
        "far from every class: its nearest images in feature space are far away; "
        "score: the share of images less isolated",
        True,
    ),
    "small_class": Kind(
        "classes",
        "too few images to learn the class or to validate it; score: 1 - images / images needed",
        False,
    ),
    "imbalance": Kind(
        "classes",
        "under a tenth of the largest class's training images; score: 1 - its share of those",
        False,
    ),
    "unreadable": Kind("images", "not a readable image: training skips it; score: 1", True),
    "tiny": Kind(
        "images",
        "much smaller than the data set's typical image; score: 1 - its shorter side / "
        "the median shorter side",
        True,
    ),
    "aspect_ratio": Kind(
        "images",
        "far from square: resizing to the model's square input squashes it; score: 1 - "
        "short side / long side",
        False,
    ),
    "constant": Kind(
        "images",
        "nearly one colour (black, white, blank): nothing of the class to see; score: 1 - "
        "the pixels' standard deviation / 255",
        True,
    ),
    "colour_mode": Kind(
        "images",
        "greyscale among colour images, or colour among greyscale ones; score: 1 - the "
        "share of images of its mode",
        False,
    ),
    "exif_orientation": Kind(
        "images",
        "stored turned, with an EXIF orientation: says whether transfer turns it upright "
        "as browsers show it; score: 1 when it does not, 0.5 when it does",
        False,
    ),
}


@dataclass
class Finding:
    """One thing wrong with one image (or, for a class, with its images)."""

    kind: str  # a key of KINDS
    path: str  # the image; "" for a class
    score: float  # in [0, 1], see KINDS
    split: str = ""
    given_label: str = ""
    suggested_label: str = ""  # a label issue's likelier label
    other_path: str = ""  # the copy's original; a label issue's or outlier's nearest image
    detail: str = ""  # in words
    action: str = KEEP  # what a clean CSV does with the image: LEAVE_OUT, RELABEL or KEEP


COLUMNS = tuple(f.name for f in fields(Finding))


def decide(findings, threshold, relabel=False):
    """Each finding's `action` in a clean CSV: a kind that cleaning acts on leaves its
    image out; a label issue only when its score (the probability that the given label
    is wrong) is at least `threshold`, and with `relabel` it gets its suggested label
    instead. (The other kinds' scores say how close or how bad: found, they act.)"""
    for finding in findings:
        finding.action = KEEP
        label_issue = finding.kind == "label_issue"
        if finding.path and KINDS[finding.kind].cleaned:
            if not label_issue or finding.score >= threshold:
                finding.action = RELABEL if label_issue and relabel else LEAVE_OUT
    return findings


def in_order(findings):
    """Findings by kind (KINDS' order), then highest score first, then path."""
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (order[f.kind], -f.score, f.path))


def counts(findings):
    """{kind: number of findings}, every kind included."""
    found = dict.fromkeys(KINDS, 0)
    for finding in findings:
        found[finding.kind] += 1
    return found


def as_table(findings):
    """The findings as a pandas DataFrame (columns COLUMNS), or a list of dicts
    where pandas is not installed."""
    rows = [asdict(f) for f in findings]
    try:
        import pandas
    except ImportError:
        return rows
    return pandas.DataFrame(rows, columns=list(COLUMNS))


def write_issues(path, findings):
    """issues.csv: one row per finding, COLUMNS, scores to 4 decimals."""
    rows = [
        [round(float(v), 4) if k == "score" else v for k, v in asdict(f).items()] for f in findings
    ]
    return write_csv(path, list(COLUMNS), rows)


@dataclass
class AuditImages:
    """Every image an audit looks at, all splits in one list, with its backbone
    features (a row each)."""

    paths: list
    labels: np.ndarray  # class indices
    splits: np.ndarray  # "train", "val" or "test" per image
    class_names: list
    features: np.ndarray = None
    files: bool = True  # False for TFDS and TFRecord shards: no image files to check

    @classmethod
    def of(cls, dataset):
        names = [name for name in SPLIT_ORDER if len(dataset.splits.get(name, ()))]
        return cls(
            paths=[str(p) for name in names for p in dataset.splits[name].paths],
            labels=np.concatenate([dataset.splits[name].labels for name in names]),
            splits=np.array([name for name in names for _ in dataset.splits[name].paths]),
            class_names=list(dataset.class_names),
            files=dataset.source not in ("tfds", TFRECORD_SOURCE),
        )

    def __len__(self):
        return len(self.paths)

    def label_of(self, index):
        return self.class_names[self.labels[index]]


@dataclass
class AuditResult:
    """What `transfer.commands.audit.audit` found, and where it wrote it."""

    data: str
    out: Path
    findings: object  # the table: a pandas DataFrame (a list of dicts without pandas)
    rows: list  # the same findings as `Finding`s, in order
    counts: dict  # {kind: findings}
    classes: dict  # {class: {split: images, ..., "label_noise": estimated rate or None}}
    notes: dict  # {section: why part of it was not checked}
    images: int
    backbone: str
    image_size: int
    clean_threshold: float
    relabel: bool = False
    clean_csv: Path = None
    seconds: dict = field(default_factory=dict)  # {step: wall seconds}, "total" among them

    @property
    def left_out(self):
        """Images a clean CSV leaves out."""
        return len(self._paths(LEAVE_OUT))

    @property
    def relabelled(self):
        """Images a clean CSV relabels (and keeps)."""
        return len(self._paths(RELABEL) - self._paths(LEAVE_OUT))

    def _paths(self, action):
        return {f.path for f in self.rows if f.action == action}

    def noise_rate(self):
        """The estimated share of wrong labels over all checked images, or None."""
        rated = [
            (c["label_noise"], sum(c.get(s, 0) for s in SPLIT_ORDER))
            for c in self.classes.values()
            if c["label_noise"] is not None
        ]
        total = sum(n for _, n in rated)
        return sum(r * n for r, n in rated) / total if total else None

    def summary_rows(self):
        """(label, value) rows of the page's summary."""
        splits = {s: sum(c.get(s, 0) for c in self.classes.values()) for s in SPLIT_ORDER}
        rate = self.noise_rate()
        return [
            ("data", self.data),
            ("images", f"{self.images}: " + ", ".join(f"{s} {n}" for s, n in splits.items() if n)),
            ("classes", f"{len(self.classes)}: {', '.join(self.classes)}"),
            ("backbone", f"{self.backbone}, {self.image_size} px"),
            ("estimated label noise", "not estimated" if rate is None else f"{100 * rate:.1f}%"),
            (
                "findings",
                ", ".join(f"{kind.replace('_', ' ')} {n}" for kind, n in self.counts.items() if n)
                or "none",
            ),
            (
                "a clean CSV",
                f"leaves out {self.left_out} images"
                + (f", relabels {self.relabelled}" if self.relabel else "")
                + f" (label issues scored at least {self.clean_threshold})"
                + (f": {self.clean_csv}" if self.clean_csv else "; none written"),
            ),
        ]

    def record(self, options):
        """audit.json: the options, the counts, the classes, the clean CSV, the times."""
        return {
            "data": self.data,
            "options": options.as_dict(),
            "images": self.images,
            "counts": self.counts,
            "classes": self.classes,
            "label_noise": self.noise_rate(),
            "notes": self.notes,
            "clean": {
                "csv": str(self.clean_csv) if self.clean_csv else None,
                "threshold": self.clean_threshold,
                "relabel": self.relabel,
                "left_out": self.left_out,
                "relabelled": self.relabelled,
            },
            "seconds": self.seconds,
        }
