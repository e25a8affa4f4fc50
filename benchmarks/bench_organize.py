"""organize and watch, timed against their floors on the same files.

    python benchmarks/bench_organize.py move [--files 1000] [--write]
    python benchmarks/bench_organize.py watch [--files 200] [--write]

``move``: 1,000 indexed files (photo_collection copied thrice, mtimes spread over
two years) filed with the date template by ``alice-gpu organize --move`` on one
filesystem, against the same moves by plain ``mv``: one process a file (a shell
loop, ``find -exec``), one ``mv`` a destination folder, and ``os.rename`` in
Python (no journal, no fsync: the floor). Then ``undo``.
``watch``: ``alice-gpu watch`` with the default configuration (embeddings on):
photos copied in bursts of 40, the time from the last write until all are indexed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "data" / "photo_collection" / "images"
EXE = [sys.executable, "-m", "alice_gpu"]
BASE = 1_546_300_800          # 2019-01-01


def _machine() -> str:
    return f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}"


def library(root: Path, n: int) -> Path:
    """``n`` files under ``root/media``: the photos copied again and again, each copy's
    mtimes on other days (so the date template spreads them)."""
    src = root / "media"
    images = sorted(PHOTOS.iterdir())
    k = 0
    while k < n:
        for p in images:
            if k >= n:
                break
            copy = k // len(images)
            dst = src / f"c{copy}" / p.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, dst)
            t = BASE + (copy * 730 + k * 17 % 700) * 86400       # copies in other years
            os.utime(dst, (t, t))
            k += 1
    return src


def _plan(root: Path, db: Path, src: Path, dest: Path) -> list[tuple[str, str]]:
    out = subprocess.run([*EXE, "organize", str(src), "--to", str(dest), "--db", str(db),
                          "--dry-run", "--json"], capture_output=True, text=True, check=True)
    return [(f["src"], f["dst"]) for f in json.loads(out.stdout)["files"] if f["action"] == "move"]


def _reset(src: Path, root: Path, n: int) -> Path:
    shutil.rmtree(src)
    return library(root, n)


def move(args) -> dict:
    root = Path(args.scratch)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    src, db, dest = library(root, args.files), root / "db", root / "out"
    subprocess.run([*EXE, "index", str(src), "--db", str(db), "--no-embed"], check=True,
                   capture_output=True)
    plan = _plan(root, db, src, dest)
    doc = {"machine": _machine(), "files": len(plan), "filesystem": _fs(root)}
    # alice-gpu organize --move (the whole command: start-up, the unchanged index check,
    # the plan, the journal with its fsyncs, the index following)
    t0 = time.perf_counter()
    out = subprocess.run([*EXE, "organize", str(src), "--to", str(dest), "--db", str(db),
                          "--json"], capture_output=True, text=True, check=True)
    doc["organize_s"] = round(time.perf_counter() - t0, 2)
    report = json.loads(out.stdout)
    assert report["done"] == len(plan), report["problems"][:3]
    doc["duplicates"] = report["duplicates"]
    t0 = time.perf_counter()
    subprocess.run([*EXE, "undo", report["journal"]], check=True, capture_output=True)
    doc["undo_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    subprocess.run([*EXE, "stats", "--db", str(db)], check=True, capture_output=True)
    doc["startup_s"] = round(time.perf_counter() - t0, 2)       # a command's fixed cost
    doc["organize_dry_run_s"] = _timed([*EXE, "organize", str(src), "--to", str(dest), "--db",
                                        str(db), "--dry-run", "--json"])
    doc.update(_floors(plan, dest, src, root, args.files))
    doc["fsync_ms"] = _fsync_ms(root)
    doc["organize_per_file_ms"] = round((doc["organize_s"] - doc["startup_s"]) / len(plan) * 1e3,
                                        2)
    return doc


def _fsync_ms(root: Path, n: int = 500) -> float:
    """What one fsync of an appended line costs here (a journal record costs one)."""
    with open(root / "fsync.probe", "a") as fh:
        t0 = time.perf_counter()
        for _ in range(n):
            fh.write("x" * 100 + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    return round((time.perf_counter() - t0) / n * 1e3, 3)


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return round(time.perf_counter() - t0, 2)


def _floors(plan, dest: Path, src: Path, root: Path, n: int) -> dict:
    out = {}
    dirs = sorted({os.path.dirname(d) for _, d in plan})
    script = root / "mv.sh"        # the folders in one mkdir, then one mv a file
    script.write_text("mkdir -p " + " ".join(map(shlex.quote, dirs)) + "\n" +
                      "".join(f"mv {shlex.quote(s)} {shlex.quote(d)}\n" for s, d in plan))
    for name in ("mv_per_file_s", "mv_per_folder_s", "os_rename_s"):
        shutil.rmtree(dest, ignore_errors=True)
        src = _reset(src, root, n)
        t0 = time.perf_counter()
        if name == "mv_per_file_s":
            subprocess.run(["sh", str(script)], check=True)
        elif name == "mv_per_folder_s":
            by_dir = defaultdict(list)
            for s, d in plan:
                by_dir[os.path.dirname(d)].append(s)
            for folder, files in by_dir.items():
                subprocess.run(["mkdir", "-p", folder], check=True)
                subprocess.run(["mv", "-t", folder, *files], check=True)
        else:
            for s, d in plan:
                os.makedirs(os.path.dirname(d), exist_ok=True)
                os.rename(s, d)
        out[name] = round(time.perf_counter() - t0, 3)
    shutil.rmtree(dest, ignore_errors=True)
    return out


def _fs(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return out.stdout.strip()


def watch(args) -> dict:
    import threading

    root = Path(args.scratch)
    shutil.rmtree(root, ignore_errors=True)
    (root / "watched").mkdir(parents=True)
    db = root / "db"
    proc = subprocess.Popen([*EXE, "watch", str(root / "watched"), "--db", str(db), "--json"],
                            stdout=subprocess.PIPE, text=True)
    docs: list[dict] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            docs.append(json.loads(line))
            if docs[-1].get("why") == "start":
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(120)
    images = sorted(PHOTOS.iterdir())[:args.files]
    for k in range(0, len(images), 40):
        for p in images[k:k + 40]:
            shutil.copyfile(p, root / "watched" / p.name)
        time.sleep(0.5)
    last = time.time() - 0.5
    while sum(d.get("indexed", 0) for d in docs) < len(images):
        time.sleep(0.05)
    done = max(d["at"] for d in docs if d.get("event") == "pass")
    proc.terminate()
    proc.wait(60)
    passes = [d for d in docs if d.get("event") == "pass" and d["indexed"]]
    return {"machine": _machine(), "files": len(images), "settle_s": 3.0,
            "indexed_after_last_write_s": round(done - last, 2), "passes": len(passes),
            "embedded": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("move", "watch"))
    ap.add_argument("--files", type=int, default=None)
    ap.add_argument("--scratch", default="/tmp/alice-bench-organize")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    args.files = args.files or (1000 if args.what == "move" else 200)
    doc = {"move": move, "watch": watch}[args.what](args)
    print(json.dumps(doc, indent=2))
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from results import record

        record(f"organize_{args.what}", doc)


if __name__ == "__main__":
    main()
