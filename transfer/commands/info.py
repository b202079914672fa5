"""`transfer info`: an architecture's groups, shapes, parameters, FLOPs per image and
published ImageNet checkpoints."""

from transfer.models.pretrained import KERAS_APPLICATIONS
from transfer.models.summary import describe


def info(depth, version, image_size=None, arch=None):
    """The summary of `transfer.models.summary.describe` as plain data (JSON-ready);
    `image_size` defaults to the backbone's ImageNet size."""
    summary = describe(depth, version, input_size=image_size, arch=arch)
    arch = summary["architecture"]
    keras_files = [row for row in summary["checkpoints"] if row.source == KERAS_APPLICATIONS]
    torch_files = [row for row in summary["checkpoints"] if row.source != KERAS_APPLICATIONS]
    return {
        "name": arch.display_name,
        "arch": arch.name,
        "depth": arch.option_values["depth"],
        "version": arch.option_values["version"],
        "preprocessing": arch.preprocessing,
        "image_size": summary["input_size"],
        "default_image_size": arch.default_size,
        "groups": [
            {
                "name": r.name,
                "layers": r.layers,
                "output_shape": list(r.output_shape[1:]),
                "params": r.params,
            }
            for r in summary["groups"]
        ],
        "layers": summary["layers"],
        "params": summary["params"],
        "trainable_params": summary["trainable_params"],
        "non_trainable_params": summary["non_trainable_params"],
        "multiply_adds": summary["multiply_adds"],
        "flops": 2 * summary["multiply_adds"],  # a multiply-add is two floating-point operations
        "weights": [
            {
                "include_top": row.include_top,
                "file": row.file,
                "url": row.url,
                "md5": row.md5,
                "sha256": row.sha256,
            }
            for row in keras_files
        ],
        "torch_weights": [
            {
                "source": row.source,
                "name": row.name,
                "file": row.file,
                "url": row.url,
                "top1": row.top1,
            }
            for row in torch_files
        ],
    }
