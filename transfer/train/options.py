"""Every option of a fine-tuning run, with its default: the one source of truth that
the Python API, the CLI and config.json all read."""

import dataclasses
import math
from dataclasses import dataclass

from transfer.data.augment import PRESETS
from transfer.data.pipeline import MAX_PIXELS
from transfer.data.splits import DEFAULT_TEST_SPLIT, DEFAULT_VAL_SPLIT
from transfer.errors import InvalidArgumentError, unknown_choice
from transfer.models.families import resolve_architecture
from transfer.models.heads import POOLINGS
from transfer.models.pretrained import check_imagenet_available
from transfer.train.budget import parse_duration
from transfer.train.distribute import STRATEGIES

# optimizer -> (class in keras.optimizers, its arguments besides the learning rate)
OPTIMIZERS = {
    "adam": ("Adam", {}),
    "adamw": ("AdamW", {}),
    "sgd": ("SGD", {"momentum": 0.9}),
    "rmsprop": ("RMSprop", {}),
}
AUGMENT_PRESETS = tuple(PRESETS)
CLASS_WEIGHT_MODES = ("none", "auto")
LR_SCHEDULES = ("cosine", "constant")  # of phase 2: warmup then cosine decay, or constant
KEEP_MODES = ("best", "last")  # best: phase 1's model when phase 2 does not clearly beat it
HEAD_INITS = ("probe", "train")  # phase 1: fit a logistic regression, or train the head
# Options that cannot change a run's result: a resumed run may give others.
# (A resumed run plans its own time_limit, counted from the resume.)
RESULT_NEUTRAL = ("backup_interval", "cache_dir", "time_limit")
# --preset: option values for a goal, one row each; options given explicitly win. Each
# is justified by a measurement on the benchmarks page (docs/benchmarks.md, "Presets").
RECIPE_PRESETS = {
    # phase 1, then a short phase 2 on the frozen groups' cached outputs (flips only)
    "fast": {"fine_tune_epochs": 3, "augment": "flip"},
    "balanced": {},  # the defaults
    # more epochs, stronger augmentation and an average of the weights
    "best": {
        "fine_tune_epochs": 10,
        "augment": "strong",
        "ema": True,
        "early_stopping_patience": 4,
    },
}
AUTO = "auto"  # head_epochs: planned from the number of training images
# jit_compile -> model.compile's value; "auto" is Keras' choice: XLA on GPUs, not on CPUs
JIT_COMPILE = {"auto": "auto", "on": True, "off": False}


@dataclass
class FinetuneOptions:
    arch: str = None  # an --arch name of transfer.models.families; None: depth and version
    depth: int = 50
    version: str = "v1"
    weights: str = "imagenet"  # "imagenet", a file path, or "none"
    weights_dir: str = None
    image_size: int = None  # None: the backbone's ImageNet size (its default_size)
    batch_size: int = 32  # global batch size
    val_split: float = DEFAULT_VAL_SPLIT
    test_split: float = DEFAULT_TEST_SPLIT
    head_init: str = "probe"  # phase 1 with head_epochs=auto: the probe's solution, or Adam
    head_epochs: int = AUTO  # or a number of epochs; see transfer.train.phases.head_epochs
    head_learning_rate: float = 1e-3
    fine_tune_from: str = "conv5"  # a group name, or "none" to skip phase 2
    fine_tune_epochs: int = 5
    fine_tune_learning_rate: float = 1e-4
    lr_schedule: str = "cosine"  # phase 2's learning rate over its steps
    layer_decay: float = 1.0  # phase 2: each group below the top learns this much slower
    ema: bool = False  # phase 2 ends with an exponential moving average of its weights
    train_bn: bool = False
    optimizer: str = "adam"
    label_smoothing: float = 0.0
    dropout: float = 0.2
    pooling: str = "avg"
    hidden_units: int = None
    standardize: bool = True  # the head sees features standardised with training statistics
    class_weight: str = "none"
    augment: str = "default"  # phase 2's augmentation preset
    flip: bool = True  # horizontal flips in the augmentation (wrong for digits and text)
    keep: str = "best"  # which model the run keeps: the best validated phase, or the last
    refit: bool = True  # a kept probe head is fitted again on training + validation images
    early_stopping_patience: int = 3  # epochs without val_loss improvement; 0 turns it off
    futility_stop: bool = True  # phase 2 stops once it cannot beat phase 1 (keep="best")
    time_limit: float = None  # seconds, or "90s", "10m", "2h": phases planned to end in time
    preset: str = None  # a row of RECIPE_PRESETS: fast, balanced or best
    seed: int = 42
    backup_interval: float = 60.0  # seconds between backups for --resume (at epoch ends)
    strict: bool = False
    max_pixels: int = MAX_PIXELS  # larger images are skipped unread
    cache_features: bool = True
    cache_dir: str = None  # default: $TRANSFER_CACHE_DIR or ~/.cache/transfer/features
    mixed_precision: bool = False
    jit_compile: str = "auto"  # XLA for training steps: auto, on or off
    strategy: str = "auto"  # tf.distribute: auto, one, mirrored or multiworker
    tfds_data_dir: str = None
    # Labels from a CSV file or DataFrame (transfer.data.csv_labels.TABLE_OPTIONS)
    images: str = None  # the folder its paths are relative to (default: the CSV's)
    path_column: str = None  # default: the first of path, file, filename, image, ...
    label_column: str = None  # default: the first of label, labels, class, ...
    split_column: str = None  # default: split or subset, if there is one
    label_sep: str = None  # several labels in one cell (default: ';' or '|' if found)
    multi_label: bool = False  # multi-label even where no cell holds several labels

    def validate(self):
        architecture = self.architecture
        recorded = architecture.option_values  # a ResNet by depth and version, others by arch
        if recorded["depth"] is None and (
            str(self.depth) not in ("None", "50") or self.version not in (None, "v1")
        ):
            raise InvalidArgumentError(
                f"depth and version are ResNet's; arch={self.arch!r} names the whole "
                f"architecture. Received: depth={self.depth!r}, version={self.version!r}"
            )
        self.arch, self.depth, self.version = (
            recorded["arch"],
            recorded["depth"],
            recorded["version"],
        )
        if self.image_size is None:
            self.image_size = architecture.default_size
        checks = [
            (self.optimizer in OPTIMIZERS, "optimizer", tuple(OPTIMIZERS)),
            (self.augment in AUGMENT_PRESETS, "augment", AUGMENT_PRESETS),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule", LR_SCHEDULES),
            (self.keep in KEEP_MODES, "keep", KEEP_MODES),
            (self.head_init in HEAD_INITS, "head_init", HEAD_INITS),
            (self.class_weight in CLASS_WEIGHT_MODES, "class_weight", CLASS_WEIGHT_MODES),
            (self.pooling in POOLINGS, "pooling", POOLINGS),
            (self.jit_compile in JIT_COMPILE, "jit_compile", tuple(JIT_COMPILE)),
            (self.strategy in STRATEGIES, "strategy", STRATEGIES),
        ]
        for ok, name, accepted in checks:
            if not ok:
                raise unknown_choice(name, getattr(self, name), accepted)
        for name in ("head_learning_rate", "fine_tune_learning_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise InvalidArgumentError(f"{name}={value} must be a finite number above 0.")
        if not (math.isfinite(self.dropout) and 0.0 <= self.dropout < 1.0):
            raise InvalidArgumentError(f"dropout={self.dropout} must be in [0, 1).")
        for name in ("val_split", "test_split"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidArgumentError(f"{name}={getattr(self, name)} must be in [0, 1).")
        positive = ("image_size", "batch_size", "max_pixels")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise InvalidArgumentError(
                    f"{name} must be positive. Received: {getattr(self, name)}"
                )
        if str(self.head_epochs).lower() == AUTO:
            self.head_epochs = AUTO
        else:
            try:
                self.head_epochs = int(self.head_epochs)
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"head_epochs must be a number or 'auto'. Received: {self.head_epochs!r}"
                ) from None
        if not 0.0 < self.layer_decay <= 1.0:
            raise InvalidArgumentError(
                f"layer_decay must be in (0, 1]. Received: {self.layer_decay}"
            )
        if self.head_epochs != AUTO and self.head_epochs < 0:
            raise InvalidArgumentError(
                f"head_epochs must be 0 or more. Received: {self.head_epochs}"
            )
        for name in ("fine_tune_epochs", "early_stopping_patience", "backup_interval"):
            if getattr(self, name) < 0:
                raise InvalidArgumentError(
                    f"{name} must be 0 or more. Received: {getattr(self, name)}"
                )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise InvalidArgumentError(
                f"label_smoothing must be in [0, 1). Received: {self.label_smoothing}"
            )
        self.time_limit = parse_duration(self.time_limit)
        if self.preset is not None and self.preset not in RECIPE_PRESETS:
            raise unknown_choice("preset", self.preset, tuple(RECIPE_PRESETS))
        if isinstance(self.weights, str) and self.weights.lower() == "none":
            self.weights = None
        if self.weights == "imagenet":  # fail before the data is read, not after
            check_imagenet_available(architecture)
        if str(self.fine_tune_from).lower() == "none":
            self.fine_tune_from = "none"
        return self

    @property
    def architecture(self):
        """The `Backbone` these options name."""
        return resolve_architecture(self.arch, self.depth, self.version)

    @property
    def fine_tunes(self):
        return self.fine_tune_from != "none" and self.fine_tune_epochs > 0

    def as_dict(self):
        return dataclasses.asdict(self)


def resolve_options(options=None, **overrides):
    """A validated copy of `options` (or the defaults) with `overrides` applied. A
    preset's values fill the options that `overrides` and `options` leave at their
    defaults."""
    base = options or FinetuneOptions()
    names = {f.name for f in dataclasses.fields(FinetuneOptions)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InvalidArgumentError(
            f"Unknown fine-tuning option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}."
        )
    preset = overrides.get("preset", base.preset)
    if preset is not None:
        if preset not in RECIPE_PRESETS:
            raise unknown_choice("preset", preset, tuple(RECIPE_PRESETS))
        defaults = FinetuneOptions()
        base = dataclasses.replace(
            base,
            **{
                name: value
                for name, value in RECIPE_PRESETS[preset].items()
                if name not in overrides and getattr(base, name) == getattr(defaults, name)
            },
        )
    return dataclasses.replace(base, **overrides).validate()
