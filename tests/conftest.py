"""Shared fixtures. Tests run offline on small inputs; keras.applications and tf-keras
are the numerical reference and are used here only."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_HOME", os.path.join(os.path.dirname(__file__), ".keras-test-home"))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import transfer  # noqa: E402

# (our builder, keras.applications builder name, depth, version): one row per variant.
VARIANTS = [
    (transfer.ResNet50, "ResNet50", 50, "v1"),
    (transfer.ResNet101, "ResNet101", 101, "v1"),
    (transfer.ResNet152, "ResNet152", 152, "v1"),
    (transfer.ResNet50V2, "ResNet50V2", 50, "v2"),
    (transfer.ResNet101V2, "ResNet101V2", 101, "v2"),
    (transfer.ResNet152V2, "ResNet152V2", 152, "v2"),
]
VARIANT_IDS = [row[1] for row in VARIANTS]


def reference_builder(name):
    return getattr(keras.applications, name)


def build_fresh(builder, **kwargs):
    """Build in a fresh Keras session, so automatic layer names start from zero."""
    keras.backend.clear_session()
    return builder(**kwargs)


def randomize(model, seed=0):
    """Give every weight, BN statistics included, non-trivial random values.

    Works on Keras 3 and tf-keras models alike."""
    rng = np.random.default_rng(seed)
    values = []
    for weight in model.weights:
        shape = tuple(weight.shape)
        name = getattr(weight, "path", weight.name).rsplit("/", 1)[-1].split(":")[0]
        if name == "moving_variance":
            values.append(rng.uniform(0.5, 1.5, shape))
        elif name == "gamma":
            values.append(rng.uniform(0.2, 0.6, shape))
        elif name in ("beta", "moving_mean", "bias"):
            values.append(rng.normal(0, 0.1, shape))
        else:
            fan_in = int(np.prod(shape[:-1]))
            values.append(rng.normal(0, np.sqrt(1.0 / fan_in), shape))
    model.set_weights([v.astype("float32") for v in values])
    return model


def random_images(shape, seed=0, dtype="uint8"):
    return np.random.default_rng(seed).integers(0, 256, shape).astype(dtype)


@pytest.fixture
def images():
    return random_images


def md5_of(path):
    import hashlib

    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    """Make every outgoing connection fail at once, as on an air-gapped machine."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras home: no cached weight files."""
    home = tmp_path / "keras-home"
    (home / "models").mkdir(parents=True)
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.delenv("TRANSFER_WEIGHTS_DIR", raising=False)
    return home


# Image formats written by `make_image_folder`, cycled per file: every supported
# extension, upper and lower case, and the colour modes that must become RGB.
IMAGE_KINDS = [
    ("png", "RGB"), ("JPG", "RGB"), ("jpeg", "L"), ("bmp", "RGB"), ("gif", "P"),
    ("PNG", "RGBA"), ("png", "P"), ("Jpeg", "RGB"),
]


def write_image(path, size=(40, 36), mode="RGB", seed=0, tint=(128, 128, 128)):
    """A small real image on disk, tinted per class so a model can tell them apart."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(tint, 30, (size[1], size[0], 3)), 0, 255).astype("uint8")
    image = Image.fromarray(pixels, "RGB")
    if mode == "P":
        image = image.quantize(16)
    elif mode != "RGB":
        image = image.convert(mode)
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "gif": "GIF"}
    image.save(path, format=fmt[path.suffix.lower().lstrip(".")])
    return path


TINTS = [(200, 60, 60), (60, 200, 60), (60, 60, 200), (200, 200, 60), (60, 200, 200)]


def make_image_folder(root, counts, size=(40, 36), start=0):
    """root/<class>/img_<i>.<ext> for {class: count}; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    for c, (name, count) in enumerate(sorted(counts.items())):
        (root / name).mkdir(exist_ok=True)
        for i in range(start, start + count):
            ext, mode = IMAGE_KINDS[i % len(IMAGE_KINDS)]
            write_image(root / name / f"img_{i:03d}.{ext}", size, mode, seed=100 * c + i,
                        tint=TINTS[c % len(TINTS)])
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images", {"cat": 8, "dog": 8, "fox": 8})


SAMPLE_DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "fashion-mnist")


def mock_tfds_metadata(data_dir, name="mnist", splits=(("train", 16), ("test", 8))):
    """Write the metadata a prepared TFDS dataset has, for `tfds.testing.mock_data`."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.info.set_splits(tfds.core.SplitDict(
        [tfds.core.SplitInfo(name=n, shard_lengths=[k], num_bytes=0) for n, k in splits]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    return data_dir


@pytest.fixture(autouse=True)
def feature_cache_dir(tmp_path, monkeypatch):
    """Every test gets its own feature cache: nothing leaks between tests."""
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "feature-cache"))
    return tmp_path / "feature-cache"
