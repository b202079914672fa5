"""Encoded images to the pixels a person sees: the EXIF orientation applied (as
Pillow's `ImageOps.exif_transpose`, browsers and phones do) and transparency
composited onto white (as browsers show it).

`decode_upright` does it in TensorFlow ops only, so that training, inference and an
exported SavedModel's `serve_bytes` decode alike. Its checks cost as much as decoding
a small image, so the file pipelines give it only the files `needs_upright` picks out
(a look at their first bytes); the others decode plainly to the same pixels.
"""

import re
import struct

from transfer.lazy import tf

# The orientation is looked for in the start of a file only: JPEG's EXIF segment comes
# first or right after JFIF's, PNG's eXIf chunk before the pixels.
HEADER_BYTES = 1 << 16
# The Orientation entry of an EXIF directory (tag 0x0112, type SHORT, count 1, then the
# value 1-8), little- or big-endian, after the "Exif" (JPEG) or "eXIf" (PNG) marker.
EXIF_MARKERS = (b"Exif\x00\x00", b"eXIf")
ENTRY_LITTLE = b"\x12\x01\x03\x00\x01\x00\x00\x00"  # the value follows, then \x00
ENTRY_BIG = b"\x01\x12\x00\x03\x00\x00\x00\x01\x00"  # the value follows


def _re2_bytes(data):
    return "".join(f"\\x{value:02x}" for value in data)


# For TensorFlow (RE2, where `\C` is any byte: file bytes are not UTF-8), one regular
# expression rather than a walk of the segments in ops, which cost far more: the first
# entry after a marker, its value captured.
ORIENTATION_ENTRY = (
    rf"^\C*?(?:{'|'.join(map(_re2_bytes, EXIF_MARKERS))})\C*?"
    rf"(?:{_re2_bytes(ENTRY_LITTLE)}([\x01-\x08])\x00|{_re2_bytes(ENTRY_BIG)}([\x01-\x08]))"
)
# For Python: an entry whose value turns a picture (2-8).
TURNING_ENTRY = re.compile(
    re.escape(ENTRY_LITTLE) + rb"[\x02-\x08]\x00|" + re.escape(ENTRY_BIG) + rb"[\x02-\x08]"
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_ALPHA_TYPES = (4, 6)  # colour types gray + alpha, RGBA
GIF_HEADER_BYTES = 1 << 11  # its colour table (768 bytes at most) and first blocks
GIF_LOOP_BLOCK = 19  # bytes of the application block that makes an animation loop
# A graphic control block: introducer, label, size 4, ..., terminator; then a frame.
GIF_CONTROL_AT, GIF_CONTROL = [0, 1, 2, 7, 8], [0x21, 0xF9, 4, 0, 0x2C]
BYTE_STRINGS = [bytes([value]) for value in range(256)]
BACKGROUND = 255  # white: transparent pixels become it


def decode_upright(contents):
    """Bytes of a JPEG/PNG/BMP/GIF -> uint8 RGB [height, width, 3], upright and opaque.

    Grayscale and palette images become RGB; transparent pixels (RGBA, LA, palette
    PNGs with transparency, GIFs) are composited onto white; an animated GIF gives its
    first frame; an EXIF orientation other than 1 (JPEG, or PNG's eXIf chunk) is
    applied. A file that cannot be decoded raises TensorFlow's error.

    A GIF's transparency is read from the control block that writers put before its
    first frame (after the colour table, or after an animation's loop block).
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    signature = tf.strings.substr(contents, 0, len(PNG_SIGNATURE))
    # Conditions side by side, not nested (nested, they cost more): only a PNG's alpha
    # channel is read, only a GIF's palette is edited.
    opaque = tf.cond(
        tf.equal(tf.strings.substr(signature, 0, 3), b"GIF"),
        lambda: _gif_on_white(contents),
        lambda: contents,
    )
    image = tf.cond(
        tf.equal(signature, PNG_SIGNATURE),
        lambda: _png_on_white(contents),
        lambda: tf.io.decode_image(opaque, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return apply_orientation(image, exif_orientation(contents))


def apply_orientation(image, orientation):
    """Pixels stored with EXIF `orientation` (1-8) turned to how they are shown, as
    Pillow's `ImageOps.exif_transpose` turns them; 1 (and anything unknown) leaves
    them as they are, without a copy."""
    orientation = tf.cast(orientation, tf.int32)
    turned = (orientation >= 2) & (orientation <= 8)
    return tf.cond(turned, lambda: _turn(image, orientation), lambda: image)


# Per orientation 1-8: swap rows and columns first (5-8: stored on its side), then
# reverse the rows and/or the columns (2 mirrored, 3 upside down, 6 turned clockwise...).
_TRANSPOSED = (False, False, False, False, True, True, True, True)
_REVERSED_ROWS = (False, False, True, True, False, False, True, True)
_REVERSED_COLUMNS = (False, True, True, False, False, True, True, False)


def _turn(image, orientation):
    """One transpose and one reverse, chosen by data: one op graph for the 7 cases."""
    index = orientation - 1
    perm = tf.where(tf.gather(_TRANSPOSED, index), [1, 0, 2], [0, 1, 2])
    axes = tf.boolean_mask(
        [0, 1], tf.stack([tf.gather(_REVERSED_ROWS, index), tf.gather(_REVERSED_COLUMNS, index)])
    )
    return tf.reverse(tf.transpose(image, perm), axes)


def exif_orientation(contents):
    """The EXIF orientation (1-8) of an image's bytes (JPEG, or PNG's eXIf chunk), as
    int32: 1 when it has none that can be read in its first HEADER_BYTES."""
    head = tf.strings.substr(contents, 0, HEADER_BYTES)
    # A match is replaced by the value, which then starts the string. Without one, the
    # string starts as an image file does, never with a byte from 1 to 8.
    found = tf.strings.regex_replace(head, ORIENTATION_ENTRY, r"\1\2", replace_global=False)
    value = tf.cast(tf.reshape(tf.io.decode_raw(found, tf.uint8, fixed_length=1), []), tf.int32)
    return tf.where((value >= 1) & (value <= 8), value, 1)


def _png_on_white(contents):
    """A PNG decoded as RGB, with any transparency composited onto white."""
    image = tf.io.decode_png(contents, channels=0)  # gray, gray+alpha, RGB or RGBA
    rgb_shape = tf.concat([tf.shape(image)[:2], [3]], 0)  # gray broadcasts to it
    return tf.cond(
        tf.shape(image)[-1] % 2 == 0,
        lambda: on_white(tf.broadcast_to(image[..., :-1], rgb_shape), image[..., -1:]),
        lambda: tf.broadcast_to(image, rgb_shape),
    )


def on_white(rgb, alpha):
    """uint8 RGB pixels with uint8 alpha, composited onto white, rounded."""
    rgb, alpha = tf.cast(rgb, tf.float32), tf.cast(alpha, tf.float32)
    return tf.cast(
        tf.round(rgb * (alpha / 255.0) + (BACKGROUND / 255.0) * (255.0 - alpha)), tf.uint8
    )


def _gif_on_white(contents):
    """A GIF whose first frame's transparent colour is made white and opaque; other
    bytes unchanged. TensorFlow's decoder makes transparent pixels black: all of them
    use this one palette entry, so they become the white every other format gets."""
    # Zero-padded: a crafted offset reads zeros, never fails.
    data = tf.cast(
        tf.io.decode_raw(
            tf.strings.substr(contents, 0, GIF_HEADER_BYTES),
            tf.uint8,
            fixed_length=GIF_HEADER_BYTES + 1,
        ),
        tf.int32,
    )
    global_colours = _colour_table_size(data[10])
    # The first graphic control block (8 bytes) and the frame descriptor after it (10):
    # right after the global colour table, or after an animation's loop block, as GIF
    # writers place it. Not a walk of every block: in TensorFlow ops, that costs more
    # than decoding the GIF.
    starts = 13 + 3 * global_colours + tf.constant([[0], [GIF_LOOP_BLOCK]])
    blocks = tf.gather(data, tf.minimum(starts + tf.range(18), GIF_HEADER_BYTES))
    found = tf.reduce_all(tf.equal(tf.gather(blocks, GIF_CONTROL_AT, axis=1), GIF_CONTROL), axis=1)
    which = tf.argmax(tf.cast(found, tf.int32), output_type=tf.int32)
    control, block = tf.gather(starts[:, 0], which), tf.gather(blocks, which)
    local_colours = _colour_table_size(block[17])
    colours = tf.where(local_colours > 0, local_colours, global_colours)
    colour = tf.where(local_colours > 0, control + 18, 13) + 3 * block[6]
    transparent = (
        tf.reduce_any(found)
        & (block[3] % 2 == 1)
        & (block[6] < colours)
        & (colour + 3 <= tf.minimum(GIF_HEADER_BYTES, tf.strings.length(contents)))
    )
    # Without a condition (one inside another costs more): where there is nothing to
    # change, nothing (no bytes at 0) is replaced.
    colour_bytes = tf.where(transparent, b"\xff\xff\xff", b"")
    flag_byte = tf.where(transparent, tf.gather(BYTE_STRINGS, block[3] & 0xFE), b"")
    patched = _replace(
        contents, tf.where(transparent, colour, 0), colour_bytes, tf.where(transparent, 3, 0)
    )
    return _replace(
        patched, tf.where(transparent, control + 3, 0), flag_byte, tf.where(transparent, 1, 0)
    )


def _colour_table_size(flags):
    """Colours in the table that a GIF's screen or image descriptor flags announce."""
    return tf.where(flags >= 128, tf.bitwise.left_shift(2, flags % 8), 0)


def _replace(contents, at, new, length):
    """`contents` with `length` bytes at `at` replaced by as many others."""
    return tf.strings.join(
        [
            tf.strings.substr(contents, 0, at),
            new,
            tf.strings.substr(contents, at + length, tf.strings.length(contents)),
        ]
    )


def file_head(path):
    """The first HEADER_BYTES of a file, where `needs_upright` and `declared_size` look;
    None where it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read(HEADER_BYTES)
    except OSError:
        return None


def needs_upright(path):
    """Whether `decode_upright` may give the file other pixels than a plain decode
    (tf.io.decode_image, 3 channels): `head_needs_upright` of its `file_head`. A file
    that cannot be read says yes (decoding it reports the error)."""
    head = file_head(path)
    return True if head is None else head_needs_upright(head)


def head_needs_upright(head):
    """`needs_upright` of a file's first bytes: a GIF, a PNG with an alpha channel or
    a transparent colour, or an EXIF orientation from 2 to 8 where `exif_orientation`
    looks for one. Errs towards yes."""
    if head.startswith(PNG_SIGNATURE) and _png_may_be_transparent(head):
        return True
    if head.startswith(b"GIF"):
        return True
    found = [at for at in (head.find(marker) for marker in EXIF_MARKERS) if at >= 0]
    # Any turning entry after the first marker: `exif_orientation` takes the first
    # entry after it, so a file without one is upright there too.
    return bool(found) and TURNING_ENTRY.search(head, min(found) + 4) is not None


# JPEG markers of a frame header (SOF0-SOF15), which holds the image's size: not
# DHT (C4), JPG (C8) or DAC (CC), which share the range.
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_STANDALONE = frozenset([0x01, *range(0xD0, 0xD8)])  # no length follows them


def declared_size(head):
    """(width, height) that a PNG, GIF or JPEG file's first bytes declare, as Pillow
    reads them; None for another format, or a JPEG whose frame header lies beyond
    `head`."""
    if head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        return struct.unpack("<HH", head[6:10])
    if not head.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 1 < len(head):
        if head[at] != 0xFF:
            return None  # not a marker where one must be: let Pillow judge it
        marker = head[at + 1]
        if marker == 0xFF:  # fill bytes before a marker
            at += 1
        elif marker in JPEG_STANDALONE:
            at += 2
        elif marker in JPEG_FRAMES:
            if at + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[at + 5 : at + 9])
            return width, height
        elif marker in (0xD9, 0xDA):  # the end, or the pixels, before any frame header
            return None
        else:
            if at + 4 > len(head):
                return None
            at += 2 + struct.unpack(">H", head[at + 2 : at + 4])[0]
    return None


def _png_may_be_transparent(head):
    """Whether a PNG has an alpha channel, or a tRNS chunk (a transparent colour)
    before its pixels; yes where its chunks before the pixels pass `head`."""
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(head):
        length, kind = struct.unpack_from(">I4s", head, at)
        if kind == b"IHDR" and (
            length < 13 or at + 17 >= len(head) or head[at + 17] in PNG_ALPHA_TYPES
        ):
            return True
        if kind == b"tRNS":
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        at += 12 + length
    return True
