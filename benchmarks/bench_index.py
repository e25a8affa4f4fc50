"""End-to-end index timings on a real image set, from the command line, start-up included.

    python benchmarks/bench_index.py [--images DIR] [--workers N] [--write]

Times, on the same files and in one run:
  * the decode floor: Pillow open + draft + resize to the 256 px working size, in a process pool
  * `alice-gpu index --no-embed` (hashes only), fresh index
  * `alice-gpu index` (hashes + embeddings), fresh index
  * a re-run of the full index with nothing changed
With --write the table is appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "photo_collection" / "images"


def _floor_one(path: str) -> int:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (256, 256))
        im = im.convert("RGB").resize((256, 256), Image.Resampling.LANCZOS, reducing_gap=3.0)
        return im.size[0]


def decode_floor(files: list[str], workers: int) -> float:
    t = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_floor_one, files, chunksize=16))
    return time.perf_counter() - t


def run_cli(args: list[str]) -> tuple[float, dict]:
    exe = shutil.which("alice-gpu") or str(Path(sys.executable).with_name("alice-gpu"))
    t = time.perf_counter()
    res = subprocess.run([exe, *args, "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode not in (0, 1):
        raise SystemExit(f"alice-gpu failed ({res.returncode}): {res.stderr[-2000:]}")
    return wall, json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    args = ap.parse_args()
    files = sorted(str(p) for p in args.images.rglob("*") if p.is_file())
    n = len(files)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        floor = decode_floor(files, args.workers)
        rows.append(("decode floor (Pillow draft + resize, process pool)", floor, None))
        common = [str(args.images), "--device", "cpu", "--workers", str(args.workers)]
        wall, doc = run_cli(["index", *common, "--no-embed", "--db", f"{tmp}/hash"])
        rows.append(("alice-gpu index --no-embed (fresh)", wall, doc))
        wall, doc = run_cli(["index", *common, "--db", f"{tmp}/full"])
        rows.append(("alice-gpu index (fresh, hashes + embeddings)", wall, doc))
        wall, doc = run_cli(["index", *common, "--db", f"{tmp}/full"])
        rows.append(("alice-gpu index (re-run, nothing changed)", wall, doc))

    import torch

    lines = [
        f"### Index timings, {args.images.name} ({n} files), "
        f"{dt.date.today().isoformat()}",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, no GPU used (`--device cpu`); "
        f"Python {platform.python_version()}, torch {torch.__version__}; workers {args.workers}. "
        "Wall time of the whole command, start-up included.",
        "",
        "| what | wall s | files/s | decoded |",
        "|---|---:|---:|---:|",
    ]
    for name, wall, doc in rows:
        decoded = "" if doc is None else str(doc["decoded"])
        lines.append(f"| {name} | {wall:.2f} | {n / wall:.1f} | {decoded} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        results = REPO / "benchmarks" / "RESULTS.md"
        head = "" if results.exists() else "# alice-gpu benchmark results\n\n"
        with results.open("a") as fh:
            fh.write(head + text + "\n")


if __name__ == "__main__":
    main()
