"""Image files named on a command line: files given directly and the images found in
folders, with the reason each unusable one cannot be read (`predict`, `explain`).
Within a folder the rule of datasets holds: a link that leads outside the folder is
reported, not read."""

import os
from pathlib import Path

from transfer.data.dataset import is_inside
from transfer.data.pipeline import find_unreadable
from transfer.data.sources import IMAGE_EXTENSIONS, NOT_AN_IMAGE, OUTSIDE_FILE
from transfer.errors import DataError


def list_image_files(paths):
    """Files named directly (any extension) and files found in folders, in order.

    Returns (files, skipped): `skipped` maps a path that does not exist, or a file in a
    folder that is not an image (as `finetune` reports them), to the reason.
    """
    files, skipped = [], {}
    for path in map(Path, paths):
        if path.is_dir():
            root = os.path.realpath(path)
            for found in sorted(path.rglob("*")):
                if any(part.startswith(".") for part in found.relative_to(path).parts):
                    continue
                # Broken links are listed too: they get an error row, not silence.
                if not (found.is_file() or found.is_symlink()):
                    continue
                files.append(str(found))
                if found.suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped[str(found)] = NOT_AN_IMAGE
                elif found.exists() and not is_inside(found, root):
                    skipped[str(found)] = OUTSIDE_FILE
        elif path.exists():
            files.append(str(path))
        else:
            files.append(str(path))
            skipped[str(path)] = "file not found"
    return files, skipped


def images_to_read(paths):
    """(every file listed, {unusable file: reason}, the readable images) of `paths`."""
    files, bad = list_image_files(paths)
    if not files:
        raise DataError(f"No images found in {', '.join(map(str, paths))}.")
    bad.update(find_unreadable([f for f in files if f not in bad], progress=False))
    return files, bad, [f for f in files if f not in bad]
