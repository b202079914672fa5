"""Pooled backbone features of a frozen backbone, computed once per dataset.

While the backbone is frozen and images are not augmented, its features cannot
change, so phase 1 trains the head on them. They are kept in memory when they fit
(under `memory_fraction` of the machine's RAM) and in a memory-mapped .npy file
otherwise; with a cache folder, they are also kept on disk, keyed by the weights,
the architecture, the image size, the pooling and the list of files (path, size,
modification time; a TFRecord's record, its shard's), so a second run on the same
data reuses them.
"""

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from transfer.data.pipeline import available_memory_bytes
from transfer.errors import first_line
from transfer.io import atomic_path, write_npy
from transfer.models.weights.download import file_md5
from transfer.runtime import predict_batch, run_inference

logger = logging.getLogger("transfer")

CACHE_DIR_ENV = "TRANSFER_CACHE_DIR"


def default_cache_dir():
    base = os.environ.get(CACHE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
        "transfer",
        "features",
    )
    return Path(base)


def weights_identity(weights, seed):
    """What fixes the backbone's numbers: the weights file's content, or the seed."""
    if weights is None:
        return f"random-init-seed-{seed}"
    if weights == "imagenet":
        return "imagenet"  # the official files are fixed by their MD5 hash
    return f"file-md5-{file_md5(weights)}"


def cache_key(identity, architecture_name, image_size, pooling, paths):
    """A hash of everything the features depend on."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [identity, architecture_name, [int(s) for s in np.atleast_1d(image_size)], pooling]
        ).encode()
    )
    shard_stamps = {}  # a TFRecord shard's, once for all its records
    for path in paths:
        try:
            stat = os.stat(path)
            digest.update(f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        except OSError:  # a record (`<shard>#<index>`), or a TFDS image
            shard, _, index = path.rpartition("#")
            if shard and shard not in shard_stamps:
                shard_stamps[shard] = _stamp(shard)
            if shard_stamps.get(shard):
                digest.update(f"{os.path.abspath(shard)}#{index}|{shard_stamps[shard]}\n".encode())
            else:  # TFDS' names: the dataset fingerprint covers them
                digest.update(f"{path}\n".encode())
    return digest.hexdigest()[:32]


def _stamp(path):
    """A file's size and modification time, as text (None where there is no file)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return f"{stat.st_size}|{stat.st_mtime_ns}"


def compute_features(
    extractor, batches, count, dim, cache_dir=None, key=None, memory_fraction=0.25, verbose=1
):
    """Run `extractor` over `batches` once; reuse a cached copy when the key matches.

    Returns a float32 array of shape (count, dim), possibly memory-mapped.
    """
    cached = Path(cache_dir) / f"{key}.npy" if cache_dir and key else None
    if cached is not None:
        features = load_cached(cache_dir, key, count, dim)
        if features is not None:
            return features
    size = count * dim * 4
    if size <= memory_fraction * available_memory_bytes():
        features = run_inference(
            extractor, batches, verbose=verbose, description="Features"
        ).astype(np.float32)
        if cached is not None:
            _save(cached, features)
        return features
    # Too large for memory: write batch by batch into a memory-mapped file.
    target = cached or Path(tempfile.mkdtemp(prefix="transfer-features-")) / "features.npy"
    logger.info("Features (%.1f GB) go to %s.", size / 1e9, target)
    with atomic_path(target) as tmp:
        mapped = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(count, dim))
        start = 0
        for batch in batches:
            out = predict_batch(extractor, batch)
            mapped[start : start + len(out)] = out
            start += len(out)
        mapped.flush()
        del mapped
    return np.load(target, mmap_mode="r")


def load_cached(cache_dir, key, count, dim):
    """The features cached under `key`, or None (a damaged entry is removed)."""
    path = Path(cache_dir) / f"{key}.npy"
    _remove_stale_partials(path.parent)
    features = _load_cached(path, count, dim)
    if features is not None:
        logger.info("Reusing cached features %s.", path)
    return features


def save_cached(cache_dir, key, features):
    """Keep `features` under `key` (a cache that cannot be written is a warning)."""
    _save(Path(cache_dir) / f"{key}.npy", features)


def _load_cached(path, count, dim):
    """The cached features, or None; a damaged entry (a truncated or foreign file, or
    features of another shape) is removed, to be computed again."""
    if not path.exists():
        return None
    try:
        features = np.load(path, mmap_mode="r")
        if features.shape != (count, dim) or features.dtype != np.float32:
            raise ValueError(
                f"holds {features.dtype} {features.shape}, expected float32 {(count, dim)}"
            )
        return features
    except (OSError, ValueError, EOFError) as exc:
        logger.warning(
            "Discarding the damaged feature cache %s (%s); computing the features again.",
            path,
            first_line(exc),
        )
        with contextlib.suppress(OSError):
            path.unlink()
        return None


# A temporary file of a cache entry unchanged for this long belongs to a run that died.
STALE_PARTIAL_SECONDS = 3600


def _remove_stale_partials(cache_dir):
    now = time.time()
    for partial in cache_dir.glob(".*.partial*"):
        with contextlib.suppress(OSError):  # gone already, or another run's to handle
            if now - partial.stat().st_mtime > STALE_PARTIAL_SECONDS:
                partial.unlink()


def _save(path, features):
    try:
        write_npy(path, features)
    except Exception as exc:  # a cache that cannot be written only costs time later
        logger.warning("Could not write the feature cache %s (%s).", path, exc)
