"""Optimizers and schedules: warmup then cosine decay, learning rates falling with depth,
the moving average of the weights."""

import keras
import numpy as np
import pytest

import transfer
from transfer.train import optim


def test_warmup_then_cosine_decay():
    schedule = optim.warmup_cosine(1e-3, total_steps=100, steps_per_epoch=20)
    rates = [float(schedule(step)) for step in range(101)]
    warmup = 10  # 10% of the steps, below one epoch's 20
    assert rates[0] == 0.0
    assert rates[warmup // 2] == pytest.approx(5e-4, rel=1e-5)
    assert rates[warmup] == pytest.approx(1e-3, rel=1e-5)
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1 :]))
    assert rates[warmup + 45] == pytest.approx(5e-4, rel=1e-3)  # half way down the cosine
    assert rates[100] == pytest.approx(0.0, abs=1e-9)


def test_layer_decay_scales_each_groups_step():
    model = transfer.build_classifier(2, weights=None, image_size=32)
    transfer.unfreeze(model, "conv4")
    variables = model.trainable_variables
    multipliers = optim.group_rate_multipliers(model, 0.5)
    optimizer = optim.make_optimizer("sgd", 0.1, multipliers)
    optimizer.build(variables)
    before = [np.asarray(v) for v in variables]
    optimizer.apply([keras.ops.ones_like(v) for v in variables], variables)
    found = transfer.groups(model)
    expected = {}
    for distance, name in enumerate(("head", "conv5", "conv4")):
        for layer in found[name]:
            for variable in layer.trainable_weights:
                expected[id(variable)] = 0.1 * 0.5**distance
    assert len(expected) == len(variables)
    for variable, old in zip(variables, before):
        step = old - np.asarray(variable)  # SGD's first step with momentum: lr * gradient
        np.testing.assert_allclose(step, expected[id(variable)], rtol=1e-5)


def test_no_layer_decay_builds_the_plain_optimizer():
    assert type(optim.make_optimizer("adam", 1e-3, {1: 1.0})) is keras.optimizers.Adam
    assert type(optim.make_optimizer("adam", 1e-3)) is keras.optimizers.Adam


def test_ema_optimizer_ends_with_the_average():
    optimizer = optim.make_optimizer("adam", 1e-3, ema=True)
    assert optimizer.use_ema and optimizer.ema_momentum == optim.EMA_MOMENTUM
    assert not optim.make_optimizer("adam", 1e-3).use_ema
