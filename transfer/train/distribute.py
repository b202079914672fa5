"""Distribution with tf.distribute: one device, MirroredStrategy across the devices
of one machine, MultiWorkerMirroredStrategy across machines (configured by the
TF_CONFIG environment variable). The batch size is always the global batch."""

import contextlib
import json
import os

import numpy as np

from transfer.errors import InvalidArgumentError, unknown_choice
from transfer.lazy import keras, tf

STRATEGIES = ("auto", "one", "mirrored", "multiworker")


def _cluster_size():
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return sum(len(cluster.get(kind, [])) for kind in ("chief", "worker"))


def in_a_cluster():
    """Whether TF_CONFIG names several workers (they share one --out; the chief writes)."""
    return _cluster_size() > 1


def make_strategy(name="auto"):
    """The tf.distribute strategy `name` stands for on this machine.

    auto: multiworker when TF_CONFIG names several workers, else mirrored across
    several GPUs, else one device. mirrored uses every GPU, or every logical CPU
    device when there is no GPU (how the tests run it).
    """
    if name not in STRATEGIES:
        raise unknown_choice("strategy", name, STRATEGIES)
    workers = _cluster_size()
    if name == "multiworker" or (name == "auto" and workers > 1):
        if workers < 1:
            raise InvalidArgumentError(
                "strategy='multiworker' needs TF_CONFIG describing the cluster, e.g. "
                '{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                '"task": {"type": "worker", "index": 0}}.'
            )
        # Created before any other TensorFlow work, as MultiWorkerMirroredStrategy needs.
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()  # the default: one device, no overhead


def is_chief(strategy):
    """Whether this process writes results: always, except on non-chief workers."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if "chief" in cluster:
        return resolver.task_type == "chief"
    return resolver.task_type == "worker" and resolver.task_id == 0


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


@contextlib.contextmanager
def keras_multi_worker_fit(model, strategy, dataset):
    """Work around two bugs of Keras 3.15's `fit` under MultiWorkerMirroredStrategy
    (keras-team/keras#20585; TensorFlow's own multi-worker tutorial fails the same way):

    - before the first step, fit reduces a distributed batch to build the model, and
      the collective reduce cannot convert it ("Attempt to convert a value
      (PerReplica...) to a Tensor"): the model is built from a local batch of
      `dataset` instead;
    - each step averages its scalar logs across workers along axis 0, which a scalar
      does not have: they are averaged with axis=None.

    Does nothing under other strategies.
    """
    if not is_multi_worker(strategy):
        yield
        return
    from keras.src.backend.tensorflow import trainer as keras_tf_trainer

    sample_batch = next(iter(dataset))
    original_reduce = keras_tf_trainer.reduce_per_replica
    model_class_build = type(model)._maybe_symbolic_build

    def reduce_per_replica(values, distribution, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(distribution):
            return keras.tree.map_structure(
                lambda v: distribution.reduce("MEAN", v, axis=None), values
            )
        return original_reduce(values, distribution, reduction)

    def build_from_local_batch(iterator=None, data_batch=None):
        return model_class_build(model, data_batch=sample_batch)

    keras_tf_trainer.reduce_per_replica = reduce_per_replica
    model._maybe_symbolic_build = build_from_local_batch
    try:
        yield
    finally:
        keras_tf_trainer.reduce_per_replica = original_reduce
        del model._maybe_symbolic_build


# Bytes of features one worker sends in one collective when they are gathered: a
# bound on the buffers of each step, however many images there are.
GATHER_BYTES = 64 << 20


class SharedPasses:
    """The workers of a MultiWorkerMirroredStrategy run, sharing a pass over images:
    each computes its `part` (a contiguous block), then `gather` hands every worker the
    whole, in order, through the strategy's collective all-gather. Every worker must
    make the same calls in the same order: each is a collective step of them all."""

    def __init__(self, strategy):
        self.strategy = strategy
        resolver = strategy.cluster_resolver
        cluster = resolver.cluster_spec().as_dict()
        chiefs = len(cluster.get("chief", []))
        self.workers = chiefs + len(cluster.get("worker", []))
        # A worker's number: the chief first, as tf.distribute counts them.
        self.index = resolver.task_id + (chiefs if resolver.task_type == "worker" else 0)
        self.computed = 0  # images whose features this worker computed itself
        # One traced step for every call: its shapes vary in the number of rows only.
        self._step = tf.function(self._all_gather, reduce_retracing=True)

    def _all_gather(self, rows, index):
        def gather(rows, index):
            context = tf.distribute.get_replica_context()
            # Copies made here, on the replica's device: the collective needs to know
            # where its inputs live, which the traced step's arguments do not say.
            rows, index = tf.identity(rows), tf.identity(index)
            return context.all_gather(rows, axis=0), context.all_gather(index, axis=0)

        gathered = self.strategy.run(gather, args=(rows, index))
        return tuple(self.strategy.experimental_local_results(g)[0] for g in gathered)

    def bounds(self, count):
        """[start of worker 0's part, start of worker 1's, ..., count]."""
        return [count * worker // self.workers for worker in range(self.workers + 1)]

    def part(self, count):
        """(start, stop): this worker's block of `count` images."""
        bounds = self.bounds(count)
        return bounds[self.index], bounds[self.index + 1]

    def all(self, flag):
        """Whether `flag` holds on every worker."""
        return bool(self.gather(np.array([[float(flag)]], np.float32), self.workers).min() > 0)

    def gather(self, part, count):
        """The (count, dim) float32 array of every worker's `part` (its rows of its
        block, `part(count)`), in order; a few collectives of at most GATHER_BYTES
        a worker each. Workers are told apart by the numbers they send along, so the
        order the collective puts them in does not matter."""
        bounds = self.bounds(count)
        sizes = np.diff(bounds)
        dim = part.shape[1]
        # Rows a worker sends in one step: its whole part where that is under
        # GATHER_BYTES (each step sends as many rows from every worker).
        rows = max(1, min(GATHER_BYTES // (4 * dim), int(sizes.max())))
        whole = np.empty((count, dim), np.float32)
        for first in range(0, int(sizes.max()), rows):
            block = np.zeros((rows, dim), np.float32)
            mine = part[first : first + rows]
            block[: len(mine)] = mine
            gathered, senders = self._step(tf.constant(block), tf.constant([self.index]))
            gathered, senders = gathered.numpy(), senders.numpy().tolist()
            for worker in range(self.workers):
                at = senders.index(worker)  # a worker's first replica: its others send the same
                taken = min(rows, max(0, int(sizes[worker]) - first))
                start = bounds[worker] + first
                whole[start : start + taken] = gathered[at * rows : at * rows + taken]
        return whole


def plain_copy(model):
    """A copy of `model` with the same weights, outside any tf.distribute strategy."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def local_copy(model, strategy):
    """`model` itself, or under a multi-replica strategy a plain copy: inference on
    distributed variables outside `fit` splits and sums the batch across replicas,
    and every worker needs all of the outputs."""
    return model if strategy.num_replicas_in_sync == 1 else plain_copy(model)
