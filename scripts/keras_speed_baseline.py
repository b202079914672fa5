#!/usr/bin/env python
"""The plain-Keras baseline for scripts/benchmark.py (b) and (h): images/s of
keras.applications.ResNet50 with `predict` and `fit` at their defaults, in a
process that does not import `transfer`, so TensorFlow keeps its own settings.
Prints one JSON line."""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402


def interleaved_rates(candidates, count, rounds):
    """Images/s of each candidate: its best of `rounds`, timed in turns (A, B, A, B...)
    after one warm-up call each, so a slow spell of a shared machine hits all alike."""
    for fn in candidates.values():
        fn()
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: count / seconds for name, seconds in best.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    size, batch, n = args.size, args.batch_size, args.batch_size * args.steps
    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=10)
    x = np.random.default_rng(0).uniform(-120, 130, (n, size, size, 3)).astype("float32")
    y = keras.utils.to_categorical(np.arange(n) % 10, 10)
    predict = interleaved_rates(
        {"predict": lambda: model.predict(x, batch_size=batch, verbose=0)}, n, 3
    )["predict"]
    model.compile(keras.optimizers.SGD(1e-3), "categorical_crossentropy")
    train = interleaved_rates(
        {"train": lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0)}, n, 2
    )["train"]
    from tensorflow.python.util import _pywrap_util_port

    print(
        json.dumps(
            {"predict": predict, "train": train, "onednn": bool(_pywrap_util_port.IsMklEnabled())}
        )
    )


if __name__ == "__main__":
    main()
