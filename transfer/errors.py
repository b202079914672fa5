"""The exception types `transfer` raises, the exit code the CLI gives each, and the
small helpers that keep messages alike.

Messages speak the library's terms: they name an argument as `name=value`
(`out=runs/a is not empty`, `pass overwrite=True`). The CLI turns those into its
flags (`--out runs/a`, `--overwrite`) at its boundary, so a Python caller never
gets advice about flags it did not pass.
"""

import numbers

SHOWN_ITEMS = 5  # items named in a message before "and N more"


class TransferError(Exception):
    """Base class of every error `transfer` raises on purpose."""

    exit_code = 1


class InvalidArgumentError(TransferError, ValueError):
    """An argument or option has a value that cannot be used (exit code 2)."""

    exit_code = 2


class WeightsError(TransferError, ValueError):
    """A weights file is missing, unreadable, or belongs to another architecture."""

    exit_code = 2


class DataError(TransferError, ValueError):
    """A dataset is missing, empty, or unusable as given (exit code 2)."""

    exit_code = 2


class RunFailedError(TransferError, RuntimeError):
    """Something failed while running: an unwritable output, an interrupted download."""

    exit_code = 1


class MissingExtraError(TransferError, ImportError):
    """An optional dependency (a converter or runtime of one export format) is not
    installed; the message names the extra that installs it."""

    exit_code = 1


class RunInterruptedError(TransferError, KeyboardInterrupt):
    """The user stopped a command (Ctrl-C): still a KeyboardInterrupt, with a message
    that says what to do next; exit code 130, as for SIGINT."""

    exit_code = 130


def first_line(exc, limit=200):
    """The first line of an exception's message (its type name if it has none)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def listing(items, limit=SHOWN_ITEMS, separator=", "):
    """The first `limit` items joined, then "and N more"."""
    items = [str(item) for item in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return separator.join(items[:limit]) + more


def check_whole_number(name, value, minimum=1):
    """`value` as an int; an InvalidArgumentError naming it unless it is a whole number
    of at least `minimum` (a batch size or top-k of 0 must not reach TensorFlow)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidArgumentError(
            f"{name} must be a whole number of at least {minimum}. Received: {name}={value!r}"
        )
    return int(value)


def unknown_choice(name, value, accepted):
    """The error for a value outside a fixed set of choices."""
    return InvalidArgumentError(
        f"Unknown {name}: {value!r}. Expected one of {', '.join(map(str, accepted))}."
    )
