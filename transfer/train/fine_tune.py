"""Phase 2: the groups from `fine_tune_from` on unfreeze and train on augmented images
with a lower, scheduled learning rate. The frozen groups' outputs (the prefix's) are
computed once where they fit, so that each step runs only the groups that train."""

import logging

import numpy as np

from transfer.data.augment import augmentation, cacheable_orientations
from transfer.data.pipeline import images_only, labelled
from transfer.lazy import tf
from transfer.models.groups import split_at_group
from transfer.runtime import run_inference
from transfer.train.callbacks import cached_validation, precise_batchnorm, validation_callback
from transfer.train.phase import Schedule

logger = logging.getLogger("transfer")

# Precise BatchNormalization statistics are averaged over this many training images
# (a seeded sample); pycls averages over 8192 at ImageNet scale.
PRECISE_BN_IMAGES = 512
# Phase 2 runs the frozen groups' (the prefix's) outputs through the groups that
# train (the suffix). Those outputs are computed once and kept in float16 when they
# fit in this budget: the validation images' first, then both orientations of the
# training images'.
PREFIX_CACHE_BYTES = 2 * 2**30


def fine_tune_schedule(options, augment, planned_epochs=None):
    return Schedule(
        options.fine_tune_epochs,
        options.fine_tune_learning_rate,
        augment=augment,
        cosine=options.lr_schedule == "cosine",
        layer_decay=options.layer_decay,
        ema=options.ema,
        planned_epochs=planned_epochs,
    )


def fine_tune_on_images(run, phase, planned_epochs=None):
    """Phase 2: augmented images, warmup and cosine decay, rates falling with depth;
    BatchNormalization that trains gets precise statistics at each epoch's end. The
    frozen groups' outputs are computed once where they fit (`FrozenPrefix`): for the
    validation images always, and for the training images where the augmentation
    is none or a flip, so that each step runs only the groups that train."""
    model, dataset, options = run.model, run.dataset, run.options
    cached = FrozenPrefix.of(model, dataset, options, run)
    validation = cached.validation() if cached else None
    train, val = dataset.splits["train"], dataset.splits["val"]
    train_on_prefix = cached is not None and cached.train is not None
    recalibrate = None
    if options.train_bn and run.strategy.num_replicas_in_sync == 1:
        if train_on_prefix:
            recalibrate = precise_batchnorm(
                cached.suffix,
                cached.train_batches(train.sample_indices(PRECISE_BN_IMAGES, options.seed)),
            )
        else:
            recalibrate = precise_batchnorm(
                model,
                images_only(
                    train.sample(PRECISE_BN_IMAGES, options.seed),
                    options.image_size,
                    options.batch_size,
                ),
            )
    # Keras' validation would come before the recalibration, and it cannot run images
    # through a model that trains on the prefix's outputs.
    if validation is None and len(val) and (recalibrate is not None or train_on_prefix):
        validation = validation_callback(
            model, images_only(val, options.image_size, options.batch_size), val.labels
        )
    if train_on_prefix:
        schedule = fine_tune_schedule(options, cached.train_inputs(options.seed), planned_epochs)
        return phase.fit(
            model,
            labelled(np.arange(len(train)), train.labels, dataset.num_classes),
            len(train),
            None,
            schedule,
            validation=validation,
            recalibrate=recalibrate,
            fitted=cached.suffix,
        )
    schedule = fine_tune_schedule(
        options, augmentation(options.seed, options.augment, options.flip), planned_epochs
    )
    return phase.fit_on_images(model, schedule, validation=validation, recalibrate=recalibrate)


class SharedOutputs:
    """The frozen groups' outputs of several runs that start from the same backbone
    (transfer tune's trials, all from one phase 1): {(fine_tune_from, split name,
    mirrored): outputs}, at most PREFIX_CACHE_BYTES in all, the oldest dropped first."""

    def __init__(self, budget=PREFIX_CACHE_BYTES):
        self.budget, self.entries = budget, {}

    def get(self, key, compute):
        if key not in self.entries:
            outputs = compute()
            held = sum(kept.nbytes for kept in self.entries.values())
            while self.entries and held + outputs.nbytes > self.budget:
                held -= self.entries.pop(next(iter(self.entries))).nbytes
            self.entries[key] = outputs
        return self.entries[key]


class FrozenPrefix:
    """The outputs of the groups before `fine_tune_from`, computed once for phase 2
    (once for all the runs that share `run.prefix_outputs`)."""

    def __init__(self, prefix, suffix, options, shared=None):
        self.prefix, self.suffix, self.options = prefix, suffix, options
        self.shared = shared
        self.val_outputs = self.val_labels = None
        # A tensor of (orientations × training images, ...) or None; image i mirrored
        # is at i + train_count.
        self.train, self.orientations = None, 0

    @classmethod
    def of(cls, model, dataset, options, run):
        """The cache for this run (`run` gives its distribution strategy, and the outputs
        it shares with other runs, `prefix_outputs`), or None where the model does not
        split at fine_tune_from (or several replicas validate on a local copy instead,
        `local_validation`)."""
        if run.strategy.num_replicas_in_sync > 1:
            return None
        split = split_at_group(model, options.fine_tune_from)
        if split is None:
            return None
        prefix, suffix = split
        train, val = dataset.splits["train"], dataset.splits["val"]
        per_image = int(np.prod(prefix.output.shape[1:])) * 2
        budget = PREFIX_CACHE_BYTES
        cache = cls(prefix, suffix, options, run.prefix_outputs)
        if len(val) * per_image > budget:
            logger.info(
                "Validation runs through the whole model: the frozen groups' outputs "
                "would take %.1f GB.",
                len(val) * per_image / 2**30,
            )
        elif len(val):
            cache.val_outputs, cache.val_labels = cache._outputs("val", val), val.labels
            budget -= len(val) * per_image
        orientations = cacheable_orientations(options.augment, options.flip)
        size = orientations * len(train) * per_image
        if orientations and len(train) and size <= budget:
            logger.info(
                "Phase 2: the frozen groups' outputs for the training images are "
                "computed once (%d image%s, %.0f MB); each step runs from %s on.",
                len(train),
                "s and their mirror images" if orientations == 2 else "s",
                size / 2**20,
                options.fine_tune_from,
            )
            cache.train = tf.convert_to_tensor(
                np.concatenate(
                    [cache._outputs("train", train, bool(o)) for o in range(orientations)]
                )
            )
            cache.orientations = orientations
        elif orientations and len(train):
            logger.info(
                "Phase 2 trains on images: the frozen groups' outputs would take %.1f GB.",
                size / 2**30,
            )
        return cache

    def _outputs(self, name, split, mirrored=False):
        """The prefix's outputs for the images of `split` (named `name`), mirrored or not."""

        def compute():
            images = images_only(split, self.options.image_size, self.options.batch_size)
            if mirrored:  # as keras.layers.RandomFlip("horizontal") mirrors them
                images = images.map(lambda x: tf.reverse(x, axis=[2]))
            return run_inference(self.prefix, images, dtype=np.float16)

        if self.shared is None:
            return compute()
        return self.shared.get((self.options.fine_tune_from, name, mirrored), compute)

    @property
    def train_count(self):
        return self.train.shape[0] // self.orientations if self.orientations else 0

    def validation(self):
        """The `cached_validation` callback, or None (Keras validates through the whole
        model) where the validation outputs did not fit."""
        if self.val_outputs is None:
            return None
        return cached_validation(
            self.suffix, self.val_outputs, self.val_labels, self.options.batch_size
        )

    def _gather(self, positions):
        return tf.cast(tf.gather(self.train, positions), self.suffix.input.dtype)

    def train_batches(self, positions):
        """Batches of the cached outputs of the training images at `positions`, as
        they are."""
        return (
            tf.data.Dataset.from_tensor_slices(positions)
            .batch(self.options.batch_size)
            .map(self._gather)
        )

    def train_inputs(self, seed):
        """`epoch_batches`' augment for training on the cache: a batch of image
        positions -> their cached outputs, each mirrored or not at random when the
        cache holds both orientations (a horizontal flip of probability 1/2)."""
        count, orientations = self.train_count, self.orientations
        generator = tf.random.Generator.from_seed(seed)

        def inputs(positions, training=True):
            if orientations == 2:
                mirrored = generator.uniform(tf.shape(positions)) < 0.5
                positions = positions + tf.cast(mirrored, positions.dtype) * count
            return self._gather(positions)

        return inputs
