"""The `transfer` command line: a thin click layer over `transfer.commands`.

Defaults and choices come from the library. Library errors become one line,
`Error: ...`, with exit code 2 for bad usage or input and 1 for failures at run
time; `--debug` (or TRANSFER_DEBUG=1) shows the traceback instead. Library
messages name arguments as `name=value`; here, at the boundary, they become the
command's flags (`--name value`).
"""

import contextlib
import csv
import json
import logging
import os
import re
import sys

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is not for users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402

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
from transfer.commands import weights as weights_command  # noqa: E402
from transfer.errors import RunInterruptedError, TransferError  # noqa: E402
from transfer.export.compare import describe as describe_agreement  # noqa: E402
from transfer.models.architectures import BLOCKS_PER_STAGE  # noqa: E402
from transfer.models.families import ARCH_NAMES  # noqa: E402
from transfer.models.heads import POOLINGS  # noqa: E402
from transfer.models.weights.download import WEIGHTS_DIR_ENV  # noqa: E402
from transfer.report.metrics import phase_label, scores_line, split_title  # noqa: E402
from transfer.runtime import INFERENCE_BATCH_SIZE  # noqa: E402
from transfer.startup_noise import filter_stderr  # noqa: E402
from transfer.train import options as finetune_options  # noqa: E402
from transfer.train.distribute import STRATEGIES  # noqa: E402
from transfer.train.feature_cache import CACHE_DIR_ENV  # noqa: E402

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
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, options)) + r")="
                         r"('[^']*'|\"[^\"]*\"|[\w./~:-]*[\w/~-])")

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


def results_stream():
    """Where a command's results go: standard output as it was before the command ran."""
    return click.get_current_context().meta.get(RESULTS_STREAM, sys.stdout)


def echo(message=""):
    """Print a result line (never progress or messages: those go to stderr)."""
    click.echo(message, file=results_stream())


class TransferCommand(click.Command):
    """A command whose library errors and warnings name its own flags, and whose
    standard output holds its results alone (`predict --format csv > out.csv`)."""

    def invoke(self, ctx):
        params = _params_in_scope(ctx)
        _setup_logging(params)
        ctx.meta[RESULTS_STREAM] = sys.stdout
        try:
            # Keras and TensorFlow print progress to sys.stdout: send it to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    return super().invoke(ctx)
                except TransferError:
                    raise
                except KeyboardInterrupt as exc:  # else click reports "aborted", exit 1
                    raise RunInterruptedError("Interrupted.") from exc
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
            f"{', '.join(self.choices)}.", ctx)


class IntOrAuto(click.ParamType):
    """A whole number, or `auto` for the library to plan it."""

    name = "INTEGER|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or str(value).lower() == finetune_options.AUTO:
            return value if isinstance(value, int) else finetune_options.AUTO
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is not a whole number or 'auto'.", param, ctx)


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
    click.option("--arch", type=Choice(ARCH_NAMES, name="architecture"),
                 help="The backbone, any family (e.g. mobilenet_v3_small, efficientnet_b0, "
                      "convnext_tiny); overrides --depth and --version. Default: the ResNet "
                      "of --depth and --version."),
    click.option("--depth", default=str(FINETUNE.depth), show_default=True,
                 help=f"ResNet depth: {', '.join(map(str, BLOCKS_PER_STAGE))}."),
    click.option("--version", "version", default=FINETUNE.version, show_default=True,
                 help="ResNet version: v1 (keras.applications.ResNet50), v1.5 (torchvision's "
                      "resnet50: stride on the 3x3 convolution) or v2 (ResNet50V2)."),
)
weights_dir_option = click.option(
    "--weights-dir", type=click.Path(file_okay=False), envvar=WEIGHTS_DIR_ENV,
    help="Folder of pre-downloaded official weight files, looked in before Keras' "
         f"cache and the network [env: {WEIGHTS_DIR_ENV}].")
batch_size_option = click.option("--batch-size", type=int, default=INFERENCE_BATCH_SIZE,
                                  show_default=True)
any_size_option = click.option("--image-size", type=int, help="Only for models that take any size.")
tfds_data_dir_option = click.option("--tfds-data-dir", type=click.Path(),
                                    help="TFDS data folder for tfds:NAME.")
strict_option = click.option("--strict", is_flag=True, help="Stop on unreadable or non-image "
                             "files instead of reporting and skipping them.")
# Labels from a CSV file (--data labels.csv): the library's TABLE_OPTIONS.
table_options = _options(
    click.option("--images", type=click.Path(file_okay=False),
                 help="With a CSV: the folder its paths are relative to [default: the CSV's]."),
    click.option("--path-column", help="With a CSV: the column of image paths [default: path, "
                                       "file, filename, filepath, image or image_path]."),
    click.option("--label-column", help="With a CSV: the column of labels [default: label, "
                                        "labels, class, category, tags or target]."),
    click.option("--split-column", help="With a CSV: the column of splits, train, val or test, "
                                        "used as given [default: split or subset, if present]."),
    click.option("--label-sep", help="With a CSV: the separator of several labels in one cell, "
                                     "which makes it multi-label [default: ; or | if found]."),
    click.option("--multi-label", is_flag=True,
                 help="With a CSV: multi-label (sigmoid outputs) even if no cell holds several "
                      "labels."),
)
reports_out_option = click.option("--out", required=True, type=click.Path(file_okay=False),
                                  help="Folder for the reports.")


calibrate_option = click.option(
    "--calibrate", is_flag=True,
    help="Fit a temperature on the validation images and store it in the model "
         "(report.html shows the calibration error before and after).")


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
@click.option("--image-size", type=int, show_default=BACKBONE_SIZE,
              help="Input height and width used for the output shapes.")
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
    named = f"arch {summary['arch']}" if family else \
        f"depth {summary['depth']}, version {summary['version']}"
    default_size = f", ImageNet size {summary['default_image_size']}" if family else ""
    echo(f"{summary['name']} ({named}, input {image_size}x{image_size}x3, preprocessing "
         f"'{summary['preprocessing']}'{default_size})")
    echo("")
    header = f"{'group':<7} {'layers':>6}  {'output shape':<22} {'parameters':>12}"
    echo(header)
    echo("-" * len(header))
    for row in summary["groups"]:
        shape = "x".join("?" if d is None else str(d) for d in row["output_shape"])
        echo(f"{row['name']:<7} {row['layers']:>6}  {shape:<22} {row['params']:>12,}")
    echo("-" * len(header))
    echo(f"{'total':<7} {summary['layers']:>6}  {'':<22} {summary['params']:>12,}")
    echo(f"trainable {summary['trainable_params']:,}, "
         f"non-trainable {summary['non_trainable_params']:,} (BatchNormalization statistics)")
    echo(f"FLOPs per image: {summary['flops'] / 1e9:.2f} G ({summary['multiply_adds'] / 1e9:.2f} "
         f"G multiply-adds, convolutions and dense layers, at {image_size}x{image_size})")
    echo("")
    if summary["weights"]:
        echo("ImageNet weights (keras.applications):")
        for entry in summary["weights"]:
            kind = "with top" if entry["include_top"] else "notop   "
            digest = (f"sha256 {entry['sha256']}" if entry["sha256"] else
                      f"md5 {entry['md5']}" if entry["md5"] else "no published hash")
            echo(f"  {kind}  {entry['file']}  {digest}")
        echo(f"  from {summary['weights'][0]['url'].rsplit('/', 1)[0]}/")
    else:
        echo(f"ImageNet weights: no keras.applications file exists for "
             f"{summary['version']}; use torchvision/timm checkpoints (--weights FILE):")
        for entry in summary["torch_weights"]:
            top1 = f"top-1 {entry['top1']:.1f}%" if entry["top1"] else ""
            echo(f"  {entry['source']:<11}  {entry['name']:<17} {top1:<12}  {entry['url']}")


@cli.command()
@architecture_options
@click.option("--top/--notop", "include_top", default=False, show_default=True,
              help="The file with the 1000-class ImageNet classifier, or without it.")
@weights_dir_option
def weights(arch, depth, version, include_top, weights_dir):
    """Find (or download) the official ImageNet weights file and print its path.

    \b
    Examples:
      transfer weights --depth 50
      transfer weights --depth 101 --version v2 --weights-dir /data/keras-weights
    """
    echo(weights_command.weights(depth, version, include_top=include_top,
                                 weights_dir=weights_dir, arch=arch))


# The options of a fine-tuning recipe, shared by finetune and lr-find.
recipe_options = _options(
    architecture_options,
    click.option("--weights", default=FINETUNE.weights, show_default=True,
                 help="imagenet (v1, v2), none (random initialisation), or a weights file "
                      "(.h5, .weights.h5, .keras; for v1.5 a torchvision .pth or timm "
                      ".safetensors checkpoint)."),
    weights_dir_option,
    _finetune_option("--image-size", type=int, show_default=BACKBONE_SIZE),
    _finetune_option("--batch-size", type=int, help="Global batch size."),
    _finetune_option("--val-split", type=float,
                     help="Fraction of each class held out for validation (by a hash of its path)."),
    _finetune_option("--test-split", type=float,
                     help="Fraction of each class held out for a final test."),
    _finetune_option("--head-init", type=Choice(finetune_options.HEAD_INITS),
                     help="Phase 1 on cached features: probe fits a logistic regression (C by "
                          "cross-validation) as the head; train (or a number of --head-epochs) "
                          "trains it with the optimizer."),
    _finetune_option("--head-epochs", type=IntOrAuto(),
                     help="Phase 1: epochs for the new head on the frozen backbone; auto: the "
                          "probe, or (--head-init train) enough steps to converge on cached "
                          "features (at least 10 epochs)."),
    _finetune_option("--head-lr", "head_learning_rate", type=float),
    _finetune_option("--fine-tune-from",
                     help="Phase 2: first group to unfreeze (stem, conv2..conv5, post), or none."),
    _finetune_option("--fine-tune-epochs", type=int),
    _finetune_option("--fine-tune-lr", "fine_tune_learning_rate", type=float),
    _finetune_option("--lr-schedule", type=Choice(finetune_options.LR_SCHEDULES),
                     help="Phase 2: cosine warms up over the first epoch, then decays to 0."),
    _finetune_option("--layer-decay", type=float,
                     help="Phase 2: each group below the head learns this much slower "
                          "(1: one learning rate for all)."),
    click.option("--ema", is_flag=True,
                 help="Phase 2 ends with the exponential moving average of its weights."),
    _finetune_option("--keep", type=Choice(finetune_options.KEEP_MODES),
                     help="best: phase 1's model when phase 2 does not clearly beat it on "
                          "validation; last: phase 2's model regardless."),
    click.option("--refit/--no-refit", default=FINETUNE.refit, show_default=True,
                 help="When phase 1 (the probe) is kept, fit it again on the training and "
                      "validation images together."),
    click.option("--train-bn", is_flag=True,
                 help="Let BatchNormalization of unfrozen groups train (default: inference mode)."),
    _finetune_option("--optimizer", type=Choice(tuple(finetune_options.OPTIMIZERS)),
                     help="sgd uses momentum 0.9."),
    _finetune_option("--label-smoothing", type=float),
    _finetune_option("--dropout", type=float),
    _finetune_option("--pooling", type=Choice(POOLINGS)),
    click.option("--hidden-units", type=int, default=None, help="Add a hidden ReLU layer to the head."),
    click.option("--standardize/--no-standardize", default=FINETUNE.standardize, show_default=True,
                 help="Standardise the pooled features inside the head (training statistics)."),
    _finetune_option("--class-weight", type=Choice(finetune_options.CLASS_WEIGHT_MODES),
                     help="auto: balanced weights for imbalanced classes."),
    _finetune_option("--augment", type=Choice(finetune_options.AUGMENT_PRESETS),
                     help="Phase 2's augmentation: none and flip (fastest: the frozen groups run "
                          "once), light (flip, shift), default (flip, rotation, "
                          "zoom, contrast), strong (flip, RandAugment, random erasing)."),
    click.option("--flip/--no-flip", default=FINETUNE.flip, show_default=True,
                 help="Horizontal flips in the augmentation (--no-flip for digits and text)."),
    _finetune_option("--early-stopping", "early_stopping_patience", type=int,
                     help="Stop a phase after this many epochs without a better val_loss, and "
                          "restore the best weights (0: off)."),
    _finetune_option("--seed", type=int),
    _finetune_option("--backup-interval", type=float,
                     help="Seconds between the backups that --resume continues from (written "
                          "at the end of an epoch; 0: every epoch)."),
    strict_option,
    _finetune_option("--max-pixels", type=int,
                     help="Images whose header declares more pixels are skipped unread "
                          "(Pillow's decompression-bomb limit)."),
    click.option("--no-cache", "cache_features", flag_value=False, default=True,
                 help="Train phase 1 through the frozen backbone instead of on cached features."),
    click.option("--cache-dir", type=click.Path(file_okay=False),
                 help="Where phase-1 features are kept for reuse "
                      f"[default: ${CACHE_DIR_ENV} or ~/.cache/transfer/features]."),
    click.option("--mixed-precision", is_flag=True,
                 help="float16 compute on a GPU (on a CPU: accepted, and the run stays float32, "
                      "which is faster there)."),
    _finetune_option("--jit-compile", type=Choice(tuple(finetune_options.JIT_COMPILE)),
                     help="XLA-compile the training steps: auto is Keras' choice, on for GPUs, "
                          "off for CPUs, where oneDNN's kernels were faster."),
    _finetune_option("--strategy", type=Choice(STRATEGIES),
                     help="tf.distribute: auto, one (device), mirrored (all GPUs of this machine) "
                          "or multiworker (machines listed in TF_CONFIG)."),
    tfds_data_dir_option,
    table_options,
)


@cli.command()
@click.option("--data", "--labels", "data", required=True,
              help="Image folder (one sub-folder per class, or train/ val/ test/), tfds:NAME, "
                   "or a CSV file of image paths and labels.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run directory [default: runs/<timestamp>-<data name>].")
@click.option("--overwrite", is_flag=True, help="Replace the run in a non-empty --out.")
@recipe_options
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in --out from its last completed epoch "
                   "(same command otherwise).")
@calibrate_option
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write report.html at the end (its duplicates check needs the training "
                   "images' features: a pass of the backbone over them when phase 2 is "
                   "kept; `transfer report` writes it later).")
def finetune(data, out, overwrite, resume, calibrate, report, **options):
    """Fine-tune a ResNet on a folder of images (or a TFDS dataset).

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
    """
    if resume and not out:
        raise click.UsageError("--resume needs the --out of the run to continue.")
    result = finetune_command.finetune(data, out=out, overwrite=overwrite, resume=resume,
                                       calibrate=calibrate, report=report, **options)
    echo("")
    for split, name in (("val", "validation"), ("test", "test")):
        if split in result.metrics:
            _echo_metrics(name, result.metrics[split], log_loss=False)
    kept = result.metrics["kept"]
    if "validation" in kept:
        scores = kept["validation"]
        echo(f"kept: {phase_label(kept['phase'])} - {kept['reason']} (validation accuracy: "
             f"phase 1 {scores['head']['accuracy']:.4f}, "
             f"phase 2 {scores['fine-tune']['accuracy']:.4f})")
    if "refit" in kept:
        echo(f"refit: phase 1's probe on {kept['refit']['images']} training and validation "
             "images (the validation scores above are from before it)")
    timings = result.timings
    phases = [f"head {timings.get('head_seconds', 0):.0f}s"]
    if "fine_tune_seconds" in timings:
        phases.append(f"fine-tune {timings['fine_tune_seconds']:.0f}s")
    echo(f"time: {', '.join(phases)}, total {timings['total_seconds']:.0f}s")
    if result.metrics.get("skipped_files"):
        echo(f"skipped files: {len(result.metrics['skipped_files'])} "
             "(listed in metrics.json)")
    echo(f"run directory: {result.run_dir}")


@cli.command("lr-find")
@click.option("--data", "--labels", "data", required=True,
              help="Image folder, tfds:NAME or a CSV file of paths and labels.")
@reports_out_option
@click.option("--overwrite", is_flag=True, help="Replace the files in a non-empty --out.")
@click.option("--start-lr", type=float, default=lr_find_command.START_LR, show_default=True)
@click.option("--end-lr", type=float, default=lr_find_command.END_LR, show_default=True)
@click.option("--steps", type=int, default=lr_find_command.STEPS, show_default=True,
              help="Batches over which the learning rate grows from --start-lr to --end-lr.")
@recipe_options
def lr_find(data, out, overwrite, start_lr, end_lr, steps, **options):
    """Learning-rate range test for phase 2: suggests --fine-tune-lr.

    Runs phase 1, then trains the groups from --fine-tune-from on while the learning
    rate grows exponentially, until the loss runs away. Writes lr_find.png and
    lr_find.csv; the suggestion is a tenth of the rate at the lowest loss (fastai).

    \b
    Example:
      transfer lr-find --data ./flowers --out runs/flowers-lr
    """
    result = lr_find_command.lr_find(data, out, start_lr=start_lr, end_lr=end_lr, steps=steps,
                                     overwrite=overwrite, **options)
    echo(f"suggested: --fine-tune-lr {result.suggested:.2g} "
         f"(plot: {result.out / lr_find_command.PLOT_FILE})")


def _echo_metrics(name, m, log_loss=True):
    echo(f"{split_title(name, m)}: {scores_line(m, log_loss)}")


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.option("--data", "--labels", "data", required=True,
              help="Image folder (class sub-folders), tfds:NAME or a CSV file of paths and labels.")
@reports_out_option
@click.option("--overwrite", is_flag=True, help="Replace the reports in a non-empty --out.")
@batch_size_option
@any_size_option
@tfds_data_dir_option
@click.option("--strict", is_flag=True, help="Stop on unreadable files instead of skipping.")
@click.option("--tta", is_flag=True, help="Average each image's probabilities with its "
                                          "horizontal mirror's (not for digits or text).")
@click.option("--compare", type=click.Path(),
              help="Run or .keras model to compare with (top-1 agreement, accuracy "
                   "difference); an export of transfer names its own run by default.")
@table_options
def evaluate(run_or_model, data, out, overwrite, batch_size, image_size, tfds_data_dir, strict,
             tta, compare, **table):
    """Evaluate a trained classifier, or an export of one, on labelled images.

    RUN_OR_MODEL is a run directory, a .keras file, a SavedModel folder, a .tflite
    or an .onnx file.

    Writes classification_report.txt, confusion_matrix.png/.csv, predictions.csv,
    metrics.json and report.html to --out. Images of classes the model does not know are
    counted and reported apart.

    \b
    Example:
      transfer evaluate runs/flowers --data ./flowers-test --out reports/flowers-test
      transfer evaluate flowers-int8.tflite --data ./flowers-test --out reports/int8
    """
    metrics = evaluate_command.evaluate(run_or_model, data, out, batch_size=batch_size,
                                        image_size=image_size, tfds_data_dir=tfds_data_dir,
                                        overwrite=overwrite, strict=strict, tta=tta,
                                        compare=compare, **table)
    echo("")
    _echo_metrics(f"{metrics['split']} split", metrics)
    if metrics.get("agreement"):
        echo(f"agreement with {metrics['compared_with']}: "
             f"{describe_agreement(metrics['agreement'])}")
    if metrics["unknown_class_images"]:
        echo(f"images of unknown classes: {metrics['unknown_class_images']} "
             f"({', '.join(metrics['unknown_classes'])}), not in the metrics")
    echo(f"reports: {out}")


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=int, default=predict_command.TOP_K, show_default=True)
@click.option("--format", "output_format", default=predict_command.OUTPUT_FORMATS[0],
              show_default=True, type=Choice(predict_command.OUTPUT_FORMATS, name="format"))
@batch_size_option
@any_size_option
@click.option("--tta", is_flag=True, help="Average each image's probabilities with its "
                                          "horizontal mirror's (not for digits or text).")
@click.option("--min-confidence", type=float,
              help=f"Label an image '{predict_command.UNKNOWN}' when its top probability is "
                   "below this (report.html shows accuracy against coverage; single-label "
                   "models).")
def predict(run_or_model, paths, top_k, output_format, batch_size, image_size, tta,
            min_confidence):
    """Top-k labels and probabilities for image files and folders (for a multi-label
    model: every label above its threshold).

    An unreadable file gets its error in its own row; the others go on.

    \b
    Examples:
      transfer predict runs/flowers photo.jpg ./more-photos
      transfer predict runs/flowers ./photos --format csv > predictions.csv
      transfer predict runs/flowers ./photos --min-confidence 0.8
    """
    rows = predict_command.predict(run_or_model, paths, top_k=top_k, batch_size=batch_size,
                                   image_size=image_size, tta=tta, min_confidence=min_confidence)
    PREDICTION_PRINTERS[output_format](rows)
    errors = sum(1 for r in rows if r["error"])
    if errors:
        click.echo(f"{errors} of {len(rows)} files could not be read.", err=True)


def _label(r):
    """{"label": ...} where predict chose one (with --min-confidence), else nothing."""
    return {"label": r["label"]} if "label" in r else {}


def _print_json(rows):
    echo(json.dumps([
        {"path": r["path"], **_label(r), "error": r["error"],
         "predictions": [{"label": label, "probability": p} for label, p in r["predictions"]]}
        for r in rows], indent=2))


def _print_csv(rows):
    writer = csv.writer(results_stream())
    k = max((len(r["predictions"]) for r in rows), default=0)
    chosen = ["label"] if rows and "label" in rows[0] else []
    writer.writerow(["path", *chosen, *[f"{kind}_{i + 1}" for i in range(k)
                                        for kind in ("label", "probability")], "error"])
    for r in rows:
        cells = [c for label, p in r["predictions"] for c in (label, f"{p:.6f}")]
        cells += [""] * (2 * k - len(cells))
        writer.writerow([r["path"], *[r["label"] or "" for _ in chosen], *cells, r["error"] or ""])


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
@click.option("--format", "format", default="keras", show_default=True,
              type=Choice(tuple(export_command.FORMATS), name="export format"),
              help="keras (.keras file), savedmodel (folder, for TF Serving), tflite, onnx, "
                   "or h5 (the backbone's weights as a keras.applications notop file, for "
                   "--weights of another run).")
@click.option("--quantize", default="none", show_default=True,
              type=Choice(export_command.QUANTIZATIONS, name="quantization"),
              help="TFLite only: int8 and int16x8 (int8 weights, 16-bit activations) calibrate "
                   "on a seeded sample of the training images; int8 keeps the features and "
                   "the head float.")
@click.option("--out", required=True, type=click.Path(), help="File or folder to write.")
@click.option("--feature-extractor", is_flag=True,
              help="Export the backbone with its preprocessing and pooling, not the classifier.")
@click.option("--group", help="With --feature-extractor: end at this group (stem, conv2..conv5).")
@click.option("--pooling", default=export_command.POOLING, show_default=True,
              type=Choice((*POOLINGS, "none")),
              help="With --feature-extractor: none keeps the feature map.")
@any_size_option
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@click.option("--data", help="Images for int8 calibration and the comparison with the Keras "
                             "model, instead of the run's own (its config.json).")
@click.option("--max-drop", default=export_command.MAX_DROP, show_default=True, type=float,
              help="Warn when the export's accuracy is more than this many points below the "
                   "Keras model's.")
@click.option("--no-compare", is_flag=True,
              help="Skip running the export beside the Keras model on the validation images.")
def export(run_or_model, format, out, feature_extractor, group, pooling, image_size, overwrite,
           quantize, data, max_drop, no_compare):
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
    path = export_command.export(run_or_model, out, format=format,
                                 feature_extractor=feature_extractor, group=group,
                                 pooling=None if pooling == "none" else pooling,
                                 image_size=image_size, overwrite=overwrite, quantize=quantize,
                                 data=data, max_drop=max_drop, compare=not no_compare)
    echo(f"exported: {path}")


@cli.command()
@click.option("--data", "--labels", "data", required=True,
              help="Image folder, tfds:NAME or a CSV file of paths and labels.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write (.npz).")
@click.option("--model", "model", type=click.Path(),
              help="Run directory or .keras model whose backbone to use.")
@architecture_options
@click.option("--weights", default=FINETUNE.weights, show_default=True,
              help="Without --model: imagenet, none or a weights file.")
@weights_dir_option
@_finetune_option("--image-size", type=int, show_default=BACKBONE_SIZE,
                  help="Without --model: input size.")
@_finetune_option("--pooling", type=Choice(POOLINGS))
@batch_size_option
@_finetune_option("--val-split", type=float,
                  help="Marks each image's split (by a hash of its path), as finetune does.")
@_finetune_option("--test-split", type=float)
@tfds_data_dir_option
@strict_option
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
@table_options
def embed(data, out, model, arch, depth, version, weights, weights_dir, image_size, pooling,
          batch_size, val_split, test_split, tfds_data_dir, strict, overwrite, **table):
    """Backbone features of every image, with labels, paths and splits, as .npz.

    \b
    Examples:
      transfer embed --data ./flowers --out flowers.npz
      transfer embed --data ./flowers --model runs/flowers --out tuned.npz
    """
    result = embed_command.embed(
        data, out=out, model=model, arch=arch, depth=depth, version=version, weights=weights,
        weights_dir=weights_dir, image_size=image_size, batch_size=batch_size, pooling=pooling,
        val_split=val_split, test_split=test_split, tfds_data_dir=tfds_data_dir, strict=strict,
        overwrite=overwrite, **table)
    n, d = result["features"].shape
    echo(f"embedded {n} images ({d} features each, {len(result['class_names'])} classes) "
         f"to {out}")


@cli.command()
@click.argument("embeddings", type=click.Path())
@reports_out_option
@click.option("--folds", type=int, default=probe_command.FOLDS, show_default=True,
              help="Cross-validation folds for choosing the regularisation.")
@click.option("--seed", type=int, default=probe_command.SEED, show_default=True)
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
    duplicates and skipped files. Open it in any browser.

    \b
    Examples:
      transfer report runs/flowers && xdg-open runs/flowers/report.html
      transfer report runs/flowers --calibrate
    """
    path, metrics = report_command.report(run_dir, calibrate=calibrate, batch_size=batch_size)
    calibration = metrics.get("calibration", {})
    if "temperature" in calibration:
        echo(f"temperature {calibration['temperature']:.3f}: validation ECE "
             f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}")
    leaked = metrics.get("leaked_duplicates", {})
    if leaked.get("checked"):
        echo("leaked duplicates: " + ", ".join(f"{split} {leaked[split]}"
                                               for split in ("val", "test") if split in leaked))
    echo(f"report: {path}")


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the overlays (<image name>.gradcam.png).")
@click.option("--top-k", type=int, default=predict_command.TOP_K, show_default=True)
@click.option("--group", help="Convolutional group to explain (conv2..conv5, post) "
                              "[default: the last one at least 4 cells wide].")
@any_size_option
def explain(run_or_model, paths, out, top_k, group, image_size):
    """Grad-CAM heat maps of the top-k classes for image files and folders.

    \b
    Example:
      transfer explain runs/flowers photo.jpg ./more-photos --out explained
    """
    rows = explain_command.explain(run_or_model, paths, out, top_k=top_k, group=group,
                                   image_size=image_size)
    for path, written, labels, error in rows:
        if error:
            echo(f"{path}  error: {error}")
        else:
            echo(f"{path}  {'  '.join(f'{label} {p:.3f}' for label, p in labels)}  -> {written}")


def main():
    if os.environ.get(DEBUG_ENV) != "1" and "--debug" not in sys.argv:
        filter_stderr()
    cli(prog_name="transfer")


if __name__ == "__main__":
    main()
