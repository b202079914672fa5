"""A run's pooled backbone features: through the feature cache while the backbone is
the frozen one phase 1 started from, computed afresh after phase 2 changed it."""

from pathlib import Path

from transfer.data.pipeline import images_only
from transfer.models.heads import pooled_features
from transfer.models.identify import architecture_of
from transfer.train.distribute import local_copy
from transfer.train.feature_cache import (
    cache_key,
    compute_features,
    default_cache_dir,
    weights_identity,
)


def run_extractor(run):
    """(the run's model up to its pooled features, its architecture's name)."""
    return pooled_features(local_copy(run.model, run.strategy)), architecture_of(run.model).name


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
    return compute_features(
        extractor,
        images_only(split, options.image_size, options.batch_size),
        len(split),
        extractor.output.shape[-1],
        cache_dir=options.cache_dir or default_cache_dir(),
        key=key,
    )


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
            found[split_name] = compute_features(
                extractor,
                images_only(split, options.image_size, options.batch_size),
                len(split),
                extractor.output.shape[-1],
            )
    return found
