"""Copies against look-alikes: what ``duplicates`` groups, by provenance (issue 23).

    python benchmarks/bench_provenance.py [--half 1] [--per-transform 12] [--clips 20]
                                          [--config FILE] [--json] [--write]

Two labelled sets, evaluated with ``evaluate`` (the default ``duplicates``, or the
config given):

- a generated held-out set (``tests/provenance.py``): 12 kinds of copies of photos
  of one half of ``photo_collection`` (crops of 5-30% per side, off-centre crops,
  crop + scale + JPEG q30-50, crop + mirror, crop + turn, banner, watermark, levels,
  saturation, local blur), pairs of frames 0.5 s apart of generated clips (look-alikes),
  and distractors;
- ``near_duplicates`` labelled by ``tests/data/near_duplicates_relations.csv``: UKBench
  views of one object and the Holidays triple are look-alikes, the rest copies.

For each: copies' precision and recall, per transform, and the look-alike pairs
grouped as duplicates (each a copy claimed where there is none). ``--compare`` also
evaluates the answer before pictures were checked (``query.verify: false``) on the
same index in the same run, and the time each took.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def summary(ev) -> dict:
    rel = ev.relations
    return {"copies": {k: rel["copies"][k] for k in ("true_pairs", "correct_pairs",
                                                     "predicted_pairs", "precision", "recall")},
            "lookalikes": rel["lookalikes"],
            "per_transform": {t: {"copy_pairs": f["copies"]["true_pairs"],
                                  "copy_recall": f["copies"]["recall"],
                                  "lookalike_pairs": f["lookalikes"]["pairs"],
                                  "lookalikes_grouped": f["lookalikes"]["called_duplicates"]}
                              for t, f in rel["per_transform"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", type=int, default=1, help="0 tunes, 1 tests (default)")
    ap.add_argument("--per-transform", type=int, default=12)
    ap.add_argument("--clips", type=int, default=20)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--config", help="a config file for the runs (default: the defaults)")
    ap.add_argument("--label", default="default", help="the name of this run in RESULTS.md")
    ap.add_argument("--compare", action="store_true",
                    help="also the answer without verification (query.verify: false)")
    ap.add_argument("--distractors", type=int, default=40)
    ap.add_argument("--other-half", action="store_true",
                    help="every photo of the other half is a distractor too")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true", help="record the figures in RESULTS.md")
    args = ap.parse_args()
    import provenance

    from alice_gpu import open_index
    from alice_gpu.config import load_config

    cfg = load_config(args.config).with_overrides(device="cpu")
    work = Path(tempfile.mkdtemp(prefix="bench-provenance-"))
    truth = provenance.build(DATA / "photo_collection", work / "set", half=args.half,
                             per_transform=args.per_transform, clips=args.clips,
                             seed=args.seed, distractors=args.distractors,
                             other_half=args.other_half)
    doc: dict = {"date": dt.date.today().isoformat(), "label": args.label,
                 "config": args.config, "half": args.half, "per_transform": args.per_transform,
                 "clips": args.clips, "seed": args.seed, "distractors": args.distractors,
                 "other_half": args.other_half}
    sets = {"generated": (truth, None),
            "near_duplicates": (REPO / "tests" / "data" / "near_duplicates_relations.csv",
                                DATA / "near_duplicates")}
    runs = {"verified": cfg}
    if args.compare:
        runs["before"] = cfg.with_overrides(query__verify=False)
    for name, (csv_path, root) in sets.items():
        db = work / f"db-{name}"          # indexed by the first evaluate, reused by the next
        for label, run_cfg in runs.items():
            t = time.perf_counter()
            ev = open_index(db, config=run_cfg).evaluate(csv_path, root=root)
            key = name if label == "verified" else f"{name}:{label}"
            doc[key] = {**summary(ev), "seconds": round(time.perf_counter() - t, 1)}
    print(json.dumps(doc, indent=1) if args.json else json.dumps(doc))
    if args.write:
        from results import record

        record(f"provenance:{args.label}", doc)


if __name__ == "__main__":
    main()
