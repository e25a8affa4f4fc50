"""The find filters match what users type: words in any script, a camera text taken
literally, and folders that hold names that are not UTF-8."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from conftest import run_cli


def _generated(path: Path, prompt: str, shade: int) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: 20, Sampler: Euler a, Seed: {shade}")
    Image.new("RGB", (32, 32), (shade, 64, 128)).save(path, pnginfo=info)


def _photo(path: Path, make: str, shade: int) -> None:
    exif = Image.Exif()
    exif[0x010F] = make
    Image.new("RGB", (32, 32), (64, shade, 32)).save(path, exif=exif)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters")
    media = root / "media"
    media.mkdir()
    _generated(media / "cafe.png", "un café noir, a cup on a table", 10)
    _generated(media / "cafeteria.png", "a cafeteria at noon", 20)
    _generated(media / "cat.png", "一只可爱的猫 sitting", 30)
    _generated(media / "strasse.png", "Große STRASSE bei Nacht", 40)
    _photo(media / "canon.jpg", "Canon", 50)
    _photo(media / "percent.jpg", "100% Camera", 60)
    odd = media / "odd"
    odd.mkdir()
    raw = os.fsencode(str(odd)) + b"/caf\xe9-latin1.png"          # a Latin-1 name
    Image.new("RGB", (32, 32), (1, 2, 3)).save(raw.decode("utf-8", "surrogateescape"),
                                               format="PNG")
    db = root / "db"
    code, _, err = run_cli("index", media, "--db", db, "--no-embed")
    assert code == 0, err
    return media, db


def _names(args, db) -> set[str]:
    code, out, err = run_cli("find", *args, "--db", db, "--json")
    assert code == 0, err
    return {os.path.basename(r["path"]) for r in json.loads(out)["results"]}


@pytest.mark.parametrize("words, expected", [
    ("café", {"cafe.png"}),
    ("CAFÉ NOIR", {"cafe.png"}),
    ("caf", set()),                           # a whole word, not a prefix
    ("cafeteria", {"cafeteria.png"}),
    ("猫", {"cat.png"}),                       # no spaces between CJK words: any run
    ("可爱", {"cat.png"}),
    ("straße", set()), ("strasse", {"strasse.png"}), ("große", {"strasse.png"}),
])
def test_prompt_words_match_in_any_script(library, words, expected):
    media, db = library
    assert _names(["--prompt", words], db) == expected


@pytest.mark.parametrize("camera, expected", [
    ("canon", {"canon.jpg"}), ("%", {"percent.jpg"}), ("_anon", set()), ("100%", {"percent.jpg"}),
])
def test_camera_text_is_taken_literally(library, camera, expected):
    media, db = library
    assert _names(["--camera", camera], db) == expected


def test_in_finds_names_that_are_not_utf8(library):
    media, db = library
    found = _names(["--in", media / "odd"], db)
    assert len(found) == 1 and next(iter(found)).startswith("caf")
    assert len(_names(["--in", media], db)) == 7
