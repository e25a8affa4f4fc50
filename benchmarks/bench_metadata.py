"""What knowing every file costs: indexing speed with metadata extraction, and the
model-free commands on a 100,000-row store.

Part 1, hash-only indexing of photo_collection (462 JPEGs), fresh index each time,
interleaved, medians: an older commit checked out as a git worktree (before
metadata; run from its own folder), this tree with extraction on (the default),
and this tree with ``metadata.extract: false``.

Part 2, a synthetic store of N rows (default 100,000) written through the store's
bulk API, with metadata (a third generated, with prompts; a third photos with
cameras and dates) and a tag on 10% of them; then the wall time of each command
from the command line, start-up included, and whether it imported torch.

Usage: python benchmarks/bench_metadata.py [--rev 13b768b] [--repeats 5] [--rows 100000]
       [--keep DIR] [--json] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "photo_collection" / "images"
SOURCES = ("comfyui", "a1111", "novelai", "invokeai")
WORDS = ("castle", "forest", "portrait", "neon", "city", "cat", "dragon", "sunset", "ocean",
         "robot", "flower", "mountain", "anime", "girl", "ship", "desert")


def _compiled(*trees: Path) -> None:
    """Byte-compile both trees first, as an installed package is: with
    PYTHONDONTWRITEBYTECODE set, a tree without .pyc files compiles every module on each
    run, and the trees would not pay that alike."""
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "alice_gpu")],
                       check=True, capture_output=True)


def _cwd(src: Path | None) -> Path:
    return ROOT if src is None else src   # -m puts the working directory first on sys.path


def _env(src: Path | None) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def _index(src: Path | None, db: Path, config: Path | None) -> float:
    args = [sys.executable, "-m", "alice_gpu", "index", str(PHOTOS), "--db", str(db),
            "--no-embed", "--json", "--progress", "none"]
    if config is not None:
        args += ["--config", str(config)]
    t = time.perf_counter()
    subprocess.run(args, check=True, env=_env(src), cwd=_cwd(src), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def indexing(rev: str, repeats: int, work: Path) -> dict:
    old = work / "before-src"
    if not old.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), rev],
                       check=True, capture_output=True)
    for so in (ROOT / "alice_gpu" / "search").glob("_mih*.so"):
        shutil.copy2(so, old / "alice_gpu" / "search" / so.name)
    off = work / "no-metadata.yaml"
    off.write_text("metadata:\n  extract: false\n")
    _compiled(old, ROOT)
    cases = {"before": (old, None), "after, extraction on": (None, None),
             "after, extraction off": (None, off)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for r in range(repeats):
        for name, (src, cfg) in cases.items():
            db = work / f"db-{r}-{len(times[name])}-{name.split(',')[0]}-{bool(cfg)}"
            times[name].append(_index(src, db, cfg))
            shutil.rmtree(db, ignore_errors=True)
    files = len(list(PHOTOS.iterdir()))
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = {"seconds": round(med, 3), "files_per_second": round(files / med, 1)}
    base = out["before"]["seconds"]
    for v in out.values():
        v["ratio"] = round(v["seconds"] / base, 3)
    return out


def synthetic_store(db: Path, rows: int) -> None:
    from alice_gpu.records import ORIENT_KEYS, STATUS_OK, AssetRecord
    from alice_gpu.store import Store
    from alice_gpu.store.filters import Filters

    rng = np.random.default_rng(0)
    with Store(db, model="efficientnet_lite0", dim=1280) as store:
        for start in range(0, rows, 20_000):
            recs = []
            for i in range(start, min(rows, start + 20_000)):
                kind = i % 3
                meta: dict = {"mode": "RGB", "frames": 1, "meta_version": 1}
                if kind == 0:
                    words = rng.choice(WORDS, 5, replace=False)
                    meta.update(ai_source=SOURCES[i % len(SOURCES)], prompt=", ".join(words),
                                ai_model=f"model_v{i % 7}", seed=int(i), steps=20, cfg=7.0)
                elif kind == 1:
                    meta.update(camera_make="Apple", camera_model=f"iPhone {10 + i % 6}",
                                taken_at=f"20{10 + i % 15}-0{1 + i % 9}-1{i % 9}T12:00:00",
                                ai_source="none")
                else:
                    meta.update(ai_source="none")
                h = {k: int(v) for k, v in zip(("ahash", "dhash", "phash", "whash", *ORIENT_KEYS),
                                               rng.integers(0, 2**63, 11))}
                recs.append(AssetRecord(f"/synthetic/{i // 1000:03d}/{i:07d}.jpg", 100_000 + i,
                                        1_700_000_000_000_000_000 + i, STATUS_OK, width=4032,
                                        height=3024, format="JPEG", hashes=h, id=i + 1,
                                        content_hash=f"{i:064x}", meta=meta))
            store.write_batch(recs)
        store.update_tags("album", True, Filters(), folders=[f"/synthetic/{k:03d}"
                                                             for k in range(0, rows // 1000, 10)])


def commands(db: Path, rows: int) -> dict:
    some = f"/synthetic/{(rows // 2) // 1000:03d}/{rows // 2:07d}.jpg"
    runs = {
        "find --source comfyui": ["find", "--source", "comfyui"],
        "find --prompt 'castle dragon' --json": ["find", "--prompt", "castle dragon", "--json"],
        "find --tag album --camera iphone": ["find", "--tag", "album", "--camera", "iphone"],
        "find --since 2020-01-01 --json --limit 1000": ["find", "--since", "2020-01-01", "--json",
                                                        "--limit", "1000"],
        "find (everything) --json": ["find", "--json"],
        "show PATH --json": ["show", some, "--json"],
        "tag add fav --source novelai": ["tag", "add", "fav", "--source", "novelai"],
        "tag remove fav --source novelai": ["tag", "remove", "fav", "--source", "novelai"],
        "tag list": ["tag", "list"],
        "stats": ["stats"],
    }
    probe = ("import runpy, sys\nsys.argv = ['alice-gpu'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('alice_gpu', run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "sys.stderr.write('\\nTORCH=%d\\n' % ('torch' in sys.modules))\n"
             "sys.exit(code)\n")
    out = {}
    for name, argv in runs.items():
        walls = []
        torch = False
        for _ in range(3):
            t = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", probe, *argv, "--db", str(db)],
                                  capture_output=True, text=True, cwd=ROOT)
            walls.append(time.perf_counter() - t)
            if done.returncode != 0:
                raise SystemExit(f"{name}: exit {done.returncode}: {done.stderr[-500:]}")
            torch |= "TORCH=1" in done.stderr
        out[name] = {"wall_s": round(statistics.median(walls), 3), "torch": torch,
                     "bytes_out": len(done.stdout)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="13b768b")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--keep", type=Path)
    ap.add_argument("--skip-index", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-meta-"))
    work.mkdir(parents=True, exist_ok=True)
    doc: dict = {"date": dt.date.today().isoformat(), "cpus": len(os.sched_getaffinity(0)),
                 "rev_before": args.rev, "rows": args.rows}
    try:
        if not args.skip_index:
            doc["indexing"] = indexing(args.rev, args.repeats, work)
        db = work / f"store-{args.rows}"
        if not db.exists():
            t = time.perf_counter()
            synthetic_store(db, args.rows)
            doc["store_write_s"] = round(time.perf_counter() - t, 1)
        doc["commands"] = commands(db, args.rows)
    finally:
        if args.keep is None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(work / "before-src")], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(doc))
    else:
        for name, v in doc.get("indexing", {}).items():
            print(f"index --no-embed, {name:<24} {v['seconds']:.2f} s  {v['files_per_second']:.0f} "
                  f"files/s  x{v['ratio']:.3f}")
        for name, v in doc["commands"].items():
            print(f"{name:<44} {v['wall_s']:.3f} s  torch={v['torch']}  {v['bytes_out']} bytes")
    if args.write:
        lines = [f"\n### Metadata: indexing cost and model-free commands ({doc['date']}, "
                 f"{doc['cpus']} CPUs, no GPU; `benchmarks/bench_metadata.py`)\n"]
        if "indexing" in doc:
            lines += ["Hash-only `index` of photo_collection (462 JPEGs), fresh index each run, "
                      f"medians of {args.repeats} interleaved runs; before = {args.rev}.\n",
                      "| case | seconds | files/s | ratio |", "|---|---|---|---|"]
            lines += [f"| {k} | {v['seconds']:.2f} | {v['files_per_second']:.0f} | "
                      f"{v['ratio']:.3f} |" for k, v in doc["indexing"].items()]
        lines += [f"\nCommands on a {args.rows:,}-row store (synthetic rows with metadata; "
                  "medians of 3, process start included):\n",
                  "| command | wall (s) | imported torch | output bytes |", "|---|---|---|---|"]
        lines += [f"| `{k}` | {v['wall_s']:.3f} | {'yes' if v['torch'] else 'no'} | "
                  f"{v['bytes_out']:,} |" for k, v in doc["commands"].items()]
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
