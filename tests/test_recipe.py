"""The fine-tuning recipe's mechanisms: standardised features inside the head, the
planned phase 1, phase 2's schedule and per-group learning rates, the guard that
keeps phase 1 when phase 2 does not beat it, and the augmentation presets."""

import json
import math

import keras
import numpy as np
import pytest

import transfer
from tests.conftest import random_images, randomize
from tests.test_finetune import _backbone_after, _weights_file
from transfer.data.augment import PRESETS, augmentation
from transfer.data.pipeline import images_only
from transfer.models.heads import set_standardization
from transfer.models.names import HEAD_STANDARDIZE
from transfer.runtime import run_inference
from transfer.train import fine_tune as phase2
from transfer.train import head as phase1
from transfer.train import optim, selection, standardize
from transfer.train.phase import release_training_state
from transfer.train.options import FinetuneOptions


def test_standardization_lives_in_the_model_and_reloads_in_safe_mode(tmp_path):
    model = transfer.build_classifier(3, weights=None, image_size=32, standardize=True)
    rng = np.random.default_rng(0)
    mean, variance = rng.normal(5, 2, 2048), rng.uniform(1, 9, 2048)
    images = random_images((4, 32, 32, 3))
    before = np.asarray(model(images))
    set_standardization(model, mean, variance)
    after = np.asarray(model(images))
    assert not np.allclose(before, after)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(np.asarray(loaded(images)), after, rtol=1e-6, atol=1e-6)
    layer = loaded.get_layer(HEAD_STANDARDIZE)
    np.testing.assert_allclose(np.asarray(layer.mean).ravel(), mean, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer.variance).ravel(), variance, rtol=1e-6)


def test_feature_statistics_match_numpy_in_chunks():
    features = np.random.default_rng(1).normal(3, 4, (1000, 7)).astype("float32")
    mean, variance = standardize.feature_statistics(features, chunk=128)
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(variance, features.var(axis=0), rtol=1e-4)
    # Several arrays (the refit's train and val features) count as their rows stacked.
    parts = [features[:300], features[300:]]
    np.testing.assert_allclose(standardize.feature_statistics(parts, chunk=128)[0], mean)
    standardized = standardize.standardizer(mean, np.sqrt(variance))(parts, np.float64)
    assert standardized.dtype == np.float64
    np.testing.assert_allclose(standardized, (features - mean) / np.sqrt(variance), rtol=1e-6)


@pytest.mark.parametrize("images,cached,expected", [
    (240, True, 75),      # 8 steps an epoch: 600 steps take 75 epochs
    (100_000, True, 10),  # 3125 steps an epoch: the floor of 10 epochs
    (16, True, 200),      # 1 step an epoch: capped at 200 (early stopping ends it sooner)
    (240, False, 10),     # through the backbone an epoch costs a pass over the images
])
def test_head_epochs_auto_plans_from_the_data(images, cached, expected):
    options = FinetuneOptions(batch_size=32)
    assert options.head_epochs == "auto"
    planned = phase1.head_epochs(options, images, cached)
    assert planned == expected
    if cached and expected not in (phase1.HEAD_MIN_EPOCHS, phase1.HEAD_MAX_EPOCHS):
        assert planned * math.ceil(images / options.batch_size) >= phase1.HEAD_STEPS
    options.head_epochs = 3
    assert phase1.head_epochs(options, images, cached) == 3


def test_warmup_then_cosine_decay():
    schedule = optim.warmup_cosine(1e-3, total_steps=100, steps_per_epoch=20)
    rates = [float(schedule(step)) for step in range(101)]
    warmup = 10  # 10% of the steps, below one epoch's 20
    assert rates[0] == 0.0
    assert rates[warmup // 2] == pytest.approx(5e-4, rel=1e-5)
    assert rates[warmup] == pytest.approx(1e-3, rel=1e-5)
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1:]))
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
                expected[id(variable)] = 0.1 * 0.5 ** distance
    assert len(expected) == len(variables)
    for variable, old in zip(variables, before):
        step = old - np.asarray(variable)  # SGD's first step with momentum: lr * gradient
        np.testing.assert_allclose(step, expected[id(variable)], rtol=1e-5)


def test_no_layer_decay_builds_the_plain_optimizer():
    assert type(optim.make_optimizer("adam", 1e-3, {1: 1.0})) is keras.optimizers.Adam
    assert type(optim.make_optimizer("adam", 1e-3)) is keras.optimizers.Adam


def test_a_diverging_phase_two_keeps_phase_one_and_says_so(tmp_path, image_folder, caplog,
                                                           monkeypatch):
    import logging

    monkeypatch.setattr(logging.getLogger("transfer"), "propagate", True)
    path, before = _weights_file(tmp_path)
    result = transfer.finetune(image_folder, report=False, out=tmp_path / "run", weights=str(path),
                               image_size=32, batch_size=8, head_epochs=2, fine_tune_epochs=1,
                               fine_tune_from="conv5", fine_tune_learning_rate=1e4,
                               early_stopping_patience=0, augment="none")
    kept = result.metrics["kept"]
    assert kept["phase"] == "head", kept
    assert kept["validation"]["head"]["accuracy"] >= kept["validation"]["fine-tune"]["accuracy"]
    assert "keeping phase 1's model" in caplog.text
    # Both phases were scored from pooled features through the head (phase 1's from
    # its cache): the same scores as the whole model's, and no whole-model function
    # traced for it (and kept alive through phase 2).
    assert "_transfer_inference" not in result.model.__dict__  # runtime._compiled_call's
    val = transfer.data.load_dataset(image_folder, val_split=0.2).splits["val"]
    whole = selection.validation_score(
        run_inference(result.model, images_only(val, image_size=32, batch_size=8)), val.labels)
    assert kept["validation"]["head"]["accuracy"] == pytest.approx(whole["accuracy"])
    assert kept["validation"]["head"]["loss"] == pytest.approx(whole["loss"], rel=1e-4)
    after, _ = _backbone_after(result.run_dir)
    for name in before:  # phase 1 never touches the backbone: the file's weights are back
        np.testing.assert_array_equal(after[name], before[name])
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["kept"]["phase"] == "head"
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["kept"] == "head"
    assert (result.run_dir / "augmentation_preview.png").exists() is False  # augment none


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "none"])
def test_presets_repeat_with_their_seed_and_leave_out_the_flip(preset):
    images = random_images((4, 32, 32, 3)).astype("float32")
    first = np.asarray(augmentation(seed=3, preset=preset)(images, training=True))
    again = np.asarray(augmentation(seed=3, preset=preset)(images, training=True))
    np.testing.assert_array_equal(first, again)
    assert first.shape == images.shape
    without_flip = augmentation(3, preset, flip=False)
    if preset == "flip":  # nothing left
        assert without_flip is None
    else:
        names = [type(layer).__name__ for layer in without_flip.layers]
        assert "RandomFlip" not in names and names
    assert augmentation(3, "none") is None


def test_unknown_preset_names_the_choices():
    with pytest.raises(transfer.InvalidArgumentError,
                       match="Unknown augment: 'wild'. Expected one of none, flip, light, "
                             "default, strong."):
        augmentation(0, "wild")


def test_tta_averages_each_image_with_its_mirror():
    import tensorflow as tf

    from transfer.runtime import run_inference

    model = transfer.build_classifier(3, weights=None, image_size=32)
    images = random_images((6, 32, 32, 3)).astype("float32")
    batches = tf.data.Dataset.from_tensor_slices(images).batch(4)
    plain = np.asarray(model(images))
    mirrored = np.asarray(model(images[:, :, ::-1]))
    np.testing.assert_allclose(run_inference(model, batches, tta=True), (plain + mirrored) / 2,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run_inference(model, batches), plain, rtol=1e-5, atol=1e-6)


def test_ema_optimizer_ends_with_the_average():
    optimizer = optim.make_optimizer("adam", 1e-3, ema=True)
    assert optimizer.use_ema and optimizer.ema_momentum == optim.EMA_MOMENTUM
    assert not optim.make_optimizer("adam", 1e-3).use_ema


def test_lr_find_writes_its_curve_and_suggests_a_rate(tmp_path, image_folder):
    from click.testing import CliRunner

    from transfer.cli import cli

    result = CliRunner().invoke(cli, [
        "lr-find", "--data", str(image_folder), "--out", str(tmp_path / "lr"), "--weights",
        "none", "--image-size", "32", "--batch-size", "8", "--head-epochs", "1",
        "--steps", "12", "--start-lr", "1e-6", "--end-lr", "10"])
    assert result.exit_code == 0, result.output
    suggested = float(result.output.strip().splitlines()[-1].split()[2])
    assert 1e-7 <= suggested <= 1.0
    rows = (tmp_path / "lr" / "lr_find.csv").read_text().strip().splitlines()
    assert rows[0] == "learning_rate,smoothed_loss" and 7 <= len(rows) - 1 <= 12
    rates = [float(row.split(",")[0]) for row in rows[1:]]
    assert rates[0] == pytest.approx(1e-6) and all(b > a for a, b in zip(rates, rates[1:]))
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000


@pytest.mark.parametrize("classes", [2, 4])
def test_the_probe_becomes_a_dense_softmax_with_the_same_probabilities(classes):
    from transfer.train.logistic import fit_logistic_regression, softmax_weights

    rng = np.random.default_rng(classes)
    labels = np.arange(120) % classes
    features = rng.normal(size=(120, 16)) + labels[:, None] * 0.7
    classifier = fit_logistic_regression(features, labels, classes, folds=3, standardize=False)
    kernel, bias = softmax_weights(classifier, classes)
    dense = keras.layers.Dense(classes, activation="softmax")
    dense.build((None, 16))
    dense.set_weights([kernel, bias])
    np.testing.assert_allclose(np.asarray(dense(features.astype("float32"))),
                               classifier.predict_proba(features), rtol=1e-4, atol=1e-5)


def test_phase_one_from_the_probe_matches_the_probe(tmp_path, image_folder):
    result = transfer.finetune(image_folder, report=False, out=tmp_path / "run", weights=None, image_size=32,
                               batch_size=8, fine_tune_from="none", seed=1)
    rows = result.history
    assert len(rows) == 1 and rows[0]["phase"] == "head" and rows[0]["probe_C"] > 0
    # The head is the regression: its validation accuracy is the run's (validation
    # judges the model before the refit).
    assert rows[0]["val_accuracy"] == pytest.approx(result.metrics["val"]["accuracy"])


def test_a_kept_probe_is_refit_on_training_and_validation_images(tmp_path, image_folder):
    from transfer.data.pipeline import images_only
    from transfer.data.sources import load_dataset
    from transfer.models.heads import pooled_features

    result = transfer.finetune(image_folder, report=False, out=tmp_path / "run", weights=None, image_size=32,
                               batch_size=8, fine_tune_from="none", seed=1)
    splits = load_dataset(image_folder, val_split=FinetuneOptions.val_split).splits
    train, val = splits["train"], splits["val"]
    assert result.metrics["kept"]["refit"]["images"] == len(train) + len(val)
    # With phase 1's C, as a search's refit fits the C it chose.
    assert result.metrics["kept"]["refit"]["C"] == result.history[0]["probe_C"]
    # The standardisation now has the statistics of the training and validation images.
    extractor = pooled_features(result.model)
    features = np.concatenate([np.asarray(extractor(batch)) for split in (train, val)
                               for batch in images_only(split, 32, 8)])
    mean = np.asarray(result.model.get_layer(HEAD_STANDARDIZE).mean).ravel()
    np.testing.assert_allclose(mean, features.mean(axis=0), rtol=1e-4, atol=1e-5)
    # ... and the refit model is the one saved.
    reloaded = keras.models.load_model(result.run_dir / "model.keras", safe_mode=True)
    images = next(iter(images_only(val, 32, 8)))
    np.testing.assert_allclose(np.asarray(reloaded(images)), np.asarray(result.model(images)),
                               rtol=1e-5, atol=1e-6)
    plain = transfer.finetune(image_folder, report=False, out=tmp_path / "plain", weights=None, image_size=32,
                              batch_size=8, fine_tune_from="none", seed=1, refit=False)
    assert "refit" not in plain.metrics["kept"]
    assert plain.metrics["val"] == result.metrics["val"]


@pytest.mark.parametrize("gained,lost,kept", [
    (0, 0, False),   # the same images right: a tie keeps phase 1
    (1, 0, False),   # one image more is noise (1 > 1 * sqrt(1) fails)
    (3, 1, False),   # 2 > sqrt(4) fails
    (4, 0, True),    # 4 > sqrt(4)
    (30, 10, True),  # 20 > sqrt(40)
    (10, 30, False),
])
def test_phase_two_is_kept_only_when_clearly_better(gained, lost, kept):
    both = 50  # images both get right; they do not count
    fine_tune = np.array([True] * gained + [False] * lost + [True] * both)
    head = np.array([False] * gained + [True] * lost + [True] * both)
    assert selection.clearly_better(fine_tune, head) is kept


@pytest.mark.parametrize("on_disk", [False, True], ids=["in-memory", "on-disk"])
def test_early_stopping_restores_the_best_epoch_from_copies_of_what_trains(caplog, tmp_path,
                                                                          on_disk):
    from transfer.train.callbacks import early_stopping

    frozen, trained = keras.layers.Dense(3, name="frozen"), keras.layers.Dense(2, name="trained")
    model = keras.Sequential([keras.Input((4,)), frozen, trained])
    frozen.trainable = False
    path = tmp_path / "checkpoints" / "best-fine-tune.npz" if on_disk else None
    callback = early_stopping(model, patience=2, path=path)
    callback.set_model(model)
    callback.on_train_begin()
    seen = []
    for epoch, val_loss in enumerate([1.0, 0.5, 0.7, 0.8, 0.9]):
        trained.kernel.assign(np.full((3, 2), float(epoch)))
        seen.append(np.asarray(trained.kernel))
        callback.on_epoch_end(epoch, {"val_loss": val_loss})
        if getattr(model, "stop_training", False):
            break
    assert epoch == 3  # two epochs without a lower val_loss after the best (epoch 2 of 5)
    frozen.kernel.assign(np.ones((4, 3)))  # not copied, so not put back either
    with caplog.at_level("INFO", logger="transfer"):
        callback.on_train_end()
    np.testing.assert_array_equal(np.asarray(trained.kernel), seen[1])
    np.testing.assert_array_equal(np.asarray(frozen.kernel), np.ones((4, 3)))
    assert "best epoch: 2." in caplog.text and "Epoch 4: early stopping" in caplog.text
    if on_disk:
        assert not path.exists()  # restored, then removed


def test_after_training_the_optimizer_goes_and_the_model_predicts_and_saves_the_same(
        tmp_path):
    import gc
    import weakref

    from transfer.io import save_model

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile(keras.optimizers.Adam(0.1), "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(8, 4)).astype("float32"), np.arange(8) % 2
    model.fit(x, y, epochs=1, verbose=0)
    before, optimizer = np.asarray(model(x)), weakref.ref(model.optimizer)
    release_training_state(model)
    gc.collect()
    assert optimizer() is None and not model.compiled  # nothing holds Adam's slots
    np.testing.assert_array_equal(np.asarray(model(x)), before)
    reloaded = keras.models.load_model(save_model(model, tmp_path / "m.keras"))
    assert not reloaded.compiled
    np.testing.assert_allclose(np.asarray(reloaded(x)), before, atol=1e-6)


def test_a_backup_restores_what_training_changes_and_a_broken_one_starts_over(tmp_path, caplog,
                                                                             monkeypatch):
    import logging

    from transfer.train.callbacks import backup_epoch, restore_backup, resume_backup

    monkeypatch.setattr(logging.getLogger("transfer"), "propagate", True)

    def compiled_model():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        frozen = keras.layers.Dense(3, name="frozen", trainable=False)(inputs)
        outputs = keras.layers.Dense(2, name="trained")(frozen)
        model = keras.Model(inputs, outputs)
        model.compile(keras.optimizers.Adam(1e-2), "mse")
        return model

    x, y = np.random.default_rng(0).normal(size=(16, 4)), np.zeros((16, 2))
    trained = compiled_model()
    backup = resume_backup(trained, tmp_path / "b", interval=0)
    backup.set_model(trained)
    trained.fit(x, y, epochs=2, verbose=0)
    backup.on_epoch_end(1)
    assert backup_epoch(tmp_path / "b") == 2
    # Only the trainable layer's weights and the optimizer are kept.
    with np.load(tmp_path / "b" / "backup.npz") as stored:
        model_arrays = [k for k in stored if k.startswith("model_")]
    assert len(model_arrays) == 2

    fresh = compiled_model()
    assert restore_backup(fresh, tmp_path / "b")
    for a, b in zip(fresh.weights + fresh.optimizer.variables,
                    trained.weights + trained.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    (tmp_path / "b" / "backup.npz").write_bytes(b"PK\x03\x04 truncated")
    assert not restore_backup(compiled_model(), tmp_path / "b")
    assert "cannot be used" in caplog.text
    backup.on_train_end()
    assert backup_epoch(tmp_path / "b") == 0 and not list((tmp_path / "b").iterdir())


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_model_splits_at_a_group_into_frozen_prefix_and_trained_suffix(version):
    from transfer.models.groups import split_at_group

    model = transfer.build_classifier(4, weights=None, image_size=32, version=version)
    randomize(model)
    images = random_images((3, 32, 32, 3))
    for group in ("conv2", "conv4", "conv5"):
        prefix, suffix = split_at_group(model, group)
        np.testing.assert_allclose(np.asarray(suffix(prefix(images))), np.asarray(model(images)),
                                   rtol=1e-5, atol=1e-6)
        # The suffix shares the model's layers: it follows any change of weights.
        assert {id(w) for w in suffix.weights} <= {id(w) for w in model.weights}
        assert not {id(w) for w in prefix.weights} & {id(w) for w in suffix.trainable_weights}
    assert split_at_group(model, "stem") is None


def test_phase_two_on_the_frozen_groups_outputs_matches_training_the_whole_model(
        tmp_path, image_folder, monkeypatch, caplog):
    made = []
    original = phase2.cached_validation
    monkeypatch.setattr(phase2, "cached_validation",
                        lambda suffix, *args: made.append(suffix.name) or original(suffix, *args))
    # Without a phase 1 (one run for both tests' worth of assertions): phase 2 is kept.
    # No augmentation: the training images' conv4 outputs are computed once, too.
    options = dict(report=False, weights=None, image_size=32, batch_size=8, head_epochs=0,
                   fine_tune_epochs=2, fine_tune_from="conv5", early_stopping_patience=0,
                   augment="none", dropout=0.0)
    with caplog.at_level("INFO", logger="transfer"):
        result = transfer.finetune(image_folder, out=tmp_path / "run", **options)
    assert "outputs for the training images are computed once" in caplog.text
    assert result.metrics["kept"] == {"phase": "fine-tune",
                                      "reason": "phase 1 did not train (head_epochs=0)"}
    assert [row["phase"] for row in result.history] == ["fine-tune"] * 2
    last = result.history[-1]
    assert last["phase"] == "fine-tune"
    assert {"val_loss", "val_accuracy", "val_top5_accuracy"} <= set(last)
    # The last epoch's logged validation is the whole model's on the validation images.
    val = transfer.data.load_dataset(image_folder, val_split=0.2).splits["val"]
    whole = selection.validation_score(
        run_inference(result.model, images_only(val, image_size=32, batch_size=8)), val.labels)
    assert last["val_accuracy"] == pytest.approx(whole["accuracy"])
    assert last["val_loss"] == pytest.approx(whole["loss"], rel=1e-2)
    assert made == ["from_conv5"]  # phase 2 validated through conv5 and the head only
    # The same run through the whole model, with nothing cached, learns the same
    # weights: the cache (float16) changes only rounding.
    monkeypatch.setattr(phase2, "PREFIX_CACHE_BYTES", 0)
    whole_run = transfer.finetune(image_folder, out=tmp_path / "whole", **options)
    assert made == ["from_conv5"]
    for cached_row, whole_row in zip(result.history, whole_run.history):
        assert cached_row["loss"] == pytest.approx(whole_row["loss"], rel=1e-2)
        assert cached_row["val_loss"] == pytest.approx(whole_row["val_loss"], rel=1e-2)
    # Adam moves a weight by up to the learning rate a step, whatever its gradient's
    # size, so where a gradient is near 0 rounding can flip a step: 6 steps of 1e-4
    # bound any difference, and 99% of the weights agree within a step.
    trained = {id(w) for w in result.model.trainable_weights}
    for a, b in zip(result.model.weights, whole_run.model.weights):
        if id(a) in trained:
            difference = np.abs(np.asarray(a) - np.asarray(b))
            assert difference.max() <= 6e-4 and np.quantile(difference, 0.99) < 1e-4


def test_a_flip_trains_on_both_orientations_of_the_cached_outputs(image_folder):
    import tensorflow as tf

    from transfer.data.sources import load_dataset
    from transfer.models.groups import set_trainable_from

    dataset = load_dataset(image_folder, val_split=0.2)
    model = transfer.build_classifier(3, weights=None, image_size=32)
    randomize(model)
    set_trainable_from(model, "conv5")
    phase = type("Phase", (), {"strategy": tf.distribute.get_strategy()})
    options = FinetuneOptions(image_size=32, batch_size=8, augment="flip", fine_tune_from="conv5")
    cache = phase2.FrozenPrefix.of(model, dataset, options, phase)
    train = dataset.splits["train"]
    count = len(train)
    assert cache.orientations == 2 and cache.train.shape[0] == 2 * count
    pixels = np.concatenate(list(phase2.images_only(train, 32, 8)))
    for outputs, images in ((cache.train[:count], pixels), (cache.train[count:], pixels[:, :, ::-1])):
        np.testing.assert_allclose(np.asarray(outputs, dtype="float32"),
                                   np.asarray(cache.prefix(images)), rtol=1e-2, atol=1e-2)
    # Each image comes as it is or mirrored, half and half, the same for the same seed.
    positions = tf.constant(np.tile(np.arange(count), 50))
    draws = [np.asarray(cache.train_inputs(seed=5)(positions)) for _ in range(2)]
    np.testing.assert_array_equal(*draws)
    table = np.asarray(cache.train)
    mirrored = [np.array_equal(draw, table[count + p]) and not np.array_equal(draw, table[p])
                for draw, p in zip(draws[0], np.asarray(positions))]
    as_is = [np.array_equal(draw, table[p]) for draw, p in zip(draws[0], np.asarray(positions))]
    assert all(m or a for m, a in zip(mirrored, as_is))
    assert 0.4 < np.mean(mirrored) < 0.6
    # Random transforms of the pixels cannot be cached: phase 2 runs on images.
    options.augment = "default"
    assert phase2.FrozenPrefix.of(model, dataset, options, phase).train is None


def test_decoded_images_are_whole_levels_kept_as_uint8(image_folder):
    from transfer.data.pipeline import decoded_images, one_hot_images
    from transfer.data.sources import load_dataset

    train = load_dataset(image_folder, val_split=0.2).splits["train"]
    cached = list(decoded_images(train, 24, cache=True))
    plain = list(decoded_images(train, 24, cache=False))
    for (x, y), (raw, label) in zip(cached, plain):
        assert x.dtype == "float32" and int(y) == int(label)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(raw))
        assert np.array_equal(np.asarray(x), np.round(np.asarray(x)))  # whole levels
    repeated = [np.asarray(x) for x, _ in decoded_images(train, 24, cache=True)]
    assert len(repeated) == len(cached) == len(train)
    # Training shuffles uint8 pixels (a quarter of the bytes); the model casts them.
    for (x, _), (pixels, label) in zip(cached, one_hot_images(train, 24, 3)):
        assert pixels.dtype == "uint8" and int(np.argmax(label)) >= 0
        np.testing.assert_array_equal(np.asarray(pixels, dtype="float32"), np.asarray(x))


# A minute, two whole runs; the default run keeps the killed-run test (tests/test_scale.py),
# whose straight and resumed runs agree to 1e-5, to keep the suite under 20 minutes.
@pytest.mark.slow
def test_the_same_seed_gives_the_same_model(tmp_path, image_folder):
    runs = [transfer.finetune(image_folder, report=False, out=tmp_path / f"run{i}", weights=None,
                              image_size=32, batch_size=8, fine_tune_epochs=1,
                              early_stopping_patience=0, keep="last", seed=3)
            for i in range(2)]
    first, second = ([{k: v for k, v in row.items() if "seconds" not in k}
                      for row in run.history] for run in runs)
    assert first == second and [row["phase"] for row in first][-1] == "fine-tune"
    for a, b in zip(runs[0].model.weights, runs[1].model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
