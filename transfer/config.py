"""Config files: a run's options read from YAML or JSON, so that a run can be written
down, shared and repeated.

A config file is either a flat mapping of options, named as the Python API names them
(the fields of `FinetuneOptions`, and `data`), or a run's own config.json, whose
options and data it repeats. Options given explicitly (keywords, command-line flags)
win over the file's.

    # flowers.yaml
    data: ./flowers
    arch: efficientnet_b0
    fine_tune_epochs: 8
    augment: strong
"""

import dataclasses
import difflib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml

from transfer.errors import InvalidArgumentError, first_line
from transfer.runs import (
    CONFIG_FILE,
    RECORDED_PATH_OPTIONS,
    recorded_base,
    recorded_path,
)
from transfer.train.options import RECIPE_PRESETS, FinetuneOptions

logger = logging.getLogger("transfer")

DATA = "data"  # the one key of a config file besides the options: the images to train on
OPTION_FIELDS = {field.name: field for field in dataclasses.fields(FinetuneOptions)}
# The types a value may have in a file, by the field's type; a whole number is a number.
VALUE_TYPES = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
# Values a field takes besides those of its type: the ones `FinetuneOptions.validate`
# records for a backbone that is not a ResNet (no depth or version) and for random
# initialisation (weights None), and durations written as text ("10m").
OTHER_VALUES = {
    "depth": (type(None),),
    "version": (type(None),),
    "weights": (type(None),),
    "time_limit": (str,),
}
TYPE_NAMES = {
    bool: "true or false",
    int: "a whole number",
    float: "a number",
    str: "text",
    type(None): "null",
}
# Options that name files or folders: in a run's config.json, relative to where the
# run was started (its working_dir), as its data is.
PATH_OPTIONS = (*RECORDED_PATH_OPTIONS, "weights_dir", "cache_dir")
WEIGHTS_WORDS = ("imagenet", "none")  # weights that are not a file


@dataclass
class Config:
    """The options of a config file, and where they came from."""

    path: Path
    values: dict  # option name -> value; `data` among them where the file names it
    run: Path = None  # the run directory, when the file is a run's config.json
    fingerprint: str = None  # that run's data fingerprint

    def apply(self, data=None, overrides=None):
        """(data, options): the file's values under `overrides` (and `data`) given
        explicitly, which win. A preset given explicitly wins over the file's values
        of the options it sets, as a flag would."""
        overrides = dict(overrides or {})
        values = {k: v for k, v in self.values.items() if k != DATA}
        if overrides.get("preset") is not None:
            preset = RECIPE_PRESETS.get(overrides["preset"], {})
            values = {k: v for k, v in values.items() if k not in preset}
        return (self.values.get(DATA) if data is None else data), {**values, **overrides}

    def check_data(self, dataset, overrides=None):
        """Say whether `dataset` is the data of the run whose config.json this is (the
        same fingerprint: its images, splits and classes), and so whether this run,
        with the options given besides (`overrides`), repeats it."""
        if self.fingerprint is None:
            return
        if dataset.fingerprint != self.fingerprint:
            logger.warning(
                "The data has changed since the run in %s: its images, splits or classes "
                "differ from those its %s records (fingerprint %s, now %s), so this run "
                "does not repeat it.",
                self.run,
                CONFIG_FILE,
                self.fingerprint,
                dataset.fingerprint,
            )
            return
        changed = sorted(k for k, v in (overrides or {}).items() if self.values.get(k) != v)
        if changed:
            logger.info(
                "The data of the run in %s (fingerprint %s), with other options: %s.",
                self.run,
                self.fingerprint,
                ", ".join(changed),
            )
        else:
            logger.info(
                "Repeating the run in %s: its options and seed, on the same data (fingerprint %s).",
                self.run,
                self.fingerprint,
            )


def load_config(path, accepted=None):
    """The options in the config file `path` (YAML or JSON): a flat mapping of options
    named as the Python API names them, or a run's config.json (its options and data,
    paths as this process opens them). `accepted`: the keys allowed (default: the
    fields of `FinetuneOptions` and `data`). An unknown key or a value of the wrong
    type is an InvalidArgumentError naming the key. Returns a `Config`."""
    path = Path(path)
    table = _read(path)
    if isinstance(table.get("options"), dict):  # a run's config.json
        return _run_config(path, table)
    return Config(path, _checked(path, table, accepted))


def _read(path):
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgumentError(f"config={path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgumentError(f"config={path} cannot be read: {first_line(exc)}") from None
    try:
        # JSON is YAML, but YAML reads 1e-4 as text; JSON reads it as the number it is.
        table = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise InvalidArgumentError(
            f"config={path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}"
            f"{line}: {first_line(exc)}"
        ) from None
    if table is None:
        table = {}  # an empty file: no options
    if not isinstance(table, dict):
        raise InvalidArgumentError(
            f"config={path} holds a {type(table).__name__}, not a mapping of options "
            "(option: value, one a line)."
        )
    return table


def _run_config(path, table):
    """A run's config.json as a config: its options and data, paths relative to where
    the run was started given as this process opens them."""
    run = path.parent
    base = recorded_base(table, run)
    values = dict(table["options"])
    for name in PATH_OPTIONS:
        if values.get(name) is not None:
            values[name] = recorded_path(values[name], base)
    weights = values.get("weights")
    if isinstance(weights, str) and weights.lower() not in WEIGHTS_WORDS:
        values["weights"] = recorded_path(weights, base)
    if table.get(DATA) is not None:
        values[DATA] = recorded_path(table[DATA], base)
    # Options this version does not have (from a newer one) are named, not guessed at.
    values = _checked(path, values, None)
    return Config(path, values, run, (table.get("dataset") or {}).get("fingerprint"))


def _checked(path, table, accepted):
    """`table`'s options, each name known and each value of its option's type."""
    accepted = set(accepted) if accepted is not None else {*OPTION_FIELDS, DATA}
    values = {}
    for name, value in table.items():
        if name not in accepted:
            near = difflib.get_close_matches(str(name), sorted(accepted), n=1)
            hint = f" Did you mean {near[0]}?" if near else ""
            raise InvalidArgumentError(
                f"config={path}: unknown option {name!r}.{hint} A config file takes the "
                "options as the Python API names them (transfer.FinetuneOptions) and data."
            )
        values[name] = _value(path, name, value)
    return values


def _value(path, name, value):
    """`value` as option `name` takes it, or an InvalidArgumentError naming the key."""
    if name == DATA:
        types = (str,)
    elif name in OPTION_FIELDS:
        field = OPTION_FIELDS[name]
        types = VALUE_TYPES.get(field.type, (object,)) + OTHER_VALUES.get(name, ())
        if field.default is None:
            types += (type(None),)
        elif not isinstance(field.default, field.type):  # head_epochs: "auto"
            types += (type(field.default),)
    else:  # a key the caller accepts that is not an option of the recipe
        return value
    # YAML 1.1 reads 1e-4 (no dot) as text: a number written so is taken as one.
    if float in types and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) and bool not in types:  # True is an int to Python, not here
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        shown = [t for t in types if not (t is int and float in types)]  # a number is enough
        expected = " or ".join(dict.fromkeys(TYPE_NAMES.get(t, t.__name__) for t in shown))
        raise InvalidArgumentError(f"config={path}: {name} must be {expected}. Received: {value!r}")
    return value


def apply_config(config, data, overrides):
    """(the `Config` or None, data, options) of a command given `config` (a file's path,
    or None), `data` and the options given explicitly (`overrides`), which win over the
    file's. The data must come from one of them."""
    source = load_config(config) if config is not None else None
    if source is not None:
        data, overrides = source.apply(data, overrides)
    if data is None:
        raise InvalidArgumentError(
            "No data to train on: pass data=FOLDER, or config=FILE of a file that names it."
        )
    return source, data, overrides
