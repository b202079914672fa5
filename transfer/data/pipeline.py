"""tf.data pipelines: parallel decode and resize, batching, augmentation, and the
check that finds unreadable images before training so that none can stop an epoch."""

import io
import logging
import re
import warnings

import numpy as np
from PIL import Image

from transfer.data.dataset import printable_path
from transfer.data.images import (
    declared_size,
    decode_upright,
    file_head,
    head_needs_upright,
    needs_upright,
    on_white,
)
from transfer.data.records import TFRECORD_SOURCE, UNKNOWN_SIZE, all_records
from transfer.errors import DataError, listing
from transfer.lazy import tf
from transfer.models.architectures import image_size_pair
from transfer.progress import Progress

logger = logging.getLogger("transfer")
SHUFFLE_BUFFER = 50_000  # elements; phase 1's feature batches shuffle the same way
RESIZE_METHOD = "bilinear"  # as keras.utils.image_dataset_from_directory resizes
# Larger images are skipped unread, as Pillow refuses them by default
# (Image.MAX_IMAGE_PIXELS): a small file can declare a size that fills the memory.
MAX_PIXELS = 89_478_485


def decode_image(contents, image_size):
    """Bytes of a JPEG/PNG/BMP/GIF -> float32 RGB (whole levels 0-255) of `image_size`.

    As `transfer.data.images.decode_upright` decodes: grayscale and palette images
    become RGB, transparent pixels are composited onto white, the EXIF orientation is
    applied, an animated GIF gives its first frame. Resizing is bilinear, like
    `keras.utils.image_dataset_from_directory`.
    """
    return _resized(decode_upright(contents), image_size)


def _decode_plain(contents):
    """The pixels `decode_upright` gives a file that `needs_upright` does not pick out,
    without its ops that look for orientation and transparency."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def _resized(image, image_size):
    return _whole_levels(tf.image.resize(image, image_size, method=RESIZE_METHOD))


def _by_decoding(paths, elements, dataset, upright=None):
    """Datasets `dataset(elements, decode)` of the files that `needs_upright` picks out
    (decode: `decode_upright`) and of the others (`_decode_plain`), without an empty
    one; `elements` are arrays or lists in the order of `paths`. `upright`: the flags
    of `needs_upright`, where known already (a checked split's). Returns them and which
    files were picked out."""
    if upright is None:
        upright = np.array([needs_upright(p) for p in paths], dtype=bool)
    if not upright.any() or upright.all():  # one part: the elements as they are
        decode = decode_upright if upright.any() else _decode_plain
        return [dataset(tuple(elements), decode)], upright
    # Object arrays of the paths: a NumPy array of str would take 4 bytes a character.
    arrays = [e if isinstance(e, np.ndarray) else np.array(e, dtype=object) for e in elements]
    parts = [
        dataset(tuple(a[chosen] for a in arrays), decode)
        for chosen, decode in ((~upright, _decode_plain), (upright, decode_upright))
    ]
    return parts, upright


def _whole_levels(pixels):
    """Resized pixels rounded to whole 0-255 levels, on every path (training, the
    feature cache, inference), so that decoded images can be kept as uint8 and every
    path sees the same pixels; rounding moves a pixel by at most half a level."""
    return tf.clip_by_value(tf.round(pixels), 0.0, 255.0)


def find_unreadable(paths, progress=True, max_pixels=MAX_PIXELS):
    """[(path, reason)] for files that TensorFlow cannot decode, checked in parallel,
    and those whose header declares more than `max_pixels` (never decoded)."""
    return check_images(paths, progress, max_pixels)[0]


def check_images(paths, progress=True, max_pixels=MAX_PIXELS):
    """(`find_unreadable`'s [(path, reason)], the `needs_upright` flag of every path).

    Each file's start is read once, in Python, for both its declared size and its flag;
    then every file is decoded, in parallel, exactly as training decodes it."""
    if not len(paths):
        return [], np.zeros(0, dtype=bool)
    # TensorFlow takes only UTF-8 paths.
    bad = {p: "file name is not valid UTF-8; rename it to use it" for p in paths if not _is_utf8(p)}
    upright, too_large = _look_at_starts(paths, max_pixels)
    bad.update((p, reason) for p, reason in too_large.items() if p not in bad)
    chosen = np.array([p not in bad for p in paths], dtype=bool) if bad else slice(None)
    checked = [p for p in paths if p not in bad] if bad else list(paths)

    def decoded(elements, decode):
        return _decodable(tf.data.Dataset.from_tensor_slices(elements), decode, tf.io.read_file)

    good = np.zeros(len(checked), dtype=bool)
    if checked:
        indices = np.arange(len(checked), dtype=np.int64)
        parts, _ = _by_decoding(checked, (indices, checked), decoded, upright[chosen])
        readable = parts[0]
        for part in parts[1:]:
            readable = readable.concatenate(part)
        bar = Progress("Checked", len(checked), unit="image") if progress else None
        _mark_decodable(readable, good, bar)
        if bar:
            bar.done()
    failed = [(checked[i], _decode_error(checked[i])) for i in np.flatnonzero(~good)]
    return list(bad.items()) + failed, upright


def _decodable(elements, decode, contents):
    """The indices of `elements` ((index, source) pairs) whose image, `contents(source)`
    decoded by `decode` exactly as training decodes it, has pixels: the others are
    dropped (their errors ignored), checked in parallel."""

    def check(index, source):
        image = decode(contents(source))
        tf.debugging.assert_positive(tf.size(image), message="empty image")
        return index

    return elements.map(
        check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False
    ).ignore_errors()


def _mark_decodable(indices, good, bar, seen=0):
    """Set `good` at each of the dataset `indices`; returns how many were seen, with
    the progress `bar` counted on from `seen`."""
    for batch in indices.batch(256):
        good[batch.numpy()] = True
        seen += len(batch)
        if bar:
            bar.update(seen)
    return seen


def _is_utf8(path):
    try:
        str(path).encode("utf8")
    except UnicodeEncodeError:  # a byte Python could not decode, kept as a surrogate
        return False
    return True


def _look_at_starts(paths, max_pixels):
    """(the `needs_upright` flag of each path, {path: reason} for images whose header
    declares more than `max_pixels`), from one read of each file's start."""
    upright = np.ones(len(paths), dtype=bool)  # unreadable: TensorFlow reports it
    too_large = {}
    for i, path in enumerate(paths):
        head = file_head(path)
        if head is None:
            continue
        upright[i] = head_needs_upright(head)
        if max_pixels is None:
            continue
        reason = _too_large(declared_size(head) or _size_by_pillow(path), max_pixels)
        if reason:
            too_large[path] = reason
    return upright, too_large


def _too_large(size, max_pixels):
    """Why an image of `size` (width, height; None: not known) is not decoded, or None."""
    if size is None or max_pixels is None:
        return None
    if size != TOO_LARGE_FOR_PILLOW and size[0] * size[1] <= max_pixels:
        return None
    shown = "" if size == TOO_LARGE_FOR_PILLOW else f" ({size[0]}x{size[1]})"
    return f"image too large{shown}: more than max_pixels={max_pixels} pixels, not decoded"


TOO_LARGE_FOR_PILLOW = (-1, -1)  # beyond twice Pillow's own limit: no size given


def _size_by_pillow(file):
    """(width, height) from Pillow's look at the header of a file (a path, or a file
    object), for what `declared_size` does not read; None where Pillow cannot tell
    (the decoder reports the image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(file) as image:  # reads the header only
                return image.size
    except Image.DecompressionBombError:
        return TOO_LARGE_FOR_PILLOW
    except Exception:  # noqa: BLE001 - unreadable files are TensorFlow's to report
        return None


def _decode_error(path):
    """The reason a file failed, from reading and decoding it once more on its own."""
    try:
        contents = tf.io.read_file(path)
    except (tf.errors.OpError, ValueError) as exc:
        return _not_readable(exc)
    return _undecodable(contents, empty="empty file (0 bytes)")


def _undecodable(contents, empty):
    """The reason image bytes failed, from decoding them once more on their own."""
    try:
        if int(tf.strings.length(contents)) == 0:
            return empty
        decode_upright(contents)
        return "could not be decoded"
    except (tf.errors.OpError, ValueError) as exc:
        return _not_readable(exc)


def _not_readable(exc):
    message = getattr(exc, "message", str(exc))
    # TensorFlow wraps the decoder's words in "{{function_node ...}} ... [Op:...]".
    message = re.sub(r"\{\{function_node.*?\}\}\s*|\s*\[Op:\w+\]", "", message).strip()
    return (
        f"not a readable image ({message.splitlines()[0][:160] if message else type(exc).__name__})"
    )


def _unreadable_records(dataset, progress, max_pixels):
    """{record name: reason} of a TFRecord source's records that `find_unreadable`
    would report as files: images declaring more than `max_pixels` (never decoded; a
    size the first bytes do not tell is read by Pillow from the whole image) and
    images that do not decode. One pass over the shards for each."""
    records = all_records(dataset.splits.values())
    sizes = [tuple(size) if size[0] != UNKNOWN_SIZE else None for size in records.sizes]
    unknown = [i for i, size in enumerate(sizes) if size is None]
    if unknown and max_pixels is not None:
        examples = records.subset(unknown).examples().as_numpy_iterator()
        for i, (contents, _) in zip(unknown, examples):
            sizes[i] = _size_by_pillow(io.BytesIO(contents))
    bad = {}
    for i, size in enumerate(sizes):
        reason = _too_large(size, max_pixels)
        if reason:
            bad[records.paths[i]] = reason
    checked = records.subset([i for i, p in enumerate(records.paths) if p not in bad])
    good = np.zeros(len(checked), dtype=bool)
    contents = checked.examples().enumerate().map(lambda at, example: (at, example[0]))
    bar = Progress("Checked", len(checked), unit="image") if progress else None
    _mark_decodable(_decodable(contents, decode_upright, tf.identity), good, bar)
    if bar:
        bar.done()
    failed = np.flatnonzero(~good)
    if len(failed):
        for i, (image, _) in zip(failed, checked.subset(failed).examples().as_numpy_iterator()):
            bad[checked.paths[i]] = _undecodable(image, empty="empty image (0 bytes)")
    return bad


def drop_unreadable(dataset, strict=False, progress=True, max_pixels=MAX_PIXELS):
    """Check every image of every split; report bad (or too large) ones by path and
    drop them.

    With `strict=True` any bad file (or non-image file) is an error instead.
    """
    if dataset.source == "tfds":
        return dataset
    logger.info("Checking %d images...", sum(map(len, dataset.splits.values())))
    if dataset.source == TFRECORD_SOURCE:
        bad, upright = _unreadable_records(dataset, progress, max_pixels), None
    else:
        all_paths = [p for split in dataset.splits.values() for p in split.paths]
        found, upright = check_images(all_paths, progress=progress, max_pixels=max_pixels)
        bad = dict(found)
    for path, reason in bad.items():
        dataset.skipped.append({"path": printable_path(path), "reason": reason})
    if dataset.skipped and strict:
        lines = listing((f"{s['path']}: {s['reason']}" for s in dataset.skipped), separator="; ")
        raise DataError(f"{len(dataset.skipped)} unusable files (strict=True): {lines}.")
    for entry in dataset.skipped:
        logger.warning("Skipped %s: %s", entry["path"], entry["reason"])
    start = 0
    for name, split in dataset.splits.items():
        if upright is not None:
            split.upright = upright[start : start + len(split)]
            start += len(split)
        if bad:
            dataset.splits[name] = split.subset(
                [i for i, p in enumerate(split.paths) if p not in bad]
            )
    for name, split in dataset.splits.items():
        if name == "train" and not len(split):
            raise DataError("No readable training images are left after skipping bad files.")
    return dataset


def available_memory_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # unknown: assume a modest machine


def decoded_images(split, image_size, cache=None, uint8=False):
    """Unbatched (float32 pixels 0-255, label) of a split, decoded and resized in
    parallel (AUTOTUNE). `cache=None` keeps the decoded images in memory (as uint8)
    when they take under a quarter of the available RAM; True or False forces it.
    `uint8=True` gives the pixels as uint8: a shuffle buffer of them takes a quarter
    of float32's bytes, and Keras' models and augmentation layers cast them."""
    size = image_size_pair(image_size)
    if split.tfds is not None:
        ds = split.tfds.map(
            lambda image, label: (
                _whole_levels(tf.image.resize(_to_rgb(image), size, method=RESIZE_METHOD)),
                label,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        ds = _decoded_files(split, size)
    if cache is None:
        cache = len(split) * size[0] * size[1] * 3 < 0.25 * available_memory_bytes()
    if not cache and not uint8:
        return ds
    # Kept as uint8 (the pixels are whole levels already), a quarter of float32's bytes.
    ds = ds.map(
        lambda x, y: (tf.cast(x, tf.uint8), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    if cache:
        ds = ds.cache()
    if uint8:
        return ds
    return ds.map(
        lambda x, y: (tf.cast(x, tf.float32), y),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _decoded_files(split, size):
    """(pixels, label) of a split's files, in order, each file decoded by `decode_image`
    or, where `needs_upright` says that gives the same pixels, plainly."""

    def decoded(elements, decode):
        return tf.data.Dataset.from_tensor_slices(elements).map(
            lambda path, label: (_resized(decode(tf.io.read_file(path)), size), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    parts, upright = _by_decoding(
        split.paths, (list(split.paths), split.labels), decoded, split.upright
    )
    if len(parts) == 1:
        return parts[0]
    # Each file from its part, in the split's order.
    return tf.data.Dataset.choose_from_datasets(
        parts, tf.data.Dataset.from_tensor_slices(upright.astype(np.int64))
    )


def image_dataset(
    split,
    image_size,
    batch_size,
    num_classes,
    shuffle=False,
    seed=None,
    augment=None,
    one_hot=True,
    cache=False,
):
    """A batched, prefetched tf.data.Dataset of (float32 pixels 0-255, labels)."""
    ds = decoded_images(split, image_size, cache=cache)
    if shuffle:
        ds = ds.shuffle(min(len(split), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if augment is not None:
        ds = ds.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    if one_hot:
        ds = ds.map(lambda x, y: (x, targets(y, num_classes)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def images_only(split, image_size, batch_size):
    """Batches of pixels of a split, in its order, without labels: for inference."""
    return image_dataset(split, image_size, batch_size, num_classes=1, one_hot=False).map(
        lambda x, y: x
    )


def one_hot_images(split, image_size, num_classes):
    """Unbatched decoded images (uint8, cached in memory when they fit) with one-hot
    labels: training shuffles them in a buffer of up to SHUFFLE_BUFFER images."""
    return decoded_images(split, image_size, uint8=True).map(
        lambda x, y: (x, targets(y, num_classes))
    )


def labelled(x, labels, num_classes):
    """Unbatched (x, one-hot label) pairs, e.g. of cached features."""
    return tf.data.Dataset.from_tensor_slices(
        (x, targets(tf.convert_to_tensor(labels), num_classes))
    )


def targets(labels, num_classes):
    """What the model learns to output: class indices one-hot; multi-label rows of 0/1
    (float32, see `transfer.data.dataset`) as they are."""
    if labels.dtype.is_floating:
        return tf.cast(labels, tf.float32)
    return tf.one_hot(labels, num_classes)


def epoch_batches(
    base, count, batch_size, seed, epochs, first_epoch=0, augment=None, drop_remainder=False
):
    """Batches of epochs `first_epoch`..`epochs`-1 as one dataset.

    Epoch e's order depends on (seed, e) only, so a resumed run sees the same
    batches as an uninterrupted one, and cached features are shuffled exactly as
    the images they came from.
    """
    buffer = min(count, SHUFFLE_BUFFER)

    def one_epoch(epoch):
        return base.shuffle(buffer, seed=seed * 7919 + epoch, reshuffle_each_iteration=False).batch(
            batch_size, drop_remainder
        )

    # Python-int seeds per epoch: a tensor seed (flat_map over a range) breaks TF's
    # seed check when the global seed is 0, i.e. `seed=0`.
    ds = one_epoch(first_epoch).take(0)
    for epoch in range(first_epoch, epochs):
        ds = ds.concatenate(one_epoch(epoch))
    if augment is not None:
        # One batch at a time: the layers draw from one random state, so batches
        # augmented in parallel would get their draws in thread order, and the same
        # seed would give another model. Augmenting is far faster than a training step
        # here (scripts/benchmark.py (e)), and prefetch keeps it off the step's path.
        ds = ds.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=None)
    return ds.prefetch(tf.data.AUTOTUNE)


def _to_rgb(image):
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
        image = image[..., None]
    channels = image.shape[-1]
    if channels in (1, 2):
        image = tf.concat([tf.image.grayscale_to_rgb(image[..., :1]), image[..., 1:]], -1)
    if channels in (2, 4):  # transparency: onto white, as decode_upright does
        image = on_white(image[..., :3], image[..., 3:])
    return tf.cast(image, tf.float32)
