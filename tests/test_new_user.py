"""What a new user meets first: help that shows every word, a run that says what it found
(or did not), and hints that work exactly as printed."""

from __future__ import annotations

import json
import shlex

from PIL import Image

from conftest import run_cli


def test_help_keeps_the_brackets_of_extras(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")                  # one line per option
    code, out, _ = run_cli("index", "-h")
    assert code == 0 and "pip install 'alice-gpu[distributed]'" in out


def test_an_empty_folder_says_it_found_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli("index", tmp_path / "empty", "--db", tmp_path / "db", "--no-embed")
    assert code == 0 and "no images found" in err


def test_files_alice_cannot_read_yet_are_counted_by_extension(tmp_path, monkeypatch):
    import alice_gpu.discover as discover

    media = tmp_path / "videos"
    media.mkdir()
    for name in ("a.mp4", "b.mp4", "c.MOV", "notes.txt", ".DS_Store"):
        (media / name).write_bytes(b"\x00" * 64)
    monkeypatch.setattr(discover, "_VIDEO_SUPPORT", False)       # without the [video] extra
    code, out, err = run_cli("index", media, "--db", tmp_path / "db", "--no-embed")
    assert code == 0
    assert "1 files skipped as unsupported, by extension (.txt 1)" in err
    assert "3 video(s) skipped" in err and "pip install 'alice-gpu[video]'" in err
    code, out, _ = run_cli("index", media, "--db", tmp_path / "db", "--no-embed", "--json")
    assert json.loads(out)["skipped"] == {discover.VIDEO_SKIPPED: 3, ".txt": 1}


def test_the_failure_hint_is_a_command_that_works_as_printed(tmp_path):
    media = tmp_path / "my photos"
    media.mkdir()
    Image.new("RGB", (32, 32)).save(media / "ok.png")
    (media / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    db = tmp_path / "an index"
    code, out, err = run_cli("index", media, "--db", db, "--no-embed")
    assert code == 1
    hint = next(line for line in err.splitlines() if line.startswith("see them all with: "))
    args = shlex.split(hint.split(": ", 1)[1])
    assert args[:3] == ["alice-gpu", "stats", "--json"] and str(db) in args
    code, out, _ = run_cli(*args[1:])
    assert code == 0 and json.loads(out)["failed"] == 1
