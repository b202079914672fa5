"""Every pretrained ImageNet checkpoint `transfer` knows, one row each, as timm keeps
a `_cfg` beside each checkpoint: its architecture, publisher, file, URL, hash,
preprocessing, resize method and reported accuracy.

keras.applications publishes v1 and v2 (a file with the 1000-class top and a
`_notop` one); torchvision and timm publish v1.5, whose layout is theirs. The other
families' rows (`transfer.models.families`) are keras.applications' files too, named by
`arch` instead of depth and version.
"""

from dataclasses import dataclass

from transfer.errors import WeightsError
from transfer.models.architectures import VERSIONS, get_architecture

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

    depth: int  # None for another family's row
    version: str  # a key of VERSIONS; None for another family's row
    source: str  # KERAS_APPLICATIONS, TORCHVISION or TIMM
    name: str  # the publisher's name for these weights
    file: str
    url: str
    include_top: bool  # holds the 1000-class classifier
    md5: str = None  # checked on download (keras.applications publishes MD5 hashes)
    top1: float = None  # ImageNet top-1 % the publisher reports at 224 px
    resize: str = "bilinear"  # how images were resized for these weights
    arch: str = None  # the --arch name of a row of transfer.models.families
    sha256: str = None  # the hash keras.applications publishes instead of the MD5 (ConvNeXt)

    @property
    def file_hash(self):
        """The published hash, as `keras.utils.get_file(file_hash=...)` takes it."""
        return self.sha256 or self.md5

    @property
    def model(self):
        """The name of the backbone the file is for (`Backbone.name`)."""
        return self.arch or get_architecture(self.depth, self.version).name

    @property
    def id(self):
        """Unique key: the file name, or the repository for timm's model.safetensors."""
        return f"{TIMM}/{self.name}" if self.source == TIMM else self.file

    @property
    def preprocessing(self):
        """The input mode the weights expect: that of their version (ResNet rows)."""
        return VERSIONS[self.version].preprocessing


def _keras_rows(depth, version, top_md5, notop_md5):
    name = get_architecture(depth, version).name
    rows = []
    for include_top, md5 in ((True, top_md5), (False, notop_md5)):
        file = f"{name}_weights_tf_dim_ordering_tf_kernels{'' if include_top else '_notop'}.h5"
        rows.append(
            Checkpoint(
                depth,
                version,
                KERAS_APPLICATIONS,
                "imagenet",
                file,
                KERAS_BASE_URL + file,
                include_top,
                md5=md5,
            )
        )
    return rows


def _torchvision_row(depth, name, file, top1):
    return Checkpoint(
        depth,
        TORCH_VERSION,
        TORCHVISION,
        name,
        file,
        TORCHVISION_BASE_URL + file,
        include_top=True,
        top1=top1,
    )


def _timm_row(depth, repo):
    # top1 None: timm's model cards report accuracy at their own test size.
    return Checkpoint(
        depth,
        TORCH_VERSION,
        TIMM,
        repo.split("/")[-1],
        "model.safetensors",
        HUGGING_FACE_URL.format(repo=repo),
        include_top=True,
    )


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


def _family_rows(arch, base_url, top_file, notop_file, top_hash, notop_hash):
    sha = len(top_hash or "") == 64  # keras.applications gives SHA-256 for ConvNeXt
    return [
        Checkpoint(
            None,
            None,
            KERAS_APPLICATIONS,
            "imagenet",
            file,
            base_url + file,
            include_top,
            arch=arch,
            **{"sha256" if sha else "md5": digest},
        )
        for include_top, file, digest in (
            (True, top_file, top_hash),
            (False, notop_file, notop_hash),
        )
    ]


_APPS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
_MOBILENET_V2 = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224"


def _mobilenet_v3_rows(arch, key, top_hash, notop_hash):
    return _family_rows(
        arch,
        _APPS_URL + "mobilenet_v3/",
        f"weights_mobilenet_v3_{key}.h5",
        f"weights_mobilenet_v3_{key}_no_top_v2.h5",
        top_hash,
        notop_hash,
    )


def _named_rows(arch, model_name, base_url, top_hash, notop_hash):
    return _family_rows(
        arch, base_url, f"{model_name}.h5", f"{model_name}_notop.h5", top_hash, notop_hash
    )


_EFFICIENTNET_URL = "https://storage.googleapis.com/keras-applications/"
_EFFICIENTNET_V2_URL = _APPS_URL + "efficientnet_v2/"
# Files and hashes as keras.applications 3 has them (its WEIGHTS_HASHES tables);
# MobileNetV2's files have no published hash. The file is at 224 px, alpha 1.0.
_ROWS += [
    *_family_rows(
        "mobilenet_v2",
        _APPS_URL + "mobilenet_v2/",
        f"{_MOBILENET_V2}.h5",
        f"{_MOBILENET_V2}_no_top.h5",
        None,
        None,
    ),
    *_mobilenet_v3_rows(
        "mobilenet_v3_small",
        "small_224_1.0_float",
        "8768d4c2e7dee89b9d02b2d03d65d862",
        "d3e8ec802a04aa4fc771ee12a9a9b836",
    ),
    *_mobilenet_v3_rows(
        "mobilenet_v3_large",
        "large_224_1.0_float",
        "59e551e166be033d707958cf9e29a6a7",
        "07fb09a5933dd0c8eaafa16978110389",
    ),
    *_named_rows(
        "efficientnet_b0",
        "efficientnetb0",
        _EFFICIENTNET_URL,
        "902e53a9f72be733fc0bcb005b3ebbac",
        "50bc09e76180e00e4465e1a485ddc09d",
    ),
    *_named_rows(
        "efficientnet_b1",
        "efficientnetb1",
        _EFFICIENTNET_URL,
        "1d254153d4ab51201f1646940f018540",
        "74c4e6b3e1f6a1eea24c589628592432",
    ),
    *_named_rows(
        "efficientnet_b2",
        "efficientnetb2",
        _EFFICIENTNET_URL,
        "b15cce36ff4dcbd00b6dd88e7857a6ad",
        "111f8e2ac8aa800a7a99e3239f7bfb39",
    ),
    *_named_rows(
        "efficientnet_b3",
        "efficientnetb3",
        _EFFICIENTNET_URL,
        "ffd1fdc53d0ce67064dc6a9c7960ede0",
        "af6d107764bb5b1abb91932881670226",
    ),
    *_named_rows(
        "efficientnet_v2_b0",
        "efficientnetv2-b0",
        _EFFICIENTNET_V2_URL,
        "21ecbf6da12460d5c40bb2f29ceb2188",
        "893217f2bb855e2983157299931e43ff",
    ),
    *_named_rows(
        "efficientnet_v2_b1",
        "efficientnetv2-b1",
        _EFFICIENTNET_V2_URL,
        "069f0534ff22adf035c89e2d9547a9dc",
        "0e80663031ca32d657f9caa404b6ec37",
    ),
    *_named_rows(
        "efficientnet_v2_b2",
        "efficientnetv2-b2",
        _EFFICIENTNET_V2_URL,
        "424e49f28180edbde1e94797771950a7",
        "1dfe2e7a5d45b6632553a8961ea609eb",
    ),
    *_named_rows(
        "efficientnet_v2_b3",
        "efficientnetv2-b3",
        _EFFICIENTNET_V2_URL,
        "1f1fc43bd98a6e4fd8fdfd551e02c7a0",
        "f6abf7b5849ac99a89b50dd3fd532856",
    ),
    *_named_rows(
        "efficientnet_v2_s",
        "efficientnetv2-s",
        _EFFICIENTNET_V2_URL,
        "e1d88a8495beba45748fedd0cecbe016",
        "af0682fb74e8c54910f2d4393339c070",
    ),
    *_named_rows(
        "convnext_tiny",
        "convnext_tiny",
        _APPS_URL + "convnext/",
        "8ae6e78ce2933352b1ef4008e6dd2f17bc40771563877d156bc6426c7cf503ff",
        "d547c096cabd03329d7be5562c5e14798aa39ed24b474157cef5e85ab9e49ef1",
    ),
]
CHECKPOINTS = {row.id: row for row in _ROWS}
assert len(CHECKPOINTS) == len(_ROWS), "checkpoint ids must be unique"


def checkpoints(architecture, source=None):
    """The rows of `architecture` (a `Backbone`, by its name), optionally of one publisher."""
    return [
        row
        for row in CHECKPOINTS.values()
        if row.model == architecture.name and source in (None, row.source)
    ]


def has_imagenet_file(architecture):
    """Whether keras.applications publishes files for `architecture` (weights="imagenet")."""
    return bool(checkpoints(architecture, KERAS_APPLICATIONS))


def check_imagenet_available(architecture):
    """Raise unless keras.applications publishes ImageNet files for `architecture`."""
    if has_imagenet_file(architecture):
        return
    others = checkpoints(architecture)
    example = next((row.url for row in others if row.name.endswith("V2")), None) or (
        others[0].url if others else None
    )
    publishers = "/".join(sorted({row.source for row in others}, reverse=True)) or "other"
    raise WeightsError(
        f"No keras.applications ImageNet file exists for {architecture.version.name} "
        f"({architecture.display_name}); use {publishers} weights: weights=PATH to a .pth "
        f"or .safetensors checkpoint"
        + (f", e.g. {example}" if example else "")
        + ", or weights=None for random initialisation."
    )


def imagenet_checkpoint(architecture, include_top=True):
    """keras.applications' row for `architecture`, with or without the top."""
    check_imagenet_available(architecture)
    return next(
        row
        for row in checkpoints(architecture, KERAS_APPLICATIONS)
        if row.include_top == include_top
    )
