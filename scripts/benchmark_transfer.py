#!/usr/bin/env python
"""Does transfer work? A reproducible source -> target experiment on Fashion-MNIST.

source     ResNet50 (v1, or --version v2, or any --arch) trained by `transfer finetune` from random
           initialisation on T-shirt/top, Trouser, Pullover, Dress and Coat, at a small
           image size; its backbone is exported as a keras.applications notop H5 file
           (`transfer export --format h5`), the path a user's ImageNet file takes.
target     Sandal, Shirt, Sneaker, Bag and Ankle boot, with 10, 100 and 1000 labelled
           images per class (nested: the 10 are among the 100), each tested on all the
           target's test images (1000 per class) with four methods:
             scratch     finetune from random initialisation, every group trained;
             probe       embed with the source backbone + logistic regression (probe);
             head        finetune, head only on the frozen source backbone;
             two-phase   plain `transfer finetune --weights SOURCE`: its defaults, no
                         per-budget plan.
reference  all ten classes from random initialisation with `transfer finetune`, set
           beside the published Fashion-MNIST benchmark table.

Everything goes through transfer's public Python API (`finetune`, `export`, `embed`,
`probe`), in this one process, and each cell's wall time is that call's. The
finetune runs hold out 20% of their labelled images for validation and early
stopping; the probe uses all of them, choosing its C by cross-validation.

Prints a table and writes OUT/results.json. Examples:

    .venv/bin/python scripts/benchmark_transfer.py --out runs/transfer-experiment
    .venv/bin/python scripts/benchmark_transfer.py --version v2 --no-reference
    .venv/bin/python scripts/benchmark_transfer.py --source-weights imagenet \\
        --data tfds:tf_flowers --image-size 224 --budgets 10,50

With --data (a folder or tfds:NAME) the source step is skipped and --source-weights
(imagenet or a weights file) starts the transfer methods; the data's test split (or,
without one, its validation split) is the test set, and the budgets are drawn, with
--seed, from its train split.
"""

import argparse
import json
import logging
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
sys.path.insert(0, str(ROOT / "scripts"))

import fashion_mnist_to_folders as fashion  # noqa: E402
import numpy as np  # noqa: E402

SOURCE_CLASSES = list(fashion.CLASS_NAMES[:5])
TARGET_CLASSES = list(fashion.CLASS_NAMES[5:])
METHODS = ("scratch", "probe", "head", "two-phase")

# Published Fashion-MNIST test accuracies (zalandoresearch/fashion-mnist README,
# "Benchmark" table: results submitted by their authors, not re-run by Zalando).
PUBLISHED = (
    ("WRN-28-10, crops and flips", 0.959),
    ("ResNet18, flips, translation and rotation", 0.949),
    ("fastai ResNet50 (ImageNet) fine-tuned", 0.9312),
    ("2 Conv+pooling (TensorFlow's tutorial)", 0.916),
    ("MLP 256-128-100", 0.8833),
    ("Human, no fashion expertise", 0.835),
)

# How each finetune method trains: FinetuneOptions fields, plus the fewest optimizer
# steps of each phase (`min_steps`, `head_min_steps`): small label budgets get more
# epochs rather than a handful of steps. Epochs on cached features cost milliseconds,
# so the head gets many, with more patience on the tiny validation sets.
# Training from scratch as the first wave measured it: one constant learning rate.
FROM_SCRATCH = dict(
    weights=None,
    head_epochs=0,
    fine_tune_from="stem",
    train_bn=True,
    fine_tune_learning_rate=1e-3,
    lr_schedule="constant",
    fine_tune_epochs=4,
    min_steps=60,
)
HEAD = dict(head_epochs=100, head_min_steps=300, early_stopping_patience=5)
PLANS = {
    "scratch": FROM_SCRATCH,
    "head": dict(HEAD, fine_tune_from="none"),
    "two-phase": {},  # the defaults a user gets
}
STEP_FLOORS = {"fine_tune_epochs": "min_steps", "head_epochs": "head_min_steps"}


def epochs_for(plan, train_images, batch_size, phase="fine_tune_epochs"):
    """The plan's epochs for a phase, raised to reach that phase's fewest steps."""
    epochs = plan.get(phase, 0)
    if not epochs:
        return 0
    steps_per_epoch = max(1, math.ceil(train_images / batch_size))
    return max(epochs, math.ceil(plan.get(STEP_FLOORS[phase], 0) / steps_per_epoch))


def finetune_options(plan, train_images, args):
    options = {k: v for k, v in plan.items() if k not in STEP_FLOORS.values()}
    for phase in STEP_FLOORS:
        if phase in plan:  # else finetune's default
            options[phase] = epochs_for(plan, train_images, args.batch_size, phase)
    return dict(
        options,
        arch=args.arch,
        depth=args.depth,
        version=args.version,
        image_size=args.image_size,
        batch_size=args.batch_size,
        seed=args.seed,
        jit_compile=args.jit_compile,
        cache_dir=str(args.out / "feature-cache"),
        weights_dir=args.weights_dir,
    )


# ------------------------------------------------------------------- data


def write_fashion_folders(args, root, classes, train_per_class, test_per_class):
    """OUT/<root>/{train,test}/<class>/*.png from the IDX files (first N of each class)."""
    fashion.convert(args.idx_dir, root, ["train"], "split", classes, train_per_class)
    fashion.convert(args.idx_dir, root, ["test"], "split", classes, test_per_class)
    return root


def _link(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(Path(source).resolve())


def _write_tfds_images(split, wanted, folder, class_names):
    """Write the TFDS examples at positions `wanted` as PNGs into class folders."""
    from PIL import Image

    wanted = set(int(i) for i in wanted)
    for index, (image, label) in enumerate(split.tfds.as_numpy_iterator()):
        if index in wanted:
            path = folder / class_names[int(label)] / f"{index:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.squeeze(image) if image.shape[-1] == 1 else image).save(path)


def _place(split, indices, folder, class_names):
    if split.tfds is not None:
        _write_tfds_images(split, indices, folder, class_names)
        return
    for i in indices:
        path = Path(split.paths[i])
        _link(path, folder / class_names[int(split.labels[i])] / f"{i:06d}{path.suffix.lower()}")


def budget_folders(data, budgets, out, seed, tfds_data_dir=None):
    """One folder per label budget: train/ with that many images per class drawn
    (seeded, nested) from `data`'s train split, and test/ with its whole test split."""
    from transfer.data import load_dataset

    dataset = load_dataset(data, val_split=0.2, test_split=0.2, tfds_data_dir=tfds_data_dir)
    test_name = "test" if len(dataset.splits.get("test", ())) else "val"
    train, test = dataset.splits["train"], dataset.splits[test_name]
    rng = np.random.default_rng(seed)
    order = {
        c: rng.permutation(np.flatnonzero(train.labels == c)) for c in range(dataset.num_classes)
    }
    folders = {}
    for budget in budgets:
        folder = out / f"budget-{budget}"
        shutil.rmtree(folder, ignore_errors=True)
        chosen = np.concatenate([order[c][:budget] for c in order])
        _place(train, chosen, folder / "train", dataset.class_names)
        _place(test, np.arange(len(test)), folder / "test", dataset.class_names)
        short = [dataset.class_names[c] for c in order if len(order[c]) < budget]
        if short:
            print(f"note: budget {budget}: {', '.join(short)} have fewer images; all used")
        folders[budget] = folder
    return folders


# ------------------------------------------------------------------- runs


def timed(fn, *args, **kwargs):
    start = time.monotonic()
    result = fn(*args, **kwargs)
    return result, round(time.monotonic() - start, 1)


def run_finetune(data, out, plan, args, **extra):
    import keras

    from transfer.commands.finetune import finetune
    from transfer.data import load_dataset
    from transfer.train.options import FinetuneOptions

    # The images finetune trains on, after its validation hold-out: they set the epochs.
    train_images = len(load_dataset(data, val_split=FinetuneOptions.val_split).splits["train"])
    options = finetune_options(plan, train_images, args)
    options.update(extra)
    keras.backend.clear_session()
    result, seconds = timed(finetune, data, out=out, overwrite=True, **options)
    metrics = result.metrics
    split = "test" if "test" in metrics else "val"
    sizes = json.loads((Path(out) / "config.json").read_text())["dataset"]["splits"]
    return {
        "accuracy": metrics[split]["accuracy"],
        "evaluated_on": split,
        "test_images": sizes[split],
        "train_images": sizes["train"],
        "val_images": sizes["val"],
        "seconds": seconds,
        "epochs": {
            "head": options.get("head_epochs", "default"),
            "fine_tune": options.get("fine_tune_epochs", "default"),
            "run": sum(1 for row in result.history),
        },
        "run": str(out),
        "val_accuracy": metrics["val"]["accuracy"],
    }


def run_probe(data, out, weights, args):
    import keras

    from transfer.commands.embed import embed
    from transfer.commands.probe import probe

    def both():
        embeddings = embed(
            data,
            arch=args.arch,
            depth=args.depth,
            version=args.version,
            weights=weights,
            weights_dir=args.weights_dir,
            image_size=args.image_size,
            batch_size=args.batch_size,
            val_split=0.0,
        )
        return probe(embeddings, out, seed=args.seed, overwrite=True)

    keras.backend.clear_session()
    metrics, seconds = timed(both)
    return {
        "accuracy": metrics["test"]["accuracy"],
        "evaluated_on": "test",
        "seconds": seconds,
        "C": metrics["C"],
        "train_images": metrics["train_images"],
        "run": str(out),
    }


def train_source(args):
    """Train on the source classes from scratch; export the backbone as notop H5."""
    from transfer.commands.export import export

    data = write_fashion_folders(
        args,
        args.out / "data" / "source",
        SOURCE_CLASSES,
        args.source_per_class,
        args.test_per_class,
    )
    run = args.out / "runs" / "source"
    plan = dict(FROM_SCRATCH, fine_tune_epochs=args.source_epochs, min_steps=0)
    result = run_finetune(data, run, plan, args)
    weights = args.out / f"source_{args.arch or args.version}_notop.h5"
    export(run, weights, format="h5", overwrite=True)
    result["weights"] = str(weights)
    return result


def run_reference(args):
    data = write_fashion_folders(
        args,
        args.out / "data" / "all-classes",
        list(fashion.CLASS_NAMES),
        args.reference_per_class,
        None,
    )
    plan = dict(FROM_SCRATCH, fine_tune_epochs=args.reference_epochs, min_steps=0)
    return run_finetune(data, args.out / "runs" / "reference", plan, args)


# ------------------------------------------------------------------- report


def table(results):
    budgets = sorted({cell["budget"] for cell in results["cells"]})
    methods = [m for m in METHODS if any(c["method"] == m for c in results["cells"])]
    lines = ["| labels per class | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for budget in budgets:
        row = []
        for method in methods:
            cell = next(
                (c for c in results["cells"] if c["budget"] == budget and c["method"] == method),
                None,
            )
            row.append("-" if cell is None else f"{cell['accuracy']:.3f} ({cell['seconds']:.0f} s)")
        lines.append(f"| {budget} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def reference_table(reference):
    rows = [
        (
            "transfer finetune, ResNet50 from scratch, "
            f"{reference['train_images_per_class']}/class x {reference['epochs']['fine_tune']}"
            f" epochs, {reference['seconds']:.0f} s (this run)",
            reference["accuracy"],
        )
    ]
    rows += list(PUBLISHED)
    return "\n".join(
        ["| model | Fashion-MNIST test accuracy |", "|---|---|"]
        + [f"| {name} | {accuracy:.3f} |" for name, accuracy in rows]
    )


def machine():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "gpus": len(gpus),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/transfer-experiment"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--version", default="v1", help="v1 or v2")
    parser.add_argument(
        "--arch",
        default=None,
        help="Another backbone (an --arch name of transfer finetune), "
        "instead of --depth and --version.",
    )
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--jit-compile", default="auto", help="auto, on or off")
    parser.add_argument(
        "--budgets", default="10,100,1000", help="labelled images per class for the target task"
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--idx-dir",
        type=Path,
        default=fashion.DEBIAN_IDX_DIR,
        help="Fashion-MNIST IDX files (Debian's dataset-fashion-mnist)",
    )
    parser.add_argument(
        "--source-per-class",
        type=int,
        default=1000,
        help="source images per class (first in the IDX file)",
    )
    parser.add_argument("--source-epochs", type=int, default=4)
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        help="cap the test images per class (default: all 1000)",
    )
    parser.add_argument(
        "--source-weights", default=None, help="skip the source step: imagenet or a weights file"
    )
    parser.add_argument(
        "--weights-dir", default=None, help="folder of pre-downloaded official weight files"
    )
    parser.add_argument(
        "--data", default=None, help="target data instead of Fashion-MNIST: a folder or tfds:NAME"
    )
    parser.add_argument("--tfds-data-dir", default=None)
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the ten-class reference run",
    )
    parser.add_argument(
        "--reference-only", action="store_true", help="run only the ten-class reference"
    )
    parser.add_argument("--reference-per-class", type=int, default=1000)
    parser.add_argument("--reference-epochs", type=int, default=4)
    args = parser.parse_args(argv)
    args.budgets = [int(b) for b in args.budgets.split(",") if b]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    if args.data and not args.source_weights:
        parser.error(
            "--data needs --source-weights (imagenet or a file): the source step is Fashion-MNIST's"
        )
    if (args.data is None or args.reference_only) and not args.idx_dir.is_dir():
        parser.error(
            f"Fashion-MNIST IDX files not found in {args.idx_dir}: "
            f"`{fashion.INSTALL_HINT}` or pass --idx-dir"
        )
    return args


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.out / "feature-cache", ignore_errors=True)  # time every run cold
    started = time.monotonic()
    results = {
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "machine": machine(),
        "seed": args.seed,
        "model": args.arch or f"ResNet{args.depth} {args.version}",
        "image_size": args.image_size,
        "cells": [],
    }

    if not args.reference_only:
        if args.source_weights:
            weights = args.source_weights
        else:
            print(f"source: {', '.join(SOURCE_CLASSES)} from scratch...", flush=True)
            results["source"] = train_source(args)
            weights = results["source"]["weights"]
            print(
                f"source: val accuracy {results['source']['val_accuracy']:.3f}, "
                f"{results['source']['seconds']:.0f} s",
                flush=True,
            )
        if args.data:
            target = args.data
        else:
            target = write_fashion_folders(
                args, args.out / "data" / "target-all", TARGET_CLASSES, None, args.test_per_class
            )
        folders = budget_folders(
            target, args.budgets, args.out / "data" / "target", args.seed, args.tfds_data_dir
        )
        for budget, folder in folders.items():
            for method in args.methods:
                out = args.out / "runs" / f"budget-{budget}" / method
                if method == "probe":
                    cell = run_probe(folder, out, weights, args)
                elif method == "scratch":
                    cell = run_finetune(folder, out, PLANS[method], args)
                else:
                    cell = run_finetune(folder, out, PLANS[method], args, weights=weights)
                cell.update(budget=budget, method=method)
                results["cells"].append(cell)
                print(
                    f"budget {budget:>5} {method:>9}: accuracy {cell['accuracy']:.3f} "
                    f"({cell['seconds']:.0f} s)",
                    flush=True,
                )
                write_results(args.out, results)
    if args.reference or args.reference_only:
        if args.data is None:
            print("reference: all ten classes from scratch...", flush=True)
            results["reference"] = run_reference(args)
            results["reference"]["train_images_per_class"] = args.reference_per_class
    results["total_seconds"] = round(time.monotonic() - started, 1)
    write_results(args.out, results)
    print()
    if results["cells"]:
        print(
            f"Target test accuracy (wall time), {results['model']} at "
            f"{args.image_size} px, seed {args.seed}:"
        )
        print(table(results))
    if "reference" in results:
        print()
        print(reference_table(results["reference"]))
    print(f"\ntotal {results['total_seconds']:.0f} s; results in {args.out / 'results.json'}")
    return results


def write_results(out, results):
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
