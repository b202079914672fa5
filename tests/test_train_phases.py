"""The phase runner and phase 2: the guard that keeps phase 1 when phase 2 does not clearly
beat it, early stopping and backups of what trains, the frozen prefix computed once, the
learning-rate range test, repeatability."""

import json

import keras
import numpy as np
import pytest

import transfer
from tests.conftest import random_images, randomize
from tests.test_finetune import _backbone_after, _weights_file
from transfer.data.pipeline import images_only
from transfer.runtime import run_inference
from transfer.train import fine_tune as phase2
from transfer.train import selection
from transfer.train.options import FinetuneOptions
from transfer.train.phase import release_training_state


@pytest.mark.heavy
def test_a_diverging_phase_two_keeps_phase_one_and_says_so(
    tmp_path, image_folder, caplog, monkeypatch
):
    import logging

    monkeypatch.setattr(logging.getLogger("transfer"), "propagate", True)
    path, before = _weights_file(tmp_path)
    result = transfer.finetune(
        image_folder,
        report=False,
        out=tmp_path / "run",
        weights=str(path),
        image_size=32,
        batch_size=8,
        head_epochs=2,
        fine_tune_epochs=1,
        fine_tune_from="conv5",
        fine_tune_learning_rate=1e4,
        early_stopping_patience=0,
        augment="none",
    )
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
        run_inference(result.model, images_only(val, image_size=32, batch_size=8)), val.labels
    )
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


@pytest.mark.heavy
def test_lr_find_writes_its_curve_and_suggests_a_rate(tmp_path, image_folder):
    from click.testing import CliRunner

    from transfer.cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "lr-find",
            "--data",
            str(image_folder),
            "--out",
            str(tmp_path / "lr"),
            "--weights",
            "none",
            "--image-size",
            "32",
            "--batch-size",
            "8",
            "--head-epochs",
            "1",
            "--steps",
            "12",
            "--start-lr",
            "1e-6",
            "--end-lr",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    suggested = float(result.output.strip().splitlines()[-1].split()[2])
    assert 1e-7 <= suggested <= 1.0
    rows = (tmp_path / "lr" / "lr_find.csv").read_text().strip().splitlines()
    assert rows[0] == "learning_rate,smoothed_loss" and 7 <= len(rows) - 1 <= 12
    rates = [float(row.split(",")[0]) for row in rows[1:]]
    assert rates[0] == pytest.approx(1e-6) and all(b > a for a, b in zip(rates, rates[1:]))
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "gained,lost,kept",
    [
        (0, 0, False),  # the same images right: a tie keeps phase 1
        (1, 0, False),  # one image more is noise (1 > 1 * sqrt(1) fails)
        (3, 1, False),  # 2 > sqrt(4) fails
        (4, 0, True),  # 4 > sqrt(4)
        (30, 10, True),  # 20 > sqrt(40)
        (10, 30, False),
    ],
)
def test_phase_two_is_kept_only_when_clearly_better(gained, lost, kept):
    both = 50  # images both get right; they do not count
    fine_tune = np.array([True] * gained + [False] * lost + [True] * both)
    head = np.array([False] * gained + [True] * lost + [True] * both)
    assert selection.clearly_better(fine_tune, head) is kept


@pytest.mark.parametrize("on_disk", [False, True], ids=["in-memory", "on-disk"])
def test_early_stopping_restores_the_best_epoch_from_copies_of_what_trains(
    caplog, tmp_path, on_disk
):
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


def test_after_training_the_optimizer_goes_and_the_model_predicts_and_saves_the_same(tmp_path):
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


def test_a_backup_restores_what_training_changes_and_a_broken_one_starts_over(
    tmp_path, caplog, monkeypatch
):
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
    for a, b in zip(
        fresh.weights + fresh.optimizer.variables, trained.weights + trained.optimizer.variables
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    (tmp_path / "b" / "backup.npz").write_bytes(b"PK\x03\x04 truncated")
    assert not restore_backup(compiled_model(), tmp_path / "b")
    assert "cannot be used" in caplog.text
    backup.on_train_end()
    assert backup_epoch(tmp_path / "b") == 0 and not list((tmp_path / "b").iterdir())


@pytest.mark.heavy
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_model_splits_at_a_group_into_frozen_prefix_and_trained_suffix(version):
    from transfer.models.groups import split_at_group

    model = transfer.build_classifier(4, weights=None, image_size=32, version=version)
    randomize(model)
    images = random_images((3, 32, 32, 3))
    for group in ("conv2", "conv4", "conv5"):
        prefix, suffix = split_at_group(model, group)
        np.testing.assert_allclose(
            np.asarray(suffix(prefix(images))), np.asarray(model(images)), rtol=1e-5, atol=1e-6
        )
        # The suffix shares the model's layers: it follows any change of weights.
        assert {id(w) for w in suffix.weights} <= {id(w) for w in model.weights}
        assert not {id(w) for w in prefix.weights} & {id(w) for w in suffix.trainable_weights}
    assert split_at_group(model, "stem") is None


@pytest.mark.heavy
def test_phase_two_on_the_frozen_groups_outputs_matches_training_the_whole_model(
    tmp_path, image_folder, monkeypatch, caplog
):
    made = []
    original = phase2.cached_validation
    monkeypatch.setattr(
        phase2,
        "cached_validation",
        lambda suffix, *args: made.append(suffix.name) or original(suffix, *args),
    )
    # Without a phase 1 (one run for both tests' worth of assertions): phase 2 is kept.
    # No augmentation: the training images' conv4 outputs are computed once, too.
    options = dict(
        report=False,
        weights=None,
        image_size=32,
        batch_size=8,
        head_epochs=0,
        fine_tune_epochs=2,
        fine_tune_from="conv5",
        early_stopping_patience=0,
        augment="none",
        dropout=0.0,
    )
    with caplog.at_level("INFO", logger="transfer"):
        result = transfer.finetune(image_folder, out=tmp_path / "run", **options)
    assert "outputs for the training images are computed once" in caplog.text
    assert result.metrics["kept"] == {
        "phase": "fine-tune",
        "reason": "phase 1 did not train (head_epochs=0)",
    }
    assert [row["phase"] for row in result.history] == ["fine-tune"] * 2
    last = result.history[-1]
    assert last["phase"] == "fine-tune"
    assert {"val_loss", "val_accuracy", "val_top5_accuracy"} <= set(last)
    # The last epoch's logged validation is the whole model's on the validation images.
    val = transfer.data.load_dataset(image_folder, val_split=0.2).splits["val"]
    whole = selection.validation_score(
        run_inference(result.model, images_only(val, image_size=32, batch_size=8)), val.labels
    )
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


@pytest.mark.heavy
def test_a_flip_trains_on_both_orientations_of_the_cached_outputs(image_folder):
    import tensorflow as tf

    from transfer.data.sources import load_dataset
    from transfer.models.groups import set_trainable_from

    dataset = load_dataset(image_folder, val_split=0.2)
    model = transfer.build_classifier(3, weights=None, image_size=32)
    randomize(model)
    set_trainable_from(model, "conv5")
    run = type("Run", (), {"strategy": tf.distribute.get_strategy(), "prefix_outputs": None})
    options = FinetuneOptions(image_size=32, batch_size=8, augment="flip", fine_tune_from="conv5")
    cache = phase2.FrozenPrefix.of(model, dataset, options, run)
    train = dataset.splits["train"]
    count = len(train)
    assert cache.orientations == 2 and cache.train.shape[0] == 2 * count
    pixels = np.concatenate(list(phase2.images_only(train, 32, 8)))
    for outputs, images in (
        (cache.train[:count], pixels),
        (cache.train[count:], pixels[:, :, ::-1]),
    ):
        np.testing.assert_allclose(
            np.asarray(outputs, dtype="float32"),
            np.asarray(cache.prefix(images)),
            rtol=1e-2,
            atol=1e-2,
        )
    # Each image comes as it is or mirrored, half and half, the same for the same seed.
    positions = tf.constant(np.tile(np.arange(count), 50))
    draws = [np.asarray(cache.train_inputs(seed=5)(positions)) for _ in range(2)]
    np.testing.assert_array_equal(*draws)
    table = np.asarray(cache.train)
    mirrored = [
        np.array_equal(draw, table[count + p]) and not np.array_equal(draw, table[p])
        for draw, p in zip(draws[0], np.asarray(positions))
    ]
    as_is = [np.array_equal(draw, table[p]) for draw, p in zip(draws[0], np.asarray(positions))]
    assert all(m or a for m, a in zip(mirrored, as_is))
    assert 0.4 < np.mean(mirrored) < 0.6
    # Random transforms of the pixels cannot be cached: phase 2 runs on images.
    options.augment = "default"
    assert phase2.FrozenPrefix.of(model, dataset, options, run).train is None


# Two whole runs: slow. The default run keeps the killed-run test (tests/test_distribute.py),
# whose straight and resumed runs agree to 1e-5.
@pytest.mark.slow
def test_the_same_seed_gives_the_same_model(tmp_path, image_folder):
    runs = [
        transfer.finetune(
            image_folder,
            report=False,
            out=tmp_path / f"run{i}",
            weights=None,
            image_size=32,
            batch_size=8,
            fine_tune_epochs=1,
            early_stopping_patience=0,
            keep="last",
            seed=3,
        )
        for i in range(2)
    ]
    first, second = (
        [{k: v for k, v in row.items() if "seconds" not in k} for row in run.history]
        for run in runs
    )
    assert first == second and [row["phase"] for row in first][-1] == "fine-tune"
    for a, b in zip(runs[0].model.weights, runs[1].model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
