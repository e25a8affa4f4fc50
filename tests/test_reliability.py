"""Interrupts and concurrent use: nothing lost, nothing indexed twice."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import duckdb
import pytest

from alice_gpu.store import DB_FILE

EXE = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")


@pytest.fixture
def photos_copy(tmp_path, photos):
    root = tmp_path / "media"
    root.mkdir()
    for src in sorted((photos / "images").iterdir()):
        shutil.copy2(src, root / src.name)
    return root


def _rows(db) -> list[str]:
    con = duckdb.connect(str(db / DB_FILE), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT path FROM assets").fetchall()]
    finally:
        con.close()


# the CLI with the run's hand-over of rows held at HOLD_AT files until RELEASE exists: a
# signal sent meanwhile always lands mid-run, however fast the machine
HELD_CLI = """
import os, sys, time
from alice_gpu.pipeline import run
real, hold = run._IndexJob._emit, int(os.environ["HOLD_AT"])
def emit(self, records):
    while self.done >= hold and not os.path.exists(os.environ["RELEASE"]):
        time.sleep(0.01)
    real(self, records)
run._IndexJob._emit = emit
from alice_gpu.cli import main
sys.argv[0] = "alice-gpu"
main()
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_commits_what_is_done_and_exits_130(photos_copy, tmp_path, sig):
    db = tmp_path / "db"
    cfg = tmp_path / "commits.yaml"    # small transactions: progress is visible on disk
    cfg.write_text("performance:\n  batch_size: 20\n  transaction_size: 20\n")
    release = tmp_path / "release"
    proc = subprocess.Popen([sys.executable, "-c", HELD_CLI, "index", str(photos_copy),
                             "--db", str(db), "--device", "cpu", "--config", str(cfg),
                             "--workers", "2", "--no-embed", "--progress", "jsonl"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RELEASE": str(release), "HOLD_AT": "60"})
    seen = []
    for line in proc.stderr:           # the run's own progress events
        seen.append(line)
        if line.startswith("{") and json.loads(line)["committed"] >= 40:   # two commits landed
            break
    proc.send_signal(sig)
    release.write_text("go")           # after the signal: the run is still holding
    out, rest = proc.communicate(timeout=600)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-2000:]
    m = re.search(r"interrupted: (\d+) files done and committed, (\d+) pending", err)
    assert m, err[-2000:]
    done, pending = int(m.group(1)), int(m.group(2))
    assert done + pending == 462 and 60 <= done < 462
    rows = _rows(db)
    assert len(rows) == len(set(rows)) == done          # committed exactly what it said
    again = subprocess.run([EXE, "index", str(photos_copy), "--db", str(db), "--no-embed",
                            "--json"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout)
    assert (summary["unchanged"], summary["decoded"]) == (done, pending)
    rows = _rows(db)
    assert len(rows) == len(set(rows)) == 462


@pytest.mark.slow
def test_a_second_writer_is_refused_at_once_with_exit_3(photos_copy, tmp_path):
    db = tmp_path / "db"
    first = subprocess.Popen([EXE, "index", str(photos_copy), "--db", str(db), "--device", "cpu",
                              "--progress", "jsonl"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:       # the first run holds the index once it is indexing
            if line.startswith("{") and json.loads(line)["stage"] == "index":
                break
        second = subprocess.run([EXE, "index", str(photos_copy), "--db", str(db)],
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 3, second.stderr
        assert f"is held by alice-gpu index {photos_copy}" in second.stderr
        assert f"(pid {first.pid})" in second.stderr and second.stderr.count("\n") == 1
        asked = subprocess.run([EXE, "stats", "--db", str(db), "--json"], capture_output=True,
                               text=True, timeout=120)
        assert asked.returncode == 0, asked.stderr           # answered by the first run
        assert first.poll() is None      # refused while the first still ran: nobody waited
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=600)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: a real full disk (needs root, as on this project's machines and CI)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_full_disk_exits_4_keeps_earlier_data_and_resumes(small_disk, photos_copy, tmp_path):
    db = small_disk / "db"
    first = sorted(photos_copy.iterdir())[:5]
    few = tmp_path / "few"
    few.mkdir()
    for p in first:
        shutil.copy2(p, few / p.name)
    ok = subprocess.run([EXE, "index", str(few), "--db", str(db), "--json"],
                        capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    full = subprocess.run([EXE, "index", str(photos_copy), "--db", str(db)],
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 4, full.stderr[-2000:]
    assert "No space left on device" in full.stderr and "earlier data is intact" in full.stderr
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    stats = subprocess.run([EXE, "stats", "--db", str(db), "--json"], capture_output=True,
                           text=True, timeout=120)
    assert json.loads(stats.stdout)["assets"] == 5           # the earlier run is intact
    resumed = subprocess.run([EXE, "index", str(photos_copy), "--db", str(db), "--json"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    summary = json.loads(resumed.stdout)
    assert summary["decoded"] + summary["reused"] == 462 and summary["reused"] >= 5
    rows = _rows(db)
    assert len(rows) == len(set(rows)) == 462 + 5     # every file exactly once
    sim = subprocess.run([EXE, "similar", str(first[0]), "--db", str(db), "--k", "1", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert json.loads(sim.stdout)["results"][0]["score"] > 0.999


def _fill(folder) -> None:
    """Use up every free byte of the file system holding ``folder``."""
    with open(folder / "filler", "wb", buffering=0) as fh:
        for chunk in (1 << 20, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass


@pytest.mark.slow
def test_full_disk_while_writing_the_vector_index(small_disk, photos, tmp_path, monkeypatch):
    """The disk fills up exactly when the FAISS file is written: exit 4, DuckDB intact,
    the old FAISS file untouched; with space again the index is rebuilt from DuckDB."""
    from alice_gpu.search.vectors import INDEX_FILE, VectorIndex
    from conftest import run_cli

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    db = small_disk / "db"
    srcs = sorted((photos / "images").iterdir())
    media = tmp_path / "media"
    media.mkdir()
    for p in srcs[:4]:
        shutil.copy2(p, media / p.name)
    code, _, err = run_cli("index", media, "--db", db, "--device", "cpu", "--json")
    assert code == 0, err
    code, _, err = run_cli("similar", media / srcs[0].name, "--db", db, "--json")  # writes it
    assert code == 0, err
    before = (db / INDEX_FILE).read_bytes()
    for p in srcs[4:12]:
        shutil.copy2(p, media / p.name)
    real_save = VectorIndex.save

    def save_on_a_full_disk(self):
        _fill(small_disk)
        return real_save(self)

    monkeypatch.setattr(VectorIndex, "save", save_on_a_full_disk)
    code, _, err = run_cli("index", media, "--db", db, "--device", "cpu")
    assert code == 4, err
    assert "No space left on device" in err and "the store is intact" in err
    assert (db / INDEX_FILE).read_bytes() == before            # the old file, untouched
    assert not list(db.glob(".*.tmp"))                          # no half-written temp file
    monkeypatch.setattr(VectorIndex, "save", real_save)
    (small_disk / "filler").unlink()
    assert sorted(_rows(db)) == sorted(str(media / p.name) for p in srcs[:12])
    code, out, err = run_cli("similar", media / srcs[9].name, "--db", db, "--k", "1", "--json")
    assert code == 0, err
    hit = json.loads(out)["results"][0]
    assert hit["path"] == str(media / srcs[9].name) and hit["score"] > 0.999   # rebuilt
    code, out, _ = run_cli("index", media, "--db", db, "--device", "cpu", "--json")
    assert code == 0 and json.loads(out)["decoded"] == 0


def test_mass_disappearance_needs_prune(tmp_path, photos):
    import alice_gpu

    media = tmp_path / "media"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:30]:
        shutil.copy2(src, media / src.name)
    idx = alice_gpu.open_index(tmp_path / "db")
    idx.index([media], embed=False)
    for p in sorted(media.iterdir())[:25]:      # 25 of 30 gone: looks like a bad mount
        p.unlink()
    held = idx.index([media], embed=False)
    assert (held.removed, held.removals_held) == (0, 25)
    assert idx.stats()["assets"] == 30
    pruned = idx.index([media], embed=False, prune=True)
    assert pruned.removed == 25 and idx.stats()["assets"] == 5


def test_deep_nesting_and_thousands_of_frames(tmp_path, monkeypatch):
    import alice_gpu
    from PIL import GifImagePlugin, Image

    deep = tmp_path / "media"
    d = deep
    for i in range(300):                         # deeper than any recursion limit would like
        d = d / "d"
    d.mkdir(parents=True)
    frames = [Image.new("P", (8, 8), i % 200) for i in range(3000)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:], duration=10)
    seeks = []
    real_seek = GifImagePlugin.GifImageFile._seek

    def counted(self, frame, *args, **kwargs):   # a one-file job decodes in this process
        seeks.append(frame)
        return real_seek(self, frame, *args, **kwargs)

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_seek", counted)
    idx = alice_gpu.open_index(tmp_path / "db")
    summary = idx.index([deep], embed=False)
    assert summary.decoded == 1 and summary.failed == 0
    assert seeks and max(seeks) == 0              # the first frame only, not 3,000


def test_a_file_just_over_the_pixel_limit_is_a_failure(tmp_path):
    from PIL import Image

    from alice_gpu.decode import DecodePlan, decode_file
    from alice_gpu.records import STATUS_FAILED, FileEntry

    # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that; we refuse at the warning
    side = int((Image.MAX_IMAGE_PIXELS + 10_000) ** 0.5) + 1
    path = tmp_path / "big.png"
    Image.new("1", (side, side)).save(path, optimize=True)
    d = decode_file(FileEntry(str(path), path.stat().st_size, 0), DecodePlan(64))
    assert d.status == STATUS_FAILED and "DecompressionBomb" in d.error


def test_non_utf8_file_names_are_stored_losslessly_and_shown_readably(tmp_path, photos):
    import alice_gpu
    from conftest import run_cli

    media = tmp_path / "media"
    media.mkdir()
    src = sorted((photos / "images").iterdir())[0]
    odd = os.fsencode(str(media)) + b"/caf\xe9 \\x41.jpg"       # Latin-1 byte and a backslash
    shutil.copy2(src, odd)
    shutil.copy2(src, media / "plain.jpg")
    idx = alice_gpu.open_index(tmp_path / "db")
    summary = idx.index([media], embed=False)
    assert summary.decoded == 2 and summary.failed == 0
    paths = {os.fsencode(m.path) for m in idx.similar(media / "plain.jpg", k=2, by="phash").results}
    assert odd in paths                                            # the exact bytes come back
    code, out, _ = run_cli("duplicates", "--db", tmp_path / "db")
    assert code == 0 and "caf\\xe9" in out                  # the odd byte shown escaped
    code, out, _ = run_cli("duplicates", "--db", tmp_path / "db", "--json")
    doc = json.loads(out)
    assert odd in {os.fsencode(f["path"]) for f in doc["groups"][0]["files"]}
    os.remove(odd)
    assert idx.index([media], embed=False).removed == 1


_KILL_ON = """
import json, os, signal, sys
import alice_gpu, alice_gpu.decode.files as files
real = files.decode_file
def faulty(entry, *a, **k):      # a native crash in whichever process decodes the culprit
    if entry.path == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(entry, *a, **k)
files.decode_file = faulty
s = alice_gpu.open_index(sys.argv[2]).index([sys.argv[3]], embed=False)
print(json.dumps({"decoded": s.decoded, "failed": [(f.path, f.error) for f in s.failed_files]}))
"""


def test_a_crash_during_in_process_decoding_sends_the_next_run_to_isolated_workers(tmp_path,
                                                                                  photos):
    """Small jobs decode in-process; a file that kills the process cannot be caught there.
    The marker left behind makes the next run use workers, which record the culprit."""
    from alice_gpu.pipeline.local import _InProcessGuard

    media, db = tmp_path / "media", tmp_path / "db"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:10]:     # < parallel_threshold (32)
        shutil.copy2(src, media / src.name)
    culprit = str(sorted(media.iterdir())[4])
    cmd = [sys.executable, "-c", _KILL_ON, culprit, str(db), str(media)]
    env = {**os.environ, "ALICE_GPU_START_METHOD": "fork"}   # restarted workers keep the fault
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert (db / _InProcessGuard.NAME).exists()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "decoding in isolated worker processes" in second.stderr
    doc = json.loads(second.stdout)
    assert doc["decoded"] == 9 and [f[0] for f in doc["failed"]] == [culprit]
    assert "crashed" in doc["failed"][0][1]
    assert not (db / _InProcessGuard.NAME).exists()
    assert sorted(_rows(db)) == sorted(str(p) for p in media.iterdir())   # each file once


def test_a_hang_during_in_process_decoding_is_timed_out_and_recorded(tmp_path, photos,
                                                                      monkeypatch):
    import alice_gpu
    import alice_gpu.decode.files as hc
    from alice_gpu.config import load_config

    media = tmp_path / "media"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:6]:      # small job: in-process
        shutil.copy2(src, media / src.name)
    culprit = str(sorted(media.iterdir())[2])
    real = hc.decode_file
    release = threading.Event()

    def hangs(entry, *a, **k):
        if entry.path == culprit:
            release.wait(600)
        return real(entry, *a, **k)

    monkeypatch.setattr(hc, "decode_file", hangs)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("decode:\n  timeout_seconds: 2\n")     # counts only the file's own decode
    idx = alice_gpu.open_index(tmp_path / "db", config=load_config(cfg))
    try:
        summary = idx.index([media], embed=False)   # returns only if the hang was left behind
    finally:
        release.set()
    assert (summary.decoded, summary.failed) == (5, 1)
    assert summary.failed_files[0].path == culprit and "timeout" in summary.failed_files[0].error


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["crash", "hang"])
def test_a_file_that_kills_or_hangs_its_decoder_is_the_only_casualty(tmp_path, photos, fault,
                                                                     monkeypatch):
    """The pool recovers, innocent files in flight are retried, only the culprit is recorded."""
    import alice_gpu
    import alice_gpu.decode.files as hc
    from alice_gpu.config import load_config

    media = tmp_path / "media"
    media.mkdir()
    for src in sorted((photos / "images").iterdir())[:80]:
        shutil.copy2(src, media / src.name)
    culprit = sorted(media.iterdir())[37]
    parent = os.getpid()
    real = hc.decode_file

    def faulty(entry, *a, **k):      # inherited by the forked workers
        if entry.path == str(culprit) and os.getpid() != parent:
            if fault == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(600)
        return real(entry, *a, **k)

    monkeypatch.setattr(hc, "decode_file", faulty)
    monkeypatch.setenv("ALICE_GPU_START_METHOD", "fork")   # workers inherit the fault
    cfg = tmp_path / "c.yaml"
    # the deadline counts only the file's own decode in its worker, never a pool's restart
    cfg.write_text("performance:\n  max_workers: 2\n  batch_size: 20\ndecode:\n  timeout_seconds: 2\n"
                   "  parallel_threshold: 8\n")
    idx = alice_gpu.open_index(tmp_path / "db", config=load_config(cfg))
    summary = idx.index([media], embed=False)
    # a hang not cut at its deadline would end after 600 s with the file decoded: (80, 0)
    assert (summary.decoded, summary.failed) == (79, 1)
    assert [f.path for f in summary.failed_files] == [str(culprit)]
    reason = summary.failed_files[0].error
    assert ("crashed" in reason) if fault == "crash" else ("timeout" in reason)


def test_a_forked_child_decodes_with_a_helper_of_its_own():
    """The deadline's helper thread is per process: a worker forked from a process that
    has one must not hand its files to a thread it did not inherit (they would all time out)."""
    from alice_gpu.decode.deadline import DecodeTimeout, within

    assert within(5, lambda: 1) == 1                     # this process has a helper now
    pid = os.fork()
    if pid == 0:                                         # the child: exits 0 only if served
        try:
            os._exit(0 if within(5, lambda: 2) == 2 else 1)
        except BaseException:  # noqa: BLE001 - any failure is the exit code
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with pytest.raises(DecodeTimeout):
        release = threading.Event()
        try:
            within(0.2, lambda: release.wait(60))
        finally:
            release.set()


def test_workers_are_not_forked_from_a_process_with_native_thread_pools(monkeypatch):
    """ONNX Runtime (like torch) keeps threads ``threading`` does not count: a process
    that imported it starts fresh workers, and a fork, when asked for, finalises the
    parent's garbage first (a forked worker's first gc.collect once hung on it)."""
    import gc
    import sys

    from alice_gpu.pipeline import pool

    monkeypatch.delenv("ALICE_GPU_START_METHOD", raising=False)
    modules = {k: v for k, v in sys.modules.items() if k not in ("torch", "onnxruntime")}
    monkeypatch.setattr(sys, "modules", modules)
    monkeypatch.setattr(pool.threading, "active_count", lambda: 1)
    assert pool.start_method() == "fork"
    modules["onnxruntime"] = object()
    assert pool.start_method() == "loky"
    collected = []
    monkeypatch.setenv("ALICE_GPU_START_METHOD", "fork")
    monkeypatch.setattr(gc, "collect", lambda *a: collected.append(1) or 0)
    p = pool.DecodePool(1, 5.0)
    try:
        assert collected
    finally:
        p.close()
