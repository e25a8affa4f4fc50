"""Wall time of the commands people run between indexing: queries, stats, a re-run.

    python benchmarks/bench_startup.py [--against DIR] [--repeat 9] [--write]

Indexes ``photo_collection`` (462 photos, hashes and embeddings) once, then times
each command as a whole process (interpreter start-up included), ``--repeat``
times, interleaved with the same command from ``--against DIR`` (another source
tree of alice-gpu, e.g. a ``git worktree`` of an earlier commit) when given; the
median is reported. Also says whether each command imported torch.
With --write the table replaces the start-up section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PHOTOS = REPO.parent / "shared" / "data" / "photo_collection" / "images"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- startup:begin -->", "<!-- startup:end -->"

# runs the CLI of whichever alice_gpu is first on sys.path, then says if torch was loaded
_PROBE = ("import runpy, sys; sys.argv = ['alice-gpu'] + sys.argv[1:]\n"
          "try:\n    runpy.run_module('alice_gpu.cli', run_name='__main__')\n"
          "except SystemExit:\n    pass\n"
          "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules))")


def command(tree: Path | None, args: list[str]) -> list[str]:
    env = ["env", f"PYTHONPATH={tree}"] if tree else []
    return [*env, sys.executable, "-P", "-c", _PROBE, *args]   # -P: not the cwd's package


def timed(cmd: list[str]) -> tuple[float, bool]:
    t = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode not in (0, 1) or "TORCH=" not in res.stderr:
        raise SystemExit(f"{' '.join(cmd[-6:])} failed: {res.stderr[-2000:]}")
    return wall, "TORCH=1" in res.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, help="another alice-gpu source tree")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    import compileall

    for tree in (REPO, args.against):
        if tree:
            compileall.compile_dir(str(tree / "alice_gpu"), quiet=1)
    query = str(sorted(PHOTOS.iterdir())[0])
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "db")
        subprocess.run(command(None, ["index", str(PHOTOS), "--db", db, "--device", "cpu",
                                      "--json"]), check=True, capture_output=True)
        cases = {
            "alice-gpu --help": ["--help"],
            "stats --json": ["stats", "--db", db, "--json"],
            "duplicates --json (pHash)": ["duplicates", "--db", db, "--json"],
            "duplicates --by embedding --json": ["duplicates", "--by", "embedding", "--db", db,
                                                 "--json"],
            "similar <indexed photo> --json": ["similar", query, "--db", db, "--json"],
            "similar <indexed photo> --by phash --json": ["similar", query, "--by", "phash",
                                                          "--db", db, "--json"],
            "index (nothing to do) --json": ["index", str(PHOTOS), "--db", db, "--json"],
        }
        rows = []
        for name, cli in cases.items():
            mine, theirs, torch_mine, torch_theirs = [], [], False, False
            for _ in range(args.repeat):
                wall, torch_mine = timed(command(None, cli))
                mine.append(wall)
                if args.against:
                    wall, torch_theirs = timed(command(args.against, cli))
                    theirs.append(wall)
            rows.append((name, statistics.median(mine), torch_mine,
                         statistics.median(theirs) if theirs else None, torch_theirs))
            print(rows[-1], flush=True)
    text = report(args, rows)
    print(text)
    if args.write:
        old = RESULTS.read_text()
        if BEGIN in old:
            old = old[:old.index(BEGIN)] + old[old.index(END) + len(END) + 1:]
        RESULTS.write_text(old.rstrip("\n") + "\n\n" + text)


def report(args, rows) -> str:
    import torch

    head = ["| command | this tree s | torch loaded |"]
    rule = ["|---|---:|---|"]
    if args.against:
        head = ["| command | this tree s | torch loaded | that tree s | torch loaded | "
                "this / that |"]
        rule = ["|---|---:|---|---:|---|---:|"]
    lines = [BEGIN, f"## Start-up and queries (benchmarks/bench_startup.py), {dt.date.today()}",
             "", f"Machine: {platform.machine()} {os.cpu_count()} cores, no GPU; Python "
             f"{platform.python_version()}, torch {torch.__version__}. Wall seconds of each "
             f"whole command on an index of the 462 photos of photo_collection (hashes and "
             f"embeddings), median of {args.repeat} runs"
             + (f", interleaved with `{args.against}` (that tree: {_describe(args.against)})"
                if args.against else "") + ".", "", *head, *rule]
    for name, mine, tm, theirs, tt in rows:
        cells = [name, f"{mine:.2f}", "yes" if tm else "no"]
        if args.against:
            cells += [f"{theirs:.2f}", "yes" if tt else "no", f"{mine / theirs:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", END]) + "\n"


def _describe(tree: Path) -> str:
    res = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True)
    return res.stdout.strip()[:70] or "not a git checkout"


if __name__ == "__main__":
    main()
