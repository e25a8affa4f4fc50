"""Bad input and broken code never escape as a traceback or a bomb: a stealth-PNG gzip bomb
is capped, any unexpected error is one line and exit 70 (``--debug`` shows where), and a
``find --json`` that fails mid-stream prints no half document."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

EXE = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")


def _stealth_bomb(path: Path, inflated: int = 1 << 29) -> None:
    """A PNG whose alpha LSBs hold A1111's stealth header and a gzip stream that inflates
    to ``inflated`` bytes of zeros (about a thousand times its own size)."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = bytes(1 << 24)
    payload = b"".join(deflate.compress(block) for _ in range(inflated >> 24)) + deflate.flush()
    data = (b"stealth_pngcomp" + (len(payload) * 8).to_bytes(4, "big") + payload)
    bits = np.unpackbits(np.frombuffer(data, np.uint8))
    side = int(np.ceil(np.sqrt(len(bits))))
    plane = np.zeros(side * side, np.uint8)
    plane[:len(bits)] = bits
    alpha = 254 | plane.reshape(side, side).T            # read back column by column
    rgb = np.full((side, side, 3), 128, np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)


def test_a_stealth_gzip_bomb_is_indexed_within_300_mb(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    _stealth_bomb(media / "bomb.png")
    # through sh, so the index's parent is small: a process forked from pytest inherits
    # pytest's high-water mark of resident memory across exec
    command = " ".join(shlex.quote(a) for a in [EXE, "index", str(media), "--db",
                                                str(tmp_path / "db"), "--no-embed", "--json"])
    done = subprocess.run(["sh", "-c", command + "; exit $?"], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["decoded"] == 1 and summary["failed"] == 0
    # the run's own peak: its RSS sampled, and the kernel's high-water mark of the process
    assert summary["metrics"]["memory_usage_mb"] < 300, summary["metrics"]
    code, out, _ = run_cli("show", media / "bomb.png", "--db", tmp_path / "db", "--json")
    assert code == 0 and json.loads(out)["ai_source"] == "a1111"


# every command, and the API call inside it that the test breaks
COMMANDS = [
    (["index", "{media}"], "index"),
    (["similar", "{image}"], "similar"),
    (["duplicates"], "duplicates"),
    (["duplicates", "--move-to", "{tmp}/d"], "move_duplicates"),
    (["undo", "{tmp}/j.jsonl"], "undo"),
    (["evaluate", "{tmp}/truth.csv"], "evaluate"),
    (["find"], "find_lines"),
    (["find", "--json"], "find_json"),
    (["show", "{image}"], "show"),
    (["stats"], "stats"),
    (["tag", "add", "t", "{media}"], "tag"),
    (["tag", "remove", "t", "{media}"], "tag"),
    (["tag", "list"], "tags"),
    (["tag", "auto"], "auto_tag"),
]


@pytest.mark.parametrize("args, method", COMMANDS, ids=[" ".join(c[0][:2]) for c in COMMANDS])
def test_an_unexpected_error_is_one_line_and_exit_70(tmp_path, monkeypatch, args, method):
    from alice_gpu.api import AliceIndex

    def broken(*a, **k):
        raise RuntimeError("injected failure\nsecond line")

    monkeypatch.setattr(AliceIndex, method, broken)
    media = tmp_path / "media"
    media.mkdir()
    image = media / "a.png"
    Image.new("RGB", (8, 8)).save(image)
    argv = [a.format(media=media, image=image, tmp=tmp_path) for a in args]
    code, out, err = run_cli(*argv, "--db", tmp_path / "db")
    assert code == 70, err
    lines = err.strip().splitlines()
    assert lines[0] == "alice-gpu: error: unexpected RuntimeError: injected failure"
    assert len(lines) == 2 and "--debug" in lines[1] and "Traceback" not in err
    assert out == ""
    code, _, err = run_cli(*argv, "--db", tmp_path / "db", "--debug")
    assert code == 70 and "Traceback" in err and "injected failure" in err


def test_the_debug_hint_is_a_command_that_runs(tmp_path, monkeypatch):
    import shlex

    from alice_gpu.api import AliceIndex

    monkeypatch.setattr(AliceIndex, "stats", lambda self: 1 / 0)
    code, _, err = run_cli("stats", "--db", tmp_path / "my db")
    hint = err.strip().splitlines()[-1].split("run: ", 1)[1]
    args = shlex.split(hint)
    assert args[0] == "alice-gpu" and "--debug" in args and str(tmp_path / "my db") in args
    code, _, err = run_cli(*args[1:])
    assert code == 70 and "ZeroDivisionError" in err and "Traceback" in err


def test_find_json_failing_mid_stream_prints_no_half_document(tmp_path, monkeypatch):
    from alice_gpu.errors import StoreError
    from alice_gpu.store.catalog import Catalog

    media = tmp_path / "media"
    media.mkdir()
    for k in range(3):
        Image.new("RGB", (16, 16), (k * 40, 0, 0)).save(media / f"{k}.png")
    assert run_cli("index", media, "--db", tmp_path / "db", "--no-embed")[0] == 0

    def breaks_after_one_chunk(self, filters, limit=None, chunk=8192):
        yield ['{"path": "x"}']
        raise StoreError("the disk went away")

    monkeypatch.setattr(Catalog, "find_json", breaks_after_one_chunk)
    code, out, err = run_cli("find", "--json", "--db", tmp_path / "db")
    assert code == 2 and out == "" and err.count("\n") == 1 and "disk went away" in err


def test_ctrl_c_during_evaluate_is_exit_130_and_one_line(tmp_path, monkeypatch):
    from alice_gpu.api import AliceIndex
    from alice_gpu.pipeline import IndexSummary, Interrupted

    def interrupted(*a, **k):
        raise Interrupted(IndexSummary(decoded=3, pending=5))

    monkeypatch.setattr(AliceIndex, "index", interrupted)
    truth = tmp_path / "truth.csv"
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    truth.write_text(f"file,group\n{tmp_path / 'a.png'},1\n")
    code, out, err = run_cli("evaluate", truth, "--db", tmp_path / "db")
    assert code == 130 and "Traceback" not in err
    assert "interrupted: 3 files done and committed, 5 pending" in err
