#!/usr/bin/env python
"""Phase 2 on a GPU: `transfer finetune`'s phase-2 epochs against a plain Keras `fit`.

The plain script is what a user would write from Keras' transfer-learning guide:
keras.applications.ResNet50 with conv5 trainable and batch norm frozen, the guide's
augmentation layers in the model, `image_dataset_from_directory` with `cache` and
`prefetch`, Adam. `transfer finetune` trains the same layers at the same image size
and batch size, with its default augmentation (the guide's set, on the images) and
with `--augment flip` (phase 2 from the frozen groups' outputs, computed once). Each
run once in float32 and once with mixed precision, with Keras' XLA choice and with
XLA forced on and off, each in a fresh process. What is measured: images/s of the
training steps (the epochs after the first: tracing and caching are the first's), and
phase 2's wall time from its start (for `transfer`: the frozen groups' pass too).

With no GPU it runs too (float32 only, at a small --image-size: a check of the script,
not a measurement). The data: --data (class folders), or by default --copies shifted
copies of the sample in data/fashion-mnist. Prints a table and writes --out (JSON).
For docs/benchmarks.md ("On a GPU"), on the device machine:

    .venv/bin/python scripts/benchmark_gpu.py --copies 20 --image-size 224 --out gpu.json
"""

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "data" / "fashion-mnist"
sys.path.insert(0, str(ROOT / "scripts"))
LEARNING_RATE = 1e-4  # transfer's phase-2 default, given to both
# (name, transfer finetune options): the augmentation on the images, and the flip
# that lets phase 2 run from the frozen groups' cached outputs.
TRANSFER_RUNS = (("transfer", []), ("transfer --augment flip", ["--augment", "flip"]))
# XLA for the training steps: Keras' choice ("auto": on for a GPU), forced on, off.
JIT = ("auto", "on", "off")


def copied_sample(out, copies):
    """`copies` of the sample's images, each copy shifted by its own pixels (rolled),
    so no two files are the same bytes: OUT/<class>/c<k>_<name>.png."""
    import numpy as np
    from PIL import Image

    for folder in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        (out / folder.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.glob("*.png")):
            pixels = np.asarray(Image.open(path))
            for k in range(copies):
                shifted = np.roll(pixels, (k % 5, k // 5), axis=(0, 1))
                Image.fromarray(shifted).save(out / folder.name / f"c{k}_{path.name}")
    return out


def keras_worker(spec):
    """The plain script, in a process that does not import `transfer` (TensorFlow's
    own settings). Prints one JSON line: training images, step seconds per epoch."""
    import keras
    import tensorflow as tf

    if spec["mixed"]:
        keras.mixed_precision.set_global_policy("mixed_float16")
    size, batch = spec["image_size"], spec["batch_size"]
    train = keras.utils.image_dataset_from_directory(
        spec["data"],
        image_size=(size, size),
        batch_size=batch,
        label_mode="categorical",
        validation_split=0.2,
        subset="training",
        seed=0,
    )
    classes = len(train.class_names)
    images = sum(int(x.shape[0]) for x, _ in train)
    train = train.cache().prefetch(tf.data.AUTOTUNE)
    base = keras.applications.ResNet50(
        weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3)
    )
    for layer in base.layers:
        layer.trainable = layer.name.startswith("conv5") and not isinstance(
            layer, keras.layers.BatchNormalization
        )
    inputs = keras.Input((size, size, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.05)(x)
    x = keras.layers.RandomZoom(0.1)(x)
    x = keras.layers.RandomContrast(0.1)(x)
    x = keras.applications.resnet.preprocess_input(x)
    x = base(x, training=False)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(LEARNING_RATE),
        "categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile={"auto": "auto", "on": True, "off": False}[spec["jit"]],
    )
    steps, clock = [], {}
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: clock.update(epoch=time.perf_counter()),
        on_epoch_end=lambda epoch, logs: steps.append(time.perf_counter() - clock["epoch"]),
    )
    start = time.perf_counter()
    model.fit(train, epochs=spec["epochs"], verbose=0, callbacks=[timer])
    wall = time.perf_counter() - start
    print(json.dumps({"images": images, "step_seconds": steps, "wall_seconds": wall}))


def plain_keras(args, data, mixed, jit):
    # Not at the top: the Keras worker runs this file without `transfer`, which
    # benchmark.py imports.
    from benchmark import tensorflow_defaults

    spec = {
        "data": str(data),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "mixed": mixed,
        "jit": jit,
    }
    done = subprocess.run(
        [sys.executable, __file__, "--keras-worker", json.dumps(spec)],
        env=tensorflow_defaults(),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def transfer_run(args, data, mixed, jit, extra, tmp):
    from benchmark import _finetune_command

    out = Path(tempfile.mkdtemp(dir=tmp))
    command = _finetune_command(
        data, args.image_size, None, out / "run", out / "cache",
        "--batch-size", str(args.batch_size), "--head-epochs", "1",
        "--fine-tune-epochs", str(args.epochs), "--fine-tune-lr", str(LEARNING_RATE),
        "--no-futility-stop", "--early-stopping", "0", "--keep", "last", "--no-report",
        "--seed", "0", "--jit-compile", jit, *(["--mixed-precision"] if mixed else []), *extra,
    )  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    with open(out / "run" / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    phase_two = [r for r in rows if r["phase"] == "fine-tune"]
    phase_one_end = max(float(r["elapsed_seconds"]) for r in rows if r["phase"] == "head")
    config = json.loads((out / "run" / "config.json").read_text())
    return {
        "images": config["dataset"]["splits"]["train"],
        "step_seconds": [float(r["step_seconds"]) for r in phase_two],
        "wall_seconds": float(phase_two[-1]["elapsed_seconds"]) - phase_one_end,
    }


def summary(result):
    """Images/s of the steps after the first epoch (median), or of the only one."""
    if "error" in result:
        return result
    steady = result["step_seconds"][1:] or result["step_seconds"]
    return dict(result, images_per_s=result["images"] / statistics.median(steady))


def has_gpu():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="class folders (default: copies of the sample)")
    parser.add_argument("--copies", type=int, default=20, help="of the sample's 300 images")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3, help="phase 2's, for both")
    parser.add_argument("--jit", default=",".join(JIT), help=f"comma list of {', '.join(JIT)}")
    parser.add_argument("--out", type=Path, default=Path("benchmark-gpu.json"))
    parser.add_argument("--keras-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.keras_worker:
        return keras_worker(json.loads(args.keras_worker))
    gpu = has_gpu()
    precisions = (False, True) if gpu else (False,)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or copied_sample(Path(tmp) / "data", args.copies)
        for mixed in precisions:
            for jit in args.jit.split(","):
                runs = [("Keras fit", lambda m=mixed, j=jit: plain_keras(args, data, m, j))]
                runs += [
                    (name, lambda m=mixed, j=jit, e=extra: transfer_run(args, data, m, j, e, tmp))
                    for name, extra in TRANSFER_RUNS
                ]
                for name, run in runs:
                    row = {"run": name, "mixed_precision": mixed, "jit": jit, **summary(run())}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    import tensorflow as tf

    devices = tf.config.list_physical_devices("GPU")
    machine = {
        "gpus": [
            tf.config.experimental.get_device_details(d).get("device_name", d.name) for d in devices
        ],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
    }
    results = {"machine": machine, "args": vars(args), "rows": rows}
    args.out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\n{machine}\n{'run':<26}{'precision':<11}{'XLA':<6}{'images/s':>10}{'phase 2 s':>11}")
    for row in rows:
        precision = "mixed" if row["mixed_precision"] else "float32"
        if "error" in row:
            print(f"{row['run']:<26}{precision:<11}{row['jit']:<6}  failed: {row['error']}")
            continue
        print(
            f"{row['run']:<26}{precision:<11}{row['jit']:<6}"
            f"{row['images_per_s']:10.0f}{row['wall_seconds']:11.1f}"
        )


if __name__ == "__main__":
    main()
