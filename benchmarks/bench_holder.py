"""What answering others costs the writer: an index run alone, and with one query a second.

N files (copies of photo_collection with distinct bytes, so each is decoded) are
indexed with embeddings into a fresh index, alone and, interleaved with it, while
a second process asks one question a second through the Python API (which goes
to the run, the holder): stats, find, similar of an indexed photo, duplicates
by pHash, in turn. The run's files/s is compared side by side; the queries'
latencies are reported too. Each repeat runs both, one after the other; the ratio
of each pair and their median are reported (this machine's speed drifts by more
than the effect between pairs).

Usage: python benchmarks/bench_holder.py [--files 1000] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "photo_collection" / "images"
EXE = shutil.which("alice-gpu") or os.path.join(os.path.dirname(sys.executable), "alice-gpu")

# the querying process: one question a second until the run's summary file appears
ASKER = """
import json, sys, time
from pathlib import Path
import alice_gpu
db, first, done = sys.argv[1], sys.argv[2], Path(sys.argv[3])
api = alice_gpu.open_index(db)
asks = [lambda: api.stats(), lambda: api.find(limit=5),
        lambda: api.similar(first, k=5), lambda: api.duplicates(by="phash")]
lat, n = [], 0
while not done.exists():
    t = time.perf_counter()
    try:
        asks[n % len(asks)]()
        lat.append(time.perf_counter() - t)
    except Exception as exc:
        print("error", type(exc).__name__, exc, file=sys.stderr)
    n += 1
    time.sleep(max(0.0, 1.0 - (time.perf_counter() - t)))
print(json.dumps(lat))
"""


def make_files(folder: Path, n: int) -> Path:
    srcs = sorted(PHOTOS.iterdir())
    folder.mkdir(parents=True)
    for k in range(n):
        src = srcs[k % len(srcs)]
        (folder / f"{k:05d}_{src.name}").write_bytes(src.read_bytes() + f"copy {k}".encode())
    return sorted(folder.iterdir())[0]


def run_once(media: Path, first: Path, work: Path, with_queries: bool) -> dict:
    db = work / "db"
    shutil.rmtree(db, ignore_errors=True)
    summary = work / "summary.json"
    summary.unlink(missing_ok=True)
    cfg = work / "commits.yaml"
    cfg.write_text("performance:\n  transaction_size: 100\n")
    index = subprocess.Popen([EXE, "index", str(media), "--db", str(db), "--device", "cpu",
                              "--config", str(cfg), "--progress", "jsonl", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    asker = None
    for line in index.stderr:                  # the first commit: first is in the index
        if line.startswith("{") and json.loads(line)["committed"] > 0:
            break
    if with_queries:
        asker = subprocess.Popen([sys.executable, "-c", ASKER, str(db), str(first), str(summary)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = index.communicate()
    summary.write_text(out)
    doc = json.loads(out)
    result = {"files_per_second": doc["files_per_second"], "seconds": doc["seconds"]}
    if asker is not None:
        lat_out, lat_err = asker.communicate(timeout=120)
        lat = json.loads(lat_out or "[]")
        result.update(queries=len(lat), errors=lat_err.count("error"),
                      median_latency=statistics.median(lat) if lat else None,
                      max_latency=max(lat) if lat else None)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        first = make_files(work / "media", args.files)
        runs = {"alone": [], "queried": []}
        for _ in range(args.repeats):
            for kind in ("alone", "queried"):
                runs[kind].append(run_once(work / "media", first, work, kind == "queried"))
                print(kind, runs[kind][-1], file=sys.stderr)
    alone = statistics.median(r["files_per_second"] for r in runs["alone"])
    queried = statistics.median(r["files_per_second"] for r in runs["queried"])
    pairs = [q["files_per_second"] / a["files_per_second"]
             for a, q in zip(runs["alone"], runs["queried"])]
    report = {"files": args.files, "repeats": args.repeats, "alone_files_per_second": alone,
              "queried_files_per_second": queried, "ratio_of_medians": queried / alone,
              "median_pairwise_ratio": statistics.median(pairs), "pairwise_ratios": pairs,
              "runs": runs}
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
