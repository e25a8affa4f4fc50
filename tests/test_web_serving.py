"""`alice-gpu serve` as a user runs it, in its own process: an `index` from a terminal
is carried out by the server while pages are being asked for, and what it adds is
listed without a restart."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from webkit import Client, free_port, library

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

EXE = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")


def _serve(db: Path, port: int, aside: Path) -> subprocess.Popen:
    proc = subprocess.Popen([EXE, "serve", "--db", str(db), "--port", str(port),
                             "--move-to", str(aside)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()                 # the URL, once the server is made
    assert line.strip() == f"alice-gpu serve: http://127.0.0.1:{port}/", (
        line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


def _until_answering(client: Client, proc: subprocess.Popen) -> None:
    """uvicorn listens a moment after the URL is printed: ask until it answers."""
    while True:
        assert proc.poll() is None, proc.stderr.read()   # it died: say why
        try:
            if client.get("/api/session")[0] == 200:
                return
        except OSError:
            threading.Event().wait(0.05)


class Loop(threading.Thread):
    """A person (or a script) asking for pages, thumbnails and look-alikes until told
    to stop; every status is kept."""

    def __init__(self, client: Client):
        super().__init__(daemon=True)
        self.client, self.stop, self.statuses = client, threading.Event(), []
        self.rounds = threading.Semaphore(0)

    def run(self) -> None:
        while not self.stop.is_set():
            page = self.client.get("/api/assets?limit=20&sort=path")
            self.statuses.append(page[0])
            for path in ("/", "/api/stats", "/duplicates", "/api/groups"):
                self.statuses.append(self.client.get(path)[0])
            if page[0] == 200:
                import json

                for item in json.loads(page[2])["items"][:3]:
                    self.statuses.append(self.client.get(f"/api/assets/{item['id']}/thumb")[0])
                    self.statuses.append(
                        self.client.get(f"/api/assets/{item['id']}/similar?k=5")[0])
            self.rounds.release()


def test_an_index_from_a_terminal_is_done_by_the_server_while_it_answers(tmp_path, photos):
    media = library(tmp_path, photos)
    db, port = tmp_path / "db", free_port()
    subprocess.run([EXE, "index", str(media), "--db", str(db), "--no-embed"], check=True,
                   capture_output=True, timeout=600)
    new = tmp_path / "new"
    new.mkdir()
    for src in sorted((photos / "images").iterdir())[60:90]:
        shutil.copy2(src, new / src.name)

    server = _serve(db, port, tmp_path / "aside")
    client = Client(port)
    try:
        _until_answering(client, server)
        assert client.json("/api/assets?limit=1")["total"] == 13
        loop = Loop(client)
        loop.start()
        loop.rounds.acquire()                     # answering before the index starts
        done = subprocess.run([EXE, "index", str(new), "--db", str(db), "--no-embed"],
                              capture_output=True, text=True, timeout=600)
        loop.rounds.acquire()                     # and at least one round after it
        loop.stop.set()
        loop.join(timeout=300)
        assert done.returncode == 0, done.stderr
        assert "30 new" in done.stdout + done.stderr or "30" in done.stdout, done.stdout
        assert loop.statuses and all(s < 500 for s in loop.statuses), sorted(set(
            loop.statuses))
        assert client.json("/api/assets?limit=1")["total"] == 43
        listed = client.json(f"/api/assets?folder={new}&limit=100")
        assert sorted(Path(i["path"]).name for i in listed["items"]) == sorted(
            p.name for p in new.iterdir())
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    assert server.returncode == 0, server.stderr.read()
