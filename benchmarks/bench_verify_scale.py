"""The cost of checking pairs on their pictures, at scale (issue 23).

    python benchmarks/bench_verify_scale.py --db DB [--runs 1] [--write]

Runs the default ``alice-gpu duplicates --json`` (candidates checked on their
pictures) and the same with ``query.verify: false`` (the answer before checks) on one
index, alternately, each as its own process: wall seconds, peak RSS, groups, and the
checks' report (candidates, checked, copies, unchecked, seconds). Made for
``bench_scale.py``'s million-asset index, whose synthetic rows have no files: their
candidates are counted and left unchecked, so the run measures the candidates' join
and bookkeeping; one check's cost on real pictures comes from ``bench_provenance.py``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_scale import run_rss  # noqa: E402


def one(db: str, config: str | None) -> dict:
    args = ["duplicates", "--db", db, "--json"] + (["--config", config] if config else [])
    r = run_rss(args)
    if r["code"] != 0:
        raise SystemExit(f"duplicates failed ({r['code']}): {r['err']}")
    doc = json.loads(r["out"])
    return {"wall_s": r["wall_s"], "rss_mib": r["rss_mib"], "groups": len(doc["groups"]),
            "files": sum(len(g["files"]) for g in doc["groups"]),
            "tiers": {t: sum(1 for g in doc["groups"] if g["tier"] == t)
                      for t in ("exact", "near", "edited")},
            "checks": doc.get("checks", {})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--write", action="store_true", help="record the figures in RESULTS.md")
    args = ap.parse_args()
    before = Path(tempfile.mkdtemp(prefix="verify-off-")) / "config.yaml"
    before.write_text("query:\n  verify: false\n")
    doc: dict = {"date": dt.date.today().isoformat(), "db": args.db,
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "verified": [], "before": []}
    for _ in range(args.runs):                      # alternated, so drift hits both
        doc["verified"].append(one(args.db, None))
        doc["before"].append(one(args.db, str(before)))
    print(json.dumps(doc, indent=1))
    if args.write:
        from results import record

        record("verify-scale", doc)


if __name__ == "__main__":
    main()
