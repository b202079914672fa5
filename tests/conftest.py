"""Shared fixtures. Tests run offline on small inputs; keras.applications and tf-keras
are the numerical reference and are used here only."""

import atexit
import collections
import contextlib
import os
import shutil
import subprocess
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_HOME", os.path.join(os.path.dirname(__file__), ".keras-test-home"))
# Module-scoped fixtures run before the per-test cache below: give them a feature cache
# of this process's own, removed at exit, so nothing piles up in the user's ~/.cache.
os.environ["TRANSFER_CACHE_DIR"] = tempfile.mkdtemp(prefix="transfer-test-features-")
atexit.register(shutil.rmtree, os.environ["TRANSFER_CACHE_DIR"], ignore_errors=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import transfer  # noqa: E402

# The test tiers (setup.cfg's markers, `scripts/test --fast`): a test that trains a model,
# runs a command end to end or builds the largest models is marked `heavy` and stays out
# of the fast tier; one over FAST_SECONDS without that mark is named at the end of a run.
FAST_SECONDS = 10.0
_unmarked_slow = []


# Module fixtures that train a run (once per module, shared by its tests): a test on
# one of them is heavy.
TRAINED_RUN_FIXTURES = {
    "sample_run",
    "trained",
    "single_run",
    "multi_run",
    "corpus_run",
    "planted_run",
    "csv_run",
    "project",
    "small_run",
    "exported",
    "audited",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINED_RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.heavy)
    # pytest-xdist (--dist loadfile) hands out test files in collection order: the files
    # with the most training first, so that the two workers end together.
    training = collections.Counter(
        item.path.name for item in items if item.get_closest_marker("heavy")
    )
    items.sort(key=lambda item: -training[item.path.name])  # stable: files stay whole


def pytest_runtest_logreport(report):
    if (
        report.when == "call"
        and report.duration > FAST_SECONDS
        and not {"heavy", "slow", "torch"} & set(report.keywords)
    ):
        _unmarked_slow.append((report.nodeid, report.duration))


def pytest_terminal_summary(terminalreporter):
    if _unmarked_slow:
        terminalreporter.section("slow tests without the heavy marker")
        for nodeid, seconds in _unmarked_slow:
            terminalreporter.write_line(f"{seconds:6.1f} s  {nodeid}")


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


def trust_notop_file(monkeypatch, arch, path):
    """The real file's MD5 cannot match a locally made one: point the table at ours."""
    import dataclasses

    from transfer.models import pretrained

    row = pretrained.imagenet_checkpoint(arch, include_top=False)
    monkeypatch.setitem(pretrained.CHECKPOINTS, row.id, dataclasses.replace(row, md5=md5_of(path)))


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
    ("png", "RGB"),
    ("JPG", "RGB"),
    ("jpeg", "L"),
    ("bmp", "RGB"),
    ("gif", "P"),
    ("PNG", "RGBA"),
    ("png", "P"),
    ("Jpeg", "RGB"),
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
            write_image(
                root / name / f"img_{i:03d}.{ext}",
                size,
                mode,
                seed=100 * c + i,
                tint=TINTS[c % len(TINTS)],
            )
    return root


@pytest.fixture
def image_folder(tmp_path):
    return make_image_folder(tmp_path / "images", {"cat": 8, "dog": 8, "fox": 8})


SAMPLE_DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "fashion-mnist")


def mock_tfds_metadata(data_dir, name="mnist", splits=(("train", 16), ("test", 8))):
    """Write the metadata a prepared TFDS dataset has, for `tfds.testing.mock_data`."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.info.set_splits(
        tfds.core.SplitDict(
            [tfds.core.SplitInfo(name=n, shard_lengths=[k], num_bytes=0) for n, k in splits]
        )
    )
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    return data_dir


@contextlib.contextmanager
def mocked_tfds(data_dir, name="mnist", splits=(("train", 16), ("test", 8))):
    """`tfds:NAME` readable from `data_dir` without a download: its metadata written
    and `tfds.testing.mock_data` on, with as many random examples as the largest split."""
    import tensorflow_datasets as tfds

    mock_tfds_metadata(data_dir, name, splits)
    with tfds.testing.mock_data(
        num_examples=max(n for _, n in splits),
        policy=tfds.testing.MockPolicy.USE_FILES,
        data_dir=str(data_dir),
    ):
        yield data_dir


def run_cli(*args):
    """The CLI in this process (click's CliRunner), standard output and error apart."""
    from click.testing import CliRunner

    from transfer.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args])


# The flags of the smallest run: random weights, 32 px, one head epoch, no phase 2.
TINY_FLAGS = ["--no-report", "--weights", "none", "--image-size", 32, "--batch-size", 8,
              "--head-epochs", 1, "--fine-tune-from", "none"]  # fmt: skip


def chrome(tmp_path, window=(1200, 900)):
    """Headless Debian chromium through Selenium, logging the console and the network;
    skipped where it is absent (scripts/test installs it when it can)."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (the test extra has it)"
    )
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed "
            "(apt-get install chromium chromium-driver; scripts/test does it as root)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={window[0]},{window[1]}",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.fixture
def full_disk(tmp_path):
    """A 2 MB filesystem: big enough for the small files of a run, not for a model."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run directory with an untrained 32-pixel classifier of two classes (no training),
    for the commands that read a run."""
    from transfer.io import save_model
    from transfer.models.heads import build_classifier
    from transfer.runs import RunPaths, write_labels

    paths = RunPaths(tmp_path_factory.mktemp("tiny-run"))
    save_model(build_classifier(2, weights=None, image_size=32), paths.model)
    write_labels(paths.labels, ["cat", "dog"])
    return paths.root


@pytest.fixture(autouse=True)
def feature_cache_dir(tmp_path, monkeypatch):
    """Every test gets its own feature cache: nothing leaks between tests."""
    monkeypatch.setenv("TRANSFER_CACHE_DIR", str(tmp_path / "feature-cache"))
    return tmp_path / "feature-cache"


# torchvision's ResNet constructors: blocks per stage, and block kind.
TORCHVISION_RESNETS = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}


def torchvision_state_dict(depth=50, seed=0, classes=1000, zeros=False):
    """The state_dict of torchvision's resnet{depth}, keys and shapes as
    `torchvision.models.resnet{depth}().state_dict()` has them, as NumPy arrays with
    random values (BN statistics included), written out from torchvision's
    `ResNet._make_layer` rather than from `transfer`'s mapping."""
    rng = np.random.default_rng(seed)
    state = {}

    def conv(key, out_channels, in_channels, size):
        shape = (out_channels, in_channels, size, size)
        scale = np.sqrt(1.0 / (in_channels * size * size))
        state[key] = (
            np.zeros(shape, "float32") if zeros else rng.normal(0, scale, shape).astype("float32")
        )

    def bn(prefix, channels):
        values = {"weight": (0.2, 0.6), "bias": 0.1, "running_mean": 0.1, "running_var": (0.5, 1.5)}
        for name, spec in values.items():
            if zeros:
                value = np.zeros(channels, "float32")
            elif isinstance(spec, tuple):
                value = rng.uniform(*spec, channels).astype("float32")
            else:
                value = rng.normal(0, spec, channels).astype("float32")
            state[f"{prefix}.{name}"] = value
        state[f"{prefix}.num_batches_tracked"] = np.array(0, dtype="int64")

    blocks, kind = TORCHVISION_RESNETS[depth]
    expansion = 4 if kind == "bottleneck" else 1
    conv("conv1.weight", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, count in enumerate(blocks):
        planes = 64 * 2**stage
        for i in range(count):
            prefix = f"layer{stage + 1}.{i}"
            if kind == "bottleneck":
                conv(f"{prefix}.conv1.weight", planes, inplanes, 1)
                bn(f"{prefix}.bn1", planes)
                conv(f"{prefix}.conv2.weight", planes, planes, 3)
                bn(f"{prefix}.bn2", planes)
                conv(f"{prefix}.conv3.weight", planes * expansion, planes, 1)
                bn(f"{prefix}.bn3", planes * expansion)
            else:
                conv(f"{prefix}.conv1.weight", planes, inplanes, 3)
                bn(f"{prefix}.bn1", planes)
                conv(f"{prefix}.conv2.weight", planes, planes, 3)
                bn(f"{prefix}.bn2", planes)
            stride = 1 if stage == 0 else 2
            if i == 0 and (stride != 1 or inplanes != planes * expansion):
                conv(f"{prefix}.downsample.0.weight", planes * expansion, inplanes, 1)
                bn(f"{prefix}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    scale = np.sqrt(1.0 / inplanes)
    state["fc.weight"] = rng.normal(0, scale, (classes, inplanes)).astype("float32")
    state["fc.bias"] = rng.normal(0, 0.1, classes).astype("float32")
    return state


def save_safetensors(state, path):
    """Write a state_dict of NumPy arrays as timm/Hugging Face do: `.safetensors`."""
    from safetensors.numpy import save_file

    save_file(state, str(path))
    return path
