#!/usr/bin/env python
"""The probe's cost against the number of images, side by side in one run.

For each image folder given (--data FOLDER, any number, smallest first): the backbone
pass (`transfer embed`, random initialisation at --image-size) and then, on its
features, the probe as `transfer` fits it now and, up to --full-cv-up-to training
images, the probe as it was before (scikit-learn's LogisticRegressionCV on every
image, 10 values of C x 5 folds, float64). Above the sizes this machine can embed,
--synthetic N,... writes features directly (rows of the largest folder's, resampled
with noise) and fits the probe on them; their backbone pass is extrapolated from the
largest folder's throughput, and marked so.

Every stage runs in a fresh process: wall time and peak RSS (ru_maxrss). At each size
it also reports the validation accuracy of the chosen C's neighbours on the grid,
each fitted on all training images (--oracle: whether another C would have done
better), and at the end the growth exponents log(t2/t1)/log(n2/n1).

    .venv/bin/python scripts/benchmark_probe.py --data runs/fm6000 --data runs/fm60k \\
        --synthetic 200000,600000 --oracle --json runs/bench-probe.json
"""

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
TRANSFER = str(Path(PYTHON).parent / "transfer")


def child_peak_mb():
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def timed(command):
    """Run `command` in a fresh process: (seconds, peak RSS MB, its last stdout line).
    RUSAGE_CHILDREN keeps the largest child so far: each stage runs in a process of its
    own started from a fresh grandparent, so the figure is the stage's."""
    wrapper = [PYTHON, "-c", _MEASURE, *command]
    start = time.monotonic()
    done = subprocess.run(wrapper, capture_output=True, text=True, cwd=ROOT)
    seconds = time.monotonic() - start
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    peak = json.loads(lines[-1])["peak_mb"]
    return seconds, peak, (lines[-2] if len(lines) > 1 else "")


# Runs its arguments as a child and prints the child's peak RSS: a grandchild per stage.
_MEASURE = """
import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, text=True)
print(done.stdout.strip())
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
sys.exit(done.returncode)
"""

# The probe on an embeddings file, in a process of its own; prints a JSON line.
_PROBE = """
import json, sys, time
import numpy as np
from transfer.train import logistic
path, method, oracle, stability = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
if path.endswith(".npz"):
    d = np.load(path)
    features, labels, splits = d["features"], d["labels"], d["splits"]
    train, val = splits == "train", splits == "val"
    train_x, train_y, val_x, val_y = features[train], labels[train], features[val], labels[val]
else:
    train_x = np.load(path, mmap_mode="r")
    labels = np.load(path[:-4] + "-labels.npy")
    n_val = len(labels) // 5
    train_x, val_x = train_x[:-n_val], train_x[-n_val:]
    train_y, val_y = labels[:-n_val], labels[-n_val:]
start = time.monotonic()
if method == "full-cv":  # before (until 2026-12-05): LogisticRegressionCV on every image
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    mean, std = train_x.mean(0), train_x.std(0)
    std[std == 0] = 1
    prepare = lambda x: ((np.asarray(x, np.float64) - mean) / std)
    regression = LogisticRegressionCV(Cs=10, cv=StratifiedKFold(5, shuffle=True, random_state=0),
        max_iter=2000, random_state=0, scoring="accuracy", n_jobs=2).fit(prepare(train_x), train_y)
    probe = logistic.Probe(prepare, regression)
else:
    probe = logistic.fit_logistic_regression(train_x, train_y, int(labels.max()) + 1)
seconds = time.monotonic() - start
def accuracy(p):
    fitted = p[-1]
    return float((fitted.classes_[p.predict_proba(val_x).argmax(1)] == val_y).mean())
row = {"train": len(train_y), "seconds": seconds, "C": logistic.fitted_c(probe),
       "val_accuracy": accuracy(probe)}
if oracle:  # the chosen C's neighbours on the grid, fitted on all training images
    grid = list(np.logspace(-4, 4, logistic.C_GRID))
    at = int(np.argmin(np.abs(np.log(grid) - np.log(row["C"]))))
    scores = {}
    for c in grid[max(0, at - 1) : at + 2]:
        scores[float(c)] = accuracy(logistic.fit_logistic_regression(train_x, train_y,
            int(labels.max()) + 1, c=float(c)))
    row["oracle"] = max(scores.values())
    row["oracle_C"] = max(scores, key=scores.get)
    row["grid"] = scores
if stability:  # the C that cross-validation chooses on stratified subsamples of each size
    prepare = logistic._standardizer(train_x)
    order = logistic.stratified_order(train_y, 0)
    row["C_by_subsample"] = {}
    for size in (1000, 2000, 4000, 8000, 16000):
        if size <= len(train_y):
            rows = np.sort(order[:size])
            c, _ = logistic.cross_validate_c(prepare(train_x[rows]), train_y[rows])
            row["C_by_subsample"][size] = c
print(json.dumps(row))
"""


def probe(path, method, oracle=False, stability=False):
    flags = ["1" if oracle else "0", "1" if stability else "0"]
    seconds, peak, line = timed([PYTHON, "-c", _PROBE, str(path), method, *flags])
    row = json.loads(line)
    row.update(process_seconds=seconds, peak_mb=peak)
    return row


def embed(folder, out, image_size):
    command = [TRANSFER, "embed", "--data", folder, "--out", out, "--weights", "none",
               "--image-size", str(image_size), "--batch-size", "64", "--overwrite"]  # fmt: skip
    seconds, peak, _ = timed(command)
    import numpy as np

    images = len(np.load(out)["labels"])
    return {"images": images, "seconds": seconds, "peak_mb": peak}


def synthetic(source, n, out, seed=0):
    """n feature rows resampled from `source`'s training rows, with noise of a tenth of
    each feature's spread, written to .npy (memory-mapped) with labels beside."""
    import numpy as np

    if Path(out).exists():
        return out
    data = np.load(source)
    features, labels = data["features"], data["labels"]
    rng = np.random.default_rng(seed)
    spread = features.std(axis=0) * 0.1
    mapped = np.lib.format.open_memmap(out, "w+", np.float32, (n, features.shape[1]))
    picked = rng.integers(0, len(labels), n)
    for start in range(0, n, 50_000):
        rows = picked[start : start + 50_000]
        noise = rng.normal(size=(len(rows), features.shape[1])).astype(np.float32) * spread
        mapped[start : start + len(rows)] = features[rows] + noise
    mapped.flush()
    np.save(out[:-4] + "-labels.npy", labels[picked])
    return out


def exponent(rows, key):
    pairs = [(r["images"], r[key]) for r in rows if r.get(key)]
    return [
        round(math.log(t2 / t1) / math.log(n2 / n1), 2)
        for (n1, t1), (n2, t2) in zip(pairs, pairs[1:], strict=False)
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", default=[], help="image folder (repeat)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--synthetic", default="", help="sizes of features written directly")
    parser.add_argument("--full-cv-up-to", type=int, default=6000)
    parser.add_argument("--oracle", action="store_true")
    parser.add_argument("--work", default="runs/probe", help="folder for the features")
    parser.add_argument("--json", help="write the rows here too")
    parser.add_argument(
        "--features",
        action="append",
        default=[],
        help="an embeddings .npz made before: its probe only (no backbone pass timed)",
    )
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    rows = []
    for folder in args.data:
        out = os.path.join(args.work, Path(folder).name + f"-{args.image_size}.npz")
        row = {
            "data": folder,
            **{f"embed_{k}": v for k, v in embed(folder, out, args.image_size).items()},
        }
        row["images"] = row["embed_images"]
        row["probe"] = probe(out, "now", args.oracle, stability=folder == args.data[-1])
        if row["probe"]["train"] <= args.full_cv_up_to:
            row["before"] = probe(out, "full-cv")
        rows.append(row)
        print(json.dumps(row), flush=True)
    for path in args.features:
        row = {"data": path, "embed_seconds": None, "embed_estimate": None}
        row["probe"] = probe(path, "now", args.oracle, stability=True)
        row["images"] = row["probe"]["train"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.synthetic and rows:
        largest = rows[-1]
        timed_rows = [r for r in rows if r["embed_seconds"]]
        per_image = (
            timed_rows[-1]["embed_seconds"] / timed_rows[-1]["images"] if timed_rows else None
        )
        source = (
            largest["data"]
            if largest["data"].endswith(".npz")
            else os.path.join(args.work, Path(largest["data"]).name + f"-{args.image_size}.npz")
        )
        for n in (int(s) for s in args.synthetic.split(",")):
            out = synthetic(source, n, os.path.join(args.work, f"synthetic-{n}.npy"))
            row = {"data": f"synthetic {n}", "images": n, "embed_seconds": None,
                   "embed_estimate": per_image and per_image * n,
                   "probe": probe(out, "now", args.oracle)}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(
        "| images | backbone pass | probe now: s, C, val acc | peak RSS MB | before: s, val acc, peak MB | best C of the grid: val acc |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        p, b = r["probe"], r.get("before")
        embed_text = (f"{r['embed_seconds']:.0f} s" if r["embed_seconds"]
                      else f"~{r['embed_estimate']:.0f} s (extrapolated)" if r["embed_estimate"]
                      else "not timed")  # fmt: skip
        before = f"{b['seconds']:.0f} s, {b['val_accuracy']:.4f}, {b['peak_mb']:,.0f}" if b else "-"
        oracle = f"{p['oracle']:.4f} (C={p['oracle_C']:.3g})" if "oracle" in p else "-"
        print(f"| {r['images']:,} | {embed_text} | {p['seconds']:.0f} s, {p['C']:.3g}, "
              f"{p['val_accuracy']:.4f} | {p['peak_mb']:,.0f} | {before} | {oracle} |")  # fmt: skip
    for r in rows:
        r["probe_seconds"] = r["probe"]["seconds"]
    for r in rows:
        if "C_by_subsample" in r["probe"]:
            print("C chosen on subsamples of", r["data"], r["probe"]["C_by_subsample"])
    print("growth exponents, probe:", exponent(rows, "probe_seconds"),
          "backbone pass:", exponent(rows, "embed_seconds"))  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
