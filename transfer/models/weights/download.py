"""The official ImageNet files of keras.applications: found in a folder of the
user's, in Keras' cache, or downloaded with `keras.utils.get_file` (MD5 checked)."""

import contextlib
import hashlib
import os
import socket
from pathlib import Path

from transfer.errors import WeightsError, first_line
from transfer.lazy import keras
from transfer.models.pretrained import imagenet_checkpoint

WEIGHTS_DIR_ENV = "TRANSFER_WEIGHTS_DIR"
DOWNLOAD_TIMEOUT_S = 15  # per socket operation: an offline machine fails fast


def keras_home():
    """Keras' home folder, read at call time (Keras reads $KERAS_HOME at import)."""
    base = os.path.expanduser("~")
    if not os.access(base, os.W_OK):
        base = "/tmp"
    return Path(os.environ.get("KERAS_HOME", os.path.join(base, ".keras")))


def keras_cache_dir():
    """The folder where `keras.utils.get_file(cache_subdir="models")` keeps files."""
    return keras_home() / "models"


def imagenet_weights_path(architecture, include_top=True, weights_dir=None):
    """Return a local path to the official ImageNet file, downloading it if needed.

    Looks in `weights_dir` (or $TRANSFER_WEIGHTS_DIR) first, then Keras' cache, and
    only then downloads with `keras.utils.get_file`, which checks the MD5 hash.
    """
    checkpoint = imagenet_checkpoint(architecture, include_top)
    weights_dir = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        candidate = Path(weights_dir).expanduser() / checkpoint.file
        if candidate.is_file():
            if (
                checkpoint.file_hash
                and file_digest(candidate, checkpoint.file_hash) != checkpoint.file_hash
            ):
                kind = "SHA-256" if checkpoint.sha256 else "MD5"
                raise WeightsError(
                    f"{candidate} does not have the {kind} hash of the official file "
                    f"({checkpoint.file_hash}): it is damaged or a different file. Download it "
                    f"again from {checkpoint.url}"
                )
            return candidate
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return Path(
                keras.utils.get_file(
                    checkpoint.file,
                    checkpoint.url,
                    cache_dir=str(keras_home()),
                    cache_subdir="models",
                    file_hash=checkpoint.file_hash,
                )
            )
    except Exception as exc:  # get_file raises a bare Exception when offline
        looked_in = f"{keras_cache_dir()}" + (f" and {weights_dir}" if weights_dir else "")
        raise WeightsError(
            f"ImageNet weights file {checkpoint.file} is not available: it is not in "
            f"{looked_in}, and downloading it from {checkpoint.url} failed "
            f"({_download_reason(exc)}). Put the file in a folder and pass weights_dir=DIR "
            f"(or set {WEIGHTS_DIR_ENV}=DIR), or pass weights=PATH to a weights file, or "
            "weights=None for random initialisation."
        ) from exc


def file_md5(path, chunk_size=1 << 20):
    return file_digest(path, "md5", chunk_size)


def file_digest(path, like, chunk_size=1 << 20):
    """The file's MD5, or its SHA-256 where `like` (a hash) is that long, as Keras picks."""
    digest = hashlib.sha256() if len(like) == 64 else hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _socket_timeout(seconds):
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_reason(exc):
    lines = str(exc).strip().splitlines()
    reason = lines[-1] if lines else first_line(exc)
    return reason.rsplit(" -- ", 1)[-1][:200]  # get_file prefixes the URL again
