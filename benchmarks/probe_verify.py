"""Issue 23's groundwork: which pixel evidence tells a copy from another capture.

    python benchmarks/probe_verify.py [--half 0] [--side 512] [--features 1500] [--json]

Needs OpenCV (``pip install opencv-python-headless``; not a dependency yet). For every
pair of one group in two labelled sets (``tests/provenance.py``'s generated copies and
clip frames of one half of ``photo_collection``, and ``near_duplicates`` labelled by
``tests/data/near_duplicates_relations.csv``), plus 40 pairs of unrelated photos, it
measures on the two pictures (grey, longest side ``--side``):

- ``inliers``: ORB matches (Lowe's ratio 0.8) consistent with one affine map found by
  RANSAC (4 px), the second picture also tried mirrored;
- ``second``: matches left out by that map that agree on a second map, displaced by
  more than 12 px from the first: content that moved (another capture);
- after warping the second picture onto the first, both blurred to the coarser of the
  two resolutions and a gain and offset fitted robustly (a banner or watermark left
  out of the fit): ``bad``, the share of 16 px blocks whose mean residual is above 20
  grey levels; ``interior``, the share of bad blocks in regions that do not touch the
  edge of the overlap (a caption strip does; a moved object mostly does not);
  ``median``, the median block residual;
- ``shear`` of the affine map (a copy's map is a similarity, or a squash), and the
  time one verification takes.

It prints the distribution of each per relation and transform, and how one rule
(``RULE``) splits them: what a verification step in ``duplicates`` would do.
"""

from __future__ import annotations

import argparse
import collections
import csv
import itertools
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
sys.path[:0] = [str(REPO), str(REPO / "tests")]
# the rule as this probe first set it; alice_gpu.search.verify.RULE is what duplicates uses
RULE = {"inliers": 25, "second_abs": 10, "second_rel": 0.03, "bad": 0.18, "interior": 0.07,
        "median": 6.0, "shear": 0.05}


class Probe:
    """The measurements of ``duplicates``' own check (:mod:`alice_gpu.search.verify`), at
    the side and feature count asked for, for every pair (not only its verdict)."""

    def __init__(self, side: int, features: int):
        from alice_gpu.search import verify

        verify.SIDE, verify.FEATURES = side, features
        self.checker = verify.Checker()

    def verify(self, path_a: str, path_b: str) -> dict:
        from alice_gpu.search.residual import residual

        t = time.perf_counter()
        ch = self.checker
        a, b = ch.picture(path_a), ch.picture(path_b)
        out = {"inliers": 0, "second": 0, "bad": 1.0, "interior": 0.0, "median": 255.0,
               "shear": 0.0}
        for mirrored in (False, True):
            fit = ch._fit(a.features(ch.cv2, ch.orb), b.features(ch.cv2, ch.orb, mirrored))
            if fit and fit["inliers"] > out["inliers"]:
                gb = np.ascontiguousarray(b.grey[:, ::-1]) if mirrored else b.grey
                res = residual(ch.cv2, a.grey, gb, fit["M"])
                out = {**{k: fit[k] for k in ("inliers", "second", "shear")},
                       **{k: res[k] for k in ("bad", "interior", "median")}}
        out["ms"] = (time.perf_counter() - t) * 1000
        return out


class Cosines:
    """The embedding cosine of a pair (the default model, ONNX Runtime fp32, as the index
    computes it), for choosing the candidates' threshold."""

    def __init__(self):
        from alice_gpu.features.onnx import OnnxEmbedder

        self.embedder, self.cache = OnnxEmbedder("efficientnet_lite0"), {}

    def vector(self, path: str) -> np.ndarray:
        from alice_gpu.decode.files import decode_path

        if path not in self.cache:
            self.cache[path] = self.embedder.embed([decode_path(path, 256).pixels])[0]
        return self.cache[path]

    def __call__(self, a: str, b: str) -> float:
        return float(self.vector(a) @ self.vector(b))

    def neighbours(self, photos: list[Path]) -> dict:
        """How many other photos of photo_collection (distinct pictures) each photo has
        above each cosine: the candidates a threshold would send to verification."""
        vecs = np.stack([self.vector(str(p)) for p in photos])
        sims = vecs @ vecs.T
        np.fill_diagonal(sims, -1)
        return {f"{t:.2f}": {"mean": round(float((sims >= t).sum(1).mean()), 2),
                             "max": int((sims >= t).sum(1).max())}
                for t in (0.5, 0.6, 0.7, 0.75, 0.8, 0.85)}


def copy_by_rule(s: dict) -> bool:
    return (s["inliers"] >= RULE["inliers"]
            and s["second"] <= max(RULE["second_abs"], RULE["second_rel"] * s["inliers"])
            and s["bad"] <= RULE["bad"] and s["interior"] <= RULE["interior"]
            and s["median"] <= RULE["median"] and s["shear"] <= RULE["shear"])


def labelled_pairs(csv_path: Path, root: Path):
    rows = list(csv.DictReader(open(csv_path)))
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    for members in groups.values():
        for x, y in itertools.combinations(members, 2):
            relation = "copy" if x["relation"] == y["relation"] == "copy" else "lookalike"
            yield (str(root / x["file"]), str(root / y["file"]), relation,
                   y["transform"] or x["transform"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", type=int, default=0, help="0 tunes (default), 1 tests")
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--features", type=int, default=1500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    try:
        probe = Probe(args.side, args.features)
    except ImportError:
        sys.exit("probe_verify needs OpenCV: pip install opencv-python-headless")
    import provenance

    work = Path(tempfile.mkdtemp(prefix="probe-verify-"))
    truth = provenance.build(DATA / "photo_collection", work, half=args.half,
                             per_transform=12, clips=20, seed=5 if args.half == 0 else 2)
    pairs = list(labelled_pairs(truth, work))
    pairs += list(labelled_pairs(REPO / "tests" / "data" / "near_duplicates_relations.csv",
                                 DATA / "near_duplicates"))
    others = sorted((work / "others").iterdir())
    rng = random.Random(1)
    pairs += [(str(a), str(b), "unrelated", "") for a, b in
              (rng.sample(others, 2) for _ in range(40))]
    cosine = Cosines()
    table: dict[tuple[str, str], list[dict]] = collections.defaultdict(list)
    for a, b, relation, transform in pairs:
        table[(relation, transform)].append({**probe.verify(a, b), "cosine": cosine(a, b)})
    doc = {"side": args.side, "features": args.features, "half": args.half, "rule": RULE,
           "groups": {}}
    for (relation, transform), found in sorted(table.items()):
        doc["groups"][f"{relation}/{transform}"] = {
            "pairs": len(found), "copies_by_rule": sum(map(copy_by_rule, found)),
            **{k: [round(float(np.percentile([s[k] for s in found], q)), 3) for q in (0, 50, 100)]
               for k in ("cosine", "inliers", "second", "bad", "interior", "median", "shear",
                         "ms")}}
    doc["neighbours_per_photo"] = cosine.neighbours(sorted((DATA / "photo_collection" /
                                                            "images").iterdir()))
    if args.json:
        print(json.dumps(doc, indent=1))
        return
    for name, g in doc["groups"].items():
        print(f"{name:34s} {g['copies_by_rule']:3d}/{g['pairs']:<3d} copies by the rule; "
              + "; ".join(f"{k} {g[k]}" for k in ("cosine", "inliers", "second", "bad",
                                                   "interior",
                                                   "median", "shear", "ms")))


if __name__ == "__main__":
    main()
