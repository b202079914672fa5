"""Duplicates: images whose pooled backbone embeddings are near-copies (cosine
similarity of centred embeddings above a threshold), and files with the same bytes.
The one check behind report.html's leaked duplicates and `transfer audit`'s
duplicates and leaks."""

import hashlib

import numpy as np

# Cosine similarity of centred embeddings (the training mean subtracted: pooled ReLU
# features all point the same way, and uncentred, distinct Fashion-MNIST images score
# 0.997). Measured on the sample (32 px, random-weight ResNet50 after a short run):
# distinct images at most 0.94 even within a class; copies enlarged 2x or re-encoded
# as JPEG 0.965-0.998, exact copies 1.0. Copies shrunk below the model's input size
# lose detail (0.80-0.97) and are not all found.
DUPLICATE_THRESHOLD = 0.95
# A trained backbone packs images of a class close together: on Fashion-MNIST at 32 px
# (a ResNet50 trained on its other classes) half the images have a neighbour within a
# cosine distance of 0.027, and 96% one above 0.95, while copies enlarged 2x or
# re-encoded as JPEG stayed within 0.006 of their original. So a near-copy must also be
# within COPY_FRACTION of the typical distance between neighbouring reference images
# (the median over a sample of SPACING_SAMPLE of them); for random weights (a median of
# 0.13-0.22) the threshold above is the stricter bound.
COPY_FRACTION = 0.3
SPACING_SAMPLE = 1024
CHUNK = 1024  # query rows per matrix product: bounds memory on large splits


def normalised(features, mean):
    """Centred rows of unit length, in one new array: the features may be the feature
    cache's memory map, and no other temporary the size of all of them."""
    centred = np.subtract(features, mean, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", centred, centred))[:, None]
    centred /= np.maximum(norms, 1e-12)
    return centred


def find_duplicates(train_features, query_features=None, threshold=DUPLICATE_THRESHOLD):
    """Near-copies among pooled embeddings, centred on the training images' mean.

    With `query_features`: each query image whose most similar training image is at or
    above `threshold`, as (query index, training index, similarity). Without: the
    copies within the training images, each image after the first of a group matched
    to its most similar earlier one, as (index, earlier index, similarity). Most
    similar first."""
    train_features = np.asarray(train_features, dtype=np.float32)
    within = query_features is None
    if not len(train_features) or (not within and not len(query_features)):
        return []
    mean = train_features.mean(axis=0)
    train = normalised(train_features, mean)
    query = train if within else normalised(query_features, mean)
    threshold = max(threshold, 1.0 - COPY_FRACTION * typical_spacing(train))
    found = []
    for start in range(0, len(query), CHUNK):
        similarity = query[start : start + CHUNK] @ train.T
        if within:  # only earlier images: each pair once, never an image with itself
            rows = np.arange(start, start + len(similarity))[:, None]
            similarity[np.arange(len(train))[None, :] >= rows] = -np.inf
        best = similarity.argmax(axis=1)
        scores = similarity[np.arange(len(best)), best]
        found += [
            (start + i, int(best[i]), float(scores[i])) for i in np.flatnonzero(scores >= threshold)
        ]
    return sorted(found, key=lambda row: -row[2])


def typical_spacing(unit):
    """The median cosine distance from an image to its nearest other image, over a
    seeded sample of SPACING_SAMPLE rows of `unit` (`normalised` features); 2 (the
    largest) for fewer than two images."""
    if len(unit) < 2:
        return 2.0
    rows = np.sort(
        np.random.default_rng(0).choice(len(unit), min(SPACING_SAMPLE, len(unit)), replace=False)
    )
    similarity = unit[rows] @ unit.T
    similarity[np.arange(len(rows)), rows] = -np.inf  # not itself
    return float(np.median(1.0 - similarity.max(axis=1)))


def same_bytes(paths):
    """(index, index of the first file with the same bytes) for each file of `paths`
    whose content an earlier one has; unreadable files are left out."""
    first, found = {}, []
    for index, path in enumerate(paths):
        try:
            digest = file_sha256(path)
        except OSError:
            continue
        if digest in first:
            found.append((index, first[digest]))
        else:
            first[digest] = index
    return found


def file_sha256(path, block=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.digest()
