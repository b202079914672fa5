"""Bad arguments: a ValueError naming the value and the accepted ones, in Python and
in the CLI (one `Error: ...` line, exit code 2)."""

import pytest
from click.testing import CliRunner

import transfer
from transfer.cli import cli


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(depth=34), r"Unsupported ResNet depth: 34\. Expected one of 50, 101, 152"),
        (dict(version="v3"), r"Unknown ResNet version: 'v3'\. Expected one of v1, v1\.5, v2"),
        (
            dict(include_top=False, input_shape=(31, 64, 3)),
            r"at least 32x32\. Received: input_shape=\(31, 64, 3\)",
        ),
        (
            dict(weights="imagenet", input_shape=(200, 200, 3)),
            r"must be \(224, 224, 3\)\. Received: input_shape=\(200, 200, 3\)",
        ),
        (
            dict(weights="/no/such/weights.h5"),
            r"Unknown weights: '/no/such/weights.h5'\. Expected None .*'imagenet'",
        ),
        (dict(include_top=False, pooling="sum"), r"Unknown pooling: 'sum'"),
        (dict(weights="imagenet", classes=10), r"classes must be 1000\. Received: classes=10"),
        (
            dict(weights="imagenet", include_top=False, input_shape=(64, 64, 4)),
            r"3 input channels.*input_shape=\(64, 64, 4\)",
        ),
    ],
)
def test_python_errors_name_the_bad_value(kwargs, message):
    kwargs.setdefault("weights", None)
    with pytest.raises(ValueError, match=message) as info:
        transfer.ResNet(**kwargs)
    assert isinstance(info.value, transfer.InvalidArgumentError)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["info", "--depth", "34"],
            "Error: Unsupported ResNet depth: 34. Expected one of 50, 101, 152.",
        ),
        (
            ["info", "--version", "v3"],
            "Error: Unknown ResNet version: 'v3'. Expected one of v1, v1.5, v2.",
        ),
        (
            ["info", "--image-size", "16"],
            "Error: Invalid value for '--image-size': 16 is not in the range x>=32.",
        ),
        (["info", "--depth"], "Error: Option '--depth' requires an argument."),
        (["nope"], "Error: No such command 'nope'."),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(args, message):
    # One Error: line; a usage error (click's) has click's "Try ... -h" line before it.
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines[-1].startswith(message)
    assert len(lines) == 1 or (len(lines) == 2 and lines[0].startswith("Try '")), result.output
    assert "Traceback" not in result.output


def test_cli_debug_shows_the_exception():
    result = CliRunner().invoke(cli, ["--debug", "info", "--depth", "34"])
    assert result.exit_code != 0
    assert isinstance(result.exception, transfer.InvalidArgumentError)
