#!/usr/bin/env python
"""Speed of `transfer`, measured side by side in one run on one machine.

(a) our ResNet50 against keras.applications.ResNet50 (same weights): inference
    and training images/s;
(b) our inference path against keras.applications.ResNet50().predict defaults;
(c) a phase-1 epoch on cached features against one through the frozen backbone,
    and the whole of phase 1 against one forward pass over the training images;
(d) `transfer finetune` end to end against a plain script following Keras'
    transfer-learning guide (scripts/keras_guide_baseline.py), same folder,
    image size, epochs and phases: wall time and validation accuracy;
(e) the input pipeline's images/s against the model's training images/s;
(f) peak memory (RSS) of both runs in (d);
(g) training images/s with XLA-compiled steps against without (Keras' "auto"
    turns XLA off on machines without a GPU);
(h) keras.applications.ResNet50's training images/s with the oneDNN CPU kernels
    that `transfer` turns on against a plain Keras process with TensorFlow's
    defaults (scripts/keras_speed_baseline.py);
(i) time to a good model (--time-to-accuracy FOLDER:SIZE,...; each FOLDER holds
    train/ and test/ class folders): the Keras-guide script with its recipe against
    `transfer finetune` with its defaults, each in a fresh process, with random
    initialisation and, given --weights, from those weights: wall time, test
    accuracy, peak RSS, and when `transfer` first reached the guide's final test
    accuracy (history.csv's elapsed_seconds, from process start): by validation,
    and tested (phase 1's model, from a repeat that stops there, and the kept one);
(j) exports (--exports RUN): the run in every format and TFLite quantisation, each
    read back by its own runtime (Keras, TensorFlow, LiteRT, onnxruntime): file size,
    single-image latency, batch throughput, and accuracy and top-1 agreement against
    the Keras model on the run's validation images.
(l) the best model in the time you have (--time-budget FOLDER:SIZE,...; folders as
    in (i)): the Keras-guide script once, then `transfer finetune --time-limit` at
    0.25, 0.5 and 1 times the guide's wall time and `transfer finetune` without a
    limit, each in a fresh process: test accuracy, wall time and whether it kept to
    its limit; then the futility stop's ablation (the defaults with
    --no-futility-stop: wall time and test accuracy) and the presets (fast, best);
(m) the presets where phase 2 can win (--presets FOLDER:SIZE with --weights and
    --arch): phase 1 alone, fast, balanced and best, each in a fresh process;
(k) which backbone for my budget (--families NAME,... or all): per architecture at
    --model-size, each in its own process, inference and fine-tuning (phase 2 from
    conv5) images/s of `transfer`'s classifier, the process' peak RSS, and the
    multiply-adds of `transfer info`; the transfer accuracy column comes from
    scripts/benchmark_transfer.py --arch NAME.
Plain-Keras baselines run in their own processes without `transfer`, so they see
TensorFlow's own settings. Prints a table and writes JSON.  Example:

    .venv/bin/python scripts/benchmark.py --data data/fashion-mnist --out benchmark.json
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import transfer  # noqa: E402  (first: it sets TensorFlow's CPU options before TF loads)
from transfer.data import drop_unreadable, image_dataset, load_dataset  # noqa: E402
from transfer.data.augment import augmentation  # noqa: E402
from transfer.models.heads import head_model, pooled_features  # noqa: E402
from transfer.runtime import run_inference  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from keras_speed_baseline import interleaved_rates  # noqa: E402


def tensorflow_defaults():
    """The environment of a plain Keras user: TensorFlow's own CPU settings."""
    env = dict(os.environ)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    return env


def plain_keras_speed(size, batch, steps):
    """(b), (h): keras.applications' predict and fit in a process without `transfer`."""
    output = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "keras_speed_baseline.py"),
            "--size",
            str(size),
            "--batch-size",
            str(batch),
            "--steps",
            str(steps),
        ],
        env=tensorflow_defaults(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def bench_models(size, batch, steps):
    """(a), (b), (g), (h): same weights, same random images, same batch size."""
    keras.utils.set_random_seed(0)
    ours = transfer.ResNet50(weights=None, input_shape=(size, size, 3), classes=10)
    ref = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=10)
    xla = transfer.ResNet50(weights=None, input_shape=(size, size, 3), classes=10)
    ref.set_weights(ours.get_weights())
    xla.set_weights(ours.get_weights())
    n = batch * steps
    x = np.random.default_rng(0).uniform(-120, 130, (n, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(n) % 10, 10)
    batches = tf.data.Dataset.from_tensor_slices(x).batch(batch).cache()
    result = interleaved_rates(
        {
            "predict_ours": lambda: ours.predict(x, batch_size=batch, verbose=0),
            "predict_keras": lambda: ref.predict(x, batch_size=batch, verbose=0),
            "inference_path": lambda: run_inference(ours, batches),
            "inference_path_jit_on": lambda: run_inference(ours, batches, jit_compile=True),
            "inference_path_jit_off": lambda: run_inference(ours, batches, jit_compile=False),
        },
        n,
        rounds=3,
    )
    # (g) XLA for training steps: Keras' "auto" leaves it off on CPU-only machines.
    for model, jit in ((ours, "auto"), (ref, "auto"), (xla, True)):
        model.compile(keras.optimizers.SGD(1e-3), "categorical_crossentropy", jit_compile=jit)
    start = time.perf_counter()
    xla.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)
    result["train_xla_first_step_seconds"] = time.perf_counter() - start
    result.update(
        interleaved_rates(
            {
                f"train_{name}": lambda m=model: m.fit(x, y, batch_size=batch, epochs=1, verbose=0)
                for name, model in (("ours", ours), ("keras", ref), ("ours_xla", xla))
            },
            n,
            rounds=2,
        )
    )
    plain = plain_keras_speed(size, batch, steps)
    result["plain_keras_predict"], result["plain_keras_train"] = plain["predict"], plain["train"]
    result["plain_keras_onednn"] = plain["onednn"]
    return result


def bench_phase1(dataset, size, batch, head_epochs):
    """(c) and (e) on the real training images."""
    keras.utils.set_random_seed(0)
    model = transfer.build_classifier(dataset.num_classes, weights=None, image_size=size)
    transfer.freeze(model)
    train = dataset.splits["train"]
    n = len(train)
    images = image_dataset(train, size, batch, dataset.num_classes, one_hot=False, cache=True)
    pixels = images.map(lambda x, y: x)
    for _ in pixels:  # decode once, so every timing below sees cached images
        pass
    extractor = pooled_features(model)
    start = time.perf_counter()
    features = run_inference(extractor, pixels)
    forward_seconds = time.perf_counter() - start
    labels = keras.utils.to_categorical(train.labels, dataset.num_classes)
    head = head_model(model)
    head.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    head.fit(features, labels, batch_size=batch, epochs=1, verbose=0)  # compile once
    start = time.perf_counter()
    head.fit(features, labels, batch_size=batch, epochs=head_epochs, verbose=0)
    head_epoch = (time.perf_counter() - start) / head_epochs
    model.compile(keras.optimizers.Adam(1e-3), "categorical_crossentropy")
    one_hot = images.map(lambda x, y: (x, tf.one_hot(y, dataset.num_classes)))
    model.fit(one_hot, epochs=1, verbose=0)  # compile once
    start = time.perf_counter()
    model.fit(one_hot, epochs=1, verbose=0)
    frozen_epoch = time.perf_counter() - start
    # (e): the phase-2 pipeline (decode from disk, augmentation) against training speed.
    aug = augmentation(0)
    pipeline = image_dataset(
        train, size, batch, dataset.num_classes, shuffle=True, seed=0, augment=aug, cache=False
    )
    start = time.perf_counter()
    for _ in pipeline:
        pass
    pipeline_rate = n / (time.perf_counter() - start)
    cached_pipeline = image_dataset(
        train, size, batch, dataset.num_classes, shuffle=True, seed=0, augment=aug, cache=True
    )
    for _ in cached_pipeline:
        pass
    start = time.perf_counter()
    for _ in cached_pipeline:
        pass
    cached_rate = n / (time.perf_counter() - start)
    transfer.unfreeze(model, "conv5")
    model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy")
    x = np.stack([b.numpy() for b in pixels.unbatch().take(batch * 2)])
    y = labels[: len(x)]
    train_rate = interleaved_rates(
        {"fit": lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0)}, len(x), 2
    )["fit"]
    return {
        "train_images": n,
        "forward_pass_seconds": forward_seconds,
        "head_epoch_cached_seconds": head_epoch,
        "head_epoch_frozen_backbone_seconds": frozen_epoch,
        "phase1_cached_seconds": forward_seconds + head_epoch * head_epochs,
        "phase1_epochs": head_epochs,
        "pipeline_images_per_s": pipeline_rate,
        "pipeline_cached_images_per_s": cached_rate,
        "fine_tune_train_images_per_s": train_rate,
    }


def run_measured(command, env=None):
    """Run a command; return (wall seconds, peak RSS in MB of it and its children, stdout).

    RSS is sampled every 0.1 s with psutil (installed with TensorFlow)."""
    import psutil

    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(
            command, stdout=stdout, stderr=stderr, text=True, cwd=ROOT, env=env
        )
        watched, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            try:
                rss = watched.memory_info().rss + sum(
                    c.memory_info().rss for c in watched.children(recursive=True)
                )
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.1)
        seconds = time.perf_counter() - start
        if process.returncode:
            stderr.seek(0)
            errors = [line for line in stderr.read().splitlines() if line.startswith("Error:")]
            raise CommandFailed(command, process.returncode, seconds, errors[-1] if errors else "")
        stdout.seek(0)
        return seconds, peak / 2**20, stdout.read()


class CommandFailed(SystemExit):
    """A measured command that failed: its exit code, wall time and last Error: line."""

    def __init__(self, command, code, seconds, error):
        super().__init__(f"{' '.join(map(str, command))} failed ({code}): {error}")
        self.seconds, self.error = seconds, error


def bench_end_to_end(data, size, batch, head_epochs, fine_tune_epochs, weights=None):
    """(d) and (f): both in fresh processes, one after the other, from the same
    weights (a notop .h5 file, or random initialisation)."""
    python = sys.executable
    common = [
        "--image-size",
        str(size),
        "--batch-size",
        str(batch),
        "--head-epochs",
        str(head_epochs),
        "--fine-tune-epochs",
        str(fine_tune_epochs),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        ours_seconds, ours_rss, _ = run_measured(
            [
                python,
                "-m",
                "transfer",
                "finetune",
                "--data",
                str(data),
                "--weights",
                str(weights or "none"),
                "--out",
                f"{tmp}/run",
                "--fine-tune-from",
                "conv5",
                "--early-stopping",
                "0",
                "--cache-dir",
                f"{tmp}/cache",
                *common,
            ]
        )
        metrics = json.loads(Path(f"{tmp}/run/metrics.json").read_text())
    base_seconds, base_rss, stdout = run_measured(
        [
            python,
            str(ROOT / "scripts" / "keras_guide_baseline.py"),
            "--data",
            str(data),
            *common,
            *(["--weights", str(weights)] if weights else []),
        ],
        env=tensorflow_defaults(),
    )
    baseline = json.loads(stdout.strip().splitlines()[-1])
    return {
        "transfer_seconds": ours_seconds,
        "transfer_val_accuracy": metrics["val"]["accuracy"],
        "transfer_peak_rss_mb": ours_rss,
        "keras_guide_seconds": base_seconds,
        "keras_guide_val_accuracy": baseline["val_accuracy"],
        "keras_guide_peak_rss_mb": base_rss,
    }


def bench_time_to_accuracy(folder, size, weights=None):
    """(i): both recipes as a user runs them, on one folder with a held-out test/."""
    folder = Path(folder)
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        ours_seconds, ours_rss, _ = run_measured(
            _finetune_command(folder, size, weights, f"{tmp}/run", f"{tmp}/cache")
        )
        metrics = json.loads(Path(f"{tmp}/run/metrics.json").read_text())
        with open(f"{tmp}/run/history.csv") as f:
            history = list(csv.DictReader(f))
        # The history's accuracy is validation's (60 images on the sample: 1.7 points an
        # image). Phase 1's model tested: the same run stopped after phase 1, unrefitted
        # (the probe is deterministic, and its features come from the same cache).
        subprocess.run(
            _finetune_command(
                folder,
                size,
                weights,
                f"{tmp}/phase1",
                f"{tmp}/cache",
                "--fine-tune-from",
                "none",
                "--no-refit",
                "--no-report",
            ),
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        phase1 = json.loads(Path(f"{tmp}/phase1/metrics.json").read_text())
    head = next(row for row in history if row["phase"] == "head")
    if abs(phase1["val"]["accuracy"] - float(head["val_accuracy"])) > 1e-9:
        raise SystemExit("phase 1 alone did not repeat the run's phase 1")
    guide_seconds, guide_rss, stdout = run_measured(
        [
            python,
            str(ROOT / "scripts" / "keras_guide_baseline.py"),
            "--data",
            str(folder / "train"),
            "--test-data",
            str(folder / "test"),
            "--image-size",
            str(size),
            *(["--weights", str(weights)] if weights else []),
        ],
        env=tensorflow_defaults(),
    )
    guide = json.loads(stdout.strip().splitlines()[-1])
    reached = [
        float(row["elapsed_seconds"])
        for row in history
        if float(row["val_accuracy"]) >= guide["test_accuracy"]
    ]
    # Tested models: phase 1's when its epoch ended, and the kept one at the end.
    tested = [
        (float(head["elapsed_seconds"]), phase1["test"]["accuracy"]),
        (ours_seconds, metrics["test"]["accuracy"]),
    ]
    reached_tested = [t for t, accuracy in tested if accuracy >= guide["test_accuracy"]]
    # Phase 2's epochs after the first (which traces the step): wall time / step time.
    overhead = [
        float(row["epoch_seconds"]) / float(row["step_seconds"])
        for row in history
        if row["phase"] == "fine-tune" and int(row["epoch"]) > 1
    ]
    return {
        "folder": str(folder),
        "image_size": size,
        "weights": weights or "none",
        "guide_seconds": guide_seconds,
        "guide_test_accuracy": guide["test_accuracy"],
        "guide_peak_rss_mb": guide_rss,
        "transfer_seconds": ours_seconds,
        "transfer_test_accuracy": metrics["test"]["accuracy"],
        "transfer_peak_rss_mb": ours_rss,
        "transfer_kept": metrics["kept"]["phase"],
        "transfer_reached_guide_at_seconds": min(reached) if reached else None,
        "transfer_phase1_seconds": tested[0][0],
        "transfer_phase1_test_accuracy": tested[0][1],
        "transfer_reached_guide_tested_at_seconds": min(reached_tested) if reached_tested else None,
        "phase2_epoch_over_steps": max(overhead) if overhead else None,
    }


def _finetune_command(folder, size, weights, out, cache_dir, *extra):
    """`transfer finetune` on FOLDER (train/, with test/ held out) as a user runs it."""
    return [sys.executable, "-m", "transfer", "finetune", "--data", str(folder),
            "--image-size", str(size), "--weights", str(weights or "none"), "--out", str(out),
            "--cache-dir", str(cache_dir), *extra]  # fmt: skip


def _transfer_run(folder, size, weights, tmp, name, *extra):
    """`_finetune_command` in a fresh process with a cache of its own: (wall seconds,
    metrics.json)."""
    command = _finetune_command(folder, size, weights, f"{tmp}/{name}", f"{tmp}/cache-{name}")
    seconds, _, _ = run_measured([*command, *extra])
    return seconds, json.loads(Path(f"{tmp}/{name}/metrics.json").read_text())


BUDGET_SHARES = (0.25, 0.5, 1.0)  # of the guide's wall time


def bench_time_budget(folder, size, weights=None, ablations=True):
    """(l): test accuracy against a time budget, side by side with the guide."""
    folder = Path(folder)
    guide_seconds, _, stdout = run_measured(
        [
            sys.executable,
            str(ROOT / "scripts" / "keras_guide_baseline.py"),
            "--data",
            str(folder / "train"),
            "--test-data",
            str(folder / "test"),
            "--image-size",
            str(size),
            *(["--weights", str(weights)] if weights else []),
        ],
        env=tensorflow_defaults(),
    )
    guide = json.loads(stdout.strip().splitlines()[-1])
    row = {
        "folder": str(folder),
        "image_size": size,
        "weights": weights or "none",
        "guide_seconds": guide_seconds,
        "guide_test_accuracy": guide["test_accuracy"],
        "budgets": [],
        "ablations": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for share in BUDGET_SHARES:
            limit = share * guide_seconds
            try:
                seconds, metrics = _transfer_run(
                    folder, size, weights, tmp, f"limit{share}", "--time-limit", f"{limit:.0f}s"
                )
            except CommandFailed as refused:  # phase 1 cannot fit: said before it starts
                row["budgets"].append(
                    {
                        "share": share,
                        "limit_seconds": limit,
                        "seconds": refused.seconds,
                        "refused": refused.error,
                    }  # fmt: skip
                )
                continue
            plan = metrics.get("time_plan", {})
            row["budgets"].append(
                {
                    "share": share,
                    "limit_seconds": limit,
                    "seconds": seconds,
                    "test_accuracy": metrics["test"]["accuracy"],
                    "kept": metrics["kept"]["phase"],
                    "fine_tune_epochs": plan.get("fine_tune_epochs_planned"),
                    "stopped": plan.get("stopped"),
                }
            )
        for name, extra in (
            ("defaults", ()),
            ("no futility stop", ("--no-futility-stop",)),
            ("preset fast", ("--preset", "fast")),
            ("preset best", ("--preset", "best")),
        )[: 4 if ablations else 0]:
            seconds, metrics = _transfer_run(
                folder, size, weights, tmp, name.replace(" ", "-"), *extra
            )
            row["ablations"].append(
                {
                    **_run_summary(name, seconds, metrics),
                    "stopped": metrics["kept"].get("fine_tune_stopped"),
                }  # fmt: skip
            )
    return row


def _run_summary(name, seconds, metrics):
    """A finetune run as a benchmark row: its name, wall time, test accuracy, phase kept."""
    return {"name": name, "seconds": seconds, "test_accuracy": metrics["test"]["accuracy"],
            "kept": metrics["kept"]["phase"]}  # fmt: skip


PRESET_RUNS = (  # (m): each preset, and phase 1 alone for reference
    ("phase 1 only", ("--fine-tune-from", "none")),
    ("preset fast", ("--preset", "fast")),
    ("preset balanced (defaults)", ("--preset", "balanced")),
    ("preset best", ("--preset", "best")),
)


def bench_presets(folder, size, weights=None, arch=None):
    """(m): the presets side by side, one fresh process each, on a backbone where
    phase 2 can win: test accuracy, wall time, the phase kept."""
    row = {"folder": str(folder), "image_size": size, "weights": weights or "none",
           "arch": arch or "resnet50", "runs": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in PRESET_RUNS:
            seconds, metrics = _transfer_run(
                Path(folder), size, weights, tmp, name.split(" (")[0].replace(" ", "-"),
                *extra, *(["--arch", arch] if arch else []),
            )  # fmt: skip
            row["runs"].append(
                {
                    **_run_summary(name, seconds, metrics),
                    "validation": metrics["kept"].get("validation"),
                }  # fmt: skip
            )
            print(f"   {name:28} {seconds:6.0f} s, test accuracy "
                  f"{metrics['test']['accuracy']:.3f}, kept {metrics['kept']['phase']}",
                  flush=True)  # fmt: skip
    return row


def print_time_budget(rows):
    for row in rows:
        print(
            f"\n(l) {row['folder']} at {row['image_size']} px, weights {row['weights']}: "
            f"guide {row['guide_seconds']:.0f} s, test accuracy "
            f"{row['guide_test_accuracy']:.3f}"
        )
        for b in row["budgets"]:
            if "refused" in b:
                print(
                    f"   --time-limit {b['share']:.2f}x ({b['limit_seconds']:.0f} s): refused "
                    f"in {b['seconds']:.0f} s: {b['refused']}"
                )
                continue
            print(
                f"   --time-limit {b['share']:.2f}x ({b['limit_seconds']:.0f} s): "
                f"{b['seconds']:.0f} s, test accuracy {b['test_accuracy']:.3f} "
                f"({b['test_accuracy'] - row['guide_test_accuracy']:+.3f} against the guide), "
                f"kept {b['kept']}, phase-2 epochs {b['fine_tune_epochs']}"
            )
        for a in row["ablations"]:
            print(
                f"   {a['name']:18} {a['seconds']:6.0f} s, test accuracy "
                f"{a['test_accuracy']:.3f}, kept {a['kept']}"
                + (f" (phase 2 stopped: {a['stopped']})" if a["stopped"] else "")
            )


def family_speed(arch, size, batch, steps):
    """(k), in a worker process: images/s of one architecture's classifier."""
    from transfer.models.summary import describe

    keras.utils.set_random_seed(0)
    model = transfer.build_classifier(10, arch=arch, weights=None, image_size=size)
    n = batch * steps
    x = np.random.default_rng(0).integers(0, 256, (n, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(n) % 10, 10)
    batches = tf.data.Dataset.from_tensor_slices(x).batch(batch).cache()
    result = interleaved_rates({"inference": lambda: run_inference(model, batches)}, n, rounds=2)
    transfer.unfreeze(model, "conv5")
    model.compile(keras.optimizers.Adam(1e-4), "categorical_crossentropy")
    result.update(
        interleaved_rates(
            {"fine_tune": lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0)}, n, 2
        )
    )
    summary = describe(input_size=size, arch=arch)
    return {
        "arch": arch,
        "name": summary["architecture"].display_name,
        "params": summary["params"],
        "multiply_adds": summary["multiply_adds"],
        "inference_images_per_s": result["inference"],
        "fine_tune_images_per_s": result["fine_tune"],
    }


def bench_families(names, size, batch, steps):
    """(k): each architecture in a fresh process, so its peak RSS is its own."""
    rows = []
    for arch in names:
        print(f"(k) {arch} at {size} px ...", flush=True)
        _, rss, stdout = run_measured(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--family-worker",
                arch,
                "--model-size",
                str(size),
                "--batch-size",
                str(batch),
                "--steps",
                str(steps),
            ]
        )
        rows.append(dict(json.loads(stdout.strip().splitlines()[-1]), peak_rss_mb=rss))
    print(
        f"\n(k) {'architecture':<20}{'GMACs':>7}{'params M':>10}{'infer img/s':>13}"
        f"{'tune img/s':>12}{'peak MB':>9}"
    )
    for row in rows:
        print(
            f"    {row['name']:<20}{row['multiply_adds'] / 1e9:7.2f}{row['params'] / 1e6:10.1f}"
            f"{row['inference_images_per_s']:13.1f}{row['fine_tune_images_per_s']:12.1f}"
            f"{row['peak_rss_mb']:9.0f}"
        )
    return rows


def print_time_to_accuracy(rows):
    print(f"\n(i) time to a good model{'':28}{'guide':>16}{'transfer':>16}{'ratio':>8}")
    for row in rows:
        print(f"{row['folder']} at {row['image_size']} px, weights {row['weights']}")

        def seconds(key, row=row):
            return float("nan") if row.get(key) is None else row[key]

        lines = [
            ("wall time s", row["guide_seconds"], row["transfer_seconds"]),
            ("test accuracy", row["guide_test_accuracy"], row["transfer_test_accuracy"]),
            ("peak RSS MB", row["guide_peak_rss_mb"], row["transfer_peak_rss_mb"]),
            (
                "s to the guide's accuracy, by validation",
                row["guide_seconds"],
                seconds("transfer_reached_guide_at_seconds"),
            ),
        ]
        if "transfer_phase1_test_accuracy" in row:
            lines += [
                (
                    "  phase 1's model tested: its accuracy",
                    row["guide_test_accuracy"],
                    row["transfer_phase1_test_accuracy"],
                ),
                (
                    "s to the guide's accuracy, tested",
                    row["guide_seconds"],
                    seconds("transfer_reached_guide_tested_at_seconds"),
                ),
            ]
        for label, guide, ours in lines:
            print(f"   {label:49}{guide:16.3f}{ours:16.3f}{ours / guide:8.2f}")
        if row["phase2_epoch_over_steps"]:
            print(
                f"   phase-2 epoch / its steps (worst epoch after the first): "
                f"{row['phase2_epoch_over_steps']:.2f}; kept: {row['transfer_kept']}"
            )


EXPORTS = [
    ("keras", "none", "model.keras"),
    ("savedmodel", "none", "savedmodel"),
    ("onnx", "none", "model.onnx"),
    *[
        ("tflite", q, f"model-{q}.tflite")
        for q in ("none", "float16", "dynamic", "int8", "int16x8")
    ],
]


def _size_mb(path):
    path = Path(path)
    files = path.rglob("*") if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def _median_seconds(call, repeats):
    call()  # warm-up: first calls build kernels and allocate
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_exports(run, batch, repeats=20):
    """(j): every export of one run, side by side on the same images."""
    from transfer.commands.export import compare_with_keras, export, run_dataset
    from transfer.export import open_model
    from transfer.runs import load_model

    loaded = load_model(run)
    dataset = run_dataset(loaded.path, None)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, *loaded.image_size, 3)).astype("uint8")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, quantize, name in EXPORTS:
            out = Path(tmp) / name
            start = time.perf_counter()
            export(run, out, format=fmt, quantize=quantize, compare=False)
            seconds = time.perf_counter() - start
            runner = open_model(out)
            agreement = compare_with_keras(loaded, out, dataset)
            rows.append(
                {
                    "format": fmt,
                    "quantize": quantize,
                    "export_seconds": seconds,
                    "size_mb": _size_mb(out),
                    "latency_ms": 1000
                    * _median_seconds(lambda runner=runner: runner.predict(images[:1]), repeats),
                    "images_per_s": batch
                    / _median_seconds(
                        lambda runner=runner: runner.predict(images), max(3, repeats // 4)
                    ),
                    **agreement,
                }
            )
            print(f"(j) {fmt} {quantize}: {rows[-1]}", flush=True)
    return rows


def print_exports(rows):
    print(
        f"\n(j) {'format':12}{'quantize':>9}{'MB':>8}{'1 image ms':>12}{'img/s':>9}"
        f"{'accuracy':>10}{'Keras':>8}{'top-1 agree':>13}"
    )
    for r in rows:
        print(
            f"    {r['format']:12}{r['quantize']:>9}{r['size_mb']:8.1f}{r['latency_ms']:12.2f}"
            f"{r['images_per_s']:9.1f}{r['accuracy']:10.4f}{r['reference_accuracy']:8.4f}"
            f"{r['top1_agreement']:13.2%}"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"))
    parser.add_argument("--model-size", type=int, default=224, help="Input size for (a) and (b).")
    parser.add_argument("--image-size", type=int, default=64, help="Input size for (c) to (f).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--steps", type=int, default=4, help="Batches per timing in (a), (b), (g), (h)."
    )
    parser.add_argument("--head-epochs", type=int, default=10)
    parser.add_argument("--fine-tune-epochs", type=int, default=2)
    parser.add_argument(
        "--weights",
        default=None,
        help="A notop .h5 weights file for (d), given to both runs "
        "(default: random initialisation, so (d)'s accuracies are noise).",
    )
    parser.add_argument(
        "--weights-only",
        action="store_true",
        help="(i): only the runs with --weights, not those from random initialisation as well.",
    )
    parser.add_argument("--out", default="benchmark.json")
    parser.add_argument("--skip-end-to-end", action="store_true")
    parser.add_argument(
        "--end-to-end-only",
        action="store_true",
        help="Only (d) and (f): the Keras-guide script against transfer finetune.",
    )
    parser.add_argument(
        "--time-to-accuracy",
        default=None,
        metavar="FOLDER:SIZE,...",
        help="Only (i), on these folders (each with train/ and test/) at these image sizes.",
    )
    parser.add_argument(
        "--time-budget",
        default=None,
        metavar="FOLDER:SIZE,...",
        help="(l): test accuracy at 0.25, 0.5 and 1 times the guide's wall "
        "time, the futility stop's ablation and the presets.",
    )
    parser.add_argument(
        "--presets",
        default=None,
        metavar="FOLDER:SIZE",
        help="Only (m): the presets side by side on FOLDER (train/, test/), with --weights "
        "and --arch.",
    )
    parser.add_argument("--arch", default=None, help="The --arch of (m)'s runs.")
    parser.add_argument(
        "--budgets-only",
        action="store_true",
        help="With --time-budget: the guide and the limits, no ablations.",
    )
    parser.add_argument(
        "--exports",
        default=None,
        metavar="RUN",
        help="Only (j): this run directory in every export format.",
    )
    parser.add_argument(
        "--families",
        default=None,
        metavar="NAME,...|all",
        help="Only (k), for these --arch names (all: every architecture).",
    )
    parser.add_argument("--family-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.family_worker:
        print(
            json.dumps(
                family_speed(args.family_worker, args.model_size, args.batch_size, args.steps)
            )
        )
        return

    from tensorflow.python.util import _pywrap_util_port

    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "onednn": bool(_pywrap_util_port.IsMklEnabled()),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }
    print(f"machine: {machine}", flush=True)
    results = {"machine": machine, "arguments": vars(args)}
    if args.time_to_accuracy:
        results["time_to_accuracy"] = rows = []
        for item in args.time_to_accuracy.split(","):
            folder, size = item.rsplit(":", 1)
            starts = [] if args.weights_only and args.weights else [None]
            for weights in starts + ([args.weights] if args.weights else []):
                print(f"(i) {folder} at {size} px, weights {weights or 'none'} ...", flush=True)
                rows.append(bench_time_to_accuracy(folder, int(size), weights))
                Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print_time_to_accuracy(rows)
        return
    if args.presets:
        folder, size = args.presets.rsplit(":", 1)
        print(f"(m) {folder} at {size} px, weights {args.weights or 'none'} ...", flush=True)
        results["presets"] = bench_presets(folder, int(size), args.weights, args.arch)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        return
    if args.time_budget:
        results["time_budget"] = rows = []
        for item in args.time_budget.split(","):
            folder, size = item.rsplit(":", 1)
            starts = [] if args.weights_only and args.weights else [None]
            for weights in starts + ([args.weights] if args.weights else []):
                print(f"(l) {folder} at {size} px, weights {weights or 'none'} ...", flush=True)
                rows.append(bench_time_budget(folder, int(size), weights, not args.budgets_only))
                Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print_time_budget(rows)
        return
    if args.exports:
        results["exports"] = rows = bench_exports(args.exports, args.batch_size)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print_exports(rows)
    if args.families:
        from transfer.models.families import ARCH_NAMES

        names = ARCH_NAMES if args.families == "all" else args.families.split(",")
        results["families"] = bench_families(names, args.model_size, args.batch_size, args.steps)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    if args.exports or args.families:  # those sections only
        return
    if args.end_to_end_only:
        results["end_to_end"] = e2e = bench_end_to_end(
            args.data,
            args.image_size,
            args.batch_size,
            args.head_epochs,
            args.fine_tune_epochs,
            args.weights,
        )
        print(json.dumps(e2e, indent=2))
        print(
            f"(d) wall time: Keras guide {e2e['keras_guide_seconds']:.0f} s, transfer "
            f"{e2e['transfer_seconds']:.0f} s (ratio "
            f"{e2e['keras_guide_seconds'] / e2e['transfer_seconds']:.2f}); validation accuracy: "
            f"transfer {e2e['transfer_val_accuracy']:.3f}, Keras guide "
            f"{e2e['keras_guide_val_accuracy']:.3f}"
        )
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        return
    print(f"(a, b) models at {args.model_size}px ...", flush=True)
    results["models"] = models = bench_models(args.model_size, args.batch_size, args.steps)
    dataset = load_dataset(args.data, val_split=0.2)
    drop_unreadable(dataset, progress=False)
    print(
        f"(c, e) phase 1 and pipeline on {dataset.describe()} at {args.image_size}px ...",
        flush=True,
    )
    results["phase1"] = p1 = bench_phase1(
        dataset, args.image_size, args.batch_size, args.head_epochs
    )
    rows = [
        (
            "a",
            "inference img/s, ours / keras.applications",
            models["predict_ours"],
            models["predict_keras"],
            0.98,
        ),
        (
            "a",
            "training img/s, ours / keras.applications",
            models["train_ours"],
            models["train_keras"],
            0.98,
        ),
        (
            "b",
            "our inference path / plain keras predict()",
            models["inference_path"],
            models["plain_keras_predict"],
            1.3,
        ),
        (
            "b",
            "our inference path / keras predict(), same process",
            models["inference_path"],
            models["predict_keras"],
            None,
        ),
        (
            "g",
            "training img/s, XLA on / off (ours)",
            models["train_ours_xla"],
            models["train_ours"],
            None,
        ),
        (
            "h",
            "keras training img/s, with oneDNN / plain keras",
            models["train_keras"],
            models["plain_keras_train"],
            None,
        ),
        (
            "c",
            "phase-1 epoch: frozen backbone s / cached s",
            p1["head_epoch_frozen_backbone_seconds"],
            p1["head_epoch_cached_seconds"],
            20,
        ),
        (
            "c",
            "one forward pass s / whole cached phase 1 s",
            p1["forward_pass_seconds"],
            p1["phase1_cached_seconds"],
            1 / 1.5,
        ),
        (
            "e",
            "pipeline img/s (from disk) / training img/s",
            p1["pipeline_images_per_s"],
            p1["fine_tune_train_images_per_s"],
            3,
        ),
        (
            "e",
            "pipeline img/s (cached) / training img/s",
            p1["pipeline_cached_images_per_s"],
            p1["fine_tune_train_images_per_s"],
            3,
        ),
    ]
    if not args.skip_end_to_end:
        print("(d, f) end to end ...", flush=True)
        results["end_to_end"] = e2e = bench_end_to_end(
            args.data,
            args.image_size,
            args.batch_size,
            args.head_epochs,
            args.fine_tune_epochs,
            args.weights,
        )
        rows += [
            (
                "d",
                "wall time: Keras guide s / transfer s",
                e2e["keras_guide_seconds"],
                e2e["transfer_seconds"],
                2,
            ),
            (
                "d",
                "val accuracy: transfer - Keras guide",
                e2e["transfer_val_accuracy"],
                e2e["keras_guide_val_accuracy"],
                None,
            ),
            (
                "f",
                "peak RSS MB: transfer / Keras guide",
                e2e["transfer_peak_rss_mb"],
                e2e["keras_guide_peak_rss_mb"],
                None,
            ),
        ]
    results["comparisons"] = []
    print(f"\n{'':3}{'comparison':52}{'value':>10}{'vs':>10}{'ratio':>8}{'target':>8}  met")
    for key, label, value, other, target in rows:
        ratio = value - other if label.startswith("val accuracy") else value / other
        met = "" if target is None else ("yes" if ratio >= target else "no")
        if label.startswith("val accuracy"):
            met = "yes" if ratio >= 0 else "no"
        shown_target = "" if target is None else f"{target:g}"
        print(f"{key:3}{label:52}{value:10.2f}{other:10.2f}{ratio:8.2f}{shown_target:>8}  {met}")
        results["comparisons"].append(
            {
                "key": key,
                "comparison": label,
                "value": value,
                "other": other,
                "ratio": ratio,
                "target": target,
                "met": met,
            }
        )
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
