"""Weight files from elsewhere: H5 files that reach outside themselves, PyTorch checkpoints
on a vulnerable torch."""

import numpy as np
import pytest


def _legacy_h5(path, make_kernel):
    """A legacy Keras H5 file of one layer, `dense`, whose kernel `make_kernel` creates."""
    import h5py

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        group = f.create_group("dense")
        group.attrs["weight_names"] = np.array([b"dense/kernel:0"])
        make_kernel(f, group)
    return path


def _external_storage(tmp_path, secret):
    return lambda f, group: group.create_dataset(
        "dense/kernel:0",
        shape=(secret.stat().st_size,),
        dtype="u1",
        external=[(str(secret), 0, secret.stat().st_size)],
    )


def _virtual(tmp_path, secret):
    import h5py

    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["data"] = np.frombuffer(secret.read_bytes(), "u1")

    def make(f, group):
        layout = h5py.VirtualLayout(shape=(secret.stat().st_size,), dtype="u1")
        layout[:] = h5py.VirtualSource(str(source), "data", shape=(secret.stat().st_size,))
        group.create_virtual_dataset("dense/kernel:0", layout)

    return make


def _external_link(tmp_path, secret):
    import h5py

    source = tmp_path / "source.h5"
    with h5py.File(source, "w") as f:
        f["kernel:0"] = np.frombuffer(secret.read_bytes(), "u1")
    return lambda f, group: group.__setitem__("dense", h5py.ExternalLink(str(source), "/"))


def _huge(tmp_path, secret):
    # Declared 4 GB, stored as almost nothing (unwritten chunks read as the fill value).
    return lambda f, group: group.create_dataset(
        "dense/kernel:0", shape=(2**16, 2**14), dtype="f4", chunks=(64, 64)
    )


@pytest.mark.parametrize("make", [_external_storage, _virtual, _external_link, _huge])
def test_weights_reader_refuses_h5_files_that_reach_outside(tmp_path, make):
    from transfer.errors import WeightsError
    from transfer.models.weights.formats import read_weights_file

    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"password=hunter2\n")
    path = _legacy_h5(tmp_path / "crafted.h5", make(tmp_path, secret))
    with pytest.raises(WeightsError, match="Not allowed: H5 file with"):
        read_weights_file(path)


def test_torch_checkpoints_need_a_torch_without_cve_2025_32434(tmp_path, monkeypatch):
    import sys
    import types
    import zipfile

    from transfer.errors import WeightsError
    from transfer.models.weights.formats import read_weights_file

    def load(*args, **kwargs):
        raise AssertionError("torch.load must not run on a vulnerable PyTorch")

    monkeypatch.setitem(
        sys.modules,
        "torch",
        types.SimpleNamespace(__version__="2.5.1+cpu", load=load, is_tensor=lambda value: False),
    )
    path = tmp_path / "resnet50.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("resnet50/data.pkl", b"\x80\x02}q\x00.")
    with pytest.raises(WeightsError, match=r"CVE-2025-32434.*torch>=2\.6"):
        read_weights_file(path)
