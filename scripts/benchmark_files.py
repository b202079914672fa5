#!/usr/bin/env python
"""Cost against the number of images: the data paths before training, on real files.

Writes folders of N tiny real PNGs (8x8, in 10 class folders; a folder already there
with N images is reused), and the same images as TFRecord shards, and measures, at
each size, every stage that happens before training, in a fresh process per size:

    listing       the class folders, as `finetune --data FOLDER` lists them
    hash split    each file to train or validation by the hash of its path
    fingerprint   the dataset's fingerprint (each file's size and mtime)
    file check    every image decoded once (`drop_unreadable`, as finetune does)
    pipeline      the tf.data pipelines of the training and validation images, built
                  (not iterated): their file lists and the decoder of each file
    shards: read  the same images as records of 16 TFRecord shards, read as
                  `--data 'shards/*.tfrecord'` reads them (labels, names, hash split)
    shards: check every record's image decoded once, as for files

Per stage: its wall time and CPU time (of all its threads: on a machine shared with
other work, CPU time shows the growth that the wall time's noise hides), the peak of
Python's own allocations during it
(tracemalloc, in a second process so that tracing does not slow the timed one), the
process' peak RSS when it ends, and the growth exponent of its time,
log(t2/t1) / log(n2/n1), from the smallest size to the largest (1 is linear), of
both.
Prints a table and writes JSON. The folders are deleted at the end unless --keep.

    .venv/bin/python scripts/benchmark_files.py --sizes 20000,60000,200000
"""

import argparse
import io
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLASSES = 10
IMAGE_SIDE = 8
VARIANTS = 64  # distinct images, written in turn: pixels differ from file to file
BYTES_PER_FILE = 8192  # on disk, blocks and inode included, with room to spare
READY = ".images"  # in a size's folder: how many images were written, once all were
STAGES = (
    "listing",
    "hash split",
    "fingerprint",
    "file check",
    "pipeline",
    "shards: read",
    "shards: check",
)
SHARDS = 16


def write_images(folder, count):
    """`count` 8x8 PNGs in CLASSES class folders under `folder`, and the same images as
    SHARDS TFRecord shards (TFDS' image and label features) in `shards_of(folder)`;
    either reused when it is there. Returns whether any was written."""
    variants = _variants()
    written = False
    if not _ready(folder, count):
        shutil.rmtree(folder, ignore_errors=True)
        for label in range(CLASSES):
            (folder / f"class{label}").mkdir(parents=True)
        for i in range(count):
            image = variants[i % VARIANTS]
            (folder / f"class{i % CLASSES}" / f"img{i:07d}.png").write_bytes(image)
        (folder / READY).write_text(f"{count}\n")
        written = True
    shards = shards_of(folder)
    if not _ready(shards, count):
        import tensorflow as tf

        shutil.rmtree(shards, ignore_errors=True)
        shards.mkdir(parents=True)
        writers = [
            tf.io.TFRecordWriter(str(shards / f"images.tfrecord-{i:05d}-of-{SHARDS:05d}"))
            for i in range(SHARDS)
        ]
        for i in range(count):
            image = tf.train.BytesList(value=[variants[i % VARIANTS]])
            label = tf.train.Int64List(value=[i % CLASSES])
            feature = {
                "image": tf.train.Feature(bytes_list=image),
                "label": tf.train.Feature(int64_list=label),
            }
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writers[i % SHARDS].write(example.SerializeToString())
        for writer in writers:
            writer.close()
        (shards / READY).write_text(f"{count}\n")
        written = True
    return written


def shards_of(folder):
    return folder.with_name(f"{folder.name}-shards")


def _ready(folder, count):
    marker = folder / READY
    return marker.exists() and marker.read_text().strip() == str(count)


def _variants():
    """VARIANTS distinct 8x8 PNGs, the same every time."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    variants = []
    for _ in range(VARIANTS):
        pixels = rng.integers(0, 256, (IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
        encoded = io.BytesIO()
        Image.fromarray(pixels).save(encoded, "PNG")
        variants.append(encoded.getvalue())
    return variants


def measure(folder, traced):
    """{stage: {seconds, peak_rss_mb[, python_peak_mb]}} over the images in `folder`."""
    import transfer  # noqa: F401  (TensorFlow's CPU options, as the command line sets them)
    from transfer.data.dataset import Dataset
    from transfer.data.pipeline import drop_unreadable, image_dataset
    from transfer.data.records import load_records
    from transfer.data.sources import folder_fingerprint, list_class_folders, split_class_files

    state = {}

    def listing():
        state["files"], state["skipped"] = list_class_folders(folder)

    def hash_split():
        state["splits"] = split_class_files(state["files"], folder, val_split=0.2, test_split=0.0)

    def fingerprint():
        state["fingerprint"] = folder_fingerprint(state["splits"], folder)

    def file_check():
        classes = sorted(state["files"])
        dataset = Dataset(folder.name, "folder", classes, state["splits"], [], state["fingerprint"])
        state["dataset"] = drop_unreadable(dataset, progress=False)

    def pipeline():
        splits = state["dataset"].splits
        state["pipelines"] = [
            image_dataset(splits[name], 32, 32, CLASSES) for name in ("train", "val")
        ]

    def shards_read():
        state["records"] = load_records(shards_of(folder) / "*.tfrecord*", val_split=0.2)

    def shards_check():
        drop_unreadable(state["records"], progress=False)

    steps = (listing, hash_split, fingerprint, file_check, pipeline, shards_read, shards_check)
    results = {}
    for stage, step in zip(STAGES, steps):
        if traced:
            tracemalloc.start()
        start, cpu_start = time.perf_counter(), time.process_time()
        step()
        row = {
            "seconds": round(time.perf_counter() - start, 3),
            "cpu_seconds": round(time.process_time() - cpu_start, 3),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }
        if traced:
            row["python_peak_mb"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
            tracemalloc.stop()
        results[stage] = row
    return results


def _peak_rss_mb():
    """This process' peak RSS: VmHWM, of its own address space (Linux keeps ru_maxrss
    across exec, so a child would start with its parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _in_a_fresh_process(folder, traced):
    command = [sys.executable, __file__, "--measure", str(folder)] + ["--traced"] * traced
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth_exponent(sizes, seconds):
    """log(t2/t1) / log(n2/n1) from the first size to the last."""
    if seconds[0] <= 0 or seconds[-1] <= 0:
        return None
    return round(math.log(seconds[-1] / seconds[0]) / math.log(sizes[-1] / sizes[0]), 2)


def table(sizes, results):
    header = (
        ["stage"]
        + [f"{n:,} s" for n in sizes]
        + ["exponent"]
        + [f"{n:,} CPU s" for n in sizes]
        + ["CPU exponent"]
        + [f"{n:,} Python MB" for n in sizes]
        + [f"{sizes[-1]:,} peak RSS MB"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for stage in STAGES:
        rows = [results[n]["timed"][stage] for n in sizes]
        traced = [results[n]["traced"][stage] for n in sizes]
        cells = (
            [stage]
            + [f"{r['seconds']:.2f}" for r in rows]
            + [str(growth_exponent(sizes, [r["seconds"] for r in rows]))]
            + [f"{r['cpu_seconds']:.2f}" for r in rows]
            + [str(growth_exponent(sizes, [r["cpu_seconds"] for r in rows]))]
            + [f"{t['python_peak_mb']:.1f}" for t in traced]
            + [f"{rows[-1]['peak_rss_mb']:.0f}"]
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="20000,60000,200000", help="Images, comma-separated.")
    parser.add_argument("--folder", default=str(ROOT / "runs" / "benchmark-files"))
    parser.add_argument("--keep", action="store_true", help="Keep the image folders.")
    parser.add_argument("--out", default="benchmark-files.json")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one size, in this process
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(Path(args.measure), args.traced)))
        return

    sizes = sorted(int(n) for n in args.sizes.split(","))
    base = Path(args.folder)
    base.mkdir(parents=True, exist_ok=True)
    needed = 2 * sum(sizes) * BYTES_PER_FILE  # the files, and far less for their records
    free = shutil.disk_usage(base).free
    if free < needed:
        sys.exit(f"{base}: {free / 1e9:.1f} GB free; the images need about {needed / 1e9:.1f} GB.")
    results = {}
    try:
        for n in sizes:
            folder = base / f"n{n}"
            start = time.perf_counter()
            if write_images(folder, n):
                print(f"wrote {n:,} images in {time.perf_counter() - start:.0f} s", flush=True)
            results[n] = {
                "timed": _in_a_fresh_process(folder, traced=False),
                "traced": _in_a_fresh_process(folder, traced=True),
            }
            print(f"{n:,}: {json.dumps(results[n]['timed'])}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    record = {
        "machine": f"{platform.node()} {os.cpu_count()} cores",
        "load_average": os.getloadavg(),
        "sizes": sizes,
        "results": results,
        "exponents": {
            stage: {
                kind: growth_exponent(sizes, [results[n]["timed"][stage][kind] for n in sizes])
                for kind in ("seconds", "cpu_seconds")
            }
            for stage in STAGES
        },
    }
    Path(args.out).write_text(json.dumps(record, indent=2))
    print(table(sizes, results))


if __name__ == "__main__":
    main()
