#!/usr/bin/env python3
"""A small multi-label data set from real images: pairs of Fashion-MNIST items of two
different classes, side by side in one 28x56 PNG, labelled with both, listed in a CSV.

    .venv/bin/python scripts/fashion_mnist_pairs.py --out pairs --count 300
    transfer finetune --data pairs/labels.csv --weights none --image-size 32

OUT/images/pair_000.png ... and OUT/labels.csv ("path,labels", the labels joined by
';'). The items come from a folder of class folders (default: the sample in
data/fashion-mnist); `--seed` fixes which, so the output is deterministic.

Needs only the standard library, numpy and Pillow.
"""

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "fashion-mnist"
SIZE = 28  # of one Fashion-MNIST item


def tile_pairs(out, count, source=SAMPLE, seed=0):
    """Write `count` pair images and labels.csv into `out`; returns the CSV's rows
    as (path relative to `out`, "classA;classB")."""
    rng = np.random.default_rng(seed)
    by_class = {
        c.name: sorted(c.glob("*.png")) for c in sorted(Path(source).iterdir()) if c.is_dir()
    }
    names = sorted(by_class)
    images = Path(out) / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        classes = rng.choice(len(names), 2, replace=False)
        tiled = Image.new("L", (2 * SIZE, SIZE))
        for position, c in enumerate(classes):
            with Image.open(rng.choice(by_class[names[c]])) as item:
                tiled.paste(item.convert("L").resize((SIZE, SIZE)), (position * SIZE, 0))
        name = f"pair_{i:03d}.png"
        tiled.save(images / name)
        rows.append((f"images/{name}", ";".join(sorted(names[c] for c in classes))))
    with open(Path(out) / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument(
        "--source",
        type=Path,
        default=SAMPLE,
        help="Folder of class folders to take the items from.",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tile_pairs(args.out, args.count, args.source, args.seed)
    print(f"{args.count} images and {args.out / 'labels.csv'}")


if __name__ == "__main__":
    main()
