"""Optimizers, learning-rate schedules, losses and metrics: what a phase compiles."""

import numpy as np

from transfer.errors import InvalidArgumentError
from transfer.lazy import keras, tf
from transfer.models.groups import groups
from transfer.models.heads import MULTI_LABEL, SINGLE_LABEL, task_of
from transfer.train.options import JIT_COMPILE, OPTIMIZERS

WARMUP_FRACTION = 0.1  # of phase 2's steps, at most one epoch: the learning rate ramps up
EMA_MOMENTUM = 0.99  # Keras' default: the average spans about the last 100 steps
# task -> the loss in keras.losses (both take label_smoothing)
LOSSES = {SINGLE_LABEL: "CategoricalCrossentropy", MULTI_LABEL: "BinaryCrossentropy"}


def warmup_cosine(learning_rate, total_steps, steps_per_epoch):
    """Linear warmup from 0 over min(one epoch, 10% of the steps), then cosine decay to 0
    (Loshchilov & Hutter 2017; Goyal et al. 2017's warmup), as timm and fastai do."""
    warmup = max(1, min(steps_per_epoch, int(WARMUP_FRACTION * total_steps)))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total_steps - warmup),
        alpha=0.0,
        warmup_target=learning_rate,
        warmup_steps=warmup,
    )


def group_rate_multipliers(model, layer_decay):
    """{id(variable): learning-rate multiplier}: 1 for the head, `layer_decay` for the
    group below it, its square for the next (layer-wise decay, as timm's --layer-decay
    and fastai's discriminative learning rates)."""
    multipliers = {}
    for distance, layers in enumerate(reversed(list(groups(model).values()))):
        for layer in layers:
            for variable in layer.trainable_weights:
                multipliers[id(variable)] = layer_decay**distance
    return multipliers


_LAYERWISE = {}  # optimizer class -> its subclass with a learning rate per variable


def _layerwise_class(base):
    """`base` with per-variable learning-rate multipliers: Keras 3 applies one learning
    rate to every variable, but passes it to `update_step` one variable at a time."""
    if base not in _LAYERWISE:

        def build(self, variables):
            base.build(self, variables)
            self.rate_multipliers = [self.multipliers_by_id.get(id(v), 1.0) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            multiplier = self.rate_multipliers[self._get_variable_index(variable)]
            return base.update_step(self, gradient, variable, learning_rate * multiplier)

        _LAYERWISE[base] = type(
            f"Layerwise{base.__name__}", (base,), {"build": build, "update_step": update_step}
        )
    return _LAYERWISE[base]


def make_optimizer(name, learning_rate, rate_multipliers=None, ema=False):
    """The optimizer `name`; with `rate_multipliers` ({id(variable): factor}) each
    variable learns at `learning_rate` times its factor; with `ema` the weights end
    as their exponential moving average (Keras' `use_ema`)."""
    class_name, arguments = OPTIMIZERS[name]
    if ema:
        arguments = dict(arguments, use_ema=True, ema_momentum=EMA_MOMENTUM)
    optimizer_class = getattr(keras.optimizers, class_name)
    if rate_multipliers is None or all(m == 1.0 for m in rate_multipliers.values()):
        return optimizer_class(learning_rate=learning_rate, **arguments)
    optimizer = _layerwise_class(optimizer_class)(learning_rate=learning_rate, **arguments)
    optimizer.multipliers_by_id = rate_multipliers
    return optimizer


def labels_ranked_first(y_true, y_pred):
    """Per image, 1 where all its labels are ranked above all other classes: the
    multi-label accuracy of `runtime.correct_predictions`, as a Keras metric."""
    truth = y_true > 0.5
    lowest_label = tf.reduce_min(tf.where(truth, y_pred, np.inf), axis=-1)
    highest_other = tf.reduce_max(tf.where(truth, -np.inf, y_pred), axis=-1)
    return tf.cast(lowest_label > highest_other, y_pred.dtype)


def _metrics(num_classes, task=SINGLE_LABEL):
    if task == MULTI_LABEL:
        return [keras.metrics.MeanMetricWrapper(labels_ranked_first, name="accuracy")]
    found = [keras.metrics.CategoricalAccuracy(name="accuracy")]
    if num_classes >= 5:
        found.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top5_accuracy"))
    return found


def compile_model(
    model, options, learning_rate, num_classes, replicas=1, rate_multipliers=None, ema=False
):
    jit_compile = JIT_COMPILE[options.jit_compile]
    if replicas > 1 and jit_compile == "auto":
        # XLA-compiled steps fail under tf.distribute's cross-replica code in TF 2.21
        # ("You must feed a value for placeholder tensor ... cond/Placeholder").
        jit_compile = False
    model.compile(
        optimizer=make_optimizer(options.optimizer, learning_rate, rate_multipliers, ema),
        loss=getattr(keras.losses, LOSSES[task_of(model)])(label_smoothing=options.label_smoothing),
        metrics=_metrics(num_classes, task_of(model)),
        jit_compile=jit_compile,  # Keras' "auto": XLA on GPUs, not on CPUs
    )


def class_weights(options, labels, num_classes):
    """Balanced weights per class with class_weight="auto", else None."""
    if options.class_weight != "auto":
        return None
    if np.ndim(labels) == 2:
        raise InvalidArgumentError(
            "class_weight='auto' weighs one class per image; multi-label data has several. "
            "Use class_weight='none'."
        )
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    weights = compute_class_weight("balanced", classes=present, y=labels)
    result = {int(c): 1.0 for c in range(num_classes)}
    result.update({int(c): float(w) for c, w in zip(present, weights)})
    return result
