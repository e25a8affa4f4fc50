"""Moves and undo as an attacker sees them: a journal planted in the move folder, a symlink
at either end, a folder the user cannot write. Nothing outside the move folder and the
indexed roots is ever touched, and one file's failure never stops the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from alice_gpu import open_index
from conftest import run_cli
from test_moves import _indexed_paths, _library, _snapshot


def _header(db: Path, dest: Path) -> dict:
    return {"journal": "alice-gpu moves", "version": 1, "db": os.path.realpath(db),
            "move_to": os.path.realpath(dest), "at": 0}


def _plant(dest: Path, *records: dict) -> Path:
    """A journal someone else wrote into the move folder, left open (no "end")."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "alice-gpu-journal-20990101-000000.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def indexed(tmp_path, photos):
    media = _library(tmp_path, photos, copies=2)
    db, dest = tmp_path / "db", tmp_path / "dups"
    assert run_cli("index", media, "--db", db, "--no-embed")[0] == 0
    victim = tmp_path / "elsewhere" / "precious.txt"     # outside the roots and the folder
    victim.parent.mkdir()
    victim.write_text("not yours to move")
    return media, db, dest, victim


@pytest.mark.parametrize("where", ["dst outside", "src outside", "other index", "other folder"])
def test_a_planted_journal_is_refused_and_no_file_moves(indexed, tmp_path, where):
    media, db, dest, victim = indexed
    inside = next(p for p in media.rglob("*.jpg"))
    header = _header(db, dest)
    move = {"op": "move", "src": str(inside), "dst": str(dest / "x.jpg")}
    if where == "dst outside":
        move["dst"] = str(tmp_path / "elsewhere" / "stolen.jpg")
    elif where == "src outside":
        move["src"] = str(victim)
    elif where == "other index":
        header["db"] = str(tmp_path / "another-index")
    else:
        header["move_to"] = str(tmp_path / "another-folder")
    journal = _plant(dest, header, move)
    before, files = _snapshot(media), _snapshot(tmp_path / "elsewhere")
    ids = _indexed_paths(db)

    code, _, err = run_cli("duplicates", "--db", db, "--move-to", dest)     # resumes journals
    assert code == 2 and err.count("\n") == 1 and f"{journal}:" in err, err
    line = 2 if where in ("dst outside", "src outside") else 1
    assert f"{journal}:{line}:" in err
    code, _, err = run_cli("undo", journal, "--db", db)
    assert code == 2 and f"{journal}:" in err and "Traceback" not in err
    assert _snapshot(media) == before and _snapshot(tmp_path / "elsewhere") == files
    assert not (dest / "x.jpg").exists() and _indexed_paths(db) == ids


def test_undo_of_a_tampered_journal_moves_nothing(indexed, tmp_path):
    """A finished journal edited to send a file back outside the roots is refused whole."""
    media, db, dest, victim = indexed
    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    moves = json.loads(out)["moves"]
    assert code == 0 and moves["moved"] >= 2
    journal = Path(moves["journal"])
    lines = journal.read_text().splitlines()
    k = next(i for i, line in enumerate(lines) if json.loads(line).get("op") == "moved")
    record = json.loads(lines[k])
    record["src"] = str(tmp_path / "elsewhere" / "planted.jpg")
    lines[k] = json.dumps(record)
    journal.write_text("\n".join(lines) + "\n")
    moved = _snapshot(dest)
    code, _, err = run_cli("undo", journal)
    assert code == 2 and f"{journal}:{k + 1}:" in err
    assert _snapshot(dest) == moved and not (tmp_path / "elsewhere" / "planted.jpg").exists()


def test_a_symlink_planted_at_the_destination_is_not_followed(indexed, tmp_path):
    media, db, dest, victim = indexed
    plan = json.loads(run_cli("duplicates", "--db", db, "--move-to", dest, "--dry-run",
                              "--json")[1])["moves"]["planned"]
    trap = Path(plan[0]["dst"])
    trap.parent.mkdir(parents=True)
    trap.symlink_to(victim)
    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    moves = json.loads(out)["moves"]
    assert code == 1 and [p["path"] for p in moves["problems"]] == [plan[0]["src"]]
    assert victim.read_text() == "not yours to move" and trap.is_symlink()
    assert Path(plan[0]["src"]).exists()


def test_a_symlinked_folder_inside_the_move_folder_is_not_followed(indexed, tmp_path):
    """dst's folder resolves outside the move folder: that file is refused, not written."""
    media, db, dest, victim = indexed
    plan = json.loads(run_cli("duplicates", "--db", db, "--move-to", dest, "--dry-run",
                              "--json")[1])["moves"]["planned"]
    first = Path(plan[0]["dst"]).relative_to(dest).parts[0]
    dest.mkdir()
    (dest / first).symlink_to(victim.parent, target_is_directory=True)
    before = _snapshot(victim.parent)
    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    moves = json.loads(out)["moves"]
    assert code == 1 and moves["problems"] and "outside the move folder" in \
        moves["problems"][0]["reason"]
    assert _snapshot(victim.parent) == before


def test_undo_never_moves_a_symlink_put_in_place_of_a_moved_file(indexed, tmp_path):
    media, db, dest, victim = indexed
    moves = json.loads(run_cli("duplicates", "--db", db, "--move-to", dest, "--json")[1])["moves"]
    swapped = Path(moves["planned"][0]["dst"])
    swapped.unlink()
    swapped.symlink_to(victim)
    code, out, _ = run_cli("undo", moves["journal"], "--json")
    doc = json.loads(out)
    assert code == 1 and [p["path"] for p in doc["problems"]] == [moves["planned"][0]["src"]]
    assert "symlink" in doc["problems"][0]["reason"]
    assert not Path(moves["planned"][0]["src"]).exists() and victim.read_text()
    assert doc["restored"] == len(moves["planned"]) - 1


def test_the_cross_filesystem_copy_never_writes_through_a_planted_temp_link(indexed, tmp_path,
                                                                             monkeypatch):
    """The temp file is created O_EXCL|O_NOFOLLOW: a symlink planted at its name is
    removed (it is ours), never written through."""
    import errno

    from alice_gpu.actions import moves
    from alice_gpu.actions.files import TMP_SUFFIX

    media, db, dest, victim = indexed
    plan = json.loads(run_cli("duplicates", "--db", db, "--move-to", dest, "--dry-run",
                              "--json")[1])["moves"]["planned"]
    for m in plan:
        partial = Path(m["dst"] + TMP_SUFFIX)
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.symlink_to(victim)
    real_link = os.link

    def cross_device(src, dst, **kwargs):
        if not str(src).endswith(TMP_SUFFIX):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(moves.os, "link", cross_device)
    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    assert code == 0 and json.loads(out)["moves"]["moved"] == len(plan)
    assert victim.read_text() == "not yours to move"
    assert all(not Path(m["dst"]).is_symlink() and Path(m["dst"]).is_file() for m in plan)


def test_a_folder_undo_cannot_write_is_one_counted_failure_and_the_rest_go_back(indexed,
                                                                                monkeypatch):
    """EACCES on one file (a read-only folder; simulated, as the tests may run as root)
    is a line in the report, and the rest of the journal still runs."""
    from alice_gpu.actions import moves as mv

    media, db, dest, victim = indexed
    moves = json.loads(run_cli("duplicates", "--db", db, "--move-to", dest, "--json")[1])["moves"]
    locked = moves["planned"][0]["src"]
    real_link = os.link

    def refuse(src, dst, **kwargs):
        if str(dst) == locked:
            raise PermissionError(13, "Permission denied", str(dst))
        return real_link(src, dst, **kwargs)

    monkeypatch.setattr(mv.os, "link", refuse)
    code, out, err = run_cli("undo", moves["journal"], "--json")
    doc = json.loads(out)
    assert code == 1 and "Traceback" not in err
    assert [p["path"] for p in doc["problems"]] == [locked]
    assert "Permission denied" in doc["problems"][0]["reason"]
    assert doc["restored"] == len(moves["planned"]) - 1
    assert Path(moves["planned"][0]["dst"]).exists()             # still safe where it went


def test_an_unwritable_move_folder_is_one_line(indexed, tmp_path):
    media, db, dest, victim = indexed
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code, _, err = run_cli("duplicates", "--db", db, "--move-to", blocker / "sub")
    assert code == 2 and err.count("\n") == 1 and "move folder" in err


def test_undo_acts_on_the_index_its_journal_names(indexed, tmp_path, monkeypatch):
    """The printed hint (`alice-gpu undo JOURNAL`, no --db) restores the files and the
    index that moved them, and creates no default index on the way."""
    media, db, dest, victim = indexed
    default = tmp_path / "default-index"
    monkeypatch.setenv("ALICE_GPU_DB", str(default))
    before, ids = _snapshot(media), _indexed_paths(db)
    code, out, _ = run_cli("duplicates", "--db", db, "--move-to", dest)
    hint = next(line for line in out.splitlines() if "undo:" in line)
    command = hint.split("(undo: ", 1)[1].rstrip(")")
    assert command.startswith("alice-gpu undo ")
    import shlex

    code, out, err = run_cli(*shlex.split(command)[1:])
    assert code == 0, err
    assert _snapshot(media) == before and _indexed_paths(db) == ids
    assert not default.exists()
    code, _, err = run_cli("undo", sorted(dest.glob("*.jsonl"))[0], "--db", tmp_path / "db2")
    assert code == 2 and "no index at" in err


def test_replaying_applied_moves_keeps_every_row(indexed):
    """A resumed journal replays index updates that may have been committed already: an
    applied (src, dst) must not drop the row now at dst as stale."""
    media, db, dest, victim = indexed
    api = open_index(db)
    with api._open(read_only=False) as store:
        path = next(iter(store.path_ids()))
        moved = str(Path(path).with_name("renamed.jpg"))
        store.move_paths([(path, moved)])
        store.move_paths([(path, moved)])          # the replay
        assert moved in store.path_ids() and path not in store.path_ids()


def test_a_resumed_run_of_many_batches_keeps_every_row(indexed, tmp_path):
    """Killed in a later batch (earlier batches committed): the next run replays every
    moved record, and no row is lost."""
    import subprocess
    import sys
    import textwrap

    media, db, dest, victim = indexed
    ids = _indexed_paths(db)
    child = textwrap.dedent("""
        import os, signal, sys
        from alice_gpu import open_index
        from alice_gpu.actions import moves
        calls = {"n": 0}
        real = moves.relocate
        def relocate(src, dst, allowed=None):
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst, allowed)
        moves.relocate, moves.FOLLOW_BATCH = relocate, 1
        moves.Mover.__init__.__defaults__ = (1,)
        open_index(sys.argv[1]).move_duplicates(sys.argv[2])
    """)
    done = subprocess.run([sys.executable, "-c", child, str(db), str(dest)],
                          capture_output=True, text=True)
    assert done.returncode < 0, done.stderr
    code, out, err = run_cli("duplicates", "--db", db, "--move-to", dest, "--json")
    assert code == 0, err
    now = _indexed_paths(db)
    assert set(now.values()) == set(ids.values()) and all(Path(p).exists() for p in now)
