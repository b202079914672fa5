"""The `transfer` command line: a thin click layer over the library.

Library errors become one line, `Error: ...`, with exit code 2 for bad usage or
input and 1 for failures at run time; `--debug` (or TRANSFER_DEBUG=1) shows the
traceback instead.
"""

import json
import os
import sys

# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is not for users.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402

from transfer.errors import TransferError  # noqa: E402

DEBUG_ENV = "TRANSFER_DEBUG"


class TransferGroup(click.Group):
    """A click group that reports every error as a single `Error: ...` line."""

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
        except TransferError as exc:
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


def architecture_options(command):
    """--depth and --version, shared by every command that builds a ResNet."""
    command = click.option(
        "--version", "version", default="v1", show_default=True,
        help="ResNet version: v1 (keras.applications.ResNet50), v1.5 (torchvision's "
             "resnet50: stride on the 3x3 convolution) or v2 (ResNet50V2).",
    )(command)
    return click.option(
        "--depth", default="50", show_default=True, help="ResNet depth: 50, 101 or 152.",
    )(command)


@click.group(cls=TransferGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="transfer")
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
@click.option("--image-size", default=224, show_default=True, type=int,
              help="Input height and width used for the output shapes.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def info(depth, version, image_size, as_json):
    """Show an architecture's groups, shapes, parameters and ImageNet weight files.

    \b
    Example:
      transfer info --depth 101 --version v2
    """
    from transfer.models.summary import describe

    summary = describe(depth, version, input_size=image_size)
    if as_json:
        click.echo(json.dumps(_summary_as_dict(summary), indent=2))
        return
    arch = summary["architecture"]
    click.echo(f"{arch.display_name} (depth {arch.depth}, version {arch.version.name}, "
               f"input {image_size}x{image_size}x3, preprocessing "
               f"'{arch.version.preprocessing}')")
    click.echo("")
    header = f"{'group':<7} {'layers':>6}  {'output shape':<22} {'parameters':>12}"
    click.echo(header)
    click.echo("-" * len(header))
    for row in summary["groups"]:
        shape = "x".join("?" if d is None else str(d) for d in row.output_shape[1:])
        click.echo(f"{row.name:<7} {row.layers:>6}  {shape:<22} {row.params:>12,}")
    click.echo("-" * len(header))
    click.echo(f"{'total':<7} {summary['layers']:>6}  {'':<22} {summary['params']:>12,}")
    click.echo(f"trainable {summary['trainable_params']:,}, "
               f"non-trainable {summary['non_trainable_params']:,} (BatchNormalization statistics)")
    click.echo("")
    if summary["weights"]:
        click.echo("ImageNet weights (keras.applications):")
        for entry in summary["weights"]:
            kind = "with top" if entry["include_top"] else "notop   "
            click.echo(f"  {kind}  {entry['file']}  md5 {entry['md5']}")
        click.echo(f"  from {summary['weights'][0]['url'].rsplit('/', 1)[0]}/")
    else:
        click.echo(f"ImageNet weights: no keras.applications file exists for "
                   f"{arch.version.name}; use torchvision/timm checkpoints (--weights FILE):")
        for entry in summary["torch_weights"]:
            top1 = f"top-1 {entry['top1']:.1f}%" if entry["top1"] else ""
            click.echo(f"  {entry['source']:<11}  {entry['name']:<17} {top1:<12}  {entry['url']}")


def weights_dir_option(command):
    """--weights-dir, shared by every command that can load ImageNet weights."""
    return click.option(
        "--weights-dir", type=click.Path(file_okay=False), envvar="TRANSFER_WEIGHTS_DIR",
        help="Folder of pre-downloaded official weight files, looked in before Keras' "
             "cache and the network [env: TRANSFER_WEIGHTS_DIR].",
    )(command)


@cli.command()
@architecture_options
@click.option("--top/--notop", "include_top", default=False, show_default=True,
              help="The file with the 1000-class ImageNet classifier, or without it.")
@weights_dir_option
def weights(depth, version, include_top, weights_dir):
    """Find (or download) the official ImageNet weights file and print its path.

    \b
    Examples:
      transfer weights --depth 50
      transfer weights --depth 101 --version v2 --weights-dir /data/keras-weights
    """
    from transfer.models.architectures import get_architecture
    from transfer.models.weights import imagenet_weights_path

    arch = get_architecture(depth, version)
    click.echo(imagenet_weights_path(arch, include_top=include_top, weights_dir=weights_dir))


def _default(name):
    """The library's default for a fine-tuning option: one source of truth."""
    from transfer.train.options import FinetuneOptions

    return FinetuneOptions.__dataclass_fields__[name].default


def _setup_logging():
    import logging

    class Formatter(logging.Formatter):
        def format(self, record):
            prefix = "Warning: " if record.levelno >= logging.WARNING else ""
            return prefix + record.getMessage()

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter())
    logger = logging.getLogger("transfer")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


@cli.command()
@click.option("--data", required=True,
              help="Image folder (one sub-folder per class, or train/ val/ test/), or tfds:NAME.")
@architecture_options
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet (v1, v2), none (random initialisation), or a weights file "
                   "(.h5, .weights.h5, .keras; for v1.5 a torchvision .pth or timm "
                   ".safetensors checkpoint).")
@weights_dir_option
@click.option("--out", type=click.Path(file_okay=False),
              help="Run directory [default: runs/<timestamp>-<data name>].")
@click.option("--overwrite", is_flag=True, help="Replace the run in a non-empty --out.")
@click.option("--image-size", type=int, default=_default("image_size"), show_default=True)
@click.option("--batch-size", type=int, default=_default("batch_size"), show_default=True,
              help="Global batch size.")
@click.option("--val-split", type=float, default=_default("val_split"), show_default=True,
              help="Fraction of each class held out for validation (by a hash of its path).")
@click.option("--test-split", type=float, default=_default("test_split"), show_default=True,
              help="Fraction of each class held out for a final test.")
@click.option("--head-epochs", type=int, default=_default("head_epochs"), show_default=True,
              help="Phase 1: epochs for the new head on the frozen backbone.")
@click.option("--head-lr", "head_learning_rate", type=float,
              default=_default("head_learning_rate"), show_default=True)
@click.option("--fine-tune-from", default=_default("fine_tune_from"), show_default=True,
              help="Phase 2: first group to unfreeze (stem, conv2..conv5, post), or none.")
@click.option("--fine-tune-epochs", type=int, default=_default("fine_tune_epochs"),
              show_default=True)
@click.option("--fine-tune-lr", "fine_tune_learning_rate", type=float,
              default=_default("fine_tune_learning_rate"), show_default=True)
@click.option("--train-bn", is_flag=True,
              help="Let BatchNormalization of unfrozen groups train (default: inference mode).")
@click.option("--optimizer", default=_default("optimizer"), show_default=True,
              help="adam, adamw, sgd (momentum 0.9) or rmsprop.")
@click.option("--label-smoothing", type=float, default=_default("label_smoothing"),
              show_default=True)
@click.option("--dropout", type=float, default=_default("dropout"), show_default=True)
@click.option("--pooling", default=_default("pooling"), show_default=True, help="avg or max.")
@click.option("--hidden-units", type=int, default=None, help="Add a hidden ReLU layer to the head.")
@click.option("--class-weight", default=_default("class_weight"), show_default=True,
              help="none, or auto (balanced weights for imbalanced classes).")
@click.option("--augment", default=_default("augment"), show_default=True,
              help="Which phases see flip/rotation/zoom/contrast: none, fine-tune or both.")
@click.option("--early-stopping", "early_stopping_patience", type=int,
              default=_default("early_stopping_patience"), show_default=True,
              help="Stop a phase after this many epochs without a better val_loss, and "
                   "restore the best weights (0: off).")
@click.option("--seed", type=int, default=_default("seed"), show_default=True)
@click.option("--strict", is_flag=True, help="Stop on unreadable or non-image files "
                                             "instead of reporting and skipping them.")
@click.option("--no-cache", "cache_features", flag_value=False, default=True,
              help="Train phase 1 through the frozen backbone instead of on cached features.")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Where phase-1 features are kept for reuse "
                   "[default: $TRANSFER_CACHE_DIR or ~/.cache/transfer/features].")
@click.option("--mixed-precision", is_flag=True,
              help="float16 compute on a GPU (on a CPU: accepted, and the run stays float32, "
                   "which is faster there).")
@click.option("--jit-compile", default=_default("jit_compile"), show_default=True,
              help="XLA-compile the training steps: on, off, or auto (Keras' choice: on "
                   "for GPUs, off for CPUs, where oneDNN's kernels were faster).")
@click.option("--strategy", default=_default("strategy"), show_default=True,
              help="tf.distribute: auto, one (device), mirrored (all GPUs of this machine) "
                   "or multiworker (machines listed in TF_CONFIG).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in --out from its last completed epoch "
                   "(same command otherwise).")
@click.option("--tfds-data-dir", type=click.Path(), help="TFDS data folder for tfds:NAME.")
def finetune(data, out, overwrite, resume, **options):
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
    """
    from transfer.train.finetune import finetune as run_finetune

    _setup_logging()
    if resume and not out:
        raise click.UsageError("--resume needs the --out of the run to continue.")
    result = run_finetune(data, out=out, overwrite=overwrite, resume=resume, **options)
    _print_run_summary(result)


def _print_run_summary(result):
    metrics, timings = result.metrics, result.timings
    click.echo("")
    for split in ("val", "test"):
        if split not in metrics:
            continue
        m = metrics[split]
        parts = [f"accuracy {m['accuracy']:.4f}"]
        if "top5_accuracy" in m:
            parts.append(f"top-5 {m['top5_accuracy']:.4f}")
        parts.append(f"macro F1 {m['macro_f1']:.4f}")
        name = "validation" if split == "val" else "test"
        click.echo(f"{name} ({m['images']} images): " + ", ".join(parts))
    phases = [f"head {timings.get('head_seconds', 0):.0f}s"]
    if "fine_tune_seconds" in timings:
        phases.append(f"fine-tune {timings['fine_tune_seconds']:.0f}s")
    click.echo(f"time: {', '.join(phases)}, total {timings['total_seconds']:.0f}s")
    if metrics.get("skipped_files"):
        click.echo(f"skipped files: {len(metrics['skipped_files'])} (listed in metrics.json)")
    click.echo(f"run directory: {result.run_dir}")


def _print_metrics_line(name, m):
    parts = [f"accuracy {m['accuracy']:.4f}"]
    if "top5_accuracy" in m:
        parts.append(f"top-5 {m['top5_accuracy']:.4f}")
    parts += [f"macro F1 {m['macro_f1']:.4f}", f"log loss {m['log_loss']:.4f}"]
    click.echo(f"{name} ({m['images']} images): " + ", ".join(parts))


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.option("--data", required=True, help="Image folder (class sub-folders) or tfds:NAME.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the reports.")
@click.option("--overwrite", is_flag=True, help="Replace the reports in a non-empty --out.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--image-size", type=int, help="Only for models that take any size.")
@click.option("--tfds-data-dir", type=click.Path())
@click.option("--strict", is_flag=True, help="Stop on unreadable files instead of skipping.")
def evaluate(run_or_model, data, out, overwrite, batch_size, image_size, tfds_data_dir, strict):
    """Evaluate a trained classifier on labelled images.

    Writes classification_report.txt, confusion_matrix.png/.csv, predictions.csv
    and metrics.json to --out. Images of classes the model does not know are
    counted and reported apart.

    \b
    Example:
      transfer evaluate runs/flowers --data ./flowers-test --out reports/flowers-test
    """
    from transfer.inference import evaluate as run_evaluate

    _setup_logging()
    metrics = run_evaluate(run_or_model, data, out, batch_size=batch_size,
                           image_size=image_size, tfds_data_dir=tfds_data_dir,
                           overwrite=overwrite, strict=strict)
    click.echo("")
    _print_metrics_line(f"{metrics['split']} split", metrics)
    if metrics["unknown_class_images"]:
        click.echo(f"images of unknown classes: {metrics['unknown_class_images']} "
                   f"({', '.join(metrics['unknown_classes'])}), not in the metrics")
    click.echo(f"reports: {out}")


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--top-k", type=int, default=3, show_default=True)
@click.option("--format", "output_format", default="table", show_default=True,
              help="table, csv or json.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--image-size", type=int, help="Only for models that take any size.")
def predict(run_or_model, paths, top_k, output_format, batch_size, image_size):
    """Top-k labels and probabilities for image files and folders.

    An unreadable file gets its error in its own row; the others go on.

    \b
    Examples:
      transfer predict runs/flowers photo.jpg ./more-photos
      transfer predict runs/flowers ./photos --format csv > predictions.csv
    """
    import csv as csv_module

    from transfer.inference import predict as run_predict

    if output_format not in ("table", "csv", "json"):
        raise click.UsageError(
            f"Unknown format: {output_format!r}. Expected one of table, csv, json.")
    _setup_logging()
    rows = run_predict(run_or_model, paths, top_k=top_k, batch_size=batch_size,
                       image_size=image_size)
    if output_format == "json":
        click.echo(json.dumps([
            {"path": r["path"], "error": r["error"],
             "predictions": [{"label": label, "probability": p} for label, p in r["predictions"]]}
            for r in rows], indent=2))
    elif output_format == "csv":
        writer = csv_module.writer(click.get_text_stream("stdout"))
        k = max((len(r["predictions"]) for r in rows), default=0)
        writer.writerow(["path", *[f"{kind}_{i + 1}" for i in range(k)
                                   for kind in ("label", "probability")], "error"])
        for r in rows:
            cells = [c for label, p in r["predictions"] for c in (label, f"{p:.6f}")]
            cells += [""] * (2 * k - len(cells))
            writer.writerow([r["path"], *cells, r["error"] or ""])
    else:
        width = max(len(r["path"]) for r in rows)
        for r in rows:
            if r["error"]:
                click.echo(f"{r['path']:<{width}}  error: {r['error']}")
            else:
                shown = "  ".join(f"{label} {p:.3f}" for label, p in r["predictions"])
                click.echo(f"{r['path']:<{width}}  {shown}")
    errors = sum(1 for r in rows if r["error"])
    if errors:
        click.echo(f"{errors} of {len(rows)} files could not be read.", err=True)


@cli.command()
@click.argument("run_or_model", type=click.Path())
@click.option("--format", "export_format", default="keras", show_default=True,
              help="keras (.keras file), savedmodel (folder, for TF Serving), tflite, or h5 "
                   "(the backbone's weights as a keras.applications notop file, for "
                   "--weights of another run).")
@click.option("--out", required=True, type=click.Path(), help="File or folder to write.")
@click.option("--feature-extractor", is_flag=True,
              help="Export the backbone with its preprocessing and pooling, not the classifier.")
@click.option("--group", help="With --feature-extractor: end at this group (stem, conv2..conv5).")
@click.option("--pooling", default="avg", show_default=True,
              help="With --feature-extractor: avg, max or none (keep the feature map).")
@click.option("--image-size", type=int, help="Only for models that take any size.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def export(run_or_model, export_format, out, feature_extractor, group, pooling, image_size,
           overwrite):
    """Export a trained model as Keras, SavedModel or TFLite, or its backbone's weights.

    Every export takes raw RGB pixels (the SavedModel's serving signature and the
    TFLite model take uint8 images); a classifier export has labels.txt beside it.

    \b
    Examples:
      transfer export runs/flowers --format savedmodel --out exports/flowers
      transfer export runs/flowers --format tflite --out exports/flowers.tflite
      transfer export runs/flowers --feature-extractor --group conv4 --out conv4.keras
      transfer export runs/source --format h5 --out source_notop.h5
    """
    from transfer.export import export as run_export

    _setup_logging()
    path = run_export(run_or_model, out, format=export_format,
                      feature_extractor=feature_extractor, group=group,
                      pooling=None if pooling == "none" else pooling, image_size=image_size,
                      overwrite=overwrite)
    click.echo(f"exported: {path}")


@cli.command()
@click.option("--data", required=True, help="Image folder or tfds:NAME.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write (.npz).")
@click.option("--model", "model_path", type=click.Path(),
              help="Run directory or .keras model whose backbone to use.")
@architecture_options
@click.option("--weights", default="imagenet", show_default=True,
              help="Without --model: imagenet, none or a weights file.")
@weights_dir_option
@click.option("--image-size", type=int, default=224, show_default=True,
              help="Without --model: input size.")
@click.option("--pooling", default="avg", show_default=True, help="avg or max.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--val-split", type=float, default=0.2, show_default=True,
              help="Marks each image's split (by a hash of its path), as finetune does.")
@click.option("--test-split", type=float, default=0.0, show_default=True)
@click.option("--tfds-data-dir", type=click.Path())
@click.option("--strict", is_flag=True)
def embed(data, out, model_path, depth, version, weights, weights_dir, image_size, pooling,
          batch_size, val_split, test_split, tfds_data_dir, strict):
    """Backbone features of every image, with labels, paths and splits, as .npz.

    \b
    Examples:
      transfer embed --data ./flowers --out flowers.npz
      transfer embed --data ./flowers --model runs/flowers --out tuned.npz
    """
    from transfer.embed import embed as run_embed

    _setup_logging()
    result = run_embed(data, out=out, model=model_path, depth=depth, version=version,
                       weights=weights, weights_dir=weights_dir, image_size=image_size,
                       batch_size=batch_size, pooling=pooling, val_split=val_split,
                       test_split=test_split, tfds_data_dir=tfds_data_dir, strict=strict)
    n, d = result["features"].shape
    click.echo(f"embedded {n} images ({d} features each, {len(result['class_names'])} classes) "
               f"to {out}")


@cli.command()
@click.argument("embeddings", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder for the reports.")
@click.option("--folds", type=int, default=5, show_default=True,
              help="Cross-validation folds for choosing the regularisation.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--overwrite", is_flag=True)
def probe(embeddings, out, folds, seed, overwrite):
    """Linear probe: logistic regression on embeddings from `transfer embed`.

    Standardises the features, chooses the regularisation by cross-validation on
    the train split, and reports on val (and test) like `evaluate`.

    \b
    Example:
      transfer embed --data ./flowers --out flowers.npz && transfer probe flowers.npz --out probe
    """
    from transfer.embed import probe as run_probe

    _setup_logging()
    metrics = run_probe(embeddings, out, folds=folds, seed=seed, overwrite=overwrite)
    click.echo("")
    for split in ("val", "test"):
        if split in metrics:
            _print_metrics_line("validation" if split == "val" else "test", metrics[split])
    click.echo(f"C = {metrics['C']:.4g}; reports: {out}")


def _summary_as_dict(summary):
    arch = summary["architecture"]
    return {
        "name": arch.display_name,
        "depth": arch.depth,
        "version": arch.version.name,
        "preprocessing": arch.version.preprocessing,
        "groups": [
            {"name": r.name, "layers": r.layers, "output_shape": list(r.output_shape[1:]),
             "params": r.params}
            for r in summary["groups"]
        ],
        "layers": summary["layers"],
        "params": summary["params"],
        "trainable_params": summary["trainable_params"],
        "non_trainable_params": summary["non_trainable_params"],
        "weights": summary["weights"],
        "torch_weights": summary["torch_weights"],
    }


def main():
    cli(prog_name="transfer")


if __name__ == "__main__":
    main()
