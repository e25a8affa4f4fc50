"""Safe actions: --move-to with a journal, undo byte for byte, the index following, and a
move killed with SIGKILL at each point of a file's move finished by a re-run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from alice_gpu import open_index
from conftest import run_cli


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under root: relative path → (sha256, mtime_ns)."""
    return {str(p.relative_to(root)): (_digest(p), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def _library(tmp_path: Path, photos: Path, copies: int = 3) -> Path:
    """Six photos in two folders, with byte copies, a re-encode and a mirrored copy."""
    media = tmp_path / "media"
    srcs = sorted((photos / "images").iterdir())[20:26]
    for k, src in enumerate(srcs):
        sub = media / ("a" if k % 2 else "b") / "deep"
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, sub / src.name)
    for k in range(copies):
        shutil.copy2(srcs[0], media / "a" / f"copy{k}.jpg")
    Image.open(srcs[1]).convert("RGB").save(media / "b" / "small.jpg", quality=40)
    Image.open(srcs[2]).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(
        media / "mirror.jpg", quality=60)
    return media


def _indexed_paths(db: Path) -> dict[str, int]:
    with open_index(db)._open(read_only=True) as store:
        return store.path_ids()


def test_move_then_undo_restores_every_file_and_the_index(tmp_path, photos):
    media = _library(tmp_path, photos)
    db, dest = tmp_path / "db", tmp_path / "dups"
    assert run_cli("index", media, "--db", db, "--no-embed")[0] == 0
    before, ids_before = _snapshot(media), _indexed_paths(db)

    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--dry-run", "--json")
    plan = json.loads(out)["moves"]
    assert code == 0 and plan["dry_run"] and plan["moved"] == 0 and len(plan["planned"]) == 5
    assert _snapshot(media) == before and not dest.exists()        # a dry run moves nothing

    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    doc = json.loads(out)
    moves = doc["moves"]
    assert code == 0 and moves["moved"] == 5 and not moves["problems"]
    keepers = {g["keeper"] for g in doc["groups"]}
    for m in moves["planned"]:
        src, dst = Path(m["src"]), Path(m["dst"])
        assert not src.exists() and dst.exists()
        assert dst.relative_to(dest) == src.relative_to(media)    # relative to its root
        assert before[str(src.relative_to(media))] == (_digest(dst), dst.stat().st_mtime_ns)
    assert all(Path(k).exists() for k in keepers)
    moved_ids = _indexed_paths(db)                                  # the index followed
    assert set(moved_ids.values()) == set(ids_before.values())
    assert all(Path(p).exists() for p in moved_ids)
    assert run_cli("duplicates", "--db", db, "--json")[0] == 0

    code, out, _ = run_cli("undo", moves["journal"], "--db", db, "--json")
    assert code == 0 and json.loads(out)["restored"] == 5
    assert _snapshot(media) == before                               # bytes and mtimes
    assert _indexed_paths(db) == ids_before
    assert not [p for p in dest.rglob("*") if p.is_file() and "journal" not in p.name]


def test_undo_never_overwrites_a_file_now_at_the_original_path(tmp_path, photos):
    media = _library(tmp_path, photos, copies=1)
    db, dest = tmp_path / "db", tmp_path / "dups"
    run_cli("index", media, "--db", db, "--no-embed")
    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    moves = json.loads(out)["moves"]
    taken = Path(moves["planned"][0]["src"])
    taken.write_bytes(b"a new file the user made since")
    code, out, _ = run_cli("undo", moves["journal"], "--db", db, "--json")
    doc = json.loads(out)
    assert code == 1 and [p["path"] for p in doc["problems"]] == [str(taken)]
    assert taken.read_bytes() == b"a new file the user made since"
    assert Path(moves["planned"][0]["dst"]).exists()                # still safe where it went
    assert doc["restored"] == len(moves["planned"]) - 1


def test_move_never_overwrites_at_the_destination(tmp_path, photos):
    media = _library(tmp_path, photos, copies=1)
    db, dest = tmp_path / "db", tmp_path / "dups"
    run_cli("index", media, "--db", db, "--no-embed")
    plan = json.loads(run_cli("duplicates", "--db", db, "--move-to", dest, "--dry-run",
                              "--json")[1])["moves"]["planned"]
    blocker = Path(plan[0]["dst"])
    blocker.parent.mkdir(parents=True)
    blocker.write_bytes(b"already here")
    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    moves = json.loads(out)["moves"]
    assert code == 1 and moves["problems"][0]["path"] == plan[0]["src"]
    assert blocker.read_bytes() == b"already here" and Path(plan[0]["src"]).exists()


# where the child kills itself: a point in one file's move, after some files moved
KILL_POINTS = ["before_move", "after_link", "after_move", "before_index"]

_CHILD = textwrap.dedent("""
    import os, signal, sys
    from alice_gpu import open_index
    from alice_gpu.actions import moves

    point, db, dest, after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    calls = {"n": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_relocate, real_follow = moves.relocate, moves.Mover._follow

    def relocate(src, dst, allowed=None):
        calls["n"] += 1
        if calls["n"] > after:
            if point == "before_move":
                die()
            if point == "after_link":          # the new name made, the old not yet removed
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                os.link(src, dst)
                die()
        real_relocate(src, dst, allowed)
        if calls["n"] > after and point == "after_move":
            die()

    def follow(self, pairs):
        if point == "before_index" and pairs:
            die()
        real_follow(self, pairs)

    moves.relocate, moves.Mover._follow = relocate, follow
    open_index(db).move_duplicates(dest)
""")


@pytest.mark.parametrize("point", KILL_POINTS)
def test_kill_9_during_a_move_loses_nothing_and_a_rerun_completes(tmp_path, photos, point):
    media = _library(tmp_path, photos, copies=4)
    db, dest = tmp_path / "db", tmp_path / "dups"
    assert run_cli("index", media, "--db", db, "--no-embed")[0] == 0
    before = _snapshot(media)
    ids_before = _indexed_paths(db)
    child = subprocess.run([sys.executable, "-c", _CHILD, point, str(db), str(dest), "2"],
                           capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr

    def everything_somewhere() -> None:
        now = {**{k: v for k, v in _snapshot(media).items()},
               **{k: v for k, v in _snapshot(dest).items() if "journal" not in k}}
        for rel, (digest, mtime) in before.items():
            assert now.get(rel) == (digest, mtime), rel     # in place or moved, never lost

    everything_somewhere()
    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    doc = json.loads(out)
    assert code == 0, doc["moves"]["problems"]
    everything_somewhere()
    journals = sorted(dest.glob("alice-gpu-journal-*.jsonl"))
    assert all(json.loads(j.read_text().splitlines()[-1])["op"] == "end" for j in journals)
    indexed = _indexed_paths(db)
    assert set(indexed.values()) == set(ids_before.values())
    assert all(Path(p).exists() for p in indexed)                  # the index followed
    for journal in reversed(journals):
        assert run_cli("undo", journal, "--db", db)[0] == 0
    assert _snapshot(media) == before and _indexed_paths(db) == ids_before


def test_undo_finishes_a_killed_move_first(tmp_path, photos):
    media = _library(tmp_path, photos, copies=4)
    db, dest = tmp_path / "db", tmp_path / "dups"
    run_cli("index", media, "--db", db, "--no-embed")
    before, ids_before = _snapshot(media), _indexed_paths(db)
    child = subprocess.run([sys.executable, "-c", _CHILD, "after_link", str(db), str(dest), "1"],
                           capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    journal, = dest.glob("alice-gpu-journal-*.jsonl")
    assert run_cli("undo", journal, "--db", db)[0] == 0
    assert _snapshot(media) == before and _indexed_paths(db) == ids_before


def test_move_refuses_bad_usage(tmp_path):
    code, _, err = run_cli("duplicates", "--dry-run")
    assert code == 2 and "--move-to" in err
    code, _, err = run_cli("duplicates", "--move-to", tmp_path, "--act-on", "blurry")
    assert code == 2 and "blurry" in err
    code, _, err = run_cli("undo", tmp_path / "nope.jsonl", "--db", tmp_path)
    assert code == 2 and "journal" in err


def test_across_filesystems_a_move_copies_and_undo_restores_mtime(tmp_path, photos, monkeypatch):
    """Where hard links fail (another filesystem: EXDEV), a file is copied to a temporary
    file created exclusively beside its destination, fsynced, linked into place (never
    over a file), and only then removed."""
    import errno

    from alice_gpu.actions import moves
    from alice_gpu.actions.files import TMP_SUFFIX

    media = _library(tmp_path, photos, copies=2)
    db, dest = tmp_path / "db", tmp_path / "dups"
    run_cli("index", media, "--db", db, "--no-embed")
    before, ids_before = _snapshot(media), _indexed_paths(db)

    real_link = os.link

    def no_link(src, dst, **kwargs):          # across filesystems: only the temp copy links
        if not str(src).endswith(TMP_SUFFIX):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(moves.os, "link", no_link)
    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    doc = json.loads(out)["moves"]
    assert code == 0 and doc["moved"] == 4
    assert not list(dest.rglob("*.alice-gpu-partial"))
    assert run_cli("undo", doc["journal"], "--db", db)[0] == 0
    assert _snapshot(media) == before and _indexed_paths(db) == ids_before


def test_a_journal_line_cut_by_a_kill_does_not_hide_later_records(tmp_path):
    from alice_gpu.actions.moves import Journal

    path = tmp_path / "alice-gpu-journal-x.jsonl"
    j = Journal(path)
    j.write(journal="alice-gpu moves", version=1)
    j.write(op="move", src="/a", dst="/b")
    j.close()
    with open(path, "a") as fh:
        fh.write('{"op": "mov')                      # the kill came mid-write
    j = Journal(path)
    j.write(op="end")
    j.close()
    records = Journal.read(path)
    assert [r.get("op") for r in records] == [None, "move", "end"]   # the cut line skipped


def test_a_root_given_as_a_relative_path_still_anchors_the_moves(tmp_path, photos, monkeypatch):
    media = _library(tmp_path, photos, copies=1)
    monkeypatch.chdir(tmp_path)
    run_cli("index", "media", "--db", tmp_path / "db", "--no-embed")
    monkeypatch.chdir(media / "a")                   # elsewhere when moving
    code, out, _ = run_cli("duplicates", "--db", tmp_path / "db", "--move-to", tmp_path / "d",
                           "--dry-run", "--json")
    for m in json.loads(out)["moves"]["planned"]:
        assert Path(m["dst"]).relative_to(tmp_path / "d") == Path(m["src"]).relative_to(media)
