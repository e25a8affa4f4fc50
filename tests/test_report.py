"""The HTML report: one self-contained page, opened in headless Chromium, every thumbnail
decoded and every file name escaped; a screenshot is kept as a test artifact."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from conftest import chromium_driver, run_cli

ARTIFACTS = Path(os.environ.get("ALICE_GPU_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts"))
NASTY = """<b>&"it's" <img src=x onerror=alert(1)>.jpg"""


def _browser():
    return chromium_driver()


@pytest.fixture(scope="module")
def report(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("report")
    media = root / "media"
    media.mkdir()
    srcs = sorted((photos / "images").iterdir())[30:34]
    for s in srcs:
        shutil.copy2(s, media / s.name)
    shutil.copy2(srcs[0], media / NASTY)
    Image.open(srcs[1]).convert("RGB").transpose(Image.Transpose.ROTATE_90).save(
        media / "turned.jpg", quality=80)
    Image.open(srcs[2]).convert("RGB").save(media / "small.png")
    assert run_cli("index", media, "--db", root / "db", "--no-embed")[0] == 0
    page = root / "out" / "report.html"
    code, out, err = run_cli("duplicates", "--db", root / "db", "--html", page)
    assert code == 0 and "report:" in err
    return page, out


def test_page_is_self_contained_and_escapes_every_name(report):
    page, _ = report
    text = page.read_text(encoding="utf-8")
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;b&gt;&amp;&quot;it&#x27;s&quot;" in text
    assert "src=\"data:image/jpeg;base64," in text
    assert "http://" not in text and "https://" not in text and "file:" not in text


def test_headless_chromium_decodes_every_thumbnail(report):
    page, _ = report
    browser = _browser()
    try:
        browser.get(page.as_uri())
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 60).until(lambda b: b.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every(i => i.complete)"))
        images = browser.find_elements("css selector", "img")
        assert len(images) == 6                         # 3 groups of 2 files
        widths = browser.execute_script(
            "return Array.from(document.images).map(i => i.complete ? i.naturalWidth : -1)")
        assert widths and all(w > 0 for w in widths), widths
        assert not browser.find_elements("css selector", "figcaption b, script, img[src=x]")
        captions = " ".join(e.text for e in browser.find_elements("css selector", ".path"))
        assert NASTY in captions
        assert len(browser.find_elements("css selector", "figure.keep")) == 3
        tiers = {e.text for e in browser.find_elements("css selector", "h2 .tier")}
        assert tiers == {"exact", "near"}
        assert "rotated" in browser.find_element("css selector", "body").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "duplicates-report.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    finally:
        browser.quit()
