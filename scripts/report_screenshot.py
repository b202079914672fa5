"""The docs' picture of report.html (docs/guides/report.md): the top of a run's page,
then its highest-loss, Grad-CAM and calibration sections, taken in headless chromium
(Debian's chromium and chromium-driver) and saved as a small PNG.

    transfer finetune --data data/fashion-mnist --weights none --image-size 32 \\
        --head-epochs 5 --fine-tune-from conv5 --fine-tune-epochs 2 --calibrate --out runs/sample
    python scripts/report_screenshot.py runs/sample/report.html data/report-screenshot.png
"""

import argparse
import io
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

WIDTH = 900  # browser pixels; the picture is 2/3 of it
PARTS = (("summary", "confusion"), ("top-losses", "duplicates"))  # [from, to) section ids
COLOURS = 128  # a palette keeps the PNG small (about 200 KB)


def screenshot(page, out):
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_window_size(WIDTH, 1000)
        driver.get(Path(page).resolve().as_uri())
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(WIDTH, height + 50)
        full = Image.open(io.BytesIO(driver.get_screenshot_as_png()))
        top = {i: driver.find_element(By.ID, i).location["y"] for part in PARTS for i in part}
    finally:
        driver.quit()
    crops = [
        full.crop((0, 0 if start == "summary" else top[start], full.width, top[end]))
        for start, end in PARTS
    ]
    picture = Image.new("RGB", (full.width, sum(c.height + 12 for c in crops)), "white")
    y = 0
    for crop in crops:
        picture.paste(crop, (0, y))
        y += crop.height + 12
    picture = picture.resize((picture.width * 2 // 3, picture.height * 2 // 3), Image.LANCZOS)
    picture.quantize(
        colors=COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    ).save(out, optimize=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page")
    parser.add_argument("out")
    args = parser.parse_args()
    screenshot(args.page, args.out)
