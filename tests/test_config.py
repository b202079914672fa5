"""Config files: options from YAML or JSON as the Python API names them, a run's own
config.json, the flags given winning over the file, and one `Error:` line naming the
key for an unknown option or a value of the wrong type. (Runs repeated from a
config.json: tests/test_tracking.py.)"""

import json

import pytest

from tests.conftest import run_cli
from transfer.config import load_config
from transfer.errors import InvalidArgumentError
from transfer.train.options import FinetuneOptions, resolve_options


def write(path, text):
    path.write_text(text)
    return path


def test_a_yaml_file_gives_options_by_their_python_names(tmp_path):
    config = write(
        tmp_path / "flowers.yaml",
        "data: ./flowers\n"
        "arch: mobilenet_v3_small\n"
        "weights: none\n"
        "fine_tune_epochs: 8\n"
        "fine_tune_learning_rate: 1e-4  # YAML 1.1 reads this as text\n"
        "head_epochs: auto\n"
        "time_limit: 10m\n"
        "flip: false\n",
    )
    values = load_config(config).values
    assert values == {
        "data": "./flowers",
        "arch": "mobilenet_v3_small",
        "weights": "none",
        "fine_tune_epochs": 8,
        "fine_tune_learning_rate": 1e-4,
        "head_epochs": "auto",
        "time_limit": "10m",
        "flip": False,
    }
    options = resolve_options(**{k: v for k, v in values.items() if k != "data"})
    assert (options.fine_tune_learning_rate, options.time_limit, options.weights) == (
        1e-4,
        600.0,
        None,
    )


def test_a_flat_json_of_every_resolved_option_gives_the_same_options(tmp_path):
    # transfer tune writes its best trial so: FinetuneOptions' fields, resolved.
    resolved = resolve_options(
        weights=None, arch="efficientnet_b0", time_limit="90s", hidden_units=64, preset="fast"
    )
    config = write(tmp_path / "best-config.json", json.dumps(resolved.as_dict()))
    assert resolve_options(**load_config(config).values) == resolved


def test_a_runs_config_json_gives_its_options_and_its_data_from_where_it_ran(tmp_path, monkeypatch):
    started_in = tmp_path / "project"
    (started_in / "runs" / "a").mkdir(parents=True)
    recorded = {
        "data": "labels.csv",
        "out": "runs/a",
        "working_dir": str(started_in),
        "options": {**FinetuneOptions(weights=None).as_dict(), "images": "photos"},
        "dataset": {"fingerprint": "0123456789abcdef"},
        "status": "complete",
    }
    config = write(started_in / "runs" / "a" / "config.json", json.dumps(recorded))
    monkeypatch.chdir(tmp_path)  # elsewhere: its relative paths still name its files
    loaded = load_config(config)
    assert loaded.values["data"] == str(started_in / "labels.csv")
    assert loaded.values["images"] == str(started_in / "photos")
    assert loaded.values["batch_size"] == 32 and "status" not in loaded.values
    assert (loaded.run, loaded.fingerprint) == (config.parent, "0123456789abcdef")


def test_flags_given_win_over_the_file_and_a_preset_given_over_its_options(tmp_path):
    config = load_config(
        write(tmp_path / "c.yaml", "data: a\nfine_tune_epochs: 2\naugment: none\nseed: 3\n")
    )
    assert config.apply("b", {"seed": 4}) == (
        "b",
        {"fine_tune_epochs": 2, "augment": "none", "seed": 4},
    )
    # --preset best sets fine_tune_epochs and augment: the file's values of those give way
    assert config.apply(None, {"preset": "best"}) == ("a", {"seed": 3, "preset": "best"})


@pytest.mark.parametrize(
    "text, named",
    [
        (
            "fine_tune_epoch: 3\n",
            "unknown option 'fine_tune_epoch'. Did you mean fine_tune_epochs?",
        ),
        ("out: runs/a\n", "unknown option 'out'"),
        ("batch_size: 32.5\n", "batch_size must be a whole number. Received: 32.5"),
        ("batch_size: true\n", "batch_size must be a whole number. Received: True"),
        ("batch_size: null\n", "batch_size must be a whole number. Received: None"),
        ("dropout: high\n", "dropout must be a number. Received: 'high'"),
        ("flip: 1\n", "flip must be true or false. Received: 1"),
        ("optimizer: [adam]\n", "optimizer must be text. Received: ['adam']"),
        ("weights: 50\n", "weights must be text or null. Received: 50"),
        ("data: 3\n", "data must be text. Received: 3"),
    ],
)
def test_an_unknown_key_or_a_wrong_type_is_one_error_line_naming_the_key(tmp_path, text, named):
    config = write(tmp_path / "bad.yaml", text)
    with pytest.raises(InvalidArgumentError) as caught:
        load_config(config)
    assert f"bad.yaml: {named}" in str(caught.value)
    result = run_cli("finetune", "--data", tmp_path, "--config", config)
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: --config {config}: {named}"), line


@pytest.mark.parametrize(
    "name, text, error",
    [
        ("broken.yaml", "fine_tune_epochs: [3\n", "is not valid YAML (line 2)"),
        ("broken.json", '{"seed": 1,}', "is not valid JSON"),
        ("list.yaml", "- seed: 1\n", "holds a list, not a mapping of options"),
        ("missing.yaml", None, "does not exist"),
    ],
)
def test_a_file_that_is_not_a_mapping_of_options_is_refused(tmp_path, name, text, error):
    config = tmp_path / name
    if text is not None:
        config.write_text(text)
    result = run_cli("lr-find", "--config", config, "--out", tmp_path / "lr")
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: --config {config}") and error in line, line


def test_the_data_comes_from_the_flags_or_the_file(tmp_path):
    missing = run_cli("finetune", "--out", tmp_path / "run")
    assert missing.exit_code == 2
    assert "Missing option '--data'" in missing.stderr and "--config" in missing.stderr
    config = write(tmp_path / "no-data.yaml", "seed: 1\n")
    nothing = run_cli("finetune", "--config", config, "--out", tmp_path / "run")
    assert nothing.exit_code == 2
    assert nothing.stderr.splitlines() == [
        "Error: No data to train on: pass --data FOLDER, or --config FILE of a file that names it."
    ]
    # the file's data that does not exist is refused as --data would be, before any work
    elsewhere = write(tmp_path / "elsewhere.yaml", f"data: {tmp_path / 'nowhere'}\n")
    refused = run_cli("finetune", "--config", elsewhere, "--out", tmp_path / "run")
    assert refused.exit_code == 2
    assert refused.stderr.splitlines() == [f"Error: --data {tmp_path / 'nowhere'} does not exist."]
    assert not (tmp_path / "run").exists()
