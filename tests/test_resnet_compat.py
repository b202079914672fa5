"""The compatibility contract: our ResNets against keras.applications (weights=None)."""

import keras
import numpy as np
import pytest

import transfer
from tests.conftest import (
    VARIANT_IDS,
    VARIANTS,
    build_fresh,
    random_images,
    randomize,
    reference_builder,
)

# Both models run the same graph of the same Keras ops, so on CPU the outputs are
# bitwise equal (observed max abs difference: 0.0); the contract allows 1e-5.
TOLERANCE = 1e-5


def _pairs(builder, ref_name, **kwargs):
    ref = build_fresh(reference_builder(ref_name), weights=None, **kwargs)
    ours = build_fresh(builder, weights=None, **kwargs)
    return ours, ref


def _param_counts(model):
    count = lambda ws: sum(int(np.prod(w.shape)) for w in ws)  # noqa: E731
    return count(model.trainable_weights), count(model.non_trainable_weights)


# The 101- and 152-layer v2 variants are test_weights' (their tf-keras files load and
# give tf-keras' outputs); here with top, in the slow run.
WITH_TOP_CASES = [
    pytest.param(
        *variant,
        id=variant_id,
        marks=pytest.mark.slow if variant_id in ("ResNet101V2", "ResNet152V2") else (),
    )
    for variant, variant_id in zip(VARIANTS, VARIANT_IDS)
]


@pytest.mark.heavy
@pytest.mark.parametrize("builder,ref_name,depth,version", WITH_TOP_CASES)
def test_structure_and_outputs_with_top(builder, ref_name, depth, version):
    ours, ref = _pairs(builder, ref_name, classifier_activation=None)
    assert ours.name == ref.name
    assert [layer.name for layer in ours.layers] == [layer.name for layer in ref.layers]
    assert [type(layer) for layer in ours.layers] == [type(layer) for layer in ref.layers]
    assert [w.path for w in ours.weights] == [w.path for w in ref.weights]
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in ref.weights]
    assert _param_counts(ours) == _param_counts(ref)
    assert ours.count_params() == ref.count_params()

    randomize(ref)
    ours.set_weights(ref.get_weights())
    x = random_images((2, 224, 224, 3)).astype("float32")
    x = keras.applications.resnet.preprocess_input(x) if version == "v1" else x / 127.5 - 1
    expected = np.asarray(ref(x, training=False))
    got = np.asarray(ours(x, training=False))
    assert expected.shape == got.shape == (2, 1000)
    assert np.abs(expected).max() > 1e-2  # the comparison is not between zeros
    assert np.abs(got - expected).max() <= TOLERANCE


# Every variant without pooling; the pooling layers are the same code at every depth
# and version, so avg and max are checked on ResNet50 only (it keeps the suite short).
# The 101- and 152-layer backbones are the with-top test's; without top, at 75x61,
# they are in the slow run.
NO_TOP_CASES = [
    pytest.param(
        *variant,
        pooling,
        id=f"{variant_id}-{pooling}",
        marks=pytest.mark.slow if variant[2] != 50 else (),
    )
    for variant, variant_id in zip(VARIANTS, VARIANT_IDS)
    for pooling in ([None, "avg", "max"] if variant_id == "ResNet50" else [None])
]


@pytest.mark.heavy
@pytest.mark.parametrize("builder,ref_name,depth,version,pooling", NO_TOP_CASES)
def test_outputs_without_top_non_square(builder, ref_name, depth, version, pooling):
    shape = (75, 61, 3)
    ours, ref = _pairs(builder, ref_name, include_top=False, input_shape=shape, pooling=pooling)
    assert [layer.name for layer in ours.layers] == [layer.name for layer in ref.layers]
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in ref.weights]
    randomize(ref, seed=1)
    ours.set_weights(ref.get_weights())
    x = random_images((2, *shape), seed=1).astype("float32") - 120.0
    expected = np.asarray(ref(x, training=False))
    got = np.asarray(ours(x, training=False))
    assert got.shape == expected.shape
    assert got.shape == ((2, 3, 2, 2048) if pooling is None else (2, 2048))
    assert np.abs(got - expected).max() <= TOLERANCE


@pytest.mark.heavy
@pytest.mark.parametrize("builder,ref_name,depth,version", VARIANTS[::3], ids=VARIANT_IDS[::3])
def test_custom_input_tensor(builder, ref_name, depth, version):
    keras.backend.clear_session()
    source = keras.Input(shape=(64, 48, 3), name="pixels")
    scaled = keras.layers.Rescaling(1.0, name="identity")(source)
    model = builder(weights=None, include_top=False, input_tensor=scaled, pooling="avg")
    # As in keras.applications, the model starts at the source of the given tensor.
    assert model.inputs[0] is source
    assert model.output.shape == (None, 2048)
    assert model(random_images((1, 64, 48, 3)).astype("float32")).shape == (1, 2048)


@pytest.mark.heavy
@pytest.mark.parametrize("channels", [1, 4])
@pytest.mark.parametrize("builder,ref_name,depth,version", VARIANTS[::3], ids=VARIANT_IDS[::3])
def test_channels_without_weights(builder, ref_name, depth, version, channels):
    ours, ref = _pairs(builder, ref_name, include_top=False, input_shape=(None, None, channels))
    assert ours.input_shape == ref.input_shape == (None, None, None, channels)
    assert ours.output_shape == ref.output_shape == (None, None, None, 2048)
    assert [tuple(w.shape) for w in ours.weights] == [tuple(w.shape) for w in ref.weights]
    out = ours(random_images((1, 40, 33, channels)).astype("float32"))
    assert out.shape == (1, 2, 2, 2048)


@pytest.mark.heavy
def test_generic_builder_matches_named_variant():
    a = build_fresh(transfer.ResNet, depth=101, version="v2", weights=None, include_top=False)
    b = build_fresh(transfer.ResNet101V2, weights=None, include_top=False)
    assert a.name == b.name == "resnet101v2"
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]


def test_signature_matches_keras_applications():
    import inspect

    for builder, ref_name, _, _ in VARIANTS:
        ours = inspect.signature(builder)
        ref = inspect.signature(reference_builder(ref_name))
        assert list(ours.parameters) == list(ref.parameters)
        for name, param in ref.parameters.items():
            assert ours.parameters[name].default == param.default, (ref_name, name)
