"""Decoding as a person sees a picture: EXIF orientation applied and transparency on
white, alike in training's pipeline, inference and an exported SavedModel."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from transfer.data.dataset import Split
from transfer.data.pipeline import decode_image, find_unreadable, images_only
from transfer.lazy import tf

HEIGHT, WIDTH = 32, 48
# The stored pixels whose EXIF orientation turns them upright, per tag: the inverse of
# what `ImageOps.exif_transpose` (and a browser) does to show them.
STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def upright_picture():
    """A picture that no turn or mirror leaves alike: flat blocks on JPEG's 8x8 grid,
    so that JPEG keeps it almost exactly, turned or not."""
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    pixels[:] = (240, 240, 240)
    pixels[:16, :16] = (220, 30, 30)
    pixels[16:, 32:] = (30, 30, 220)
    pixels[:8, 40:] = (30, 200, 30)
    return Image.fromarray(pixels)


def save(image, path, orientation=None):
    options = {"quality": 95, "subsampling": 0} if path.suffix == ".jpg" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        options["exif"] = exif.tobytes()
    image.save(path, **options)
    return path


def decoded(paths, size=(HEIGHT, WIDTH)):
    """Pixels as every reader of images in `transfer` gets them (predict, evaluate,
    report, export, the feature cache): `images_only` over the files."""
    split = Split([str(p) for p in paths], np.zeros(len(paths), np.int64))
    return np.concatenate([np.asarray(b) for b in images_only(split, size, batch_size=8)])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_is_applied_as_pillow_does(tmp_path, suffix):
    upright = upright_picture()
    paths = [save(upright, tmp_path / f"upright{suffix}")]
    for orientation, stored in STORED_AS.items():
        path = save(upright.transpose(stored), tmp_path / f"tag{orientation}{suffix}", orientation)
        with Image.open(path) as check:  # the file shows upright, as Pillow sees it
            assert ImageOps.exif_transpose(check).size == (WIDTH, HEIGHT)
        paths.append(path)
    pixels = decoded(paths)
    tolerance = 0 if suffix == ".png" else 6  # JPEG compresses a turned picture anew
    for path, image in zip(paths[1:], pixels[1:]):
        difference = np.abs(image - pixels[0]).max()
        assert difference <= tolerance, f"{path.name} differs from upright by {difference}"
    # Stored sideways and shown sideways are far apart: the check above means something.
    unturned = decoded([save(upright.transpose(STORED_AS[3]), tmp_path / f"plain{suffix}")])
    assert np.abs(unturned[0] - pixels[0]).max() > 100


def test_an_orientation_of_1_or_a_broken_exif_leaves_pixels_as_stored(tmp_path):
    picture = upright_picture()
    one = save(picture, tmp_path / "one.jpg", orientation=1)
    bogus = save(picture, tmp_path / "bogus.jpg", orientation=9)  # no such orientation
    data = bytearray(save(picture, tmp_path / "cut.jpg", orientation=6).read_bytes())
    data[data.index(b"Exif") + 6 : data.index(b"Exif") + 20] = b"\x00" * 14  # no TIFF header
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(bytes(data))
    plain = save(picture, tmp_path / "plain.jpg")
    pixels = decoded([plain, one, bogus, cut])
    for image in pixels[1:]:
        assert np.abs(image - pixels[0]).max() <= 2
    assert find_unreadable([str(p) for p in (one, bogus, cut)], progress=False) == []


def picture_with_hidden(background, size=(24, 16)):
    """RGBA: a left half opaque but for a half transparent strip; the right half fully
    transparent, stored in `background`."""
    pixels = np.zeros((size[1], size[0], 4), np.uint8)
    pixels[..., :3] = (40, 120, 200)
    pixels[..., 3] = 255
    pixels[:, size[0] // 2 :, :3] = background
    pixels[:, size[0] // 2 :, 3] = 0
    pixels[:4, : size[0] // 2, 3] = 128
    return Image.fromarray(pixels, "RGBA")


def transparent_files(folder, background):
    """The same picture as RGBA, LA and palette PNGs and GIFs (one still, one animated),
    invisible parts stored in `background`."""
    folder.mkdir()
    picture = picture_with_hidden(background)
    picture.save(folder / "rgba.png")
    picture.convert("LA").save(folder / "la.png")
    palette = picture.convert("RGBA").quantize(8)  # keeps transparency as tRNS
    palette.save(folder / "palette.png")
    # A GIF's transparency is one palette entry: index 0, coloured `background`.
    indices = np.ones((16, 24), np.uint8)
    indices[:, 12:] = 0
    gif = Image.fromarray(indices, "P")
    gif.putpalette([*background, 40, 120, 200] + [0] * 762)
    gif.save(folder / "image.gif", transparency=0)
    frames = [gif, gif.copy()]  # an animation: its loop block comes before the frame's
    frames[0].save(
        folder / "animated.gif", save_all=True, append_images=frames[1:], loop=0, transparency=0
    )
    return [
        folder / name for name in ("rgba.png", "la.png", "palette.png", "image.gif", "animated.gif")
    ]


def test_transparent_pixels_are_white_whatever_colour_they_store(tmp_path):
    on_black = decoded(transparent_files(tmp_path / "black", (0, 0, 0)), size=(16, 24))
    on_white = decoded(transparent_files(tmp_path / "white", (255, 255, 255)), size=(16, 24))
    on_red = decoded(transparent_files(tmp_path / "red", (255, 0, 0)), size=(16, 24))
    np.testing.assert_array_equal(on_black, on_white)
    np.testing.assert_array_equal(on_black, on_red)
    assert (on_black[:, :, 12:] == 255).all()  # invisible: white, as a browser shows it
    # Half transparent (RGBA, LA, palette): halfway between the colour and white.
    np.testing.assert_allclose(on_black[0, 0, 0], [147, 187, 227], atol=1)
    assert (on_black[:, 4:, :12] != 255).any(axis=-1).all()  # the opaque part is kept


def test_the_savedmodel_decoder_is_graph_only_and_agrees(tmp_path):
    """`serve_bytes` of an exported SavedModel decodes with `decode_image`: it must save
    (no Python in the graph) and decode as training does."""
    files = transparent_files(tmp_path / "t", (0, 0, 0))
    upright = upright_picture()
    files += [
        save(upright.transpose(STORED_AS[6]), tmp_path / "six.jpg", 6),
        save(upright.transpose(STORED_AS[8]), tmp_path / "eight.png", 8),
    ]
    module = tf.Module()
    module.serve = tf.function(
        lambda contents: tf.map_fn(
            lambda c: decode_image(c, (16, 24)),
            contents,
            fn_output_signature=tf.TensorSpec([16, 24, 3], tf.float32),
        ),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    tf.saved_model.save(module, str(tmp_path / "saved"))
    served = (
        tf.saved_model.load(str(tmp_path / "saved"))
        .serve(tf.constant([p.read_bytes() for p in files]))
        .numpy()
    )
    np.testing.assert_array_equal(served, decoded(files, size=(16, 24)))


def test_decoding_never_fails_on_what_it_reads_of_a_header(tmp_path):
    """Headers cut short or lying about offsets give the stored pixels, or an error
    for a file that cannot be decoded at all, never a crash of the parser."""
    picture = upright_picture()
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    picture.save(buffer, "JPEG", exif=exif.tobytes())
    whole = buffer.getvalue()
    gif = io.BytesIO()
    picture.convert("P").save(gif, "GIF", transparency=0)
    for data in (
        whole[:40],
        whole[:200],
        b"GIF89a" + b"\xff" * 20,
        gif.getvalue()[:30],
        b"\x89PNG\r\n\x1a\n",
        b"",
    ):
        with pytest.raises(tf.errors.InvalidArgumentError):
            decode_image(tf.constant(data), (8, 8))
    assert decode_image(tf.constant(gif.getvalue()), (8, 8)).shape == (8, 8, 3)


def test_only_files_that_need_it_take_the_longer_decoding_and_all_agree(tmp_path):
    """The file pipelines decode plainly what `needs_upright` leaves out, to the pixels
    `decode_image` (the SavedModel's decoder) gives: same pixels either way."""
    from tests.conftest import make_image_folder
    from transfer.data.images import needs_upright

    folder = make_image_folder(tmp_path / "kinds", {"a": 8}, size=(24, 16))  # every kind
    upright = upright_picture()
    files = (
        sorted(folder.glob("a/*"))
        + [
            save(upright, tmp_path / "one.jpg", 1),
            save(upright, tmp_path / "six.jpg", 6),
            save(upright, tmp_path / "eight.png", 8),
        ]
        + transparent_files(tmp_path / "t", (0, 0, 0))
    )
    picked = {p.name: needs_upright(p) for p in files}
    assert picked == {
        "img_000.png": False,
        "img_001.JPG": False,
        "img_002.jpeg": False,
        "img_003.bmp": False,
        "img_004.gif": True,
        "img_005.PNG": True,  # RGBA
        "img_006.png": False,
        "img_007.Jpeg": False,
        "one.jpg": False,
        "six.jpg": True,
        "eight.png": True,
        "rgba.png": True,
        "la.png": True,
        "palette.png": True,
        "image.gif": True,
        "animated.gif": True,
    }
    graph = tf.function(lambda c: decode_image(c, (16, 24)))
    expected = np.stack([graph(tf.constant(p.read_bytes())).numpy() for p in files])
    np.testing.assert_array_equal(decoded(files, size=(16, 24)), expected)
    assert find_unreadable([str(p) for p in files], progress=False) == []


def _jpeg_declaring(path, width, height, comment_bytes=0):
    """A small real JPEG whose frame header claims width x height, after comments of
    `comment_bytes` in all (in segments of at most 60,000 bytes)."""
    import struct

    data = save(upright_picture(), path, 1).read_bytes()
    comments = b""
    while comment_bytes > 0:
        length = min(comment_bytes, 60_000)
        comments += b"\xff\xfe" + struct.pack(">H", length + 2) + b"c" * length
        comment_bytes -= length
    data = bytearray(data[:2] + comments + data[2:])
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def test_the_file_check_reads_declared_sizes_as_pillow_does(tmp_path):
    """The file check takes each image's declared size from its first bytes (PNG, GIF,
    JPEG; Pillow reads the others, and a JPEG whose frame header lies further) and
    skips one beyond max_pixels unread; it notes which files need `decode_upright`."""
    from tests.conftest import make_image_folder
    from transfer.data.images import declared_size, file_head, needs_upright
    from transfer.data.pipeline import MAX_PIXELS, check_images

    folder = make_image_folder(tmp_path / "kinds", {"a": 8}, size=(24, 16))  # every kind
    files = sorted(folder.glob("a/*")) + [save(upright_picture(), tmp_path / "six.jpg", 6)]
    for path in files:
        expected = None if path.suffix == ".bmp" else Image.open(path).size
        assert declared_size(file_head(path)) == expected, path.name
    near = _jpeg_declaring(tmp_path / "near.jpg", 12_000, 8_000)
    far = _jpeg_declaring(tmp_path / "far.jpg", 12_000, 8_000, comment_bytes=100_000)
    assert declared_size(file_head(near)) == (12_000, 8_000)
    assert declared_size(file_head(far)) is None  # beyond the first bytes: Pillow's to read
    paths = [str(p) for p in [*files, near, far]]
    bad, upright = check_images(paths, progress=False, max_pixels=MAX_PIXELS)
    assert [(p, reason.split(":")[0]) for p, reason in bad] == [
        (str(near), "image too large (12000x8000)"),
        (str(far), "image too large (12000x8000)"),
    ]
    assert upright.tolist() == [needs_upright(p) for p in paths]
