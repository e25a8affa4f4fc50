"""Query an index while it is being written: the process that holds it answers for it.

An ``index`` run of 2,000 files with embeddings holds the index; other processes ask
it every question a user asks, and get answers consistent with what is committed.
A tag sent meanwhile is applied, another index run is refused in one line naming
the holder, a killed holder leaves its clients one line and its successor nothing
in the way, and a peer of another uid is refused."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli

EXE = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")
N_FILES = 2000


@pytest.fixture(scope="module")
def collection(tmp_path_factory, photos):
    """2,000 files: copies of photo_collection, each with distinct bytes (a trailer
    after the JPEG's end, which decoders ignore), so every one is decoded."""
    root = tmp_path_factory.mktemp("held")
    media = root / "media"
    media.mkdir()
    srcs = sorted((photos / "images").iterdir())
    for n in range(N_FILES):
        src = srcs[n % len(srcs)]
        data = src.read_bytes() + f"copy {n}".encode()
        (media / f"{n:04d}_{src.name}").write_bytes(data)
    other = root / "other"                # a folder of its own: indexed once the run is over
    other.mkdir()
    outside = other / "outside.jpg"
    shutil.copy2(srcs[7], outside)
    return media, outside


def _cli(*args) -> tuple[int, str, str]:
    done = subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def _start_index(media: Path, db: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([EXE, "index", str(media), "--db", str(db), "--device", "cpu",
                             "--progress", "jsonl", *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _until_committed(proc: subprocess.Popen, rows: int) -> list[str]:
    """Read the run's progress events until ``rows`` are committed."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("{") and json.loads(line)["committed"] >= rows:
            return seen
    raise AssertionError("the run ended before committing: " + "".join(seen)[-2000:])


def _assets(db: Path) -> int:
    code, out, err = _cli("stats", "--db", db, "--json")
    assert code == 0 and "in use" not in err, err
    return json.loads(out)["assets"]


def _ask_everything(db: Path, indexed: Path, outside: Path) -> bool:
    """Every query a user asks, each answered (exit 0, a JSON document, never "busy")."""
    for args in (["find", "--json", "--limit", "5"], ["show", indexed, "--json"],
                 ["similar", indexed, "--json", "--k", "3"],
                 ["similar", outside, "--json", "--k", "3"],
                 ["duplicates", "--json"], ["tag", "list", "--json"]):
        code, out, err = _cli(*args, "--db", db)
        assert code == 0, (args, err[-2000:])
        assert "busy" not in err and "in use" not in err
        json.loads(out)
    return True


@pytest.mark.slow
def test_every_question_is_answered_while_the_index_is_written(collection, tmp_path):
    media, outside = collection
    db = tmp_path / "db"
    first = sorted(media.iterdir())[0]
    cfg = tmp_path / "commits.yaml"         # a commit every 100 files: readers see them come;
    # one decode worker: the run lasts while the questions (duplicates checks pictures) are
    # asked on the other core
    cfg.write_text("performance:\n  transaction_size: 100\n  max_workers: 1\n")
    run = _start_index(media, db, "--config", cfg)
    try:
        _until_committed(run, 100)
        counts = [_assets(db)]
        answered_while_running = _ask_everything(db, first, outside) and run.poll() is None
        code, out, err = _cli("tag", "add", "seen-while-indexing", first, "--db", db)
        assert code == 0 and "tagged 1 files" in out, err
        code, _, err = _cli("index", outside.parent, "--db", db)     # one run at a time
        extra = int(code == 0)                                      # (unless it just ended)
        assert code == 0 or (code == 3 and err.count("\n") == 1), err
        assert code == 0 or f"pid {run.pid}" in err and "alice-gpu index" in err, err
        committed = 0
        for line in run.stderr:                     # a count after each commit, to the end
            if line.startswith("{") and json.loads(line)["committed"] > committed:
                committed = json.loads(line)["committed"]
                counts.append(_assets(db))
    finally:
        out, err = run.communicate(timeout=600)
    assert run.returncode == 0, err[-2000:]
    final = json.loads(_cli("stats", "--db", db, "--json")[1])["assets"]
    assert final == N_FILES + extra and answered_while_running and extra == 0
    assert counts == sorted(counts) and all(c <= final for c in counts) and len(counts) >= 2
    code, out, _ = _cli("find", "--tag", "seen-while-indexing", "--db", db, "--json")
    assert [r["path"] for r in json.loads(out)["results"]] == [str(first)]
    assert not (db / "alice.sock").exists() and not (db / "holder.json").exists()


# a holder that stops after its first commit, and whose stats answer waits, both until
# RELEASE exists (never, here): it is killed with a client waiting
_SLOW_HOLDER = """
import os, sys, time
from alice_gpu.api import held
from alice_gpu.pipeline import run
def hold():
    while not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.05)
real_handle, real_committed = held.HeldIndex.handle, run._IndexJob._committed
def handle(self, op, args, emit):
    if op == "stats":
        open(os.environ["WAITING"], "w").close()
        hold()
    return real_handle(self, op, args, emit)
def committed(self, rows):
    real_committed(self, rows)
    hold()
held.HeldIndex.handle, run._IndexJob._committed = handle, committed
from alice_gpu.cli import main
sys.argv[0] = "alice-gpu"
main()
"""


@pytest.mark.slow
def test_a_killed_holder_costs_its_client_one_line_and_its_successor_nothing(collection,
                                                                            tmp_path):
    media, _ = collection
    db, waiting = tmp_path / "db", tmp_path / "waiting"
    holder = subprocess.Popen([sys.executable, "-c", _SLOW_HOLDER, "index", str(media), "--db",
                               str(db), "--no-embed", "--progress", "jsonl"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "WAITING": str(waiting),
                                   "RELEASE": str(tmp_path / "never")})
    _until_committed(holder, 1)
    client = subprocess.Popen([EXE, "stats", "--db", str(db)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    while not waiting.exists():                      # the holder has the client's request
        assert client.poll() is None, client.communicate()
        time.sleep(0.05)
    holder.kill()
    holder.wait()
    killed = time.monotonic()
    out, err = client.communicate(timeout=60)
    assert time.monotonic() - killed < 5
    assert client.returncode != 0 and err.count("\n") == 1 and "stopped answering" in err, err
    assert (db / "alice.sock").exists()              # left behind by the kill
    code, out, err = _cli("index", media, "--db", db, "--no-embed", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["unchanged"] + summary["decoded"] == N_FILES and summary["failed"] == 0


def _as_nobody(socket_dir: Path) -> subprocess.CompletedProcess:
    """Connect to the socket in ``socket_dir`` and ask for stats, as uid 65534."""
    code = ("import json, socket, struct, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\n"
            "except OSError as e:\n    print('connect', e.errno); sys.exit(0)\n"
            "body = json.dumps({'alice-gpu': 1, 'op': 'stats', 'args': {}}).encode()\n"
            "s.sendall(struct.pack('>I', len(body)) + body)\n"
            "head = s.recv(4)\n"
            "print('answer', s.recv(struct.unpack('>I', head)[0]).decode() if head else '')\n")
    return subprocess.run([_public_python(), "-c", code, str(socket_dir / "alice.sock")],
                          capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: (os.setgid(65534), os.setuid(65534)))


def _public_python() -> str | None:
    """A Python another user may run (this venv may sit in root's home)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", sys.executable):
        path = os.path.realpath(candidate)
        parts = Path(path).parents
        if os.path.exists(path) and os.stat(path).st_mode & 0o001 and all(
                os.stat(p).st_mode & 0o001 for p in parts):
            return path
    return None


def test_a_peer_of_another_uid_is_refused(tmp_path, monkeypatch):
    """For real where the test runs as root and another user can run a Python: a process
    of uid 65534 is kept out by the socket's mode (0600) and, with the mode opened up,
    by the holder's SO_PEERCRED check. Elsewhere, at the check: a holder that believes
    it runs as another uid refuses this process."""
    import errno

    from alice_gpu.remote import server, wire
    from alice_gpu.remote.server import Holder

    if os.geteuid() != 0 or _public_python() is None:
        monkeypatch.setattr(server.os, "getuid", lambda: os.geteuid() + 1)
        with Holder(tmp_path, "test", lambda op, args, emit: {"ok": 1}, frozenset({"stats"})):
            mine = socket.socket(socket.AF_UNIX)
            mine.connect(str(tmp_path / "alice.sock"))
            wire.send(mine, wire.request("stats", {}))
            assert "another user" in wire.receive(mine)["message"]
        return

    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="alice-peer-", dir="/tmp"))   # reachable by others
    os.chmod(folder, 0o755)
    try:
        _refuse_nobody(folder, errno.EACCES)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _refuse_nobody(folder: Path, eacces: int) -> None:
    from alice_gpu.remote import wire
    from alice_gpu.remote.server import Holder

    answered = []
    with Holder(folder, "test", lambda op, args, emit: answered.append(op) or {"ok": 1},
                frozenset({"stats"})):
        assert (folder / "alice.sock").stat().st_mode & 0o777 == 0o600
        done = _as_nobody(folder)
        assert done.stdout.split() == ["connect", str(eacces)], done
        os.chmod(folder / "alice.sock", 0o666)              # as if the mode were lax
        done = _as_nobody(folder)
        assert done.stdout.startswith("answer") and "another user" in done.stdout, done
        mine = socket.socket(socket.AF_UNIX)               # and our own uid is answered
        mine.connect(str(folder / "alice.sock"))
        wire.send(mine, wire.request("stats", {}))
        assert wire.receive(mine) == {"type": "result", "v": {"ok": 1}}
        mine.close()
    assert answered == ["stats"]


def test_frames_are_size_capped_and_typed(tmp_path):
    """A request over the cap, or of an unknown kind, costs only its connection."""
    from alice_gpu.remote import wire
    from alice_gpu.remote.server import Holder

    with Holder(tmp_path, "test", lambda op, args, emit: {"op": op}, frozenset({"stats"})):
        for payload in (b"\xff\xff\xff\xff", b"\x00\x00\x00\x05hello"):
            bad = socket.socket(socket.AF_UNIX)
            bad.connect(str(tmp_path / "alice.sock"))
            bad.sendall(payload)
            bad.shutdown(socket.SHUT_WR)
            assert bad.recv(10) == b""                      # closed, nothing answered
            bad.close()
        odd = socket.socket(socket.AF_UNIX)
        odd.connect(str(tmp_path / "alice.sock"))
        wire.send(odd, {"alice-gpu": 1, "op": "__import__", "args": {}})
        assert odd.recv(10) == b""
        odd.close()
        ok = socket.socket(socket.AF_UNIX)
        ok.connect(str(tmp_path / "alice.sock"))
        wire.send(ok, wire.request("stats", {}))
        assert wire.receive(ok)["v"] == {"op": "stats"}     # the holder is unharmed
        ok.close()


def test_a_stale_socket_is_replaced(tmp_path):
    from alice_gpu.remote import wire
    from alice_gpu.remote.server import Holder

    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "alice.sock"))        # left by a killed holder: nobody listens
    stale.close()
    with Holder(tmp_path, "test", lambda op, args, emit: 42, frozenset({"stats"})):
        ok = socket.socket(socket.AF_UNIX)
        ok.connect(str(tmp_path / "alice.sock"))
        wire.send(ok, wire.request("stats", {}))
        assert wire.receive(ok)["v"] == 42
        ok.close()
    assert not (tmp_path / "alice.sock").exists()


def test_a_deep_index_folder_still_gets_its_socket(tmp_path):
    """AF_UNIX paths stop at about 107 bytes; the socket is reached through a descriptor
    of its folder, however deep."""
    from alice_gpu.remote import client
    from alice_gpu.remote.server import Holder

    deep = tmp_path.joinpath(*["a-rather-long-folder-name"] * 8)
    deep.mkdir(parents=True)
    assert len(str(deep / "alice.sock")) > 110
    with Holder(deep, "test", lambda op, args, emit: {"deep": True}, frozenset({"stats"})):
        assert client.call(deep, "stats", {}) == {"deep": True}


def test_python_api_asks_the_holder_too(tmp_path, photos):
    """open_index(db) in Python, while another process holds the index: answered."""
    from alice_gpu import open_index

    media = tmp_path / "media"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:40]:
        shutil.copy2(src, media / src.name)
    db, waiting = tmp_path / "db", tmp_path / "waiting"
    release = tmp_path / "release"
    cfg = tmp_path / "small.yaml"
    cfg.write_text("performance:\n  batch_size: 20\n  transaction_size: 20\n")
    holder = subprocess.Popen([sys.executable, "-c", _HELD_AFTER_FIRST, "index", str(media),
                               "--db", str(db), "--no-embed", "--config", str(cfg),
                               "--progress", "jsonl"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "WAITING": str(waiting),
                                   "RELEASE": str(release)})
    try:
        while not waiting.exists():
            assert holder.poll() is None, holder.communicate()
            time.sleep(0.05)
        api = open_index(db)
        assert api.stats()["assets"] == 20                   # the first commit, no more
        assert len(api.find()) == 20 and api.tags() == []
        code, out, err = run_cli("stats", "--db", db, "--json")
        assert code == 0 and json.loads(out)["db"] == str(db)   # as this process names it
    finally:
        release.write_text("go")
        holder.communicate(timeout=300)
    assert holder.returncode == 0
    assert open_index(db).stats()["assets"] == 40


# an index run that stops after its first commit (20 files) until RELEASE exists
_HELD_AFTER_FIRST = """
import os, sys, time
from alice_gpu.pipeline import run
real = run._IndexJob._committed
def committed(self, rows):
    real(self, rows)
    open(os.environ["WAITING"], "w").close()
    while not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.05)
run._IndexJob._committed = committed
from alice_gpu.cli import main
sys.argv[0] = "alice-gpu"
main()
"""
