"""A run's pooled backbone features: through the feature cache while the backbone is
the frozen one phase 1 started from, computed afresh after phase 2 changed it. Under
a multi-worker strategy each worker computes the features of its block of the images
and every worker gets them all (`transfer.train.distribute.SharedPasses`), so that the
probe and phase 2 run on each as in one process."""

import logging
import weakref
from pathlib import Path

import numpy as np

from transfer.data.pipeline import images_only
from transfer.models.heads import pooled_features
from transfer.models.identify import architecture_of
from transfer.train.distribute import local_copy
from transfer.train.feature_cache import (
    cache_key,
    compute_features,
    default_cache_dir,
    load_cached,
    save_cached,
    weights_identity,
)

logger = logging.getLogger("transfer")


# The workers sharing the passes of an extractor that `run_extractor` made under a
# multi-worker strategy (`SharedPasses`): callers hand the extractor on to
# `cached_features`, and with it the part of the images this worker computes.
_SHARED = weakref.WeakKeyDictionary()


def run_extractor(run):
    """(the run's model up to its pooled features, its architecture's name)."""
    extractor = pooled_features(local_copy(run.model, run.strategy))
    if run.shared_passes is not None:
        _SHARED[extractor] = run.shared_passes
    return extractor, architecture_of(run.model).name


def split_cache_key(split, options, architecture_name):
    """The feature cache's key of a split's pooled features at the run's start."""
    # The key holds the seed for random initialisation: same seed, same backbone.
    return cache_key(
        weights_identity(options.weights, options.seed),
        architecture_name,
        options.image_size,
        options.pooling,
        split.paths,
    )


def is_cached(key, options):
    return (Path(options.cache_dir or default_cache_dir()) / f"{key}.npy").is_file()


def cached_features(extractor, split, options, architecture_name):
    """The pooled features of `split`, from the cache when they are there."""
    key = split_cache_key(split, options, architecture_name)
    cache_dir = options.cache_dir or default_cache_dir()
    if extractor in _SHARED:
        return _shared_features(_SHARED[extractor], extractor, split, options, cache_dir, key)
    return compute_features(
        extractor,
        images_only(split, options.image_size, options.batch_size),
        len(split),
        extractor.output.shape[-1],
        cache_dir=cache_dir,
        key=key,
    )


def _features(extractor, split, options):
    """The pooled features of `split`, computed (not cached); under a multi-worker
    strategy, each worker computes its part."""
    if extractor in _SHARED:
        return _shared_features(_SHARED[extractor], extractor, split, options)
    return compute_features(
        extractor,
        images_only(split, options.image_size, options.batch_size),
        len(split),
        extractor.output.shape[-1],
    )


def _shared_features(shared, extractor, split, options, cache_dir=None, key=None):
    """`cached_features` across the workers of `shared` (`SharedPasses`): taken from
    the cache when every worker has it there; else each worker computes the features
    of its block of the images, and every worker gets them all, in order; the chief
    keeps them in the cache."""
    count, dim = len(split), extractor.output.shape[-1]
    if key:
        found = load_cached(cache_dir, key, count, dim)
        if shared.all(found is not None):
            return found
    start, stop = shared.part(count)
    logger.info(
        "Features of images %d to %d of %d on worker %d of %d.",
        start + 1,
        stop,
        count,
        shared.index + 1,
        shared.workers,
    )
    part = split.subset(np.arange(start, stop))
    mine = np.zeros((0, dim), np.float32)  # more workers than images: nothing to do
    if len(part):
        mine = compute_features(
            extractor, images_only(part, options.image_size, options.batch_size), len(part), dim
        )
    shared.computed += len(part)
    features = shared.gather(np.asarray(mine, np.float32), count)
    if key and shared.index == 0:
        save_cached(cache_dir, key, features)
    return features


def split_features(run, split_names, backbone_as_cached, known=None):
    """{split name: pooled backbone features} of the named splits (the empty ones left
    out), for the end of a run: its predictions are the head's on these, and its report
    reuses them. While the backbone is still the frozen one phase 1 cached features of,
    they come from the cache; after phase 2 it is a new backbone, and one pass computes
    them (uncached: the cache's key names the starting weights). `known` holds the
    features of splits computed already with this backbone, taken as they are."""
    options = run.options
    extractor, name = run_extractor(run)
    found = {}
    for split_name in split_names:
        split = run.dataset.splits.get(split_name)
        if split is None or not len(split):
            continue
        if split_name in (known or {}):
            found[split_name] = known[split_name]
        elif backbone_as_cached:
            found[split_name] = cached_features(extractor, split, options, name)
        else:
            found[split_name] = _features(extractor, split, options)
    return found
