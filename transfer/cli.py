"""The `transfer` command line: a thin click layer over `transfer.commands`.

Defaults and choices come from the library. Library errors become one line,
`Error: ...`, with exit code 2 for bad usage or input and 1 for failures at run
time; `--debug` (or TRANSFER_DEBUG=1) shows the traceback instead. Library
messages name arguments as `name=value`; here, at the boundary, they become the
command's flags (`--name value`).
"""

import contextlib
import csv
import difflib
import json
import logging
import math
import os
import re
import sys

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is not for users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402

from transfer.commands import audit as audit_command  # noqa: E402
from transfer.commands import embed as embed_command  # noqa: E402
from transfer.commands import evaluate as evaluate_command  # noqa: E402
from transfer.commands import explain as explain_command  # noqa: E402
from transfer.commands import export as export_command  # noqa: E402
from transfer.commands import finetune as finetune_command  # noqa: E402
from transfer.commands import info as info_command  # noqa: E402
from transfer.commands import lr_find as lr_find_command  # noqa: E402
from transfer.commands import predict as predict_command  # noqa: E402
from transfer.commands import probe as probe_command  # noqa: E402
from transfer.commands import report as report_command  # noqa: E402
from transfer.commands import runs as runs_command  # noqa: E402
from transfer.commands import tune as tune_command  # noqa: E402
from transfer.commands import weights as weights_command  # noqa: E402
from transfer.data.sources import IMAGE_EXTENSIONS  # noqa: E402
from transfer.errors import RunFailedError, RunInterruptedError, TransferError  # noqa: E402
from transfer.export.compare import describe as describe_agreement  # noqa: E402
from transfer.io import escaped_row  # noqa: E402
from transfer.models.architectures import BLOCKS_PER_STAGE  # noqa: E402
from transfer.models.backbones import MIN_INPUT_SIZE  # noqa: E402
from transfer.models.families import ARCH_NAMES  # noqa: E402
from transfer.models.heads import POOLINGS  # noqa: E402
from transfer.models.weights.download import WEIGHTS_DIR_ENV  # noqa: E402
from transfer.report.metrics import phase_label, scores_line, split_title  # noqa: E402
from transfer.runtime import INFERENCE_BATCH_SIZE  # noqa: E402
from transfer.startup_noise import filter_stderr, open_standard_streams  # noqa: E402
from transfer.track import TRACKERS, TRACKING_URI_ENV  # noqa: E402
from transfer.train import options as finetune_options  # noqa: E402
from transfer.train.distribute import STRATEGIES  # noqa: E402
from transfer.train.feature_cache import CACHE_DIR_ENV  # noqa: E402
from transfer.train.search import TunePaths, shown_value  # noqa: E402

DEBUG_ENV = "TRANSFER_DEBUG"
FINETUNE = finetune_options.FinetuneOptions()  # the library's defaults
BACKBONE_SIZE = "the backbone's ImageNet size"  # --image-size's default (FinetuneOptions' None)


# ---------------------------------------------------------------- the boundary


def flag_names(message, params):
    """`message` with the library's `name=value` turned into command-line flags.

    `out=runs/a` becomes `--out runs/a`, `overwrite=True` `--overwrite`, and
    `cache_features=False` `--no-cache`. `params` are the running command's first,
    then other commands' (a name the running command lacks still reads as a flag of
    the tool); names no command has stay as they are.
    """
    options = {}
    for param in params:
        if isinstance(param, click.Option):
            options.setdefault(param.name, param)
    if not options:
        return message
    pattern = re.compile(
        r"\b(" + "|".join(map(re.escape, options)) + r")="
        r"('[^']*'|\"[^\"]*\"|[\w./~:-]*[\w/~-])"
    )

    def replace(match):
        option, value = options[match.group(1)], match.group(2)
        if option.is_bool_flag and value in ("True", "False"):
            wanted = value == "True"
            # A flag sets True unless declared with flag_value=False (--no-cache).
            sets = option.flag_value if isinstance(option.flag_value, bool) else True
            if wanted == sets:
                return option.opts[0]
            if option.secondary_opts:
                return option.secondary_opts[0]
            return f"no {option.opts[0]}"
        if value == "None":
            value = "none"
        return f"{option.opts[0]} {value}"

    return pattern.sub(replace, message)


def _params_in_scope(ctx):
    """The running command's parameters, then those of the tool's other commands."""
    params = list(ctx.command.params)
    root = ctx.find_root().command
    for command in getattr(root, "commands", {}).values():
        if command is not ctx.command:
            params += command.params
    return params


RESULTS_STREAM = "transfer.results"  # ctx.meta key: the real standard output


class ResultsStream:
    """Standard output for a command's results: a write that fails (a full disk, a closed
    stdout) is a RunFailedError, one `Error:` line, never a traceback; what is still
    buffered then goes to /dev/null, so that Python's last flush does not fail again."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        return self._guarded(lambda: self._stream.write(text))

    def flush(self):
        return self._guarded(lambda: self._stream.flush())

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def _guarded(self, call):
        if self._stream is None:  # Python found no file descriptor 1
            raise RunFailedError("Cannot write the results: standard output is closed.")
        try:
            return call()
        except (OSError, ValueError) as exc:  # ValueError: a closed stream
            with contextlib.suppress(OSError, ValueError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self._stream.fileno())
                os.close(null)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise RunFailedError(f"Cannot write the results to standard output: {reason}.") from exc


def results_stream():
    """Where a command's results go: standard output as it was before the command ran."""
    return click.get_current_context().meta.get(RESULTS_STREAM, sys.stdout)


def echo(message=""):
    """Print a result line (never progress or messages: those go to stderr)."""
    click.echo(message, file=results_stream())


class TransferCommand(click.Command):
    """A command whose library errors and warnings name its own flags, and whose
    standard output holds its results alone (`predict --format csv > out.csv`)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if isinstance(exc, click.NoSuchOption):
                exc.possibilities = suggested_options(exc.option_name, self) or exc.possibilities
            exc.ctx = exc.ctx or ctx  # the parser's errors ("requires an argument") lack it
            raise

    def invoke(self, ctx):
        params = _params_in_scope(ctx)
        _setup_logging(params)
        ctx.meta[RESULTS_STREAM] = ResultsStream(sys.stdout)
        try:
            # Keras and TensorFlow print progress to sys.stdout: send it to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    return super().invoke(ctx)
                except TransferError:
                    raise
                except KeyboardInterrupt as exc:  # else click reports "aborted", exit 1
                    raise RunInterruptedError("Interrupted.") from exc
                finally:  # a full disk or a closed stdout is an error here, not at exit
                    ctx.meta[RESULTS_STREAM].flush()
        except TransferError as exc:
            if ctx.find_root().params.get("debug") or os.environ.get(DEBUG_ENV) == "1":
                raise
            error = click.ClickException(flag_names(str(exc), params))
            error.exit_code = exc.exit_code
            raise error from exc


class TransferGroup(click.Group):
    """A click group that reports every error as a single `Error: ...` line."""

    command_class = TransferCommand

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in args or os.environ.get(DEBUG_ENV) == "1"
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.Exit as exc:  # raised by --help/--version in some paths
            code = exc.exit_code
        except click.Abort:
            click.echo("Error: aborted.", err=True)
            code = 1
        except click.ClickException as exc:
            if debug:
                raise
            if isinstance(exc, click.UsageError) and help_hint(exc.ctx):
                click.echo(help_hint(exc.ctx), err=True)
            click.echo(f"Error: {exc.format_message()}", err=True)
            code = exc.exit_code
        except TransferError as exc:  # raised outside a command
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
            code = exc.exit_code
        except KeyboardInterrupt:
            click.echo("Error: interrupted.", err=True)
            code = 130
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


class Choice(click.Choice):
    """click.Choice that reports a bad value in the library's words."""

    def __init__(self, choices, name=None):
        super().__init__(choices)
        self.name_in_errors = name

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        raise click.UsageError(
            f"Unknown {self.name_in_errors or param.name}: {value!r}. Expected one of "
            f"{', '.join(self.choices)}.",
            ctx,
        )


class IntOrAuto(click.ParamType):
    """A whole number of 0 or more, or `auto` for the library to plan it."""

    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if str(value).lower() == finetune_options.AUTO:
            return finetune_options.AUTO
        try:
            number = int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'auto'.", param, ctx)
        if number < 0:
            self.fail(f"{number} is not 0 or more, nor 'auto'.", param, ctx)
        return number


class ImagePaths(click.Argument):
    """The image files and folders after RUN_OR_MODEL; when there are none, the error
    says which argument comes first (`transfer predict photo.jpg` names no model)."""

    def process_value(self, ctx, value):
        try:
            return super().process_value(ctx, value)
        except click.MissingParameter:
            first = ctx.params.get("run_or_model")
            looks = (
                f"{first} looks like an image, but "
                if first and os.path.splitext(first)[1].lower() in IMAGE_EXTENSIONS
                else ""
            )
            raise click.UsageError(
                f"Missing the images: {looks}the first argument is a run directory or a .keras "
                "model file, and the image files or folders come after it, as in "
                f"`{ctx.command_path} runs/flowers photo.jpg`.",
                ctx,
            ) from None


class FloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan and infinity."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


# The ranges of numeric options, from the library's limits: a value outside is one
# `Error:` line and exit code 2 before anything runs.
AT_LEAST_ONE = click.IntRange(min=1)  # batch sizes, top-k, steps, hidden units, pixels
COUNT = click.IntRange(min=0)  # epochs, patience
SEEDS = click.IntRange(0, 2**32 - 1)  # NumPy's seeds
IMAGE_SIZE = click.IntRange(min=MIN_INPUT_SIZE)  # the smallest input of every backbone
FRACTION = FloatRange(0.0, 1.0, max_open=True)  # held-out splits, dropout, label smoothing
PROBABILITY = FloatRange(0.0, 1.0)
LEARNING_RATE = FloatRange(0.0, min_open=True)
LAYER_DECAY = FloatRange(0.0, 1.0, min_open=True)
SECONDS = FloatRange(0.0)
POINTS = FloatRange(-100.0, 100.0)  # a difference of accuracy points
CV_FOLDS = click.IntRange(min=2)  # cross-validation needs two folds


def help_hint(ctx):
    """click's "Try 'transfer finetune -h' for help." for a usage error in `ctx`."""
    if ctx is None or ctx.command.get_help_option(ctx) is None:
        return None
    return f"Try '{ctx.command_path} {ctx.help_option_names[0]}' for help."


# What other tools (Keras examples, timm, Ultralytics, fastai) call our flags: an
# unknown option among these is answered with ours, besides click's near spellings.
OPTION_ALIASES = {
    "--epochs": ("--fine-tune-epochs", "--head-epochs"),
    "--num-epochs": ("--fine-tune-epochs", "--head-epochs"),
    "--max-epochs": ("--fine-tune-epochs", "--head-epochs"),
    "--lr": ("--fine-tune-lr", "--head-lr", "--start-lr"),
    "--lr0": ("--fine-tune-lr", "--head-lr"),
    "--learning-rate": ("--fine-tune-lr", "--head-lr", "--start-lr"),
    "--model": ("--arch", "--depth", "--weights"),
    "--backbone": ("--arch", "--depth"),
    "--network": ("--arch", "--depth"),
    "--pretrained": ("--weights",),
    "--img-size": ("--image-size",),
    "--imgsz": ("--image-size",),
    "--input-size": ("--image-size",),
    "--size": ("--image-size",),
    "--bs": ("--batch-size",),
    "--batch": ("--batch-size",),
    "--dataset": ("--data",),
    "--data-dir": ("--data",),
    "--train-dir": ("--data",),
    "--output": ("--out",),
    "--output-dir": ("--out",),
    "--project": ("--out",),
    "--patience": ("--early-stopping",),
    "--unfreeze": ("--fine-tune-from",),
    "--freeze": ("--fine-tune-from",),
    "--aug": ("--augment",),
    "--augmentation": ("--augment",),
    "--amp": ("--mixed-precision",),
    "--fp16": ("--mixed-precision",),
    "--half": ("--mixed-precision",),
    "--xla": ("--jit-compile",),
    "--topk": ("--top-k",),
    "--conf": ("--min-confidence",),
    "--threshold": ("--min-confidence",),
    "--quantization": ("--quantize",),
    "--int8": ("--quantize",),
}


def suggested_options(name, command):
    """The command's options that an unknown `name` may have meant: those other tools'
    name (OPTION_ALIASES), else click's near spellings."""
    own = [
        opt
        for param in command.params
        if isinstance(param, click.Option)
        for opt in (*param.opts, *param.secondary_opts)
        if opt.startswith("--")
    ]
    aliased = [opt for opt in OPTION_ALIASES.get(name, ()) if opt in own]
    return aliased or difflib.get_close_matches(name, own)


def _setup_logging(params):
    """The library's log lines on stderr: warnings prefixed, arguments as flags."""

    class Formatter(logging.Formatter):
        def format(self, record):
            prefix = "Warning: " if record.levelno >= logging.WARNING else ""
            return prefix + flag_names(record.getMessage(), params)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter())
    logger = logging.getLogger("transfer")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


# ---------------------------------------------------------------- shared options


def _options(*decorators):
    """Apply option decorators in the order they are listed (as they read in --help)."""

    def apply(command):
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


architecture_options = _options(
    click.option(
        "--arch",
        type=Choice(ARCH_NAMES, name="architecture"),
        help="The backbone, any family (e.g. mobilenet_v3_small, efficientnet_b0, "
        "convnext_tiny); overrides --depth and --version. Default: the ResNet "
        "of --depth and --version.",
    ),
    click.option(
        "--depth",
        default=str(FINETUNE.depth),
        show_default=True,
        help=f"ResNet depth: {', '.join(map(str, BLOCKS_PER_STAGE))}.",
    ),
    click.option(
        "--version",
        "version",
        default=FINETUNE.version,
        show_default=True,
        help="ResNet version: v1 (keras.applications.ResNet50), v1.5 (torchvision's "
        "resnet50: stride on the 3x3 convolution) or v2 (ResNet50V2).",
    ),
)
weights_dir_option = click.option(
    "--weights-dir",
    type=click.Path(file_okay=False),
    envvar=WEIGHTS_DIR_ENV,
    help="Folder of pre-downloaded official weight files, looked in before Keras' "
    f"cache and the network [env: {WEIGHTS_DIR_ENV}].",
)
batch_size_option = click.option(
    "--batch-size", type=AT_LEAST_ONE, default=INFERENCE_BATCH_SIZE, show_default=True
)
any_size_option = click.option(
    "--image-size", type=IMAGE_SIZE, help="Only for models that take any size."
)
tfds_data_dir_option = click.option(
    "--tfds-data-dir",
    type=click.Path(),
    help="TFDS data folder for tfds:NAME [default: TFDS' "
    "own, $TFDS_DATA_DIR or ~/tensorflow_datasets].",
)
strict_option = click.option(
    "--strict",
    is_flag=True,
    help="Stop on unreadable or non-image files instead of reporting and skipping them.",
)
# Labels from a CSV file (--data labels.csv): the library's TABLE_OPTIONS.
table_options = _options(
    click.option(
        "--images",
        type=click.Path(file_okay=False),
        help="With a CSV: the folder its paths are relative to [default: the CSV's].",
    ),
    click.option(
        "--path-column",
        help="With a CSV: the column of image paths [default: path, "
        "file, filename, filepath, image or image_path].",
    ),
    click.option(
        "--label-column",
        help="With a CSV: the column of labels [default: label, "
        "labels, class, category, tags or target].",
    ),
    click.option(
        "--split-column",
        help="With a CSV: the column of splits, train, val or test, "
        "used as given [default: split or subset, if present].",
    ),
    click.option(
        "--label-sep",
        help="With a CSV: the separator of several labels in one cell, "
        "which makes it multi-label [default: ; or | if found].",
    ),
    click.option(
        "--multi-label",
        is_flag=True,
        help="With a CSV: multi-label (sigmoid outputs) even if no cell holds several labels.",
    ),
)
reports_out_option = click.option(
    "--out", required=True, type=click.Path(file_okay=False), help="Folder for the reports."
)


trust_model_option = click.option(
    "--trust-model",
    is_flag=True,
    help="Run a SavedModel that transfer did not write: its graph runs, and a graph can "
    "read and write files. (A .keras file never runs code; see the deploying guide.)",
)


calibrate_option = click.option(
    "--calibrate",
    is_flag=True,
    help="Fit a temperature on the validation images and store it in the model "
    "(report.html shows the calibration error before and after).",
)


# A config file of options (transfer.config): it reaches the library as config= among the
# options given (`_given`), and the library puts the flags given over it. A command
# that takes it declares --data with cls=DataOption.
config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help="YAML or JSON file of options, named as in the Python API (fine_tune_epochs: 8), "
    "and data; or a run's config.json, to repeat that run. Flags given win over it.",
)


class DataOption(click.Option):
    """--data, required unless a --config file names the data (click handles the options
    given before the others, so --config is known here when it was given)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, show_default="the --config file's", **kwargs)

    def process_value(self, ctx, value):
        value = super().process_value(ctx, value)
        given = isinstance(ctx.params.get("config"), str)  # else None, or click's "unset"
        if self.value_is_missing(value) and not given and not ctx.resilient_parsing:
            raise click.MissingParameter(
                ctx=ctx, param=self, message="Give it, or a --config file that names the data."
            )
        return value


# --help of the recipe's commands (finetune, lr-find): section -> its options, in order.
HELP_SECTIONS = {
    "Search (tune)": ("trials", "space"),
    "Data": (
        "data",
        "val_split",
        "test_split",
        "class_weight",
        "strict",
        "max_pixels",
        "tfds_data_dir",
        "images",
        "path_column",
        "label_column",
        "split_column",
        "label_sep",
        "multi_label",
    ),
    "Model and weights": (
        "arch",
        "depth",
        "version",
        "weights",
        "weights_dir",
        "image_size",
        "pooling",
        "dropout",
        "hidden_units",
        "standardize",
    ),
    "Phase 1 (the new head, backbone frozen)": (
        "head_init",
        "head_epochs",
        "head_learning_rate",
        "refit",
    ),
    "Phase 2 (fine-tuning)": (
        "preset",
        "fine_tune_from",
        "fine_tune_epochs",
        "fine_tune_learning_rate",
        "lr_schedule",
        "layer_decay",
        "optimizer",
        "label_smoothing",
        "early_stopping_patience",
        "futility_stop",
        "train_bn",
        "ema",
        "keep",
    ),
    "Learning-rate range test": ("start_lr", "end_lr", "steps"),
    "Audit": ("folds", "write_clean", "relabel", "clean_threshold"),
    "Augmentation (phase 2)": ("augment", "flip"),
    "Config file and tracking": ("config", "track", "tracking_uri"),
    "Run directory and output": (
        "out",
        "overwrite",
        "resume",
        "backup_interval",
        "seed",
        "calibrate",
        "report",
    ),
    "Devices and performance": (
        "batch_size",
        "time_limit",
        "cache_features",
        "cache_dir",
        "mixed_precision",
        "jit_compile",
        "strategy",
    ),
}
OTHER_OPTIONS = "Other options"  # options HELP_SECTIONS does not list (none, for finetune)


class SectionedCommand(TransferCommand):
    """A command whose --help lists its options in the sections of HELP_SECTIONS, each
    with its default; -h/--help last."""

    def __init__(self, *args, **kwargs):
        kwargs["context_settings"] = {
            "show_default": True,
            **(kwargs.get("context_settings") or {}),
        }
        super().__init__(*args, **kwargs)

    def format_options(self, ctx, formatter):
        records = {
            param.name: _with_default(param, param.get_help_record(ctx))
            for param in self.get_params(ctx)
            if isinstance(param, click.Option)
        }
        records = {name: record for name, record in records.items() if record}
        help_option = self.get_help_option(ctx)
        help_record = records.pop(help_option.name, None) if help_option else None
        for title, names in HELP_SECTIONS.items():
            rows = [records.pop(name) for name in names if name in records]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rows = list(records.values())
        with formatter.section(OTHER_OPTIONS if rows else "Help"):
            formatter.write_dl(rows + [help_record] if help_record else rows)


def _with_default(param, record):
    """A help record that names its default: an option without one (and without a
    default in its own words) is not given, `none`; a flag is off unless given."""
    if (
        record is None
        or param.is_flag
        or param.required
        or param.hidden
        or "default:" in record[1].lower()
    ):
        return record
    return record[0], f"{record[1]}  [default: none]".lstrip()


def _finetune_option(flag, name=None, **kwargs):
    """An option of `finetune` whose default is FinetuneOptions'."""
    name = name or flag.lstrip("-").replace("-", "_")
    kwargs = {"show_default": True, **kwargs}
    return click.option(flag, name, default=getattr(FINETUNE, name), **kwargs)


# ---------------------------------------------------------------- commands


@click.group(cls=TransferGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="transfer-keras")  # transfer.version.DISTRIBUTION
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def cli(debug):
    """Transfer learning for image classification with ResNet on Keras 3.

    \b
    Examples:
      transfer finetune --data ./flowers --depth 50
      transfer info --depth 50 --version v2
    """


@cli.command()
@architecture_options
@click.option(
    "--image-size",
    type=IMAGE_SIZE,
    show_default=BACKBONE_SIZE,
    help="Input height and width used for the output shapes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(arch, depth, version, image_size, as_json):
    """Show an architecture's groups, shapes, parameters and ImageNet weight files.

    \b
    Example:
      transfer info --depth 101 --version v2
      transfer info --arch efficientnet_b0
    """
    summary = info_command.info(depth, version, image_size=image_size, arch=arch)
    image_size = summary["image_size"]
    if as_json:
        echo(json.dumps(summary, indent=2))
        return
    family = summary["depth"] is None
    named = (
        f"arch {summary['arch']}"
        if family
        else f"depth {summary['depth']}, version {summary['version']}"
    )
    default_size = f", ImageNet size {summary['default_image_size']}" if family else ""
    echo(
        f"{summary['name']} ({named}, input {image_size}x{image_size}x3, preprocessing "
        f"'{summary['preprocessing']}'{default_size})"
    )
    echo("")
    header = f"{'group':<7} {'layers':>6}  {'output shape':<22} {'parameters':>12}"
    echo(header)
    echo("-" * len(header))
    for row in summary["groups"]:
        shape = "x".join("?" if d is None else str(d) for d in row["output_shape"])
        echo(f"{row['name']:<7} {row['layers']:>6}  {shape:<22} {row['params']:>12,}")
    echo("-" * len(header))
    echo(f"{'total':<7} {summary['layers']:>6}  {'':<22} {summary['params']:>12,}")
    echo(
        f"trainable {summary['trainable_params']:,}, "
        f"non-trainable {summary['non_trainable_params']:,} (BatchNormalization statistics)"
    )
    echo(
        f"FLOPs per image: {summary['flops'] / 1e9:.2f} G ({summary['multiply_adds'] / 1e9:.2f} "
        f"G multiply-adds, convolutions and dense layers, at {image_size}x{image_size})"
    )
    echo("")
    if summary["weights"]:
        echo("ImageNet weights (keras.applications):")
        for entry in summary["weights"]:
            kind = "with top" if entry["include_top"] else "notop   "
            digest = (
                f"sha256 {entry['sha256']}"
                if entry["sha256"]
                else f"md5 {entry['md5']}"
                if entry["md5"]
                else "no published hash"
            )
            echo(f"  {kind}  {entry['file']}  {digest}")
        echo(f"  from {summary['weights'][0]['url'].rsplit('/', 1)[0]}/")
    else:
        echo(
            f"ImageNet weights: no keras.applications file exists for "
            f"{summary['version']}; use torchvision/timm checkpoints (--weights FILE):"
        )
        for entry in summary["torch_weights"]:
            top1 = f"top-1 {entry['top1']:.1f}%" if entry["top1"] else ""
            echo(f"  {entry['source']:<11}  {entry['name']:<17} {top1:<12}  {entry['url']}")


@cli.command()
@architecture_options
@click.option(
    "--top/--notop",
    "include_top",
    default=False,
    show_default=True,
    help="The file with the 1000-class ImageNet classifier, or without it.",
)
@weights_dir_option
def weights(arch, depth, version, include_top, weights_dir):
    """Find (or download) the official ImageNet weights file and print its path.

    \b
    Examples:
      transfer weights --depth 50
      transfer weights --depth 101 --version v2 --weights-dir /data/keras-weights
    """
    echo(
        weights_command.weights(
            depth, version, include_top=include_top, weights_dir=weights_dir, arch=arch
        )
    )


def _given(options):
    """The recipe options given on the command line (or by an environment variable):
    the library fills in the rest, a --preset's values first."""
    ctx = click.get_current_context()
    return {
        name: value
        for name, value in options.items()
        if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }


# The backbone whose features a run starts from: finetune, lr-find and audit.
backbone_options = _options(
    architecture_options,
    click.option(
        "--weights",
        default=FINETUNE.weights,
        show_default=True,
        help="imagenet (v1, v2), none (random initialisation), or a weights file "
        "(.h5, .weights.h5, .keras; for v1.5 a torchvision .pth or timm "
        ".safetensors checkpoint).",
    ),
    weights_dir_option,
    _finetune_option("--image-size", type=IMAGE_SIZE, show_default=BACKBONE_SIZE),
    _finetune_option("--pooling", type=Choice(POOLINGS)),
    _finetune_option("--seed", type=SEEDS),
)
# Where the images come from and how they are split: finetune, lr-find and audit.
data_options = _options(
    _finetune_option(
        "--val-split",
        type=FRACTION,
        help="Fraction of each class held out for validation (by a hash of its path).",
    ),
    _finetune_option(
        "--test-split", type=FRACTION, help="Fraction of each class held out for a final test."
    ),
    strict_option,
    _finetune_option(
        "--max-pixels",
        type=AT_LEAST_ONE,
        help="Images whose header declares more pixels are skipped unread "
        "(Pillow's decompression-bomb limit).",
    ),
    tfds_data_dir_option,
    table_options,
)
# The feature cache that phase 1 and the audit share.
feature_cache_options = _options(
    click.option(
        "--no-cache",
        "cache_features",
        flag_value=False,
        default=True,
        show_default=False,
        help="Keep no backbone features on disk: phase 1 trains through the frozen "
        "backbone, an audit computes them afresh.",
    ),
    click.option(
        "--cache-dir",
        type=click.Path(file_okay=False),
        help="Where the backbone's features (phase 1's, an audit's) are kept for reuse "
        f"[default: ${CACHE_DIR_ENV} or ~/.cache/transfer/features].",
    ),
)
# A run's deadline (finetune, lr-find); tune's --time-limit is the whole search's.
run_time_limit_option = click.option(
    "--time-limit",
    metavar="DURATION",
    help="Plan the run to end within this time (90s, 10m, 2h): phase 1, then as "
    "many phase-2 epochs as fit, the end of the run reserved.",
)
# The options of a fine-tuning recipe, shared by finetune, lr-find and tune.
recipe_options = _options(
    backbone_options,
    data_options,
    feature_cache_options,
    _finetune_option("--batch-size", type=AT_LEAST_ONE, help="Global batch size."),
    _finetune_option(
        "--head-init",
        type=Choice(finetune_options.HEAD_INITS),
        help="Phase 1 on cached features: probe fits a logistic regression (C by "
        "cross-validation) as the head; train (or a number of --head-epochs) "
        "trains it with the optimizer.",
    ),
    _finetune_option(
        "--head-epochs",
        type=IntOrAuto(),
        help="Phase 1: epochs for the new head on the frozen backbone; auto: the "
        "probe, or (--head-init train) enough steps to converge on cached "
        "features (at least 10 epochs).",
    ),
    _finetune_option("--head-lr", "head_learning_rate", type=LEARNING_RATE),
    _finetune_option(
        "--fine-tune-from",
        help="Phase 2: first group to unfreeze (stem, conv2..conv5, post), or none.",
    ),
    _finetune_option("--fine-tune-epochs", type=COUNT),
    _finetune_option("--fine-tune-lr", "fine_tune_learning_rate", type=LEARNING_RATE),
    _finetune_option(
        "--lr-schedule",
        type=Choice(finetune_options.LR_SCHEDULES),
        help="Phase 2: cosine warms up over the first epoch, then decays to 0.",
    ),
    _finetune_option(
        "--layer-decay",
        type=LAYER_DECAY,
        help="Phase 2: each group below the head learns this much slower "
        "(1: one learning rate for all).",
    ),
    click.option(
        "--ema",
        is_flag=True,
        help="Phase 2 ends with the exponential moving average of its weights.",
    ),
    _finetune_option(
        "--keep",
        type=Choice(finetune_options.KEEP_MODES),
        help="best: phase 1's model when phase 2 does not clearly beat it on "
        "validation; last: phase 2's model regardless.",
    ),
    click.option(
        "--refit/--no-refit",
        default=FINETUNE.refit,
        show_default=True,
        help="When phase 1 (the probe) is kept, fit it again on the training and "
        "validation images together.",
    ),
    click.option(
        "--train-bn",
        is_flag=True,
        help="Let BatchNormalization of unfrozen groups train (default: inference mode).",
    ),
    _finetune_option(
        "--optimizer",
        type=Choice(tuple(finetune_options.OPTIMIZERS)),
        help="sgd uses momentum 0.9.",
    ),
    _finetune_option("--label-smoothing", type=FRACTION),
    _finetune_option("--dropout", type=FRACTION),
    click.option(
        "--hidden-units",
        type=AT_LEAST_ONE,
        default=None,
        show_default="none",
        help="Add a hidden ReLU layer to the head.",
    ),
    click.option(
        "--standardize/--no-standardize",
        default=FINETUNE.standardize,
        show_default=True,
        help="Standardise the pooled features inside the head (training statistics).",
    ),
    _finetune_option(
        "--class-weight",
        type=Choice(finetune_options.CLASS_WEIGHT_MODES),
        help="auto: balanced weights for imbalanced classes.",
    ),
    _finetune_option(
        "--augment",
        type=Choice(finetune_options.AUGMENT_PRESETS),
        help="Phase 2's augmentation: none and flip (fastest: the frozen groups run "
        "once), light (flip, shift), default (flip, rotation, "
        "zoom, contrast), strong (flip, RandAugment, random erasing).",
    ),
    click.option(
        "--flip/--no-flip",
        default=FINETUNE.flip,
        show_default=True,
        help="Horizontal flips in the augmentation (--no-flip for digits and text).",
    ),
    _finetune_option(
        "--early-stopping",
        "early_stopping_patience",
        type=COUNT,
        help="Stop a phase after this many epochs without a better val_loss, and "
        "restore the best weights (0: off).",
    ),
    click.option(
        "--futility-stop/--no-futility-stop",
        default=FINETUNE.futility_stop,
        show_default=True,
        help="Phase 2 stops as soon as it cannot plausibly beat phase 1 on "
        "validation in the epochs left (with --keep best).",
    ),
    click.option(
        "--preset",
        type=Choice(tuple(finetune_options.RECIPE_PRESETS)),
        help="fast: a short phase 2 on the frozen groups' cached outputs; balanced: "
        "the defaults; best: more epochs, strong augmentation, EMA. Options "
        "given explicitly win.",
    ),
    _finetune_option(
        "--backup-interval",
        type=SECONDS,
        help="Seconds between the backups that --resume continues from (written "
        "at the end of an epoch; 0: every epoch).",
    ),
    click.option(
        "--mixed-precision",
        is_flag=True,
        help="float16 compute on a GPU (on a CPU: accepted, and the run stays float32, "
        "which is faster there).",
    ),
    _finetune_option(
        "--jit-compile",
        type=Choice(tuple(finetune_options.JIT_COMPILE)),
        help="XLA-compile the training steps: auto is Keras' choice, on for GPUs, "
        "off for CPUs, where oneDNN's kernels were faster.",
    ),
    _finetune_option(
        "--strategy",
        type=Choice(STRATEGIES),
        help="tf.distribute: auto, one (device), mirrored (all GPUs of this machine) "
        "or multiworker (machines listed in TF_CONFIG).",
    ),
)


# --data of the commands that train on a dataset (finetune, tune): required unless
# --config names it.
dataset_option = click.option(
    "--data",
    "--labels",
    "data",
    cls=DataOption,
    help="Image folder (one sub-folder per class, or train/ val/ test/), tfds:NAME, "
    "TFRecord shards ('shards/*.tfrecord') or a CSV file of image paths and labels.",
)


@cli.command(cls=SectionedCommand)
@dataset_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help="Run directory [default: runs/<timestamp>-<data name>].",
)
@click.option("--overwrite", is_flag=True, help="Replace the run in a non-empty --out.")
@recipe_options
@run_time_limit_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run in --out from its last completed epoch "
    "(same command otherwise).",
)
@calibrate_option
@click.option(
    "--report/--no-report",
    default=True,
    show_default=True,
    help="Write report.html at the end (its duplicates check needs the training "
    "images' features: a pass of the backbone over them when phase 2 is "
    "kept; `transfer report` writes it later).",
)
@config_option
@click.option(
    "--track",
    type=Choice(TRACKERS, name="tracker"),
    help="Track the run in MLflow (the mlflow extra): options, every epoch, results "
    "and the run directory's files. A tracking server that is down is a warning.",
)
@click.option(
    "--tracking-uri",
    metavar="URI",
    help=f"The MLflow tracking server or store (implies --track mlflow) [default: "
    f"${TRACKING_URI_ENV}, else MLflow's local store in the current folder].",
)
def finetune(data, out, overwrite, resume, calibrate, report, **options):
    """Fine-tune a backbone on a folder of images (or a CSV or TFDS dataset).

    Phase 1 trains a new head on the frozen backbone; phase 2 unfreezes the groups
    from --fine-tune-from on with a lower learning rate. The run directory holds the
    model (raw RGB pixels in, probabilities out), labels, metrics, reports and plots.

    \b
    Examples:
      transfer finetune --data ./flowers --depth 50
      transfer finetune --data ./flowers --weights none --image-size 64 --fine-tune-from stem
      transfer finetune --data tfds:tf_flowers --version v2 --out runs/flowers
      transfer finetune --data ./flowers --version v1.5 --weights resnet50-11ad3fa6.pth
      transfer finetune --labels labels.csv --images ./photos --label-sep ";"
      transfer finetune --data ./flowers --arch efficientnet_b0
      transfer finetune --config flowers.yaml --fine-tune-epochs 8
      transfer finetune --config runs/flowers/config.json --out runs/flowers-again
      transfer finetune --data ./flowers --track mlflow --tracking-uri http://127.0.0.1:5000
    """
    if resume and not out:
        raise click.UsageError("--resume needs the --out of the run to continue.")
    result = finetune_command.finetune(
        data,
        out=out,
        overwrite=overwrite,
        resume=resume,
        calibrate=calibrate,
        report=report,
        **_given(options),
    )
    echo("")
    for split, name in (("val", "validation"), ("test", "test")):
        if split in result.metrics:
            _echo_metrics(name, result.metrics[split], log_loss=False)
    kept = result.metrics["kept"]
    if "validation" in kept:
        scores = kept["validation"]
        echo(
            f"kept: {phase_label(kept['phase'])} - {kept['reason']} (validation accuracy: "
            f"phase 1 {scores['head']['accuracy']:.4f}, "
            f"phase 2 {scores['fine-tune']['accuracy']:.4f})"
        )
    if "refit" in kept:
        echo(
            f"refit: phase 1's probe on {kept['refit']['images']} training and validation "
            "images (the validation scores above are from before it)"
        )
    timings = result.timings
    phases = [f"head {timings.get('head_seconds', 0):.0f}s"]
    if "fine_tune_seconds" in timings:
        phases.append(f"fine-tune {timings['fine_tune_seconds']:.0f}s")
    echo(f"time: {', '.join(phases)}, total {timings['total_seconds']:.0f}s")
    if result.metrics.get("skipped_files"):
        echo(f"skipped files: {len(result.metrics['skipped_files'])} (listed in metrics.json)")
    echo(f"run directory: {result.run_dir}")


@cli.command("lr-find", cls=SectionedCommand)
@click.option(
    "--data",
    "--labels",
    "data",
    cls=DataOption,
    help="Image folder, tfds:NAME, TFRecord shards ('shards/*.tfrecord') or a CSV file of "
    "paths and labels.",
)
@reports_out_option
@click.option("--overwrite", is_flag=True, help="Replace the files in a non-empty --out.")
@click.option("--start-lr", type=LEARNING_RATE, default=lr_find_command.START_LR, show_default=True)
@click.option("--end-lr", type=LEARNING_RATE, default=lr_find_command.END_LR, show_default=True)
@click.option(
    "--steps",
    type=AT_LEAST_ONE,
    default=lr_find_command.STEPS,
    show_default=True,
    help="Batches over which the learning rate grows from --start-lr to --end-lr.",
)
@config_option
@recipe_options
@run_time_limit_option
def lr_find(data, out, overwrite, start_lr, end_lr, steps, **options):
    """Learning-rate range test for phase 2: suggests --fine-tune-lr.

    Runs phase 1, then trains the groups from --fine-tune-from on while the learning
    rate grows exponentially, until the loss runs away. Writes lr_find.png and
    lr_find.csv; the suggestion is a tenth of the rate at the lowest loss (fastai).

    \b
    Examples:
      transfer lr-find --data ./flowers --out runs/flowers-lr
      transfer lr-find --config flowers.yaml --out runs/flowers-lr
    """
    result = lr_find_command.lr_find(
        data,
        out,
        start_lr=start_lr,
        end_lr=end_lr,
        steps=steps,
        overwrite=overwrite,
        **_given(options),
    )
    echo(
        f"suggested: --fine-tune-lr {result.suggested:.2g} "
        f"(plot: {result.out / lr_find_command.PLOT_FILE})"
    )


@cli.command(cls=SectionedCommand)
@config_option
@dataset_option
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder of the search: study.db, trials/, trials.csv, trials.png, "
    "best-config.json and best/, the best trial's run directory.",
)
@click.option("--overwrite", is_flag=True, help="Replace the search in a non-empty --out.")
@click.option(
    "--trials",
    type=AT_LEAST_ONE,
    help="End the search when the study holds this many finished trials (with --resume, "
    "the earlier ones count).",
)
@click.option(
    "--time-limit",
    metavar="DURATION",
    help="End the search within this time (90s, 10m, 2h): no trial starts that would "
    "not fit, and one that runs over stops.",
)
@click.option(
    "--space",
    type=click.Path(dir_okay=False),
    help="YAML file of the search space: option: [choices] or {low, high, log} "
    "(phase-2 options; default: learning rate, fine-tune-from, layer decay, "
    "augment, label smoothing, epochs).",
)
@recipe_options
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a stopped search in --out: its unfinished trial runs again (same "
    "command; --trials and --time-limit may change).",
)
def tune(data, out, overwrite, trials, time_limit, space, resume, **options):
    """Search phase 2's recipe within a number of trials or a time limit.

    Phase 1 runs once and every trial starts from its head; each trial is phase 2
    with options that Optuna's TPE sampler suggests, stopped early by a median
    pruner on each epoch's validation accuracy. The first trial is the recipe as
    given. Writes the trials' table and plot, the best trial's options as
    best-config.json and its run directory as best/. Needs the tune extra (optuna).

    \b
    Examples:
      transfer tune --data ./flowers --out runs/flowers-tune --time-limit 1h
      transfer tune --data ./flowers --out runs/flowers-tune --trials 20 --space space.yaml
      transfer tune --data ./flowers --out runs/flowers-tune --trials 30 --resume
      transfer tune --config flowers.yaml --out runs/flowers-tune --time-limit 2h
      transfer finetune --config runs/flowers-tune/best-config.json --data ./flowers
    """
    if trials is None and time_limit is None:
        raise click.UsageError("Give --trials N, --time-limit DURATION or both.")
    result = tune_command.tune(
        data,
        out,
        trials=trials,
        time_limit=time_limit,
        space=space,
        resume=resume,
        overwrite=overwrite,
        **_given(options),
    )
    rows, paths = result.trials, TunePaths(result.out)
    names = list(dict.fromkeys(name for row in rows for name in row["params"]))
    header = ["trial", "state", "val acc", "kept", "epochs", "seconds", *names]
    table = [
        [
            str(r["number"]),
            r["state"],
            "" if r["validation_accuracy"] is None else f"{r['validation_accuracy']:.4f}",
            phase_label(r["phase_kept"]) if r["phase_kept"] else "",
            "" if r["epochs"] is None else str(r["epochs"]),
            "" if r["seconds"] is None else f"{r['seconds']:.0f}",
            *[shown_value(r["params"].get(name, "")) for name in names],
        ]
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    for row in [header, *table]:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    echo("")
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    pruned = sum(r["state"] == "pruned" for r in rows)
    echo(
        f"search: {len(finished)} trials finished ({pruned} pruned) in "
        f"{result.seconds:.0f}s; table {paths.table}, plot {paths.plot}"
    )
    best = next(r for r in rows if r["number"] == result.best_trial)
    echo(
        f"best: trial {result.best_trial}, validation accuracy {best['validation_accuracy']:.4f} "
        f"({', '.join(f'{k}={shown_value(v)}' for k, v in best['params'].items())})"
    )
    metrics, kept = result.metrics, result.metrics["kept"]
    echo(f"kept: {phase_label(kept['phase'])} - {kept['reason']}")
    if "val" in metrics:
        _echo_metrics("validation", metrics["val"], log_loss=False)
    if "test" in metrics:  # the chosen trial's alone: validation chose it
        _echo_metrics("test, the chosen trial", metrics["test"], log_loss=False)
    echo(f"options: {paths.best_config}")
    echo(f"run directory: {paths.best}")


@cli.command(cls=SectionedCommand)
@click.option(
    "--data",
    "--labels",
    "data",
    cls=DataOption,
    help="Image folder (one sub-folder per class, or train/ val/ test/), tfds:NAME, "
    "TFRecord shards ('shards/*.tfrecord') or a CSV file of image paths and labels, read "
    "as finetune reads it.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for issues.csv, audit.html and audit.json.",
)
@click.option(
    "--overwrite", is_flag=True, help="Replace an earlier audit in --out, and --write-clean's file."
)
@backbone_options
@_finetune_option("--batch-size", type=AT_LEAST_ONE, help="Images per batch of the backbone.")
@data_options
@feature_cache_options
@click.option(
    "--folds",
    type=CV_FOLDS,
    default=audit_command.FOLDS,
    show_default=True,
    help="Cross-validation folds of the probe whose out-of-fold probabilities find label issues.",
)
@click.option(
    "--write-clean",
    type=click.Path(dir_okay=False),
    help="Also write the labels as a CSV that finetune --data takes as it is, less the "
    "images of the findings that cleaning acts on (audit.html lists them; label issues "
    "from --clean-threshold); its folder must hold the images. The data is not changed.",
)
@click.option(
    "--relabel",
    is_flag=True,
    help="In the clean CSV, give a label issue its suggested label instead of leaving it out.",
)
@click.option(
    "--clean-threshold",
    type=PROBABILITY,
    default=audit_command.CLEAN_THRESHOLD,
    show_default=True,
    help="The score from which the clean CSV acts on a label issue: 1 - the probability "
    "of its given label.",
)
@config_option
def audit(data, out, overwrite, folds, write_clean, relabel, clean_threshold, **options):
    """Find what is wrong with a dataset before training on it: likely label errors,
    duplicates and leaks across splits, outliers, classes too small, image issues.

    One pass of the backbone (its features shared with finetune through the feature
    cache) and the probe's cross-validation: confident learning (cleanlab) on each
    image's out-of-fold probabilities ranks the label issues. Writes issues.csv (a row
    per finding), audit.html and audit.json to --out; with --write-clean, a clean CSV
    to train on. Needs the audit extra (cleanlab).

    \b
    Examples:
      transfer audit --data ./flowers --out audits/flowers
      transfer audit --data ./flowers --out audits/flowers --write-clean flowers-clean.csv
      transfer finetune --data flowers-clean.csv --out runs/flowers-clean
      transfer audit --config flowers.yaml --out audits/flowers
    """
    result = audit_command.audit(
        data,
        out,
        write_clean=write_clean,
        relabel=relabel,
        clean_threshold=clean_threshold,
        folds=folds,
        overwrite=overwrite,
        **_given(options),
    )
    echo(
        f"{result.data}: {result.images} images, {len(result.classes)} classes; "
        f"{result.backbone}, {result.image_size} px"
    )
    for kind, count in result.counts.items():
        echo(f"  {kind.replace('_', ' '):<18}{count:>7}")
    rate = result.noise_rate()
    if rate is not None:
        noisiest = sorted(
            (
                (c["label_noise"], name)
                for name, c in result.classes.items()
                if c["label_noise"] is not None
            ),
            reverse=True,
        )[:3]
        echo(
            f"estimated label noise {100 * rate:.1f}% (most: "
            + ", ".join(f"{name} {100 * r:.1f}%" for r, name in noisiest)
            + ")"
        )
    for section, note in result.notes.items():
        echo(f"{section}: {note}")
    action = f"leaves out {result.left_out} images" + (
        f", relabels {result.relabelled}" if relabel else ""
    )
    if result.clean_csv:
        echo(f"clean labels: {result.clean_csv} ({action}); train on it with finetune --data")
    else:
        echo(f"a clean CSV (--write-clean) {action}")
    echo(
        f"report: {result.out / audit_command.AUDIT_HTML}; every finding: {result.out / audit_command.ISSUES_CSV}"
    )


def _echo_metrics(name, m, log_loss=True):
    echo(f"{split_title(name, m)}: {scores_line(m, log_loss)}")


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.option(
    "--data",
    "--labels",
    "data",
    required=True,
    help="Image folder (class sub-folders), tfds:NAME, TFRecord shards ('shards/*.tfrecord') "
    "or a CSV file of paths and labels.",
)
@reports_out_option
@click.option("--overwrite", is_flag=True, help="Replace the reports in a non-empty --out.")
@batch_size_option
@any_size_option
@tfds_data_dir_option
@click.option("--strict", is_flag=True, help="Stop on unreadable files instead of skipping.")
@click.option(
    "--tta",
    is_flag=True,
    help="Average each image's probabilities with its "
    "horizontal mirror's (not for digits or text).",
)
@click.option(
    "--compare",
    type=click.Path(),
    help="Run or .keras model to compare with (top-1 agreement, accuracy "
    "difference); an export of transfer names its own run by default.",
)
@click.option(
    "--split",
    type=Choice(evaluate_command.SPLITS),
    help="Images to score. On the run's own data: its val or test split, or all "
    "(training images included) [default: test, else val]. On other data: "
    "its val/ or test/ folder (or split column), or all [default: test/, "
    "else val/, else all, less the run's training images].",
)
@trust_model_option
@table_options
def evaluate(
    run_or_model,
    data,
    out,
    overwrite,
    batch_size,
    image_size,
    tfds_data_dir,
    strict,
    tta,
    compare,
    split,
    trust_model,
    **table,
):
    """Evaluate a trained classifier, or an export of one, on labelled images.

    RUN_OR_MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite
    or an .onnx file.

    Writes classification_report.txt, confusion_matrix.png/.csv, predictions.csv,
    metrics.json and report.html to --out. Images of classes the model does not know are
    counted and reported apart. The images the model's run trained on are never scored
    unless --split all asks for them, and then they are counted.

    \b
    Examples:
      transfer evaluate runs/flowers --data ./flowers-test --out reports/flowers-test
      transfer evaluate runs/flowers --data ./flowers --out reports/flowers-val
      transfer evaluate flowers-int8.tflite --data ./flowers-test --out reports/int8
    """
    metrics = evaluate_command.evaluate(
        run_or_model,
        data,
        out,
        batch_size=batch_size,
        image_size=image_size,
        tfds_data_dir=tfds_data_dir,
        overwrite=overwrite,
        strict=strict,
        tta=tta,
        compare=compare,
        split=split,
        trust_model=trust_model,
        **table,
    )
    echo("")
    _echo_metrics(f"{metrics['split']} split", metrics)
    if metrics.get("training_images_scored"):
        echo(
            f"training images scored: {metrics['training_images_scored']} of "
            f"{metrics['images']} (not a held-out score)"
        )
    if metrics.get("training_images_left_out"):
        echo(
            f"training images left out: {metrics['training_images_left_out']} "
            "(--split all scores them)"
        )
    if metrics.get("agreement"):
        echo(
            f"agreement with {metrics['compared_with']}: {describe_agreement(metrics['agreement'])}"
        )
    if metrics["unknown_class_images"]:
        echo(
            f"images of unknown classes: {metrics['unknown_class_images']} "
            f"({', '.join(metrics['unknown_classes'])}), not in the metrics"
        )
    echo(f"reports: {out}")


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path(), cls=ImagePaths)
@click.option("--top-k", type=AT_LEAST_ONE, default=predict_command.TOP_K, show_default=True)
@click.option(
    "--format",
    "output_format",
    default=predict_command.OUTPUT_FORMATS[0],
    show_default=True,
    type=Choice(predict_command.OUTPUT_FORMATS, name="format"),
)
@batch_size_option
@any_size_option
@click.option(
    "--tta",
    is_flag=True,
    help="Average each image's probabilities with its "
    "horizontal mirror's (not for digits or text).",
)
@click.option(
    "--min-confidence",
    type=PROBABILITY,
    help=f"Label an image '{predict_command.UNKNOWN}' when its top probability is "
    "below this (report.html shows accuracy against coverage; single-label "
    "models).",
)
def predict(run_or_model, paths, top_k, output_format, batch_size, image_size, tta, min_confidence):
    """Top-k labels and probabilities for image files and folders (for a multi-label
    model: every label above its threshold).

    An unreadable or missing file gets its error in its own row; the others go on,
    and the exit code is 1 (0 when every image was predicted, 2 for bad usage).

    \b
    Examples:
      transfer predict runs/flowers photo.jpg ./more-photos
      transfer predict runs/flowers ./photos --format csv > predictions.csv
      transfer predict runs/flowers ./photos --min-confidence 0.8
    """
    rows = predict_command.predict(
        run_or_model,
        paths,
        top_k=top_k,
        batch_size=batch_size,
        image_size=image_size,
        tta=tta,
        min_confidence=min_confidence,
    )
    PREDICTION_PRINTERS[output_format](rows)
    errors = sum(1 for r in rows if r["error"])
    if errors:
        click.echo(f"{errors} of {len(rows)} files could not be read.", err=True)
        click.get_current_context().exit(NOT_ALL_PREDICTED)


NOT_ALL_PREDICTED = 1  # predict's exit code when a row holds an error instead of labels


def _label(r):
    """{"label": ...} where predict chose one (with --min-confidence), else nothing."""
    return {"label": r["label"]} if "label" in r else {}


def _print_json(rows):
    echo(
        json.dumps(
            [
                {
                    "path": r["path"],
                    **_label(r),
                    "error": r["error"],
                    "predictions": [
                        {"label": label, "probability": p} for label, p in r["predictions"]
                    ],
                }
                for r in rows
            ],
            indent=2,
        )
    )


def _print_csv(rows):
    writer = csv.writer(results_stream())
    k = max((len(r["predictions"]) for r in rows), default=0)
    chosen = ["label"] if rows and "label" in rows[0] else []
    writer.writerow(
        [
            "path",
            *chosen,
            *[f"{kind}_{i + 1}" for i in range(k) for kind in ("label", "probability")],
            "error",
        ]
    )
    for r in rows:
        cells = [c for label, p in r["predictions"] for c in (label, f"{p:.6f}")]
        cells += [""] * (2 * k - len(cells))
        # Labels and paths may start like a formula: escaped as every CSV of ours is.
        writer.writerow(
            escaped_row([r["path"], *[r["label"] or "" for _ in chosen], *cells, r["error"] or ""])
        )


def _print_table(rows):
    width = max(len(r["path"]) for r in rows)
    for r in rows:
        if r["error"]:
            echo(f"{r['path']:<{width}}  error: {r['error']}")
        else:  # a multi-label row can hold no label above its threshold
            shown = "  ".join(f"{label} {p:.3f}" for label, p in r["predictions"]) or "(none)"
            chosen = f"{r['label']}:  " if "label" in r else ""
            echo(f"{r['path']:<{width}}  {chosen}{shown}")


PREDICTION_PRINTERS = {"table": _print_table, "csv": _print_csv, "json": _print_json}
assert set(PREDICTION_PRINTERS) == set(predict_command.OUTPUT_FORMATS)


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.option(
    "--format",
    "format",
    default="keras",
    show_default=True,
    type=Choice(tuple(export_command.FORMATS), name="export format"),
    help="keras (.keras file), savedmodel (folder, for TF Serving), tflite, onnx, "
    "or h5 (the backbone's weights as a keras.applications notop file, for "
    "--weights of another run).",
)
@click.option(
    "--quantize",
    default="none",
    show_default=True,
    type=Choice(export_command.QUANTIZATIONS, name="quantization"),
    help="TFLite only: int8 and int16x8 (int8 weights, 16-bit activations) calibrate "
    "on a seeded sample of the training images; int8 keeps the features and "
    "the head float.",
)
@click.option("--out", required=True, type=click.Path(), help="File or folder to write.")
@click.option(
    "--feature-extractor",
    is_flag=True,
    help="Export the backbone with its preprocessing and pooling, not the classifier.",
)
@click.option("--group", help="With --feature-extractor: end at this group (stem, conv2..conv5).")
@click.option(
    "--pooling",
    default=export_command.POOLING,
    show_default=True,
    type=Choice((*POOLINGS, "none")),
    help="With --feature-extractor: none keeps the feature map.",
)
@any_size_option
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option(
    "--data",
    help="Images for int8 calibration and the comparison with the Keras "
    "model, instead of the run's own (its config.json).",
)
@click.option(
    "--max-drop",
    default=export_command.MAX_DROP,
    show_default=True,
    type=POINTS,
    help="Warn when the export's accuracy is more than this many points below the Keras model's.",
)
@click.option(
    "--no-compare",
    is_flag=True,
    help="Skip running the export beside the Keras model on the validation images.",
)
def export(
    run_or_model,
    format,
    out,
    feature_extractor,
    group,
    pooling,
    image_size,
    overwrite,
    quantize,
    data,
    max_drop,
    no_compare,
):
    """Export a trained model as Keras, SavedModel, TFLite or ONNX, or its backbone's weights.

    Every export takes raw RGB pixels (the SavedModel, TFLite and ONNX exports take
    uint8 images); a classifier export keeps its labels with it (as <file>.labels.txt
    beside a file, and inside the SavedModel folder, the .tflite and the .onnx file),
    and runs beside the Keras model on the run's validation images to show the
    agreement.

    \b
    Examples:
      transfer export runs/flowers --format savedmodel --out exports/flowers
      transfer export runs/flowers --format tflite --out exports/flowers.tflite
      transfer export runs/flowers --format tflite --quantize int8 --out flowers-int8.tflite
      transfer export runs/flowers --format onnx --out exports/flowers.onnx
      transfer export runs/flowers --feature-extractor --group conv4 --out conv4.keras
      transfer export runs/source --format h5 --out source_notop.h5
    """
    # the library's log line names what was written, and where: once
    export_command.export(
        run_or_model,
        out,
        format=format,
        feature_extractor=feature_extractor,
        group=group,
        pooling=None if pooling == "none" else pooling,
        image_size=image_size,
        overwrite=overwrite,
        quantize=quantize,
        data=data,
        max_drop=max_drop,
        compare=not no_compare,
    )


@cli.command()
@click.option(
    "--data",
    "--labels",
    "data",
    required=True,
    help="Image folder, tfds:NAME, TFRecord shards ('shards/*.tfrecord') or a CSV file of "
    "paths and labels.",
)
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write (.npz).")
@click.option(
    "--model",
    "model",
    type=click.Path(),
    help="Run directory or .keras model whose backbone to use.",
)
@architecture_options
@click.option(
    "--weights",
    default=FINETUNE.weights,
    show_default=True,
    help="Without --model: imagenet, none or a weights file.",
)
@weights_dir_option
@_finetune_option(
    "--image-size", type=IMAGE_SIZE, show_default=BACKBONE_SIZE, help="Without --model: input size."
)
@_finetune_option("--pooling", type=Choice(POOLINGS))
@batch_size_option
@_finetune_option(
    "--val-split",
    type=FRACTION,
    help="Marks each image's split (by a hash of its path), as finetune does.",
)
@_finetune_option("--test-split", type=FRACTION)
@tfds_data_dir_option
@strict_option
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@table_options
def embed(
    data,
    out,
    model,
    arch,
    depth,
    version,
    weights,
    weights_dir,
    image_size,
    pooling,
    batch_size,
    val_split,
    test_split,
    tfds_data_dir,
    strict,
    overwrite,
    **table,
):
    """Backbone features of every image, with labels, paths and splits, as .npz.

    \b
    Examples:
      transfer embed --data ./flowers --out flowers.npz
      transfer embed --data ./flowers --model runs/flowers --out tuned.npz
    """
    result = embed_command.embed(
        data,
        out=out,
        model=model,
        arch=arch,
        depth=depth,
        version=version,
        weights=weights,
        weights_dir=weights_dir,
        image_size=image_size,
        batch_size=batch_size,
        pooling=pooling,
        val_split=val_split,
        test_split=test_split,
        tfds_data_dir=tfds_data_dir,
        strict=strict,
        overwrite=overwrite,
        **table,
    )
    n, d = result["features"].shape
    echo(f"embedded {n} images ({d} features each, {len(result['class_names'])} classes) to {out}")


@cli.command()
@click.argument("embeddings", type=click.Path())
@reports_out_option
@click.option(
    "--folds",
    type=CV_FOLDS,
    default=probe_command.FOLDS,
    show_default=True,
    help="Cross-validation folds for choosing the regularisation.",
)
@click.option("--seed", type=SEEDS, default=probe_command.SEED, show_default=True)
@click.option("--overwrite", is_flag=True)
def probe(embeddings, out, folds, seed, overwrite):
    """Linear probe: logistic regression on embeddings from `transfer embed`.

    Standardises the features, chooses the regularisation by cross-validation on
    the train split, and reports on val (and test) like `evaluate`.

    \b
    Example:
      transfer embed --data ./flowers --out flowers.npz && transfer probe flowers.npz --out probe
    """
    metrics = probe_command.probe(embeddings, out, folds=folds, seed=seed, overwrite=overwrite)
    echo("")
    for split, name in (("val", "validation"), ("test", "test")):
        if split in metrics:
            _echo_metrics(name, metrics[split])
    echo(f"C = {metrics['C']:.4g}; reports: {out}")


@cli.command()
@click.argument("run_dir", type=click.Path())
@calibrate_option
@batch_size_option
def report(run_dir, calibrate, batch_size):
    """Build report.html again from a run directory (or an evaluate --out folder).

    One self-contained page: summary, training curves, confusion matrix, per-class
    metrics, most confused pairs, highest-loss images, Grad-CAM, calibration, leaked
    duplicates and skipped files. Open it in any browser. An evaluate folder's page is
    built from the model it evaluated, found from the folder wherever it is run from; a
    model file that changed since is refused.

    \b
    Examples:
      transfer report runs/flowers && xdg-open runs/flowers/report.html
      transfer report runs/flowers --calibrate
    """
    path, metrics = report_command.report(run_dir, calibrate=calibrate, batch_size=batch_size)
    calibration = metrics.get("calibration", {})
    if "temperature" in calibration:
        echo(
            f"temperature {calibration['temperature']:.3f}: validation ECE "
            f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}"
        )
    leaked = metrics.get("leaked_duplicates", {})
    if leaked.get("checked"):
        echo(
            "leaked duplicates: "
            + ", ".join(f"{split} {leaked[split]}" for split in ("val", "test") if split in leaked)
        )
    if metrics.get("training_images_scored"):
        echo(
            f"training images scored: {metrics['training_images_scored']} of "
            f"{metrics['images']} (not a held-out score)"
        )
    echo(f"report: {path}")


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path(), cls=ImagePaths)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder for the overlays (<image name>.gradcam.png).",
)
@click.option("--top-k", type=AT_LEAST_ONE, default=predict_command.TOP_K, show_default=True)
@click.option(
    "--group",
    help="Convolutional group to explain (conv2..conv5, post) "
    "[default: the last one at least 4 cells wide].",
)
@any_size_option
def explain(run_or_model, paths, out, top_k, group, image_size):
    """Grad-CAM heat maps of the top-k classes for image files and folders.

    \b
    Example:
      transfer explain runs/flowers photo.jpg ./more-photos --out explained
    """
    rows = explain_command.explain(
        run_or_model, paths, out, top_k=top_k, group=group, image_size=image_size
    )
    for path, written, labels, error in rows:
        if error:
            echo(f"{path}  error: {error}")
        else:
            echo(f"{path}  {'  '.join(f'{label} {p:.3f}' for label, p in labels)}  -> {written}")


class DefaultCommandGroup(click.Group):
    """A group whose first subcommand runs when no other is named: `transfer runs` and
    `transfer runs DIR` are `transfer runs list ...`."""

    command_class = TransferCommand

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ctx.help_option_names):
            args = [next(iter(self.commands)), *args]
        return super().parse_args(ctx, args)


@cli.group(cls=DefaultCommandGroup)
def runs():
    """List the run directories under a folder, one line each, or compare runs side by side.

    \b
    Examples:
      transfer runs
      transfer runs runs/flowers --sort val_accuracy
      transfer runs compare runs/flowers runs/flowers-b0
    """


@runs.command("list")
@click.argument("folder", required=False, default=runs_command.RUNS_DIR, type=click.Path())
@click.option(
    "--format",
    "output_format",
    default=runs_command.FORMATS[0],
    show_default=True,
    type=Choice(runs_command.FORMATS, name="format"),
)
@click.option(
    "--sort",
    default="started",
    show_default=True,
    type=Choice(tuple(runs_command.COLUMNS), name="sort column"),
    help="The column to sort by: accuracies best first, the others in ascending order.",
)
def list_runs(folder, output_format, sort):
    """One line per run directory under FOLDER [default: runs], at any depth: status
    (complete, interrupted, failed, running), when it started, data, backbone, weights,
    image size, validation and test accuracy, the phase kept, wall time.

    \b
    Examples:
      transfer runs list
      transfer runs list runs/flowers --format csv > runs.csv
    """
    rows = runs_command.list_runs(folder, sort=sort)
    if output_format == "json":
        echo(json.dumps(rows, indent=2))
    elif output_format == "csv":
        writer = csv.writer(results_stream())
        writer.writerow(list(runs_command.COLUMNS))
        for row in rows:
            writer.writerow(escaped_row(["" if v is None else v for v in row.values()]))
    elif rows:
        _echo_aligned(
            list(runs_command.COLUMNS.values()),
            [[_shown(key, value) for key, value in row.items()] for row in rows],
        )
    else:
        click.echo(f"No run directories in {folder}.", err=True)


@runs.command("compare")
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option(
    "--format",
    "output_format",
    default=runs_command.FORMATS[0],
    show_default=True,
    type=Choice(runs_command.FORMATS, name="format"),
)
def compare_runs(run_dirs, output_format):
    """The options that differ between two runs or more, and their metrics side by side.

    \b
    Example:
      transfer runs compare runs/flowers runs/flowers-b0 runs/flowers-strong
    """
    compared = runs_command.compare_runs(list(run_dirs))
    sections = {"option": compared["options"], "metric": compared["metrics"]}
    if output_format == "json":
        echo(json.dumps(compared, indent=2))
    elif output_format == "csv":
        writer = csv.writer(results_stream())
        writer.writerow(["kind", "name", *compared["runs"]])
        for kind, table in sections.items():
            for name, values in table.items():
                cells = ["" if v is None else v for v in values]
                writer.writerow(escaped_row([kind, name, *cells]))
    else:
        rows = [
            [name, *(_shown(name, v) for v in values)]
            for name, values in sections["option"].items()
        ]
        if not rows:
            rows = [["(no option differs)", *[""] * len(compared["runs"])]]
        rows.append([""] * (len(compared["runs"]) + 1))
        rows += [
            [name, *(_shown(name, v) for v in values)]
            for name, values in sections["metric"].items()
        ]
        _echo_aligned(["", *compared["runs"]], rows)


def _shown(name, value):
    """A value of `transfer runs` as a table shows it."""
    if value is None:
        return "-"
    if name == "kept":
        return {"head": "phase 1", "fine-tune": "phase 2"}.get(value, value)
    if name == "started":
        return value.replace("T", " ")[:16]  # to the minute
    if name == "seconds":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _echo_aligned(header, rows):
    """Rows of cells in columns as wide as their widest cell."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def main():
    open_standard_streams()  # results go to stdout or nowhere, never to stderr (`>&-`)
    if os.environ.get(DEBUG_ENV) != "1" and "--debug" not in sys.argv:
        filter_stderr()
    cli(prog_name="transfer")


if __name__ == "__main__":
    main()
