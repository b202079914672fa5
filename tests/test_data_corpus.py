"""A corpus of real, broken and hostile image files: every good image is used and every bad
one reported, by every command."""

import json
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli, write_image


def make_corpus(root):
    """Class folders with every kind of good and bad file. Returns (good, bad) paths."""
    shirts, coats = root / "shirt täglich", root / "coat 2"
    shirts.mkdir(parents=True)
    coats.mkdir()
    good, bad = [], []
    for folder, tint in ((shirts, (200, 60, 60)), (coats, (60, 60, 200))):
        for i in range(5):
            good.append(write_image(folder / f"plain {i}.png", tint=tint, seed=i))
        good.append(write_image(folder / "фото 1.jpg", tint=tint))
        good.append(write_image(folder / "really a png.jpg", tint=tint))
        (folder / "really a png.jpg").write_bytes(_png_bytes(tint))  # PNG content under a .jpg name
        pixels = (np.random.default_rng(1).random((20, 30)) * 65535).astype(np.uint16)
        Image.fromarray(pixels).save(folder / "sixteen-bit.png")
        good.append(folder / "sixteen-bit.png")
        Image.new("CMYK", (30, 20), (10, 200, 30, 0)).save(folder / "cmyk.jpg")
        good.append(folder / "cmyk.jpg")
        Image.new("RGB", (1, 1), tint).save(folder / "one-pixel.png")
        good.append(folder / "one-pixel.png")
        frames = [Image.new("RGB", (24, 24), c) for c in (tint, (0, 255, 0))]
        frames[0].save(
            folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0
        )
        good.append(folder / "animated.gif")
    Image.new("RGB", (4000, 3000), (200, 60, 60)).save(shirts / "huge.jpg", quality=50)
    good.append(shirts / "huge.jpg")
    # Bad files, each reported by path.
    jpeg = (shirts / "plain 0.png").read_bytes()
    (shirts / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(200))
    write_image(coats / "truncated.jpg", size=(64, 64))
    data = (coats / "truncated.jpg").read_bytes()
    (coats / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (coats / "empty.png").write_bytes(b"")
    (coats / "notes.png").write_text("this is text, not a picture\n")
    (coats / "dangling.jpg").symlink_to(root / f"missing-{uuid.uuid4().hex}.jpg")
    bad += [
        shirts / "corrupt.jpg",
        coats / "truncated.jpg",
        coats / "empty.png",
        coats / "notes.png",
        coats / "dangling.jpg",
    ]
    # Hidden files and folders are not images: ignored, not reported.
    (shirts / ".DS_Store").write_bytes(b"\0\1")
    (coats / "._plain 0.png").write_bytes(jpeg[:10])
    (root / ".thumbnails").mkdir()
    write_image(root / ".thumbnails" / "t.png")
    return [str(p) for p in good], [str(p) for p in bad]


def _png_bytes(tint):
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), tint).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "clothes"
    good, bad = make_corpus(root)
    return root, good, bad


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    root, good, bad = corpus
    out = tmp_path_factory.mktemp("runs") / "run"
    result = run_cli(
        "finetune",
        "--no-report",
        "--data",
        root,
        "--weights",
        "none",
        "--out",
        out,
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--head-epochs",
        "1",
        "--fine-tune-from",
        "conv5",
        "--fine-tune-epochs",
        "1",
        "--early-stopping",
        "0",
    )
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.heavy
def test_finetune_uses_every_good_image_and_reports_every_bad_one(corpus, corpus_run):
    root, good, bad = corpus
    out, output = corpus_run
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == ["coat 2", "shirt täglich"]
    assert sum(config["dataset"]["splits"].values()) == len(good)
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(s["path"] for s in metrics["skipped_files"]) == sorted(bad)
    for path in bad:
        assert f"Warning: Skipped {path}:" in output
    assert ".DS_Store" not in output and ".thumbnails" not in output


@pytest.mark.heavy
def test_evaluate_predict_and_embed_survive_the_corpus(corpus, corpus_run, tmp_path):
    root, good, bad = corpus
    out, _ = corpus_run
    # Every image, the run's training images too (its own data: the held-out split
    # otherwise).
    result = run_cli("evaluate", out, "--data", root, "--out", tmp_path / "eval", "--split", "all")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == len(good)
    assert sorted(s["path"] for s in metrics["skipped_files"]) == sorted(bad)

    result = run_cli("predict", out, root, "--format", "json")
    assert result.exit_code == 1, result.output  # the bad files could not be predicted
    rows = {r["path"]: r for r in json.loads(result.stdout)}
    assert {p for p, r in rows.items() if r["error"] is None} == set(good)
    assert {p for p, r in rows.items() if r["error"]} == set(bad)

    result = run_cli("embed", "--data", root, "--model", out, "--out", tmp_path / "e.npz")
    assert result.exit_code == 0, result.output
    with np.load(tmp_path / "e.npz") as f:
        assert sorted(f["paths"].tolist()) == sorted(good)
