"""The installed version of `transfer`."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("transfer")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
