"""The web app in real headless Chromium, as a person uses it: browse and filter, follow a
similar image, search by an uploaded photo, review duplicates with the keyboard, apply,
and undo from the journal page; a screenshot of every page is kept as a test artifact."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import chromium_driver, run_cli
from webkit import library, served

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

ARTIFACTS = Path(os.environ.get("ALICE_GPU_ARTIFACTS",
                                Path(__file__).resolve().parent.parent / "test-artifacts")) / "web"
EXE = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")
EXIF_DATE = 36867                                   # DateTimeOriginal


def dated(src: Path, dst: Path, when: str) -> None:
    """A photo with its date taken in EXIF (the shared photos mostly have none)."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[EXIF_DATE] = when
    Image.open(src).convert("RGB").save(dst, quality=92, exif=exif)


def stamp(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture(scope="module")
def app(tmp_path_factory, photos):
    root = tmp_path_factory.mktemp("webapp")
    media = library(root, photos)
    others = sorted((photos / "images").iterdir())[50:52]
    dated(others[0], media / "old.jpg", "2019:05:01 10:00:00")
    dated(others[1], media / "new.jpg", "2023:01:15 09:30:00")
    assert run_cli("index", media, "--db", root / "db")[0] == 0
    with served(root / "db", root / "aside") as (running, client):
        browser = chromium_driver()
        try:
            yield root, media, running, client, browser
        finally:
            browser.quit()


def shot(browser, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert browser.save_screenshot(str(path)) and path.stat().st_size > 1000


def wait(browser, condition, seconds: float = 120):
    """Until ``condition`` holds; an element the page replaced while it was read (the
    grid re-rendered by a filter) is read again at the next poll, not a failure."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(b):
        try:
            return condition(b)
        except StaleElementReferenceException:
            return False
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return False
            raise

    return WebDriverWait(browser, seconds, poll_frequency=0.1).until(settled)


def page(browser, client, path: str) -> None:
    browser.get(f"http://127.0.0.1:{client.port}{path}")
    wait(browser, lambda b: b.execute_script("return document.readyState") == "complete")


def css(browser, selector: str):
    from selenium.webdriver.common.by import By

    return browser.find_elements(By.CSS_SELECTOR, selector)


def names(browser, selector: str = "#grid .tile .name") -> list[str]:
    return [e.get_attribute("title") or e.text for e in css(browser, selector)]


def test_browse_then_filter_by_source_and_by_date(app):
    _, media, _, client, browser = app
    page(browser, client, "/")
    assert css(browser, "#count")[0].text == "15 files"
    shot(browser, "browse")
    box = css(browser, "input[name=source]")[0]
    box.send_keys("comfyui")
    css(browser, ".filters button[type=submit]")[0].click()
    wait(browser, lambda b: css(b, "#count")[0].text == "1 files")
    assert names(browser) == [str(media / "fox.png")]
    shot(browser, "browse-source")

    page(browser, client, "/")
    for field, value in (("since", "2022-01-01"), ("until", "2024-12-31")):
        browser.execute_script("arguments[0].value = arguments[1]",
                               css(browser, f"input[name={field}]")[0], value)
    css(browser, ".filters button[type=submit]")[0].click()
    wait(browser, lambda b: "since=2022-01-01" in b.current_url)
    assert names(browser) == [str(media / "new.jpg")]
    assert css(browser, "#count")[0].text == "1 files"


def test_open_an_asset_then_click_a_similar_image(app):
    _, media, _, client, browser = app
    page(browser, client, "/?sort=path&desc=false")
    css(browser, "#grid .tile a")[0].click()
    wait(browser, lambda b: "/assets/" in b.current_url)
    strip = css(browser, "#similar .tile a")
    assert strip, "no similar images on the asset page"
    target = strip[0].get_attribute("href")
    title = css(browser, "#similar .tile .name")[0].get_attribute("title")
    shot(browser, "asset")
    strip[0].click()
    wait(browser, lambda b: b.current_url == target)
    assert css(browser, "h1")[0].text == Path(title).name
    assert css(browser, "table.meta")


def test_upload_an_image_and_get_its_look_alike_first(app, tmp_path, photos):
    _, media, _, client, browser = app
    original = sorted((photos / "images").iterdir())[35]
    query = tmp_path / "from-my-phone.jpg"          # the same picture, re-encoded smaller
    image = Image.open(original).convert("RGB")
    image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(query, quality=70)
    page(browser, client, "/search")
    css(browser, "#upload")[0].send_keys(str(query))
    wait(browser, lambda b: css(b, "#results .tile"))
    assert names(browser, "#results .tile .name")[0] == str(media / original.name)
    assert "look-alikes" in css(browser, "#search-note")[0].text
    shot(browser, "search")


def _groups(client, browser) -> list[dict]:
    """Each group with its files, once the server's background computation is done."""
    listing = wait(browser, lambda _: (lambda doc: doc if doc["state"] == "ready" else None)(
        client.json("/api/groups?limit=500")))
    return [client.json(f"/api/groups/{g['id']}") for g in listing["groups"]]


def test_review_duplicates_with_the_keyboard_apply_and_undo(app):
    from selenium.webdriver.common.keys import Keys

    root, media, _, client, browser = app
    groups = _groups(client, browser)
    exact = next(g for g in groups if g["tier"] == "exact")
    near = next(g for g in groups if g["tier"] == "near")
    page(browser, client, "/duplicates")
    wait(browser, lambda b: b.find_element("tag name", "body").get_attribute(
        "data-groups-state") == "ready")
    shot(browser, "duplicates")

    # the near group: marked "not duplicates" with the keyboard
    page(browser, client, f"/duplicates/{near['id']}")
    body = browser.find_element("tag name", "body")
    body.send_keys("n")
    wait(browser, lambda b: f"/duplicates/{near['id']}" not in b.current_url)

    # the exact group: the second file chosen as keeper with "2", then applied with "a"
    page(browser, client, f"/duplicates/{exact['id']}")
    shot(browser, "group")
    second = css(browser, '.candidate[data-key="2"]')[0]
    keeper_id = second.get_attribute("data-id")
    keeper = Path(second.find_element("css selector", ".name").text)
    copy = Path(css(browser, '.candidate[data-key="1"] .name')[0].text)
    before = stamp(copy)
    browser.find_element("tag name", "body").send_keys("2")
    wait(browser, lambda b: "keeper" in css(b, '.candidate[data-key="2"]')[0]
         .get_attribute("class"))
    body = browser.find_element("tag name", "body")
    body.send_keys("a")
    wait(browser, lambda b: f"/duplicates/{exact['id']}" not in b.current_url)
    moved = root / "aside" / copy.relative_to(media)
    assert not copy.exists() and moved.exists() and keeper.exists()
    assert stamp(moved) == before
    decided = client.json("/api/decisions")
    assert any(d["kind"] == "keeper" and d["keeper"] == int(keeper_id) for d in decided)

    # undo from the journal page: back byte for byte, with the same mtime
    page(browser, client, "/journals")
    shot(browser, "journals")
    css(browser, "button.undo")[0].click()
    wait(browser, lambda b: "Put back 1 files" in css(b, "#status")[0].text)
    assert copy.exists() and not moved.exists() and stamp(copy) == before
    page(browser, client, "/journals")
    wait(browser, lambda b: "undone" in css(b, "#journals")[0].text)
    assert not css(browser, "button.undo")
    browser.find_element("tag name", "body").send_keys(Keys.END)

    # the CLI (answered through the server, which holds the index) honours the decision
    done = subprocess.run([EXE, "duplicates", "--db", str(root / "db"), "--json"],
                          capture_output=True, text=True, timeout=600)
    code, out, err = done.returncode, done.stdout, done.stderr
    assert code == 0, err
    listed = [sorted(f["path"] for f in g["files"]) for g in json.loads(out)["groups"]]
    assert sorted(f["path"] for f in near["files"]) not in listed
    assert sorted(f["path"] for f in exact["files"]) in listed
    shutil.rmtree(root / "aside", ignore_errors=True)
