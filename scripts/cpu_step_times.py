#!/usr/bin/env python
"""Seconds per ResNet50 step on this machine, for the settings `transfer` chooses
between: oneDNN kernels on or off (TF_ENABLE_ONEDNN_OPTS; TensorFlow reads it once
per process, so every cell runs in its own process) and XLA on or off, for
training steps (from a group on: conv5 = phase 2's default, stem = every layer;
"cached" = phase 2 on the frozen groups' outputs, computed once, as `transfer` trains
with --augment none or flip) and inference, at a few image sizes. Prints a table and
writes JSON. Example:

    .venv/bin/python scripts/cpu_step_times.py --sizes 32 64 --out step_times.json
    .venv/bin/python scripts/cpu_step_times.py --sizes 64 224 --transfer-settings
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_cell(size, batch, kind, group, jit):
    """Runs in a child process: first call (compile) and best steady time per step."""
    import keras
    import numpy as np
    import tensorflow as tf

    import transfer

    keras.utils.set_random_seed(0)
    model = transfer.build_classifier(10, weights=None, image_size=size)
    x = np.random.default_rng(0).uniform(0, 255, (batch * 4, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(len(x)) % 10, 10)
    chunks = [(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]) for i in range(4)]
    if kind == "inference":
        call = tf.function(lambda t: model(t, training=False), jit_compile=jit)
        step = lambda xb, yb: np.asarray(call(xb))  # noqa: E731
    elif kind == "cached":  # the prefix's outputs in float16, as transfer keeps them
        from transfer.models.groups import split_at_group

        transfer.unfreeze(model, group)
        prefix, suffix = split_at_group(model, group)
        chunks = [(tf.cast(tf.cast(prefix(xb), tf.float16), tf.float32), yb) for xb, yb in chunks]
        suffix.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy", jit_compile=jit)
        step = suffix.train_on_batch
    else:
        transfer.unfreeze(model, group)
        model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy", jit_compile=jit)
        step = model.train_on_batch
    start = time.perf_counter()
    step(*chunks[0])
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        for xb, yb in chunks:
            step(xb, yb)
        best = min(best, (time.perf_counter() - start) / len(chunks))
    return {"first_call_seconds": first, "seconds_per_step": best}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="step_times.json")
    parser.add_argument(
        "--transfer-settings",
        action="store_true",
        help="Only transfer's CPU settings (oneDNN on, XLA off), and phase 2 "
        "through the whole model against on the cached outputs.",
    )
    parser.add_argument("--cell", help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args()
    if args.cell:
        size, kind, group, jit = json.loads(args.cell)
        print(json.dumps(one_cell(size, args.batch_size, kind, group, jit)))
        return
    if args.transfer_settings:
        work = [("train", "conv5"), ("cached", "conv5")]
        onednn_settings, xla_settings = (True,), (False,)
    else:
        work = [("train", "conv5"), ("cached", "conv5"), ("train", "stem"), ("inference", None)]
        onednn_settings, xla_settings = (True, False), (False, True)
    rows = []
    print(f"{'size':>5} {'step':18}{'oneDNN':>7}{'XLA':>5}{'s/step':>9}{'img/s':>8}{'first s':>9}")
    for size, (kind, group), onednn, jit in itertools.product(
        args.sizes, work, onednn_settings, xla_settings
    ):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_ENABLE_ONEDNN_OPTS=str(int(onednn)))
        cell = json.dumps([size, kind, group, jit])
        output = subprocess.run(
            [sys.executable, __file__, "--cell", cell, "--batch-size", str(args.batch_size)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        result = json.loads(output.strip().splitlines()[-1])
        name = f"{kind} from {group}" if group else kind  # "cached from conv5": on its inputs
        seconds = result["seconds_per_step"]
        print(
            f"{size:5} {name:18}{'on' if onednn else 'off':>7}{'on' if jit else 'off':>5}"
            f"{seconds:9.3f}{args.batch_size / seconds:8.0f}"
            f"{result['first_call_seconds']:9.1f}",
            flush=True,
        )
        rows.append({"size": size, "step": name, "onednn": onednn, "xla": jit, **result})
    Path(args.out).write_text(
        json.dumps({"batch_size": args.batch_size, "rows": rows}, indent=2) + "\n"
    )
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
