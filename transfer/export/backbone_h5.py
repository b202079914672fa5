"""The backbone's weights (.h5) in the layout of keras.applications' `_notop.h5`
files: `weights=FILE` of another run, keras.applications and tf-keras load it as
they load the ImageNet file."""

from transfer.errors import InvalidArgumentError
from transfer.io import atomic_path
from transfer.models.weights.formats import write_legacy_h5

SUFFIX = ".h5"
KIND = "legacy H5 weights"


def check_out(out, group):
    if group is not None:
        raise InvalidArgumentError("format='h5' writes the whole backbone, not one group.")
    if out.suffix != SUFFIX or out.name.endswith(".weights.h5"):
        raise InvalidArgumentError(
            f"out={out}: the backbone's weights are written as a legacy .h5 file "
            "(e.g. source_notop.h5)."
        )


def write(model, out, info=None):
    with atomic_path(out) as tmp_path:
        write_legacy_h5(model, tmp_path)
