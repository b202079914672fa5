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
        help="ResNet version: v1 (keras.applications.ResNet50) or v2 (ResNet50V2).",
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
    click.echo("ImageNet weights (keras.applications):")
    for entry in summary["weights"]:
        kind = "with top" if entry["include_top"] else "notop   "
        click.echo(f"  {kind}  {entry['file']}  md5 {entry['md5']}")
    click.echo(f"  from {summary['weights'][0]['url'].rsplit('/', 1)[0]}/")


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
    }


def main():
    cli(prog_name="transfer")


if __name__ == "__main__":
    main()
