#!/usr/bin/env python
"""Does `transfer audit` find label errors, and does training on its clean CSV help?

On a folder of train/ and test/ class folders (Fashion-MNIST's by default: see
scripts/fashion_mnist_to_folders.py), in OUT:

noise      a copy of the images (data/), and noisy.csv: the training images with
           --noise of their labels flipped at random (seeded) to another class, and
           the test images with their own labels (split column: test); copies of
           --planted training images are planted in the test split (exact copies,
           enlarged 2x, re-encoded as JPEG: leaks the audit must find);
audit      `transfer audit` on noisy.csv, twice, each with a cold feature cache: on
           a seeded half of its rows and on all of them (the cost's growth with the
           number of images); recall and precision of its label issues against the
           flipped labels; the planted leaks found;
finetune   `transfer finetune` on noisy.csv, on the audit's clean CSV and on the
           true labels (true.csv: the control, what perfect cleaning would give),
           each way in --recipes (RECIPES): phase 1 alone (the linear probe's head,
           which the default recipe keeps when phase 2 cannot beat it), phase 2 kept
           (conv5 fine-tuned, `keep="last"`), and a hidden-layer head, conv5 or every
           layer trained until it fits its labels; each model scored by `transfer
           evaluate` on the original test folder (`--data`'s test/: the clean CSV leaves the test
           images out that leak, so the runs' own test splits differ) and on each
           --test-data folder.

Everything goes through transfer's Python API in this one process. Prints the
figures and writes OUT/results.json. Example (docs/benchmarks.md, "Audit"):

    .venv/bin/python scripts/benchmark_audit.py --data runs/t5000 \\
        --weights runs/audit-bench/source_notop.h5 --image-size 32 --out runs/audit-bench/t5000
"""

import argparse
import csv
import itertools
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
PLANTED_KINDS = ("exact", "larger", "jpeg")  # how a training image is copied into test
# How each labels' run trains: FinetuneOptions fields over finetune's defaults.
RECIPES = {
    "phase 1": {"fine_tune_from": "none"},
    "phase 2 kept": {"keep": "last"},
    # conv5 trained until it fits its training labels, the wrong ones too (Zhang et
    # al., "Understanding deep learning requires rethinking generalization", ICLR
    # 2017): no augmentation, no early stopping, the last epoch kept. Where label noise
    # costs accuracy, and so where cleaning can buy it back.
    "conv5 fitted": {
        "fine_tune_from": "conv5",
        "fine_tune_learning_rate": 1e-3,
        "fine_tune_epochs": 15,
        "augment": "none",
        "early_stopping_patience": 0,
        "keep": "last",
    },
    # A head of one hidden layer on the frozen features, trained until it fits its
    # labels: it learns the wrong ones by heart in minutes (conv5 and all layers did
    # not within their epochs: their last training accuracy stayed near 0.9).
    "head fitted": {
        "fine_tune_from": "none",
        "hidden_units": 1024,
        "dropout": 0.0,
        "head_epochs": 100,
        "head_learning_rate": 1e-3,
        "early_stopping_patience": 0,
        "keep": "last",
    },
    # The same with every layer trainable (batch norm too): the most capacity to learn
    # the wrong labels by heart.
    "all fitted": {
        "fine_tune_from": "stem",
        "train_bn": True,
        "fine_tune_learning_rate": 1e-3,
        "fine_tune_epochs": 20,
        "augment": "none",
        "early_stopping_patience": 0,
        "keep": "last",
    },
}
# The labels each recipe can train on: the flipped ones, the audit's clean CSV (the
# flagged images left out), its relabelled CSV (`relabel=True`: the flagged images
# kept with the suggested label), and the true labels (the control: what perfect
# cleaning would give).
LABELS = ("noisy", "clean", "relabelled", "true")
SCORES = (0.5, 0.7, 0.9, 0.95)  # label issues' scores at which precision and recall are given


def image_files(folder):
    """{class: sorted image paths} of a folder of class folders."""
    return {
        c.name: sorted(p for p in c.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for c in sorted(Path(folder).iterdir())
        if c.is_dir()
    }


def write_noisy_data(source, out, noise, planted, seed):
    """OUT/data (a copy of `source`'s train/ and test/), OUT/noisy.csv, and what was
    flipped and planted: ({relative path: true label}, [(copy, original)])."""
    data = out / "data"
    shutil.rmtree(data, ignore_errors=True)
    for split in ("train", "test"):
        shutil.copytree(Path(source) / split, data / split)
    rng = np.random.default_rng(seed)
    train, test = image_files(data / "train"), image_files(data / "test")
    classes = sorted(train)
    rows = [(p, c, "train") for c in classes for p in train[c]]
    flipped = {}
    for i in rng.choice(len(rows), round(noise * len(rows)), replace=False):
        path, true, split = rows[i]
        wrong = rng.choice([c for c in classes if c != true])
        rows[i] = (path, str(wrong), split)
        flipped[str(path.relative_to(out))] = true
    copies = []
    unflipped = [r for r in rows if str(r[0].relative_to(out)) not in flipped]
    for n, i in enumerate(rng.choice(len(unflipped), planted, replace=False)):
        original, label, _ = unflipped[i]
        kind = PLANTED_KINDS[n % len(PLANTED_KINDS)]
        copy = data / "test" / label / f"planted_{kind}_{n}.{'jpg' if kind == 'jpeg' else 'png'}"
        if kind == "exact":
            shutil.copyfile(original, copy)
        else:
            image = Image.open(original)
            if kind == "larger":
                image = image.resize((2 * image.width, 2 * image.height), Image.BILINEAR)
            image.convert("RGB").save(copy, **({"quality": 90} if kind == "jpeg" else {}))
        copies.append((str(copy.relative_to(out)), str(original.relative_to(out))))
    rows += [(p, c, "test") for c in classes for p in test[c]]
    rows += [(out / copy, label_of(out / original, rows), "test") for copy, original in copies]
    for name, true_labels in (("noisy", False), ("true", True)):
        with open(out / f"{name}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "label", "split"])
            for p, label, split in rows:
                relative = str(p.relative_to(out))
                label = flipped.get(relative, label) if true_labels else label
                writer.writerow((relative, label, split))
    return flipped, copies


def label_of(path, rows):
    return next(label for p, label, _ in rows if p == path)


def half_of(csv_path, out, seed):
    """A CSV of a seeded half of `csv_path`'s rows (the smaller of the two audits)."""
    with open(csv_path, newline="") as f:
        header, *rows = list(csv.reader(f))
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), len(rows) // 2, replace=False))
    with open(out, "w", newline="") as f:
        csv.writer(f).writerows([header] + [rows[i] for i in keep])
    return out


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, round(time.monotonic() - start, 1)


def run_audit(data, out, args, cache, cold=True, **extra):
    import keras

    from transfer.commands.audit import audit

    if cold:  # the backbone's pass is timed
        shutil.rmtree(cache, ignore_errors=True)
    keras.backend.clear_session()
    result, seconds = timed(
        audit,
        data,
        out,
        overwrite=True,
        arch=args.arch,
        weights=args.weights,
        image_size=args.image_size,
        cache_dir=str(cache),
        seed=args.seed,
        **extra,
    )
    return result, seconds


def label_scores(result, flipped, out):
    """Recall of the flipped labels among the label issues and precision of those: all
    of them, and those scored at least each of SCORES (a clean CSV's threshold)."""
    issues = [f for f in result.rows if f.kind == "label_issue"]
    found = {}
    for score in (0.0, *SCORES):
        flagged = {os.path.relpath(f.path, out) for f in issues if f.score >= score}
        hits = len(flagged & set(flipped))
        found["all" if not score else f"score >= {score}"] = {
            "flagged": len(flagged),
            "found": hits,
            "recall": hits / len(flipped),
            "precision": hits / len(flagged) if flagged else math.nan,
        }
    return {"flipped": len(flipped), **found}


def run_finetune(data, out, args, recipe):
    import keras

    from transfer.commands.finetune import finetune

    keras.backend.clear_session()
    result, seconds = timed(
        finetune,
        data,
        out=out,
        overwrite=True,
        arch=args.arch,
        weights=args.weights,
        image_size=args.image_size,
        seed=args.seed,
        cache_dir=str(args.out / "cache-finetune"),
        **recipe,
    )
    return result, seconds


def test_accuracy(run, test_folder, out):
    """(accuracy, images) of a run's model on the original test folder."""
    from transfer.commands.evaluate import evaluate

    metrics = evaluate(run, test_folder, out, overwrite=True)
    return metrics["accuracy"], metrics["images"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("runs/t5000"), help="train/ and test/")
    parser.add_argument("--out", type=Path, default=Path("runs/audit-bench/t5000"))
    parser.add_argument("--arch", default=None, help="an --arch name (default: ResNet50)")
    parser.add_argument("--weights", default="none", help="the backbone's: a file, imagenet, none")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--noise", type=float, default=0.1, help="share of labels flipped")
    parser.add_argument("--planted", type=int, default=9, help="training images copied to test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audit-only", action="store_true", help="no finetune runs")
    parser.add_argument("--no-half", action="store_true", help="no audit of half the rows")
    parser.add_argument(
        "--recipes", default="phase 1,phase 2 kept", help=f"comma list of {', '.join(RECIPES)}"
    )
    parser.add_argument(
        "--labels", default="noisy,clean,true", help=f"comma list of {', '.join(LABELS)}"
    )
    parser.add_argument(
        "--test-data",
        type=Path,
        action="append",
        default=[],
        help="more test folders every model is scored on (repeatable)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    flipped, planted = write_noisy_data(args.data, args.out, args.noise, args.planted, args.seed)
    noisy = args.out / "noisy.csv"
    # TensorFlow and Keras load now, not in the first audit's time: both sizes time the
    # same steps.
    import keras  # noqa: F401

    results = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine()}

    if not args.no_half:
        half, seconds = run_audit(
            half_of(noisy, args.out / "half.csv", args.seed),
            args.out / "audit-half",
            args,
            args.out / "cache-half",
        )
        results["audit_half"] = {"images": half.images, "seconds": seconds, "steps": half.seconds}
        print(f"audit of {half.images} images: {seconds:.0f} s ({half.seconds})", flush=True)

    clean = args.out / "clean.csv"
    audited, seconds = run_audit(
        noisy, args.out / "audit", args, args.out / "cache-audit", write_clean=clean
    )
    leaks = {os.path.relpath(f.path, args.out) for f in audited.rows if f.kind == "leak"}
    results["audit"] = {
        "images": audited.images,
        "seconds": seconds,
        "steps": audited.seconds,
        "counts": audited.counts,
        "labels": label_scores(audited, flipped, args.out),
        "planted_found": sum(copy in leaks for copy, _ in planted),
        "planted": len(planted),
        "left_out": audited.left_out,
        "label_noise": audited.noise_rate(),
    }
    if not args.no_half:
        growth = math.log(seconds / results["audit_half"]["seconds"]) / math.log(
            audited.images / half.images
        )
        results["audit"]["growth_exponent"] = growth
    print(json.dumps(results["audit"], indent=2), flush=True)
    labels = args.labels.split(",")
    relabelled = args.out / "relabelled.csv"
    if "relabelled" in labels:  # the same audit again (its features cached), relabelling
        run_audit(
            noisy, args.out / "audit-relabel", args, args.out / "cache-audit",
            write_clean=relabelled, relabel=True, cold=False,
        )  # fmt: skip
    if args.audit_only:
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        return

    results["finetune"] = []
    tests = [args.data / "test", *args.test_data]
    sources = {
        "noisy": noisy,
        "clean": clean,
        "relabelled": relabelled,
        "true": args.out / "true.csv",
    }
    for recipe, name in itertools.product(args.recipes.split(","), labels):
        folder = f"{name}-{recipe.replace(' ', '-')}"
        data = sources[name]
        run, seconds = run_finetune(data, args.out / f"run-{folder}", args, RECIPES[recipe])
        scores = {
            str(test): test_accuracy(run.run_dir, test, args.out / f"test{n}-{folder}")
            for n, test in enumerate(tests)
        }
        splits = json.loads((run.run_dir / "config.json").read_text())["dataset"]["splits"]
        results["finetune"].append(
            {
                "labels": name,
                "recipe": recipe,
                "test_accuracy": {test: accuracy for test, (accuracy, _) in scores.items()},
                "test_images": {test: images for test, (_, images) in scores.items()},
                "seconds": seconds,
                "kept": run.metrics["kept"],
                "splits": splits,
                "last_epoch": last_epoch(run.run_dir),
            }
        )
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        accuracies = ", ".join(f"{a:.4f} ({n} images)" for a, n in scores.values())
        fit = last_epoch(run.run_dir).get("accuracy", "")
        print(
            f"{recipe}, {name} labels: test accuracy {accuracies} in {seconds:.0f} s"
            f" (last epoch's training accuracy {fit})",
            flush=True,
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))


def last_epoch(run_dir):
    """The last row of a run's history.csv: does it fit its training labels?"""
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def machine():
    import tensorflow as tf

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
    }


if __name__ == "__main__":
    main()
