"""Splits by hash: each item goes to train, validation or test by a hash of its
name, so the split is deterministic, and stable when items are added later;
assigned per group (a class, or a set of labels), so that it is stratified."""

import hashlib
import os

# The shares of a dataset's images that go to validation and to test unless a caller
# asks for others: the defaults of every loader, of FinetuneOptions, and of a run
# reopened from a config.json that predates these options.
DEFAULT_VAL_SPLIT = 0.2
DEFAULT_TEST_SPLIT = 0.0


def split_fraction(relative_path, salt="transfer-split-v1"):
    """A number in [0, 1) fixed by a name: a file's path inside its class folder, or
    inside the image folder of a CSV."""
    # surrogateescape: a name that is not UTF-8 hashes as its bytes
    digest = hashlib.sha1(f"{salt}:{relative_path}".encode("utf8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(fraction, val_split, test_split):
    if fraction < val_split:
        return "val"
    if fraction < val_split + test_split:
        return "test"
    return "train"


def file_stamp(path):
    """(size, modification time in ns) of a file: what a dataset's fingerprint keeps of
    each image, so that an image changed in place (same name, same size) changes it."""
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def fingerprint_of(entries):
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(repr(entry).encode("utf8"))
    return digest.hexdigest()[:16]


def hash_split(groups, val_split, test_split, key):
    """Per group (a class, or a set of labels), assign each item by the hash of
    `key(item, group)`; returns the train, val and test lists of (item, group)."""
    out = {"train": [], "val": [], "test": []}
    for group in sorted(groups):
        assigned = {"train": [], "val": [], "test": []}
        fractions = {item: split_fraction(key(item, group)) for item in groups[group]}
        for item in groups[group]:
            assigned[split_of(fractions[item], val_split, test_split)].append(item)
        # A tiny group can miss validation by chance: give it its lowest-hash item.
        if val_split > 0 and not assigned["val"] and len(assigned["train"]) >= 2:
            first = min(assigned["train"], key=fractions.get)
            assigned["train"].remove(first)
            assigned["val"].append(first)
        for split, items in assigned.items():
            out[split].extend((item, group) for item in items)
    return out["train"], out["val"], out["test"]
