"""The exception types `transfer` raises, and the exit code the CLI gives each."""


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
