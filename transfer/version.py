"""The distribution's name and the installed version of `transfer`.

The import package and the command are `transfer`; the distribution that pip
installs is DISTRIBUTION (`transfer` on PyPI is another project). setup.cfg owns
the version; this module reads it from the installed metadata.
"""

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "transfer-keras"  # setup.cfg's [metadata] name (tests/test_docs.py checks)

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
