"""The command line as a person meets it: grouped --help with defaults, click's hint
after a usage error, ranges on every number, hints that lead somewhere, exit codes and
streams that scripts can rely on, a quiet terminal."""

import os
import re
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from tests.conftest import make_image_folder
from transfer.cli import HELP_SECTIONS, OPTION_ALIASES, OTHER_OPTIONS, cli
from transfer.errors import InvalidArgumentError
from transfer.models.architectures import SMALLER_FAMILIES
from transfer.models.families import ARCH_NAMES
from transfer.startup_noise import is_noise

RECIPE_COMMANDS = ("finetune", "lr-find")


def run_cli(*args):
    """The CLI as `transfer`, with standard output and standard error kept apart."""
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="transfer")


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    folder = make_image_folder(tmp_path_factory.mktemp("photos"), {"cat": 1}, size=(32, 32))
    return next((folder / "cat").iterdir())


# ------------------------------------------------------------------ --help


def _help(command):
    result = run_cli(command, "-h")
    assert result.exit_code == 0, result.output
    return result.output


def _sections(text):
    """{heading: its lines} of a --help page."""
    sections, current = {}, None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = sections.setdefault(line[:-1], [])
        elif current is not None:
            current.append(line)
    return sections


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
def test_the_recipe_help_is_in_sections_and_lists_every_option_once(command):
    text = _help(command)
    sections = _sections(text)
    expected = [
        "Data",
        "Model and weights",
        "Phase 1 (the new head, backbone frozen)",
        "Phase 2 (fine-tuning)",
        "Augmentation (phase 2)",
        "Config file and tracking",
        "Run directory and output",
        "Devices and performance",
        "Help",
    ]
    found = [title for title in sections if title not in ("Examples", "Example", "Usage")]
    assert [t for t in found if t != "Learning-rate range test"] == expected, found
    assert OTHER_OPTIONS not in sections  # every option of the recipe has its section
    listed = {name for names in HELP_SECTIONS.values() for name in names}
    own = {p.name for p in cli.commands[command].params if isinstance(p, click.Option)}
    assert own - {"help"} <= listed
    for param in cli.commands[command].params:  # each option shows once
        flag = param.opts[0]
        assert len(re.findall(rf"^  (?:-\w, )?{re.escape(flag)}(?=[ ,]|$)", text, re.M)) == 1, flag


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
def test_every_option_of_the_recipe_shows_its_default(command):
    text = _help(command)
    blocks = re.split(r"\n(?=  -)", text.split("Data:", 1)[1])
    shown = {
        block.split()[0].rstrip(","): " ".join(block.split()) for block in blocks if block.strip()
    }
    for param in cli.commands[command].params:
        if not isinstance(param, click.Option) or param.is_flag or param.required:
            continue
        block = shown[param.opts[0]]
        assert "default:" in block.lower(), block


def test_finetune_help_names_its_sections_defaults_and_ranges():
    text = _help("finetune")
    assert re.search(
        r"--batch-size INTEGER RANGE\s+Global batch size\.\s+"
        r"\[default: 32; x>=1\]",
        text,
    )
    assert re.search(r"--head-lr FLOAT RANGE\s+\[default: 0\.001; x>0\.0\]", text)


@pytest.mark.parametrize(
    "args, command",
    [
        (["finetune", "--data", "x", "--bogus"], "finetune"),
        (["finetune"], "finetune"),  # missing --data
        (["finetune", "--data", "x", "--augment", "wild"], "finetune"),  # a bad choice
        (["lr-find", "--data", "x", "--out", "o", "--steps"], "lr-find"),  # no value
        (["predict", "run", "a.png", "--format", "xml"], "predict"),
        (["nope"], None),
    ],
)
def test_a_usage_error_says_where_help_is_then_the_error(args, command):
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    where = f"transfer {command}" if command else "transfer"
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0] == f"Try '{where} -h' for help."
    assert lines[1].startswith("Error: ")


def test_a_library_error_stays_one_line():
    result = run_cli("finetune", "--data", "/no/such/folder", "--weights", "none")
    assert result.exit_code == 2, result.output
    assert result.stderr == "Error: --data /no/such/folder does not exist.\n"


# ------------------------------------------------------------- ranges


@pytest.mark.parametrize(
    "args, flag",
    [
        (["predict", "run", "a.png", "--batch-size", "0"], "--batch-size"),
        (["predict", "run", "a.png", "--batch-size", "-1"], "--batch-size"),
        (["predict", "run", "a.png", "--top-k", "0"], "--top-k"),
        (["predict", "run", "a.png", "--top-k", "-3"], "--top-k"),
        (["predict", "run", "a.png", "--min-confidence", "1.5"], "--min-confidence"),
        (["predict", "run", "a.png", "--image-size", "16"], "--image-size"),
        (["evaluate", "run", "--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
        (["explain", "run", "a.png", "--out", "o", "--top-k", "0"], "--top-k"),
        (["embed", "--data", "d", "--out", "e.npz", "--batch-size", "-1"], "--batch-size"),
        (["embed", "--data", "d", "--out", "e.npz", "--val-split", "1"], "--val-split"),
        (["report", "run", "--batch-size", "0"], "--batch-size"),
        (["probe", "e.npz", "--out", "o", "--folds", "1"], "--folds"),
        (["export", "run", "--out", "m.keras", "--max-drop", "nan"], "--max-drop"),
        (["export", "run", "--out", "m.keras", "--max-drop", "101"], "--max-drop"),
        (["info", "--image-size", "0"], "--image-size"),
        (["lr-find", "--data", "d", "--out", "o", "--steps", "0"], "--steps"),
        (["lr-find", "--data", "d", "--out", "o", "--start-lr", "0"], "--start-lr"),
        (["finetune", "--data", "d", "--batch-size", "0"], "--batch-size"),
        (["finetune", "--data", "d", "--image-size", "16"], "--image-size"),
        (["finetune", "--data", "d", "--test-split", "-0.1"], "--test-split"),
        (["finetune", "--data", "d", "--fine-tune-epochs", "-1"], "--fine-tune-epochs"),
        (["finetune", "--data", "d", "--head-epochs", "-2"], "--head-epochs"),
        (["finetune", "--data", "d", "--fine-tune-lr", "inf"], "--fine-tune-lr"),
        (["finetune", "--data", "d", "--head-lr", "nan"], "--head-lr"),
        (["finetune", "--data", "d", "--layer-decay", "0"], "--layer-decay"),
        (["finetune", "--data", "d", "--label-smoothing", "1"], "--label-smoothing"),
        (["finetune", "--data", "d", "--dropout", "1"], "--dropout"),
        (["finetune", "--data", "d", "--hidden-units", "0"], "--hidden-units"),
        (["finetune", "--data", "d", "--early-stopping", "-1"], "--early-stopping"),
        (["finetune", "--data", "d", "--seed", "-1"], "--seed"),
        (["finetune", "--data", "d", "--backup-interval", "-5"], "--backup-interval"),
        (["finetune", "--data", "d", "--max-pixels", "0"], "--max-pixels"),
    ],
)
def test_numbers_out_of_range_are_one_error_with_exit_code_2(args, flag):
    result = run_cli(*args)
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: Invalid value for '{flag}': "), result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "function, kwargs",
    [
        ("predict", dict(paths=["a.png"], batch_size=0)),
        ("predict", dict(paths=["a.png"], batch_size=-1)),
        ("predict", dict(paths=["a.png"], top_k=0)),
        ("predict", dict(paths=["a.png"], top_k=-3)),
        ("explain", dict(paths=["a.png"], out="o", top_k=0)),
        ("explain", dict(paths=["a.png"], out="o", batch_size=0)),
        ("evaluate", dict(data="d", out="o", batch_size=0)),
        ("embed", dict(data="d", batch_size=0)),
    ],
)
def test_python_callers_get_the_same_ranges(function, kwargs):
    import transfer.commands as commands

    module = __import__(f"{commands.__name__}.{function}", fromlist=[function])
    first = {"embed": []}.get(function, ["/no/such/run"])
    with pytest.raises(InvalidArgumentError, match=r"must be a whole number of at least 1"):
        getattr(module, function)(*first, **kwargs)


# ------------------------------------------------------------------ hints (item 18)


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_an_image_given_first_is_answered_with_the_order_of_the_arguments(command, photo):
    extra = ["--out", "explained"] if command == "explain" else []
    result = run_cli(command, photo, *extra)
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert f"{photo} looks like an image" in last, last
    assert "the first argument is a run directory or a .keras model file" in last
    assert f"`transfer {command} runs/flowers photo.jpg`" in last
    assert "PATHS" not in last


def test_a_depth_below_50_points_to_smaller_families():
    result = run_cli("info", "--depth", "34")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "Error: Unsupported ResNet depth: 34. Expected one of 50, 101, 152. For a smaller "
        "model, pass another family: --arch mobilenet_v3_small or --arch efficientnet_b0, "
        "for example."
    ]
    for name in re.findall(r"arch=(\w+)", SMALLER_FAMILIES):
        assert name in ARCH_NAMES


@pytest.mark.parametrize(
    "command, given, suggested",
    [
        ("finetune", "--epochs", ["--fine-tune-epochs", "--head-epochs"]),
        ("finetune", "--learning-rate", ["--fine-tune-lr", "--head-lr"]),
        ("finetune", "--lr", ["--fine-tune-lr", "--head-lr"]),
        ("lr-find", "--lr", ["--fine-tune-lr", "--head-lr", "--start-lr"]),
        ("finetune", "--imgsz", ["--image-size"]),
        ("finetune", "--img-size", ["--image-size"]),
        ("finetune", "--model", ["--arch", "--depth", "--weights"]),
        ("predict", "--topk", ["--top-k"]),
    ],
)
def test_names_from_other_tools_suggest_ours(command, given, suggested):
    args = {"predict": ["run", "a.png"], "lr-find": ["--data", "d", "--out", "o"]}.get(
        command, ["--data", "d"]
    )
    result = run_cli(command, *args, given, "3")
    assert result.exit_code == 2, result.output
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"Error: No such option '{given}'"), last
    named = re.findall(r"'(--[\w-]+)'", last.split("mean", 1)[-1])
    assert sorted(named) == sorted(suggested), last


def test_aliases_name_options_that_exist():
    flags = {
        opt
        for command in cli.commands.values()
        for param in command.params
        for opt in (*param.opts, *param.secondary_opts)
    }
    for alias, ours in OPTION_ALIASES.items():
        assert set(ours) <= flags, (alias, ours)


# --------------------------------------------------- exit codes and streams (item 12)


@pytest.mark.heavy
@pytest.mark.parametrize("output_format", ["table", "csv", "json"])
def test_predict_exits_1_when_an_input_could_not_be_predicted(
    tmp_path, tiny_run, photo, output_format
):
    missing = tmp_path / "missing.png"
    result = run_cli("predict", tiny_run, photo, missing, "--format", output_format)
    assert result.exit_code == 1, result.output
    assert str(missing) in result.stdout and "file not found" in result.stdout
    assert str(photo) in result.stdout  # the others are still predicted
    assert result.stderr.strip().splitlines()[-1] == "1 of 2 files could not be read."
    assert run_cli("predict", tiny_run, photo, "--format", output_format).exit_code == 0


def _predict(tiny_run, photo, **streams):
    return subprocess.run(
        [sys.executable, "-m", "transfer", "predict", str(tiny_run), str(photo)],
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        **streams,
    )


@pytest.mark.heavy
def test_predict_to_a_full_disk_is_one_error_line_and_exit_code_1(tiny_run, photo):
    with open("/dev/full", "w") as full:
        done = _predict(tiny_run, photo, stdout=full)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: Cannot write the results to standard output: No space left on device."
    ]


@pytest.mark.heavy
def test_predict_with_stdout_closed_never_writes_results_to_stderr(tiny_run, photo):
    done = _predict(tiny_run, photo, preexec_fn=lambda: os.close(1))
    assert done.returncode == 1, done.stderr
    assert str(photo) not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: Cannot write the results to standard output: Bad file descriptor."
    ]


# ----------------------------------------------------------------- noise (item 17)


ONEDNN_LINES = [
    "E0000 00:00:1796461046.908535    3577 util.cc:131] oneDNN supports DT_HALF only on "
    "platforms with AVX-512. Falling back to the default Eigen-based implementation if "
    "present.",
    "E0000 00:00:1796461046.908535    3577 util.cc:131] oneDNN supports DT_UINT8 only on "
    "platforms with AVX-512. Falling back to the default Eigen-based implementation if "
    "present.",
]
KEPT_ERRORS = [
    "E0000 00:00:1796461046.908535    3577 util.cc:131] Out of memory while trying to "
    "allocate 123 bytes.",
]


def test_onednn_data_type_notes_are_noise_and_other_errors_are_not():
    for line in ONEDNN_LINES:
        assert is_noise(line.encode() + b"\n"), line
    for line in KEPT_ERRORS:
        assert not is_noise(line.encode() + b"\n"), line


def test_export_names_its_destination_once(tmp_path, tiny_run):
    out = tmp_path / "m.keras"
    result = run_cli("export", tiny_run, "--out", out, "--no-compare")
    assert result.exit_code == 0, result.output
    assert result.output.count(str(out)) == 1, result.output
    assert result.stdout == ""
