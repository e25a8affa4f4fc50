"""What int8 embeddings cost in quality, against fp32, on the real sets: the README's table.

    python benchmarks/bench_int8.py [--json] [--write]

Side by side, fp32 (the default, ONNX Runtime) and int8 (``features.precision: int8``):

- cosine of each of the 462 photos' int8 embedding to its fp32 one (min, 1st
  percentile, median);
- neighbour agreement among the 462 photos: the nearest neighbour unchanged, and the
  share of the 10 nearest kept;
- ``duplicates`` precision and recall on the held-out transformed copies of
  ``tests/heldout.py`` (half 1, 12 copies per transform, seed 2: the set the quality
  tests use), through ``evaluate``;
- UKBench N-S (the 56 views, top 4) in an index of near_duplicates + photo_collection,
  as ``tests/test_quality.py`` measures it;
- the same duplicates figures on a larger set from the other half (24 copies per
  transform, seed 11), since fp32 reaches 1.0 on the first, and ``evaluate`` of
  near_duplicates' own groups (other views of one object count there), whose
  ``similar`` mAP ranks every member of a group.

int8 becomes the default only if recall and N-S are within 0.01 of fp32 (issue 22).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def embeddings(precision: str, photos: list[np.ndarray]) -> np.ndarray:
    from alice_gpu.features.onnx import OnnxEmbedder

    return OnnxEmbedder("efficientnet_lite0", precision=precision).embed(photos)


def agreement(a: np.ndarray, b: np.ndarray, k: int = 10) -> dict:
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -9)
    np.fill_diagonal(sb, -9)
    ta, tb = np.argsort(-sa, axis=1)[:, :k], np.argsort(-sb, axis=1)[:, :k]
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(ta, tb)])
    return {"nearest_unchanged": round(float(np.mean(ta[:, 0] == tb[:, 0])), 3),
            f"top{k}_kept": round(float(overlap), 3)}


def ns_score(api, near: Path) -> float:
    rows = csv.DictReader(open(near / "groups.csv"))
    group = {os.path.normpath(near / r["file"]): r["group"] for r in rows}
    queries = sorted(p for p in group if f"{os.sep}ukbench{os.sep}" in p)
    hits = 0
    for q in queries:
        hits += sum(group.get(m.path) == group[q] for m in api.similar(q, k=4).results)
    return round(hits / len(queries), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--write", action="store_true", help="record the figures in RESULTS.md")
    args = ap.parse_args()
    import heldout

    from alice_gpu import open_index
    from alice_gpu.config import load_config
    from alice_gpu.decode.files import decode_path

    photos_dir = DATA / "photo_collection"
    photos = [d.pixels for d in (decode_path(str(p), 256)
                                 for p in sorted((photos_dir / "images").iterdir()))
              if d.pixels is not None]
    fp32, int8 = embeddings("fp32", photos), embeddings("int8", photos)
    cos = np.sum(fp32 * int8, axis=1)
    doc: dict = {"date": dt.date.today().isoformat(), "photos": len(photos),
                 "cosine_to_fp32": {"min": round(float(cos.min()), 4),
                                    "p1": round(float(np.percentile(cos, 1)), 4),
                                    "median": round(float(np.median(cos)), 4)},
                 "neighbours": agreement(fp32, int8), "precisions": {}}
    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    truth = heldout.build(photos_dir, work / "heldout", half=1, per_transform=12, seed=2)
    harder = heldout.build(photos_dir, work / "harder", half=0, per_transform=24, seed=11)
    for precision in ("fp32", "int8"):
        cfg = load_config().with_overrides(features__precision=precision, device="cpu")
        ev = open_index(work / f"heldout-{precision}", config=cfg).evaluate(truth)
        ev2 = open_index(work / f"harder-{precision}", config=cfg).evaluate(harder)
        ev3 = open_index(work / f"near-{precision}", config=cfg).evaluate(
            DATA / "near_duplicates" / "groups.csv")
        mixed = open_index(work / f"mixed-{precision}", config=cfg)
        mixed.index([DATA / "near_duplicates", photos_dir / "images"], device="cpu")
        dup, dup2 = ev.duplicates, ev2.duplicates
        doc["precisions"][precision] = {
            "duplicates_precision": round(dup["precision"], 3),
            "duplicates_recall": round(dup["recall"], 3),
            "ukbench_ns": ns_score(mixed, DATA / "near_duplicates"),
            "half0_x24_precision": round(dup2["precision"], 3),
            "half0_x24_recall": round(dup2["recall"], 3),
            "half0_x24_copies_map": ev2.similar.get("map"),
            "near_duplicates_precision": round(ev3.duplicates["precision"], 3),
            "near_duplicates_recall": round(ev3.duplicates["recall"], 3),
            "near_duplicates_similar_map": ev3.similar.get("map"),
            "recall_by_transform": {k: round(v["duplicates"]["recall"], 3)
                                    for k, v in ev2.per_transform.items()}}
    f, i = doc["precisions"]["fp32"], doc["precisions"]["int8"]
    doc["int8_qualifies_as_default"] = bool(
        f["duplicates_recall"] - i["duplicates_recall"] <= 0.01
        and f["ukbench_ns"] - i["ukbench_ns"] <= 0.01)
    print(json.dumps(doc, indent=1) if args.json else json.dumps(doc))
    if args.write:
        from results import record

        record("int8", doc)


if __name__ == "__main__":
    main()
