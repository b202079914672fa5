"""Encoded images to the pixels a person sees: the EXIF orientation applied (as
Pillow's `ImageOps.exif_transpose`, browsers and phones do) and transparency
composited onto white (as browsers show it). TensorFlow ops only, so that training,
inference and an exported SavedModel's `serve_bytes` decode alike."""

from transfer.lazy import tf

# The orientation is looked for in the start of a file only: JPEG puts its EXIF segment
# right after the (at most 64 KiB) JFIF segment, PNG its eXIf chunk before the pixels.
HEADER_BYTES = 1 << 17
# The Orientation entry of an EXIF directory (tag 0x0112, type SHORT, count 1, value
# 1-8), little- or big-endian, after the "Exif" (JPEG) or "eXIf" (PNG) marker. `\C` is
# any byte: file bytes are not UTF-8. One regular expression, not a walk of segments in
# TensorFlow ops: a few hundred tiny ops per image made decoding ten times slower.
ORIENTATION_ENTRY = (r"^\C*?(?:Exif\x00\x00|eXIf)\C*?(?:"
                     r"\x12\x01\x03\x00\x01\x00\x00\x00([\x01-\x08])\x00|"
                     r"\x01\x12\x00\x03\x00\x00\x00\x01\x00([\x01-\x08]))")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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
    """
    contents = tf.convert_to_tensor(contents, tf.string)
    signature = tf.strings.substr(contents, 0, len(PNG_SIGNATURE))
    # Conditions side by side, not nested (a nested one cost more than decoding a small
    # image): only a PNG's alpha channel is read, only a GIF's palette is edited.
    opaque = tf.cond(tf.equal(tf.strings.substr(signature, 0, 3), b"GIF"),
                     lambda: _gif_on_white(contents), lambda: contents)
    image = tf.cond(tf.equal(signature, PNG_SIGNATURE), lambda: _png_on_white(contents),
                    lambda: tf.io.decode_image(opaque, channels=3, expand_animations=False))
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
    axes = tf.boolean_mask([0, 1], tf.stack([tf.gather(_REVERSED_ROWS, index),
                                             tf.gather(_REVERSED_COLUMNS, index)]))
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
    return tf.cond(tf.shape(image)[-1] % 2 == 0,
                   lambda: on_white(tf.broadcast_to(image[..., :-1], rgb_shape), image[..., -1:]),
                   lambda: tf.broadcast_to(image, rgb_shape))


def on_white(rgb, alpha):
    """uint8 RGB pixels with uint8 alpha, composited onto white, rounded."""
    rgb, alpha = tf.cast(rgb, tf.float32), tf.cast(alpha, tf.float32)
    return tf.cast(tf.round(rgb * (alpha / 255.0) + (BACKGROUND / 255.0) * (255.0 - alpha)),
                   tf.uint8)


def _gif_on_white(contents):
    """A GIF whose first frame's transparent colour is made white and opaque; other
    bytes unchanged. TensorFlow's decoder makes transparent pixels black: all of them
    use this one palette entry, so they become the white every other format gets."""
    # Zero-padded: a crafted offset reads zeros, never fails.
    data = tf.cast(tf.io.decode_raw(tf.strings.substr(contents, 0, GIF_HEADER_BYTES),
                                    tf.uint8, fixed_length=GIF_HEADER_BYTES + 1), tf.int32)
    global_colours = _colour_table_size(data[10])
    # The first graphic control block (8 bytes) and the frame descriptor after it (10):
    # right after the global colour table, or after an animation's loop block. Not a
    # walk of every block: in TensorFlow ops, that cost more than decoding the GIF.
    starts = 13 + 3 * global_colours + tf.constant([[0], [GIF_LOOP_BLOCK]])
    blocks = tf.gather(data, tf.minimum(starts + tf.range(18), GIF_HEADER_BYTES))
    found = tf.reduce_all(tf.equal(tf.gather(blocks, GIF_CONTROL_AT, axis=1), GIF_CONTROL),
                          axis=1)
    which = tf.argmax(tf.cast(found, tf.int32), output_type=tf.int32)
    control, block = tf.gather(starts[:, 0], which), tf.gather(blocks, which)
    local_colours = _colour_table_size(block[17])
    colours = tf.where(local_colours > 0, local_colours, global_colours)
    colour = tf.where(local_colours > 0, control + 18, 13) + 3 * block[6]
    transparent = tf.reduce_any(found) & (block[3] % 2 == 1) & (block[6] < colours) \
        & (colour + 3 <= GIF_HEADER_BYTES)
    # Without a condition (one more made every image slower to decode): where there is
    # nothing to change, nothing (no bytes at 0) is replaced.
    colour_bytes = tf.where(transparent, b"\xff\xff\xff", b"")
    flag_byte = tf.where(transparent, tf.gather(BYTE_STRINGS, block[3] & 0xFE), b"")
    patched = _replace(contents, tf.where(transparent, colour, 0), colour_bytes,
                       tf.where(transparent, 3, 0))
    return _replace(patched, tf.where(transparent, control + 3, 0), flag_byte,
                    tf.where(transparent, 1, 0))


def _colour_table_size(flags):
    """Colours in the table that a GIF's screen or image descriptor flags announce."""
    return tf.where(flags >= 128, tf.bitwise.left_shift(2, flags % 8), 0)


def _replace(contents, at, new, length):
    """`contents` with `length` bytes at `at` replaced by as many others."""
    return tf.strings.join([tf.strings.substr(contents, 0, at), new,
                            tf.strings.substr(contents, at + length, tf.strings.length(contents))])
