"""Where the tiered defaults come from: the margins on a generated transform set.

Builds a set with ``tests/heldout.py`` (half 0 of photo_collection by default: the
tuning half; the tests judge the defaults on half 1), indexes it with
embeddings, and prints, per transform, the pHash distance (best of the 8
orientations) and the embedding cosine of every true pair, then the closest
pairs that are *not* duplicates (distractors and originals among themselves),
and the evaluation of the current defaults. A threshold belongs in the gap
between the two. All pairs are compared here (n² on a few hundred files: a
tuning tool, not a query).

Usage: python benchmarks/tune_tiers.py [--half 0] [--seed 1] [--per-transform 12] [--json]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import heldout  # noqa: E402

from alice_gpu import open_index  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "photo_collection"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", type=int, default=0, choices=(0, 1))
    ap.add_argument("--seed", type=int, default=None, help="default: half + 1")
    ap.add_argument("--per-transform", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    seed = args.half + 1 if args.seed is None else args.seed
    with tempfile.TemporaryDirectory(prefix="tune-tiers-") as tmp:
        out = Path(tmp)
        truth = heldout.build(PHOTOS, out / "set", half=args.half,
                              per_transform=args.per_transform, seed=seed)
        api = open_index(out / "db")
        ev = api.evaluate(truth)
        with api._open(read_only=True) as store:
            ids, h0 = store.hashes("phash")
            oid, others = store.oriented_phashes()
            eid, emb = store.embeddings()
            rows = store.assets_by_ids(ids)
        assert np.array_equal(ids, oid) and np.array_equal(ids, eid)
        codes = np.concatenate([h0[:, None], others], axis=1)            # (n, 8)
        # best orientation either way: b ≈ t(a) when a's t-hash is close to b's own
        d = np.min(np.bitwise_count(codes[:, None, :] ^ h0[None, :, None]), axis=2)
        d = np.minimum(d, d.T).astype(int)
        cos = emb @ emb.T
        group, made = {}, {}
        for r in csv.DictReader(open(truth)):
            p = str((out / "set" / r["file"]).resolve())
            group[p], made[p] = r["group"], r["transform"]
        paths = [rows[int(i)]["path"] for i in ids]
        g = np.array([group[p] for p in paths])
        iu = np.triu_indices(len(ids), 1)
        same = (g[:, None] == g[None, :])[iu]
        per = {}
        for name in heldout.TRANSFORMS:
            t = np.array([made[p] == name for p in paths])
            sel = same & (t[:, None] | t[None, :])[iu]
            per[name] = {"hash_bits": sorted(d[iu][sel].tolist()),
                         "cosine": sorted(round(float(x), 3) for x in cos[iu][sel])}
        neg = ~same
        doc = {"half": args.half, "seed": seed, "files": len(ids), "per_transform": per,
               "negatives": {"closest_hash_bits": sorted(d[iu][neg].tolist())[:10],
                             "highest_cosines": sorted(
                                 (round(float(x), 3) for x in cos[iu][neg]), reverse=True)[:10]},
               "evaluation": ev.to_dict()["duplicates"], "thresholds":
                   api.duplicates().thresholds}
    if args.json:
        print(json.dumps(doc))
        return 0
    print(f"half {args.half}, seed {seed}: {doc['files']} files; defaults {doc['thresholds']}")
    for name, fig in per.items():
        print(f"  {name:<10} pHash bits {fig['hash_bits']}\n  {'':<10} cosine    {fig['cosine']}")
    print(f"  not duplicates: closest pHash bits {doc['negatives']['closest_hash_bits']}")
    print(f"  not duplicates: highest cosines   {doc['negatives']['highest_cosines']}")
    e = doc["evaluation"]
    print(f"  defaults: precision {e['precision']:.3f} recall {e['recall']:.3f} "
          f"({e['correct_pairs']}/{e['true_pairs']} pairs, {e['predicted_pairs']} predicted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
