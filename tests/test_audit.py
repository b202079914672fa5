"""`transfer audit`: one real audit of a folder of tinted images with planted problems
(images in the wrong class folder, copies across and within splits, a tiny, a black,
a greyscale, a far-from-square and an unreadable image, colour noise, EXIF
orientations transfer reads and one it cannot), its issues.csv, clean CSV, terminal
summary and audit.html; the checks' rules on small inputs; bad input."""

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.conftest import TINTS, TINY_FLAGS, chrome, mocked_tfds, run_cli, write_image
from transfer.data.duplicates import find_duplicates
from transfer.findings.checks import class_balance
from transfer.findings.table import (
    COLUMNS,
    KEEP,
    KINDS,
    LEAVE_OUT,
    RELABEL,
    AuditImages,
    Finding,
    as_table,
    decide,
)
from transfer.report.audit_html import SECTIONS

COLOURS = {"red": TINTS[0], "green": TINTS[1], "blue": TINTS[2]}
SIZE = (40, 36)
ORIENTATION = 0x0112  # the EXIF tag


def image(path, tint, seed, size=SIZE, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_image(path, size, mode, seed=seed, tint=tint)


def with_orientation(path, target, orientation=6, filler=0):
    """`path` saved again as `target` with an EXIF orientation; `filler` bytes of a PNG
    text chunk before it push it past the start of the file that transfer reads."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    extra = {}
    if filler:
        extra["pnginfo"] = PngImagePlugin.PngInfo()
        extra["pnginfo"].add_text("comment", "x" * filler)
    Image.open(path).save(target, exif=exif.tobytes(), **extra)
    path.unlink()


def planted_folder(root):
    """train/ val/ test/ folders of red, green and blue images (10, 5 and 2 of each),
    a yellow class of 3 + 1, then the planted problems. Returns (root, planted)."""
    for split, count in (("train", 10), ("val", 5), ("test", 2)):
        for c, (name, tint) in enumerate(COLOURS.items()):
            for i in range(count):
                image(
                    root / split / name / f"{split}_{i}.png", tint, 1000 * c + 100 * len(split) + i
                )
    for i in range(3):
        image(root / "train" / "yellow" / f"train_{i}.png", TINTS[3], 5000 + i)
    image(root / "val" / "yellow" / "val_0.png", TINTS[3], 5100)
    wrong = {"blue/wrong_red_0.png": "red", "blue/wrong_red_1.png": "red"}
    wrong["green/wrong_blue_0.png"] = "blue"
    for n, (name, true) in enumerate(wrong.items()):
        image(root / "train" / name, COLOURS[true], 7000 + n)
    train = root / "train"
    shutil.copyfile(train / "green/train_3.png", root / "val/green/copy.png")
    original = Image.open(train / "red/train_5.png")
    original.resize((80, 72), Image.BILINEAR).save(root / "test/red/copy_larger.png")
    shutil.copyfile(train / "blue/train_2.png", train / "blue/again.png")
    image(train / "green/tiny.png", COLOURS["green"], 8000, size=(6, 5))
    Image.new("RGB", SIZE).save(train / "red/black.png")
    image(train / "blue/grey.jpg", COLOURS["blue"], 8001, mode="L")
    image(train / "red/wide.png", COLOURS["red"], 8002, size=(160, 20))
    noise = np.random.default_rng(8003).integers(0, 256, (SIZE[1], SIZE[0], 3)).astype("uint8")
    Image.fromarray(noise).save(train / "green/noise.png")
    (train / "red/broken.png").write_bytes(b"not a PNG")
    with_orientation(image(train / "blue/t.png", COLOURS["blue"], 8004), train / "blue/turned.jpg")
    with_orientation(
        image(train / "green/h.png", COLOURS["green"], 8005),
        train / "green/hidden_exif.png",
        filler=70_000,
    )
    planted = {
        "label_issue": {str(train / name): true for name, true in wrong.items()},
        "leak": {
            (str(root / "val/green/copy.png"), str(train / "green/train_3.png")),
            (str(root / "test/red/copy_larger.png"), str(train / "red/train_5.png")),
        },
        "exact_copy": {str(train / "blue/again.png"), str(train / "blue/train_2.png")},
        "outlier": {str(train / "green/noise.png")},
        "small_class": {"yellow"},
        "unreadable": {str(train / "red/broken.png")},
        "tiny": {str(train / "green/tiny.png")},
        "aspect_ratio": {str(train / "red/wide.png")},
        "constant": {str(train / "red/black.png")},
        "colour_mode": {str(train / "blue/grey.jpg")},
        "exif_orientation": {
            str(train / "blue/turned.jpg"): "transfer turns it upright",
            str(train / "green/hidden_exif.png"): "transfer does not read it",
        },
    }
    return root, planted


def snapshot(folder):
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")}


def read_csv(path):
    with open(path, newline="", encoding="utf8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """One audit (with --relabel and a clean CSV) of the planted folder, by the CLI."""
    root = tmp_path_factory.mktemp("audit")
    data, planted = planted_folder(root / "data")
    before = snapshot(data)
    out, clean = root / "audit", root / "clean.csv"
    result = run_cli(
        "audit", "--data", data, "--out", out, "--weights", "none", "--image-size", 32,
        "--write-clean", clean, "--relabel", "--cache-dir", root / "cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return {
        "data": data,
        "planted": planted,
        "out": out,
        "clean": clean,
        "output": result.stdout,
        "unchanged": snapshot(data) == before,
        "issues": read_csv(out / "issues.csv"),
    }


def found(audited, kind):
    return [row for row in audited["issues"] if row["kind"] == kind]


def test_every_planted_problem_is_found(audited):
    planted = audited["planted"]
    labels = {row["path"]: row for row in found(audited, "label_issue")}
    assert set(planted["label_issue"]) <= set(labels)
    for path, true in planted["label_issue"].items():
        assert labels[path]["suggested_label"] == true
        assert float(labels[path]["score"]) > 0.5
    # Any other label issue is an image planted for another reason (tiny, black, noise).
    others = {p for kind in ("outlier", "tiny", "constant", "colour_mode") for p in planted[kind]}
    assert set(labels) - set(planted["label_issue"]) <= others
    assert {(r["path"], r["other_path"]) for r in found(audited, "leak")} == planted["leak"]
    assert [{r["path"], r["other_path"]} for r in found(audited, "exact_copy")] == [
        planted["exact_copy"]
    ]
    assert found(audited, "near_duplicate") == []
    assert planted["outlier"] <= {r["path"] for r in found(audited, "outlier")}
    assert {r["given_label"] for r in found(audited, "small_class")} == planted["small_class"]
    for kind in ("unreadable", "tiny", "aspect_ratio", "constant", "colour_mode"):
        assert {r["path"] for r in found(audited, kind)} == planted[kind], kind
    orientations = {r["path"]: r for r in found(audited, "exif_orientation")}
    assert set(orientations) == set(planted["exif_orientation"])
    for path, says in planted["exif_orientation"].items():
        assert says in orientations[path]["detail"]
    assert [float(r["score"]) for r in found(audited, "outlier")] == sorted(
        (float(r["score"]) for r in found(audited, "outlier")), reverse=True
    )


def test_issues_csv_and_audit_json_say_what_a_clean_csv_does(audited):
    assert list(audited["issues"][0]) == list(COLUMNS)
    for row in audited["issues"]:
        label_issue = row["kind"] == "label_issue"
        cleaned = KINDS[row["kind"]].cleaned and row["path"]
        cleaned = cleaned and (float(row["score"]) >= 0.5 or not label_issue)
        expected = (RELABEL if label_issue else LEAVE_OUT) if cleaned else KEEP
        assert row["action"] == expected, row
    record = json.loads((audited["out"] / "audit.json").read_text())
    assert record["counts"]["leak"] == 2 and record["clean"]["relabel"] is True
    yellow = record["classes"]["yellow"]
    assert (yellow["train"], yellow["val"], yellow["test"]) == (3, 1, 0)
    assert 0.0 <= yellow["label_noise"] <= 1.0


def test_the_clean_csv_trains_as_it_is_and_the_data_is_unchanged(audited, tmp_path):
    assert audited["unchanged"]
    rows = read_csv(audited["clean"])
    assert list(rows[0]) == ["path", "label", "split", "audit"]
    by_path = {str(audited["clean"].parent / r["path"]): r for r in rows}
    left_out = {r["path"] for r in audited["issues"] if r["action"] == LEAVE_OUT}
    assert left_out and not left_out & set(by_path)
    for path, true in audited["planted"]["label_issue"].items():
        if path not in left_out:
            assert by_path[path]["label"] == true
            assert by_path[path]["audit"].startswith("relabelled from ")
    splits = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    run = tmp_path / "run"  # the smallest backbone: the test is of the CSV
    result = run_cli(
        "finetune", "--data", audited["clean"], "--out", run, "--arch", "mobilenet_v3_small",
        *TINY_FLAGS,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"]["splits"] == splits
    assert not json.loads((run / "metrics.json").read_text())["skipped_files"]


def test_the_terminal_summary_fits_on_one_screen(audited):
    lines = audited["output"].strip().splitlines()
    assert len(lines) <= 24
    for kind in KINDS:
        assert any(line.split()[:-1] == kind.split("_") for line in lines), kind
    assert str(audited["out"] / "audit.html") in lines[-1]
    assert any(str(audited["clean"]) in line for line in lines)


def test_audit_html_renders_every_section_in_a_browser(audited, tmp_path):
    from selenium.webdriver.common.by import By

    page = (audited["out"] / "audit.html").resolve()
    driver = chrome(tmp_path)
    try:
        driver.get(page.as_uri())
        for anchor, title in SECTIONS:
            assert driver.find_element(By.ID, anchor).find_element(By.TAG_NAME, "h2").text == title
        images = driver.execute_script(
            "return Array.from(document.images, i => [i.complete, i.naturalWidth])"
        )
        assert len(images) > 20 and all(ok and width > 0 for ok, width in images)
        # a label issue: the image and the nearest images of the suggested class
        figure = driver.find_element(By.CSS_SELECTOR, "#labels figure")
        assert len(figure.find_elements(By.TAG_NAME, "img")) == 4
        console = driver.get_log("browser")
        requests = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    finally:
        driver.quit()
    assert [e for e in console if e["level"] in ("SEVERE", "WARNING")] == []
    urls = {
        event["params"]["request"]["url"]
        for event in requests
        if event["method"] == "Network.requestWillBeSent"
        and event["params"].get("documentURL") == page.as_uri()
    }
    assert {url for url in urls if not url.startswith("data:")} == {page.as_uri()}


# ---------------------------------------------------------------- the rules


def test_near_copies_within_a_set_pair_each_copy_with_an_earlier_image():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(6, 64)).astype(np.float32)
    features[4] = features[1] + rng.normal(scale=0.01, size=64)  # a near-copy of 1
    features[5] = features[1]  # an exact copy of 1 (and of 4, nearly)
    pairs = {(i, j) for i, j, _ in find_duplicates(features)}
    assert pairs == {(4, 1), (5, 1)} or pairs == {(4, 1), (5, 4)}
    # against another set: each query's most similar image there, any order
    leaks = find_duplicates(features[:3], features[4:])
    assert [(q, t) for q, t, _ in leaks] in ([(1, 1), (0, 1)], [(0, 1), (1, 1)])


def test_classes_too_small_to_learn_or_validate_and_too_rare_are_named():
    names = ["big", "rare", "few"]
    labels = np.array([0] * 60 + [1] * 5 + [2] * 2 + [0] * 6 + [1] * 6 + [2] * 6)
    splits = np.array(["train"] * 67 + ["val"] * 18)
    images = AuditImages([f"{i}.png" for i in range(len(labels))], labels, splits, names)
    findings, table = class_balance(images)
    assert table["rare"] == {"train": 5, "val": 6}
    assert {(f.kind, f.given_label) for f in findings} == {
        ("imbalance", "rare"),
        ("imbalance", "few"),
        ("small_class", "few"),
    }


def test_a_clean_csv_acts_on_the_kinds_it_cleans_from_the_threshold():
    findings = [
        Finding("label_issue", "a.png", 0.9, suggested_label="cat"),
        Finding("label_issue", "b.png", 0.3, suggested_label="cat"),
        Finding("near_duplicate", "c.png", 0.99),
        Finding("leak", "d.png", 0.97),
        Finding("tiny", "e.png", 0.3),
        Finding("small_class", "", 1.0, given_label="cat"),
    ]
    actions = [LEAVE_OUT, KEEP, KEEP, LEAVE_OUT, LEAVE_OUT, KEEP]
    assert [f.action for f in decide(findings, 0.5)] == actions
    assert [f.action for f in decide(findings, 0.2, relabel=True)][:2] == [RELABEL, RELABEL]
    table = as_table(findings)
    assert list(table.columns) == list(COLUMNS) and len(table) == 6  # pandas is installed


# ---------------------------------------------------------------- bad input


@pytest.fixture
def small_folder(tmp_path):
    for c, name in enumerate(COLOURS):
        for i in range(3):
            image(tmp_path / "data" / name / f"{i}.png", TINTS[c], i)
    return tmp_path / "data"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--data", "{tmp}/missing"], "does not exist"),
        (["--write-clean", "{tmp}/clean.txt"], "written as .csv"),
        (["--write-clean", "{tmp}/elsewhere/clean.csv"], "its folder must hold the images"),
        (["--write-clean", "{tmp}/labels.csv", "--data", "{tmp}/labels.csv"], "own CSV"),
        (["--out", "{tmp}/data/red/0.png"], "is a file"),
        (["--clean-threshold", "1.5"], "1.5 is not in the range"),
        (["--data", "tfds:mnist", "--write-clean", "{tmp}/clean.csv"], "has none"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(small_folder, arguments, message):
    tmp = small_folder.parent
    (tmp / "labels.csv").write_text("path,label\ndata/red/0.png,red\ndata/green/0.png,green\n")
    given = [a.format(tmp=tmp) for a in arguments]
    defaults = {"--data": str(small_folder), "--out": str(tmp / "audit")}
    for flag, value in defaults.items():
        if flag not in given:
            given += [flag, value]
    result = run_cli("audit", "--weights", "none", *given)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2 and len(errors) == 1 and message in errors[0], result.output
    assert not (tmp / "audit").exists()


def test_multi_label_data_is_refused(small_folder):
    tmp = small_folder.parent
    (tmp / "tags.csv").write_text(
        "path,label\n" + "".join(f"data/{c}/{i}.png,{c};x\n" for c in COLOURS for i in range(3))
    )
    result = run_cli("audit", "--data", tmp / "tags.csv", "--out", tmp / "a", "--weights", "none")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert "multi-label" in result.stderr


def test_without_cleanlab_the_error_names_the_extra(small_folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)  # as if not installed
    out = small_folder.parent / "a"
    result = run_cli("audit", "--data", small_folder, "--out", out, "--weights", "none")
    assert result.exit_code == 1 and not out.exists()
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("Error: cleanlab") and "`pip install 'transfer-keras[audit]'`" in line


@pytest.mark.heavy
def test_a_tfds_dataset_is_audited_like_a_folder(tmp_path):
    """`--data tfds:NAME`, as finetune reads it: the findings name TFDS records."""
    with mocked_tfds(tmp_path / "tfds", splits=(("train", 40), ("test", 10))):
        result = run_cli(
            "audit", "--data", "tfds:mnist", "--tfds-data-dir", tmp_path / "tfds",
            "--out", tmp_path / "audit", "--weights", "none", "--image-size", 32,
            "--cache-dir", tmp_path / "cache",
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "audit" / "audit.json").read_text())
    # mock_data gives every split (train[:80%], train[80%:], test) the same 40 records:
    # each validation and test record is a copy of a training one, a leak to find.
    assert summary["images"] == 120 and summary["counts"]["leak"] >= 60, summary
    rows = read_csv(tmp_path / "audit" / "issues.csv")
    assert rows and all(row["path"].startswith("tfds:mnist/") for row in rows if row["path"])
    assert {row["split"] for row in rows if row["kind"] == "leak"} == {"val", "test"}
    assert (tmp_path / "audit" / "audit.html").stat().st_size > 1000
