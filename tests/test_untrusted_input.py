"""Inputs a person did not mean to be trusted: labels that look alike but are not
equal in Python, labels that would run in a spreadsheet, links out of the image
folder, images changed in place under a run, a .keras zip bomb."""

import csv
import json
import os
import time
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image_folder, write_image
from transfer.data.csv_labels import load_table
from transfer.data.pipeline import drop_unreadable
from transfer.data.sources import load_folder
from transfer.errors import DataError, InvalidArgumentError, WeightsError

CAFE_NFC = unicodedata.normalize("NFC", "café")
CAFE_NFD = unicodedata.normalize("NFD", "café")


def write_labels(path, rows, header=("path", "label")):
    with open(path, "w", newline="", encoding="utf8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def image_rows(folder, labels):
    """One small image per label under `folder`; rows of (file name, label)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, label in enumerate(labels):
        write_image(folder / f"img_{i:03d}.png", size=(16, 16), seed=i)
        rows.append((f"img_{i:03d}.png", label))
    return rows


# ------------------------------------------------------------------ labels (item 4)


def test_a_label_in_nfc_and_nfd_is_one_class_in_a_csv(tmp_path):
    assert CAFE_NFC != CAFE_NFD
    rows = image_rows(tmp_path, [CAFE_NFC, CAFE_NFD] * 3 + ["tea"] * 6)
    dataset = load_table(write_labels(tmp_path / "labels.csv", rows), val_split=0.0)
    assert dataset.class_names == [CAFE_NFC, "tea"]
    assert np.bincount(dataset.splits["train"].labels).tolist() == [6, 6]


def test_folder_names_in_nfc_and_nfd_are_one_class(tmp_path):
    root = make_image_folder(
        tmp_path / "images", {CAFE_NFC: 3, CAFE_NFD: 3, "tea": 6}, size=(16, 16)
    )
    if len(list(root.iterdir())) < 3:
        pytest.skip("this file system stores names in one normal form")
    dataset = load_folder(root, val_split=0.0)
    assert dataset.class_names == [CAFE_NFC, "tea"]
    assert np.bincount(dataset.splits["train"].labels).tolist() == [6, 6]
    again = load_folder(root, val_split=0.5)  # the hash split still sees every file
    assert sum(len(s) for s in again.splits.values()) == 12


@pytest.mark.parametrize("label", ["two\nlines", "tab\tbed", "bell\x07", "line\u2028sep"])
def test_a_label_with_a_control_character_is_one_error_naming_its_row(tmp_path, label):
    rows = image_rows(tmp_path, ["a", "b", label, "a"])
    labels = write_labels(tmp_path / "labels.csv", rows)
    with pytest.raises(DataError, match=r"Labels with control characters") as error:
        load_table(labels)
    assert f"row 4 of {labels}" in str(error.value)
    assert repr(label) in str(error.value)
    assert "\n" not in str(error.value)  # one line


def test_a_class_folder_with_a_control_character_is_refused_by_name(tmp_path):
    root = make_image_folder(tmp_path / "images", {"cat": 2, "dog\tfood": 2}, size=(16, 16))
    with pytest.raises(DataError, match=r"dog\\tfood.*holds the control characters \\t"):
        load_folder(root)


# --------------------------------------------------------- formula injection (item 5)

FORMULAS = ['=HYPERLINK("http://x","y")', "@SUM(1+1)", "+cmd", "-2+3", "\tindent", "\rret"]


def raw_cells(path):
    with open(path, newline="", encoding="utf8") as f:
        return [cell for row in csv.reader(f) for cell in row]


def test_csv_cells_never_start_a_formula_and_read_back_exactly(tmp_path):
    from transfer.io import escape_cell, unescape_cell, write_csv

    texts = FORMULAS + ["'=quoted", "''@twice", "'plain", "-0.5", "+3", "1e-3", "café"]
    path = write_csv(
        tmp_path / "t.csv", ["name", *texts], [[t, -0.5, 7, np.float32(-2.5)] for t in texts]
    )
    cells = raw_cells(path)
    for cell in cells:
        if cell[:1] in ("=", "+", "-", "@", "\t", "\r"):
            float(cell)  # only plain numbers may start so
    assert "-0.5" in cells and "-2.5" in cells and "+3" in cells and "1e-3" in cells
    with open(path, newline="", encoding="utf8") as f:
        rows = [[unescape_cell(c) for c in row] for row in csv.reader(f)]
    assert rows[0] == ["name", *texts]
    assert [row[0] for row in rows[1:]] == texts
    assert all(escape_cell(v) == v for v in (-0.5, 3, None, "tea", "-1.5e3"))


def test_a_csv_transfer_wrote_reads_back_with_its_labels(tmp_path):
    """A clean CSV of `transfer audit` (written escaped) is data for `finetune`: a label
    that would start a formula reads back as it was, not with the escaping quote."""
    from transfer.io import write_csv

    labels = ['=HYPERLINK("http://x","y")', "@SUM(1+1)", "-cut"]
    rows = []
    for n, label in enumerate(labels):
        for i in range(3):
            write_image(tmp_path / f"{n}_{i}.png", seed=n * 3 + i)
            rows.append([f"{n}_{i}.png", label])
    path = write_csv(tmp_path / "clean.csv", ["path", "label"], rows)
    assert "'@SUM(1+1)" in raw_cells(path)
    assert load_table(path, val_split=0.0).class_names == sorted(labels)


def test_predictions_and_confusion_csv_hold_no_formula(tmp_path):
    from transfer.io import unescape_cell
    from transfer.report.metrics import write_reports

    class_names = ['=HYPERLINK("http://x","y")', "@SUM(1+1)", "tea"]
    y_true = np.array([0, 1, 2, 0])
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.1, 0.8, 0.1]])
    paths = ["-a.png", "=b.png", "c.png", "d.png"]
    write_reports(tmp_path, y_true, probabilities, class_names, paths)
    for name in ("predictions.csv", "confusion_matrix.csv"):
        cells = raw_cells(tmp_path / name)
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")], name
    with open(tmp_path / "predictions.csv", newline="", encoding="utf8") as f:
        rows = [{k: unescape_cell(v) for k, v in row.items()} for row in csv.DictReader(f)]
    assert [r["path"] for r in rows] == paths
    assert [r["true_label"] for r in rows] == [class_names[i] for i in y_true]
    assert float(rows[0]["confidence"]) == pytest.approx(0.8)


# --------------------------------------------------- links out of the folder (item 6)


def private_image(tmp_path):
    """An image outside the image folder, as a private photo elsewhere would be."""
    (tmp_path / "private").mkdir()
    return write_image(tmp_path / "private" / "secret.png", size=(16, 16))


def test_a_link_out_of_the_image_folder_is_skipped_and_reported(tmp_path):
    data = make_image_folder(tmp_path / "images", {"cat": 4, "dog": 4}, size=(16, 16))
    secret = private_image(tmp_path)
    (data / "cat" / "secret.png").symlink_to(secret)
    (data / "fox").symlink_to(secret.parent, target_is_directory=True)  # a class folder
    (data / "dog" / "also_cat.png").symlink_to(data / "cat" / "img_000.png")  # inside: kept
    with pytest.raises(
        DataError,
        match=r"no images .* Not followed: .*fox, links to folders "
        r"outside the image folder",
    ):
        load_folder(data)
    (data / "fox").unlink()
    dataset = load_folder(data)
    paths = [Path(p) for s in dataset.splits.values() for p in s.paths]
    assert len(paths) == 9 and data / "dog" / "also_cat.png" in paths
    assert not [p for p in paths if os.path.realpath(p) == str(secret)]
    assert [(Path(s["path"]).name, s["reason"]) for s in dataset.skipped] == [
        ("secret.png", "link to a file outside the image folder, not read")
    ]
    with pytest.raises(DataError, match="secret.png: link to a file outside"):
        drop_unreadable(load_folder(data), strict=True, progress=False)


def test_a_csv_row_whose_file_links_out_is_skipped_and_reported(tmp_path):
    images = tmp_path / "images"
    rows = image_rows(images, ["a", "b", "a", "b"])
    secret = private_image(tmp_path)
    (images / "secret.png").symlink_to(secret)
    labels = write_labels(tmp_path / "labels.csv", [*rows, ("secret.png", "a")])
    dataset = load_table(labels, images=images, val_split=0.0)
    assert len(dataset.splits["train"]) == 4
    assert [(Path(s["path"]).name, s["reason"]) for s in dataset.skipped] == [
        ("secret.png", f"link to a file outside the image folder, not read (row 6 of {labels})")
    ]
    with pytest.raises(DataError, match="Paths outside the image folder"):  # as before
        load_table(
            write_labels(tmp_path / "up.csv", [*rows, ("../private/secret.png", "a")]),
            images=images,
        )


# ------------------------------------------------ images changed under a run (item 8)


def test_images_changed_in_place_change_the_fingerprint_and_stop_a_resume(tmp_path):
    from transfer.runs import check_resume_data

    data = tmp_path / "images"
    for c, (name, tint) in enumerate((("cat", (200, 60, 60)), ("dog", (60, 60, 200)))):
        (data / name).mkdir(parents=True)
        for i in range(3):  # BMPs: their size depends on nothing but width and height
            write_image(data / name / f"img_{i}.bmp", size=(16, 16), seed=10 * c + i, tint=tint)
    before = load_folder(data)
    assert load_folder(data).fingerprint == before.fingerprint  # nothing changed
    # The case: pixels swapped between classes, same names, same sizes.
    cat, dog = data / "cat" / "img_0.bmp", data / "dog" / "img_0.bmp"
    sizes = cat.stat().st_size, dog.stat().st_size
    cat_pixels, dog_pixels = cat.read_bytes(), dog.read_bytes()
    later = max(cat.stat().st_mtime_ns, dog.stat().st_mtime_ns) + 10**9
    cat.write_bytes(dog_pixels)
    dog.write_bytes(cat_pixels)
    for path in (cat, dog):
        os.utime(path, ns=(later, later))
    assert (cat.stat().st_size, dog.stat().st_size) == sizes
    after = load_folder(data)
    assert after.splits["train"].paths == before.splits["train"].paths
    assert after.fingerprint != before.fingerprint
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"dataset": {"fingerprint": before.fingerprint}}))
    check_resume_data(run, before, data)  # the data it started with
    with pytest.raises(InvalidArgumentError, match="was started on other data"):
        check_resume_data(run, after, data)


def test_a_csv_fingerprint_sees_a_file_changed_in_place(tmp_path):
    rows = image_rows(tmp_path / "images", ["a", "b", "a", "b"])
    labels = write_labels(tmp_path / "labels.csv", rows)
    before = load_table(labels, images=tmp_path / "images")
    image = tmp_path / "images" / rows[0][0]
    later = time.time_ns() + 5 * 10**9
    os.utime(image, ns=(later, later))
    assert load_table(labels, images=tmp_path / "images").fingerprint != before.fingerprint


# ------------------------------------------------------------ .keras zip bomb (item 16)


def keras_archive(path, weights_bytes, chunk=1 << 20):
    """A .keras-shaped zip whose model.weights.h5 is `weights_bytes` of zeros, deflated
    (a few hundred KB on disk), written a chunk at a time."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("config.json", json.dumps({"config": {"layers": []}}))
        with z.open("model.weights.h5", "w", force_zip64=True) as member:
            zeros = bytes(chunk)
            for _ in range(weights_bytes // chunk):
                member.write(zeros)
    return path


def test_a_keras_zip_bomb_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from transfer.models.weights.formats import read_weights_file

    bomb = keras_archive(tmp_path / "bomb.keras", 200 << 20)
    assert bomb.stat().st_size < 1 << 20
    read = zipfile.ZipFile.read

    def guarded_read(archive, name, *args, **kwargs):
        assert name != "model.weights.h5", "the bomb was unpacked"
        return read(archive, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "read", guarded_read)
    with pytest.raises(
        WeightsError,
        match=r"Not allowed: .*bomb\.keras declares a "
        r"model\.weights\.h5 of 209,715,200 bytes",
    ):
        read_weights_file(bomb)


def test_predict_as_csv_escapes_labels_that_start_a_formula(tmp_path):
    import csv as csv_module
    import io as io_module

    from click.testing import CliRunner

    from tests.conftest import write_image
    from transfer.cli import cli
    from transfer.io import save_model
    from transfer.models.heads import build_classifier
    from transfer.runs import RunPaths, write_labels

    paths = RunPaths(tmp_path / "run")
    save_model(build_classifier(2, weights=None, image_size=32), paths.model)
    write_labels(paths.labels, ['=HYPERLINK("http://x","y")', "@SUM(1+1)"])
    image = write_image(tmp_path / "a.png", size=(32, 32))
    result = CliRunner().invoke(
        cli, ["predict", str(paths.root), str(image), "--format", "csv", "--top-k", "2"]
    )
    assert result.exit_code == 0, result.output
    cells = [cell for row in csv_module.reader(io_module.StringIO(result.stdout)) for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "-", "@")]
    assert "'@SUM(1+1)" in cells
