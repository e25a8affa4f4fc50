"""The Ray engine against the local engine, on this one machine: what Ray costs and how it
scales from 1 to 2 features actors.

Indexes photo_collection (462 JPEGs, hashes and embeddings) into a fresh index each time,
interleaved, medians: the local engine, then `--engine ray` on a local Ray instance with
1 and with 2 features actors (decode tasks share the same CPUs). Ray is started once per
measurement by the run itself, as `alice-gpu index --engine ray` does without --address,
so its start-up is included. This is a single-machine figure; it says what the engine
costs, not what a cluster gains.

Usage: python benchmarks/bench_ray.py [--repeats 2] [--json] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "photo_collection" / "images"


def _run(engine: str, actors: int | None, work: Path) -> float:
    from alice_gpu import open_index
    from alice_gpu.pipeline.ray_engine import RayEngine

    db = work / f"db-{engine}-{actors}-{time.monotonic_ns()}"
    ray_engine = RayEngine(actors=actors) if engine == "ray" else None
    t = time.perf_counter()
    summary = open_index(db).index([PHOTOS], ray_engine=ray_engine)
    seconds = time.perf_counter() - t
    assert summary.decoded == len(list(PHOTOS.iterdir())) and summary.failed == 0
    shutil.rmtree(db, ignore_errors=True)
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    cases = {"local engine": ("local", None), "ray, 1 features actor": ("ray", 1),
             "ray, 2 features actors": ("ray", 2)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for _ in range(args.repeats):
            for name, (engine, actors) in cases.items():
                times[name].append(_run(engine, actors, Path(tmp)))
    files = len(list(PHOTOS.iterdir()))
    rows = {k: {"seconds": round(statistics.median(v), 2),
                "files_per_second": round(files / statistics.median(v), 1)}
            for k, v in times.items()}
    doc = {"date": dt.date.today().isoformat(), "cpus": len(os.sched_getaffinity(0)),
           "files": files, "repeats": args.repeats, "rows": rows}
    if args.json:
        print(json.dumps(doc))
    else:
        for k, v in rows.items():
            print(f"{k:<26} {v['seconds']:7.2f} s  {v['files_per_second']:6.1f} files/s")
    if args.write:
        lines = [f"\n### Ray engine on one machine ({doc['date']}, {doc['cpus']} CPUs, no GPU; "
                 "`benchmarks/bench_ray.py`)\n",
                 f"`index` of photo_collection ({files} JPEGs, hashes and embeddings), fresh "
                 f"index each run, medians of {args.repeats} interleaved runs, Ray's start-up "
                 "included. Single-machine: this is what the engine costs here, not what a "
                 "cluster gains.\n",
                 "| engine | seconds | files/s |", "|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.2f} | {v['files_per_second']:.1f} |"
                  for k, v in rows.items()]
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
