"""Every pretrained ImageNet checkpoint `transfer` knows, one row each, as timm keeps
a `_cfg` beside each checkpoint: its architecture, publisher, file, URL, hash,
preprocessing, resize method and reported accuracy.

keras.applications publishes v1 and v2 (a file with the 1000-class top and a
`_notop` one); torchvision and timm publish v1.5, whose layout is theirs.
"""

from dataclasses import dataclass

from transfer.errors import WeightsError
from transfer.models.architectures import VERSIONS

KERAS_APPLICATIONS = "keras.applications"
TORCHVISION = "torchvision"
TIMM = "timm"
TORCH_VERSION = "v1.5"  # the layout of every torchvision and timm ResNet checkpoint

KERAS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
TORCHVISION_BASE_URL = "https://download.pytorch.org/models/"
HUGGING_FACE_URL = "https://huggingface.co/{repo}/resolve/main/model.safetensors"


@dataclass(frozen=True)
class Checkpoint:
    """One published weights file."""

    depth: int
    version: str  # a key of VERSIONS
    source: str  # KERAS_APPLICATIONS, TORCHVISION or TIMM
    name: str  # the publisher's name for these weights
    file: str
    url: str
    include_top: bool  # holds the 1000-class classifier
    md5: str = None  # checked on download (keras.applications publishes MD5 hashes)
    top1: float = None  # ImageNet top-1 % the publisher reports at 224 px
    resize: str = "bilinear"  # how images were resized for these weights

    @property
    def id(self):
        """Unique key: the file name, or the repository for timm's model.safetensors."""
        return f"{TIMM}/{self.name}" if self.source == TIMM else self.file

    @property
    def preprocessing(self):
        """The input mode the weights expect: that of their version."""
        return VERSIONS[self.version].preprocessing


def _keras_rows(depth, version, top_md5, notop_md5):
    name = f"resnet{depth}{VERSIONS[version].model_suffix}"
    rows = []
    for include_top, md5 in ((True, top_md5), (False, notop_md5)):
        file = f"{name}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
        rows.append(Checkpoint(depth, version, KERAS_APPLICATIONS, "imagenet", file, KERAS_BASE_URL + file,
                               include_top, md5=md5))
    return rows


def _torchvision_row(depth, name, file, top1):
    return Checkpoint(depth, TORCH_VERSION, TORCHVISION, name, file,
                      TORCHVISION_BASE_URL + file, include_top=True, top1=top1)


def _timm_row(depth, repo):
    # top1 None: timm's model cards report accuracy at their own test size.
    return Checkpoint(depth, TORCH_VERSION, TIMM, repo.split("/")[-1],
                      "model.safetensors", HUGGING_FACE_URL.format(repo=repo), include_top=True)


_ROWS = [
    # The same files and MD5 hashes as keras.applications: (with top, notop).
    *_keras_rows(50, "v1", "2cb95161c43110f7111970584f804107", "4d473c1dd8becc155b73f8504c6f6626"),
    *_keras_rows(101, "v1", "f1aeb4b969a6efcfb50fad2f0c20cfc5", "88cf7a10940856eca736dc7b7e228a21"),
    *_keras_rows(152, "v1", "100835be76be38e30d865e96f2aaae62", "ee4c566cf9a93f14d82f913c2dc6dd0c"),
    *_keras_rows(50, "v2", "3ef43a0b657b3be2300d5770ece849e0", "fac2f116257151a9d068a22e544a4917"),
    *_keras_rows(101, "v2", "6343647c601c52e1368623803854d971", "c0ed64b8031c3730f411d2eb4eea35b5"),
    *_keras_rows(152, "v2", "a49b44d1979771252814e80f8ec446f9", "ed17cf2e0169df9d443503ef94b23b33"),
    # torchvision: the weights name, file and the ImageNet top-1 % torchvision reports.
    _torchvision_row(50, "IMAGENET1K_V1", "resnet50-0676ba61.pth", 76.130),
    _torchvision_row(50, "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 80.858),
    _torchvision_row(101, "IMAGENET1K_V1", "resnet101-63fe2227.pth", 77.374),
    _torchvision_row(101, "IMAGENET1K_V2", "resnet101-cd907fc2.pth", 81.886),
    _torchvision_row(152, "IMAGENET1K_V1", "resnet152-394f9c45.pth", 78.312),
    _torchvision_row(152, "IMAGENET1K_V2", "resnet152-f82ba261.pth", 82.284),
    # timm on the Hugging Face hub: model.safetensors with torchvision's key names.
    _timm_row(50, "timm/resnet50.a1_in1k"),
    _timm_row(101, "timm/resnet101.a1h_in1k"),
    _timm_row(152, "timm/resnet152.a1h_in1k"),
]
CHECKPOINTS = {row.id: row for row in _ROWS}
assert len(CHECKPOINTS) == len(_ROWS), "checkpoint ids must be unique"


def checkpoints(architecture, source=None):
    """The rows of `architecture` (an `Architecture`), optionally of one publisher."""
    return [row for row in CHECKPOINTS.values()
            if (row.depth, row.version) == (architecture.depth, architecture.version.name)
            and source in (None, row.source)]


def has_imagenet_file(architecture):
    """Whether keras.applications publishes files for `architecture` (weights="imagenet")."""
    return bool(checkpoints(architecture, KERAS_APPLICATIONS))


def check_imagenet_available(architecture):
    """Raise unless keras.applications publishes ImageNet files for `architecture`."""
    if has_imagenet_file(architecture):
        return
    others = checkpoints(architecture)
    example = next((row.url for row in others if row.name.endswith("V2")), None) or (
        others[0].url if others else None)
    publishers = "/".join(sorted({row.source for row in others}, reverse=True)) or "other"
    raise WeightsError(
        f"No keras.applications ImageNet file exists for {architecture.version.name} "
        f"({architecture.display_name}); use {publishers} weights: weights=PATH to a .pth "
        f"or .safetensors checkpoint" + (f", e.g. {example}" if example else "")
        + ", or weights=None for random initialisation."
    )


def imagenet_checkpoint(architecture, include_top=True):
    """keras.applications' row for `architecture`, with or without the top."""
    check_imagenet_available(architecture)
    return next(row for row in checkpoints(architecture, KERAS_APPLICATIONS)
                if row.include_top == include_top)
