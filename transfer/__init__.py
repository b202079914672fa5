"""transfer: transfer learning for image classification on Keras 3 and TensorFlow.

A from-scratch ResNet50/101/152 (v1 and v2) that is layer-for-layer compatible with
`keras.applications`, keras.applications' other families (MobileNet, EfficientNet,
ConvNeXt) beside it, and the tools around them: weights, groups, heads, fine-tuning.
TensorFlow loads on first use (`transfer.lazy`), so `import transfer` is quick.
"""

import os

# TensorFlow turns its oneDNN CPU kernels on only for CPUs with AVX-512-class
# features. On AVX2 machines they train and run a ResNet several times faster
# (docs/benchmarks, "Speed": scripts/benchmark.py measures it).
# TensorFlow reads this once, when it loads, so it takes effect when `transfer` is
# imported before TensorFlow. TF_ENABLE_ONEDNN_OPTS=0 turns it off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Likewise before TensorFlow starts its threads: one malloc arena per core (glibc),
# not eight, for less memory kept by threads after freeing it (transfer.allocator).
from transfer.allocator import limit_arenas  # noqa: E402

limit_arenas()

from transfer.commands.audit import AuditResult, audit  # noqa: E402
from transfer.commands.finetune import RunResult, finetune  # noqa: E402
from transfer.commands.runs import compare_runs, list_runs  # noqa: E402
from transfer.commands.tune import TuneResult, tune  # noqa: E402
from transfer.config import load_config  # noqa: E402
from transfer.errors import (  # noqa: E402
    DataError,
    InvalidArgumentError,
    RunFailedError,
    TransferError,
    WeightsError,
)
from transfer.models import (  # noqa: E402
    FAMILIES,
    GROUPS,
    ResNet,
    ResNet50,
    ResNet50V2,
    ResNet101,
    ResNet101V2,
    ResNet152,
    ResNet152V2,
    architecture_of,
    attach_head,
    build_backbone,
    build_classifier,
    feature_extractor,
    find_backbone,
    freeze,
    get_architecture,
    groups,
    imagenet_weights_path,
    load_weights,
    preprocess_input,
    preprocessing_layer,
    resolve_architecture,
    unfreeze,
)
from transfer.train.options import FinetuneOptions  # noqa: E402
from transfer.version import __version__  # noqa: E402
