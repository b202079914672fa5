#!/usr/bin/env python
"""Each default of `transfer finetune`'s recipe, on and off, side by side in one run.

On the Fashion-MNIST source -> target experiment of `benchmark_transfer.py` (run it
first: this script reuses its source backbone and its target folders), at one label
budget: plain `transfer finetune --weights SOURCE` with its defaults, then the same
with one choice changed per row, and the linear probe on the same backbone. Prints
target test accuracy and wall time per row; writes OUT/ablation-<budget>.json.

    .venv/bin/python scripts/benchmark_transfer.py --out runs/fm --budgets 100 \\
        --methods probe,two-phase --no-reference
    .venv/bin/python scripts/ablation_recipe.py --out runs/fm --budget 100
"""

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchmark_transfer  # noqa: E402

# row name -> the finetune options that differ from the defaults
VARIANTS = {
    "defaults": {},
    "head trained by Adam (not the probe)": {"head_init": "train"},
    "no standardisation": {"standardize": False},
    "constant learning rate": {"lr_schedule": "constant"},
    "layer decay 0.5": {"layer_decay": 0.5},
    "fine-tune lr 1e-5": {"fine_tune_learning_rate": 1e-5},
    "keep last (no guard)": {"keep": "last"},
    "augment none": {"augment": "none"},
    "augment strong": {"augment": "strong"},
    "BN trains (train_bn)": {"train_bn": True},
    "EMA of weights": {"ema": True},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/transfer-experiment"))
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated row names")
    parser.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True)
    known, rest = parser.parse_known_args(argv)
    args = benchmark_transfer.parse_args(["--out", str(known.out), *rest])
    logging.basicConfig(level=logging.WARNING)
    weights = known.out / f"source_{args.version}_notop.h5"
    folder = known.out / "data" / "target" / f"budget-{known.budget}"
    if not weights.exists() or not folder.exists():
        parser.error(
            f"{weights} or {folder} missing: run benchmark_transfer.py --out "
            f"{known.out} --budgets {known.budget} first"
        )
    rows = []
    names = [n for n in known.variants.split(",") if n]
    for name in names:
        out = known.out / "ablation" / f"budget-{known.budget}" / name.replace(" ", "-")
        cell = benchmark_transfer.run_finetune(
            folder, out, {}, args, weights=str(weights), **VARIANTS[name]
        )
        cell["variant"] = name
        rows.append(cell)
        print(f"{name:<28} accuracy {cell['accuracy']:.3f}  ({cell['seconds']:.0f} s)", flush=True)
    if known.probe:
        cell = benchmark_transfer.run_probe(
            folder, known.out / "ablation" / "probe", str(weights), args
        )
        cell["variant"] = "linear probe"
        rows.append(cell)
        print(f"{'linear probe':<28} accuracy {cell['accuracy']:.3f}  ({cell['seconds']:.0f} s)")
    result = {"budget": known.budget, "machine": benchmark_transfer.machine(), "rows": rows}
    (known.out / f"ablation-{known.budget}.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(f"| {known.budget} labels per class | target test accuracy | wall time |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['accuracy']:.3f} | {row['seconds']:.0f} s |")


if __name__ == "__main__":
    main()
