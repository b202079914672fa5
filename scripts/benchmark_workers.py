#!/usr/bin/env python
"""Features on two local workers against one process: `transfer finetune` with
`--strategy multiworker` and two workers on 127.0.0.1 (TF_CONFIG), each computing
the frozen backbone's features of half of the images, against the same run in one
process. Phase 1 only (the probe on the features), random initialisation, each run
with its own feature cache.

Reports each run's wall time and phase 1's time (metrics.json's head_seconds, the
feature passes and the probe), how many images' features each worker computed (its
log), and the largest difference between the two runs' cached features. Prints JSON.

    .venv/bin/python scripts/benchmark_workers.py --data data/fashion-mnist --image-size 96

Two workers on one machine share its cores: on a 2-core machine they cannot be faster
than one process, and what this measures there is the cost of the coordination. Across
machines, each worker brings its own.
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def finetune_command(data, out, image_size, *extra):
    return [
        sys.executable,
        "-m",
        "transfer",
        "finetune",
        "--data",
        str(data),
        "--out",
        str(out),
        "--weights",
        "none",
        "--image-size",
        str(image_size),
        "--fine-tune-from",
        "none",
        "--no-report",
        *extra,
    ]


def environment(cache, tf_config=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    env["TRANSFER_CACHE_DIR"] = str(cache)
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def timed_run(commands_and_envs):
    """Start every command at once; (wall seconds until all ended, their outputs)."""
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for command, env in commands_and_envs
    ]
    outputs = [p.communicate()[0] for p in processes]
    seconds = time.perf_counter() - start
    for p, output in zip(processes, outputs):
        if p.returncode:
            sys.exit(f"a run failed:\n{output[-3000:]}")
    return seconds, outputs


def computed_per_worker(output):
    """Images whose features a worker's log says it computed."""
    found = re.findall(r"Features of images (\d+) to (\d+) of \d+ on worker", output)
    return sum(int(stop) - int(start) + 1 for start, stop in found)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT / "data" / "fashion-mnist"))
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--out", help="Write the JSON here too.")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="benchmark-workers-"))

    one_seconds, _ = timed_run(
        [
            (
                finetune_command(args.data, work / "one", args.image_size),
                environment(work / "cache-one"),
            )
        ]
    )
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    two_seconds, outputs = timed_run(
        [
            (
                finetune_command(
                    args.data, work / "two", args.image_size, "--strategy", "multiworker"
                ),
                environment(
                    work / "cache-two",
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}},
                ),
            )
            for i in range(2)
        ]
    )
    one = json.loads((work / "one" / "metrics.json").read_text())
    two = json.loads((work / "two" / "metrics.json").read_text())
    difference = 0.0
    for path in sorted((work / "cache-one").glob("*.npy")):
        other = work / "cache-two" / path.name
        difference = max(difference, float(np.abs(np.load(path) - np.load(other)).max()))
    config = json.loads((work / "one" / "config.json").read_text())
    record = {
        "images": sum(config["dataset"]["splits"].values()),
        "image_size": args.image_size,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "one_process": {
            "wall_seconds": round(one_seconds, 1),
            "phase_1_seconds": one["timings"]["head_seconds"],
        },
        "two_workers": {
            "wall_seconds": round(two_seconds, 1),
            "phase_1_seconds": two["timings"]["head_seconds"],
            "features_computed": [computed_per_worker(output) for output in outputs],
        },
        "largest_feature_difference": difference,
        "same_cache_entries": sorted(p.name for p in (work / "cache-one").glob("*.npy"))
        == sorted(p.name for p in (work / "cache-two").glob("*.npy")),
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
