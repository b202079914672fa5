"""`transfer info`: groups, shapes and parameter counts that agree with keras.applications."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import VARIANT_IDS, VARIANTS, build_fresh, reference_builder
from transfer.cli import cli


@pytest.mark.heavy
@pytest.mark.parametrize("builder,ref_name,depth,version", VARIANTS, ids=VARIANT_IDS)
def test_info_totals_agree_with_keras_applications(builder, ref_name, depth, version):
    result = CliRunner().invoke(
        cli, ["info", "--depth", str(depth), "--version", version, "--json"]
    )
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    ref = build_fresh(reference_builder(ref_name), weights=None)
    assert info["name"] == ref_name
    assert info["layers"] == len(ref.layers)
    assert info["params"] == ref.count_params()
    assert sum(g["params"] for g in info["groups"]) == ref.count_params()
    expected_groups = ["stem", "conv2", "conv3", "conv4", "conv5"]
    expected_groups += ["post", "head"] if version == "v2" else ["head"]
    assert [g["name"] for g in info["groups"]] == expected_groups
    assert sum(g["layers"] for g in info["groups"]) == len(ref.layers)
    assert info["groups"][-2]["output_shape"] == [7, 7, 2048]
    files = {w["file"] for w in info["weights"]}
    stem = ref_name.lower()
    assert files == {
        f"{stem}_weights_tf_dim_ordering_tf_kernels.h5",
        f"{stem}_weights_tf_dim_ordering_tf_kernels_notop.h5",
    }


def test_info_table_is_readable():
    result = CliRunner().invoke(cli, ["info", "--depth", "50", "--version", "v2"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("ResNet50V2 (depth 50, version v2, input 224x224x3, preprocessing 'tf')")
    assert "conv4       68  7x7x1024" in out
    assert "post         2  7x7x2048" in out
    assert "total      192" in out and "25,613,800" in out
    assert "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5" in out


def test_console_script_and_python_m():
    console_script = str(Path(sys.executable).parent / "transfer")
    for command in ([console_script], [sys.executable, "-m", "transfer"]):
        done = subprocess.run([*command, "--version"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "version" in done.stdout
