"""What the tiers and the orientation search cost `duplicates`, before against after.

"Before" is an older commit (default def29f1, whose `duplicates` was pHash alone,
one orientation) checked out as a git worktree and run with the same libraries;
"after" is this tree, whose default is the tiered answer. Each indexes the same
photos (photo_collection, 462 JPEGs, with embeddings) into its own index, then
the two are timed interleaved, in one run:

* ``cli``: the whole command, ``python -m alice_gpu duplicates --json`` (process
  start and imports included), as a user runs it;
* ``api``: ``open_index(db).duplicates()`` inside one warm process (the query alone).

Usage: python benchmarks/bench_duplicates.py [--rev def29f1] [--repeats 9] [--keep DIR]
       [--json] [--write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "photo_collection"

_API = """
import sys, time, json
from alice_gpu import open_index
db, by, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
kw = {} if by == "default" else {"by": by}
open_index(db).duplicates(**kw)                     # warm: imports, FAISS, the vector file
out = []
for _ in range(n):
    t = time.perf_counter()
    res = open_index(db).duplicates(**kw)
    out.append(time.perf_counter() - t)
import alice_gpu
print(json.dumps({"seconds": out, "groups": len(res.groups), "module": alice_gpu.__file__,
                  "files": sum(len(g.files) for g in res.groups)}))
"""


_HASH_COST = """
import json, sys, time
import numpy as np
from alice_gpu.features import hashes_np
from alice_gpu.decode import DecodePlan, decode_files
from alice_gpu.records import FileEntry
from pathlib import Path
files = sorted(Path(sys.argv[1]).rglob("*.JPEG"))
px = np.stack([d.pixels for d in decode_files([FileEntry(str(p), 0, 0) for p in files],
                                              DecodePlan(256))])
def run(keys):
    hashes_np.ORIENT_KEYS = keys
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter(); hashes_np.hashes(px); best = min(best, time.perf_counter() - t)
    return best
full = hashes_np.ORIENT_KEYS
res = {"one": [], "eight": []}
for _ in range(3):                                  # interleaved
    res["one"].append(run(())); res["eight"].append(run(full))
print(json.dumps({"images": len(px), "one_s": min(res["one"]), "eight_s": min(res["eight"])}))
"""


def _env(src: Path | None) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return env


def _compiled(*trees: Path) -> None:
    """Byte-compile both trees first, as an installed package is: with
    PYTHONDONTWRITEBYTECODE set, a tree without .pyc files compiles every module on each
    run, and the trees would not pay that alike."""
    for tree in trees:
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "alice_gpu")],
                       check=True, capture_output=True)


def _cwd(src: Path | None) -> Path:
    # `python -m` and `-c` put the working directory first on sys.path: run each tree
    # from its own root, or the "before" would import this tree
    return ROOT if src is None else src


def _index(src: Path | None, db: Path) -> None:
    subprocess.run([sys.executable, "-m", "alice_gpu", "index", str(PHOTOS), "--db", str(db),
                    "--json"], check=True, env=_env(src), cwd=_cwd(src),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _worktree(rev: str, where: Path) -> Path:
    if not where.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                       check=True, capture_output=True)
    # the C extension is built in this tree only; the old commit's mih_join is the same
    for so in (ROOT / "alice_gpu" / "search").glob("_mih*.so"):
        shutil.copy2(so, where / "alice_gpu" / "search" / so.name)
    return where


def _cli(src: Path | None, db: Path, args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "alice_gpu", "duplicates", "--db", str(db), "--json",
                    *args], check=True, env=_env(src), cwd=_cwd(src),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def _api(src: Path | None, db: Path, by: str, n: int) -> dict:
    out = subprocess.run([sys.executable, "-c", _API, str(db), by, str(n)], check=True,
                         env=_env(src), cwd=_cwd(src), capture_output=True, text=True)
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    want = (src or ROOT) / "alice_gpu" / "__init__.py"
    if Path(doc["module"]).resolve() != want.resolve():
        raise SystemExit(f"timed {doc['module']}, not {want}")
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="def29f1")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--keep", type=Path, help="keep (and reuse) the indexes and worktree here")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true", help="append the figures to RESULTS.md")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-dups-"))
    work.mkdir(parents=True, exist_ok=True)
    old_src = _worktree(args.rev, work / "before-src")
    _compiled(old_src, ROOT)
    old_db, new_db = work / "before-db", work / "after-db"
    try:
        for src, db in ((old_src, old_db), (None, new_db)):
            if not db.exists():
                _index(src, db)
        cases = {"before (pHash)": (old_src, old_db, []),
                 "after (tiered)": (None, new_db, []),
                 "after (--by phash)": (None, new_db, ["--by", "phash"])}
        cli: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):                      # interleaved
            for name, (src, db, extra) in cases.items():
                cli[name].append(_cli(src, db, extra))
        api = {"before (pHash)": _api(old_src, old_db, "default", args.repeats),
               "after (tiered)": _api(None, new_db, "default", args.repeats),
               "after (--by phash)": _api(None, new_db, "phash", args.repeats)}
        cost = json.loads(subprocess.run([sys.executable, "-c", _HASH_COST, str(PHOTOS)],
                                         check=True, capture_output=True, text=True, cwd=ROOT
                                         ).stdout.strip().splitlines()[-1])
    finally:
        if args.keep is None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(old_src)], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
    base_cli = statistics.median(cli["before (pHash)"])
    base_api = statistics.median(api["before (pHash)"]["seconds"])
    rows = []
    for name in cases:
        c, a = statistics.median(cli[name]), statistics.median(api[name]["seconds"])
        rows.append({"case": name, "cli_s": round(c, 3), "cli_ratio": round(c / base_cli, 3),
                     "api_ms": round(a * 1000, 1), "api_ratio": round(a / base_api, 3),
                     "groups": api[name]["groups"], "files": api[name]["files"]})
    doc = {"date": dt.date.today().isoformat(), "machine": platform.processor() or
           platform.machine(), "cpus": len(os.sched_getaffinity(0)), "rev_before": args.rev,
           "photos": 462, "repeats": args.repeats, "rows": rows, "hash_cost": cost}
    if args.json:
        print(json.dumps(doc))
    else:
        for r in rows:
            print(f"{r['case']:<26} cli {r['cli_s']:.3f} s (x{r['cli_ratio']:.2f})   "
                  f"api {r['api_ms']:.1f} ms (x{r['api_ratio']:.2f})   "
                  f"{r['groups']} groups, {r['files']} files")
        print(f"hashing {cost['images']} images at 256 px in numpy: {cost['one_s']:.3f} s with "
              f"one pHash, {cost['eight_s']:.3f} s with all 8 orientations "
              f"(x{cost['eight_s'] / cost['one_s']:.2f})")
    if args.write:
        lines = [f"\n### duplicates: tiers and orientations against {args.rev} "
                 f"({doc['date']}, {doc['cpus']} CPUs, no GPU)\n",
                 "462 photos with embeddings, each tree its own index; medians of "
                 f"{args.repeats} interleaved runs (`benchmarks/bench_duplicates.py`).\n",
                 "| case | CLI (s) | ratio | in-process (ms) | ratio | groups | files |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['cli_s']:.3f} | {r['cli_ratio']:.2f} | {r['api_ms']:.1f} "
                  f"| {r['api_ratio']:.2f} | {r['groups']} | {r['files']} |" for r in rows]
        lines.append(f"\nHashing (the four hashes, numpy, {cost['images']} images at 256 px): "
                     f"{cost['one_s']:.3f} s with pHash in one orientation, "
                     f"{cost['eight_s']:.3f} s with all 8 "
                     f"(x{cost['eight_s'] / cost['one_s']:.2f}); the 7 extra pHashes take 56 B "
                     "per file in the index.")
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
