#!/usr/bin/env python
"""Where a small run's seconds go: start-up and the fixed costs of `transfer finetune`.

Each measurement in a fresh process, --repeats times (the median is printed):

cli        `transfer --version`: the command line without TensorFlow;
refusal    `transfer finetune --data MISSING`: a wrong path, refused before TensorFlow;
tensorflow `python -c "import tensorflow"`: what every run pays first;
run        `transfer.finetune` on --data (phase 1 only, no report) in a child process
           whose log records are timed: the stages between them (imports, data and
           file check, building the model and loading the weights, the backbone's
           features with their tracing, the probe, the end of the run).

    .venv/bin/python scripts/benchmark_startup.py --data data/fashion-mnist
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The run's stages: a stage ends at the first log message that starts with its marker.
STAGES = (
    ("imports (transfer, TensorFlow, Keras)", "Checking "),
    ("file check and data", "Data: "),
    ("model built, weights loaded", "Phase 1: computing"),
    ("features (tracing the backbone, one pass)", "Fitting a logistic regression"),
    ("probe (C by cross-validation, fit)", "Phase 1: the head is"),
    ("end of the run (validation, saves, metrics)", None),
)

CHILD = """
import logging, sys, time, json
start = float(sys.argv[1])
records = []
class Timed(logging.Handler):
    def emit(self, record):
        records.append((time.time() - start, record.getMessage()))
import transfer
logging.getLogger("transfer").addHandler(Timed())
logging.getLogger("transfer").setLevel(logging.INFO)
transfer.finetune(sys.argv[2], out=sys.argv[3], overwrite=True, report=False,
                  **json.loads(sys.argv[4]))
records.append((time.time() - start, "end"))
print(json.dumps(records))
"""


def wall(command):
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
    return time.perf_counter() - start


def run_stages(data, options):
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CHILD,
                str(time.time()),
                data,
                f"{tmp}/run",
                json.dumps(options),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TRANSFER_CACHE_DIR": f"{tmp}/cache"},
        )
    records = json.loads(out.stdout.strip().splitlines()[-1])
    stages, begun = {}, 0.0
    for name, marker in STAGES:
        ends = [t for t, message in records if marker and message.startswith(marker)]
        end = ends[0] if ends else records[-1][0]
        stages[name] = end - begun
        begun = end
    stages["total"] = records[-1][0]
    return stages


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--weights", default="none")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmark-startup.json")
    args = parser.parse_args()
    transfer = [sys.executable, "-m", "transfer"]
    options = {"image_size": args.image_size, "weights": args.weights, "fine_tune_from": "none",
               "arch": args.arch}  # fmt: skip
    measured = {"cli": [], "refusal": [], "tensorflow": [], "run": []}
    for _ in range(args.repeats):
        measured["cli"].append(wall([*transfer, "--version"]))
        measured["refusal"].append(
            wall([*transfer, "finetune", "--data", "/no/such/folder", "--out", "/tmp/x"])
        )
        measured["tensorflow"].append(wall([sys.executable, "-c", "import tensorflow"]))
        measured["run"].append(run_stages(args.data, options))
    median = {k: statistics.median(v) for k, v in measured.items() if k != "run"}
    stages = {k: statistics.median(r[k] for r in measured["run"]) for k in measured["run"][0]}
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"transfer --version (no TensorFlow)        {median['cli']:6.2f} s")
    print(f"finetune --data MISSING (refused)         {median['refusal']:6.2f} s")
    print(f"python -c 'import tensorflow'             {median['tensorflow']:6.2f} s")
    print(f"finetune on {args.data}, phase 1 only, by stage:")
    for name, seconds in stages.items():
        print(f"   {name:45} {seconds:6.2f} s")
    Path(args.out).write_text(
        json.dumps(
            {"arguments": vars(args), "median": median, "stages": stages, "measured": measured},
            indent=2,
        )
        + "\n"  # fmt: skip
    )


if __name__ == "__main__":
    main()
