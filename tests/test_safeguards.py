"""Nothing lost, nothing leaked, nothing silently wrong: output modes, stdout kept for
results, bounded reports, claimed and protected folders, hostile inputs (issue 17)."""

import os
import stat

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from transfer.cli import cli
from transfer.io import save_model, write_npz, write_text


def run_cli(*args):
    return CliRunner(mix_stderr=False).invoke(cli, [str(a) for a in args])


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    saved = os.umask(0o022)
    yield os.umask
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask_like_model_save(tmp_path, umask, mask, mode):
    umask(mask)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    written = [write_text(tmp_path / "a.txt", "x"),
               write_npz(tmp_path / "a.npz", {"x": np.zeros(2)}),
               save_model(model, tmp_path / "model.keras")]
    model.save(tmp_path / "reference.keras")
    assert stat.S_IMODE(os.stat(tmp_path / "reference.keras").st_mode) == mode
    for path in written:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode, path
