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
BLOCK, BAD_LEVEL, MOVED_PX = 16, 20.0, 12.0
RULE = {"inliers": 25, "second_abs": 10, "second_rel": 0.03, "bad": 0.18, "interior": 0.07,
        "median": 6.0, "shear": 0.05}


class Probe:
    def __init__(self, side: int, features: int):
        import cv2

        cv2.setNumThreads(1)
        self.cv2, self.side = cv2, side
        self.orb = cv2.ORB_create(nfeatures=features, fastThreshold=10)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)

    def load(self, path: str) -> np.ndarray:
        from PIL import Image, ImageOps

        with Image.open(path) as im:
            im.draft("L", (self.side, self.side))
            im = ImageOps.exif_transpose(im).convert("L")
            im.thumbnail((self.side, self.side), Image.Resampling.BILINEAR)
            return np.asarray(im)

    def features(self, grey: np.ndarray):
        kp, des = self.orb.detectAndCompute(grey, None)
        pts = np.float32([k.pt for k in kp]) if kp else np.zeros((0, 2), np.float32)
        return pts, des

    def fit(self, fa, fb):
        cv2 = self.cv2
        (pa, da), (pb, db) = fa, fb
        if da is None or db is None or len(da) < 8 or len(db) < 8:
            return None
        good = [m[0] for m in self.matcher.knnMatch(db, da, k=2)
                if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
        if len(good) < 8:
            return None
        src = pb[[g.queryIdx for g in good]]
        dst = pa[[g.trainIdx for g in good]]
        M, inl = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=4.0,
                                      maxIters=2000, confidence=0.995)
        if M is None:
            return None
        inl = inl.ravel().astype(bool)
        second = 0
        out_s, out_d = src[~inl], dst[~inl]
        if len(out_s) >= 8:
            M2, in2 = cv2.estimateAffinePartial2D(out_s, out_d, method=cv2.RANSAC,
                                                  ransacReprojThreshold=4.0)
            if M2 is not None:
                pts = out_s[in2.ravel().astype(bool)]
                gap = np.linalg.norm(pts @ M[:, :2].T + M[:, 2] - (pts @ M2[:, :2].T + M2[:, 2]),
                                     axis=1)
                second = int((gap > MOVED_PX).sum())
        return M, int(inl.sum()), second

    def residual(self, ga: np.ndarray, gb: np.ndarray, M: np.ndarray) -> dict:
        cv2 = self.cv2
        h, w = ga.shape
        warped = cv2.warpAffine(gb.astype(np.float32), M, (w, h), flags=cv2.INTER_LINEAR,
                                borderValue=-1)
        mask = cv2.warpAffine(np.ones_like(gb, np.float32), M, (w, h),
                              flags=cv2.INTER_NEAREST, borderValue=0) > 0.5
        mask &= warped >= 0
        if mask.mean() < 0.05:
            return {"bad": 1.0, "interior": 0.0, "median": 255.0}
        sigma = 1.5 * max(1.0, float(np.sqrt(abs(np.linalg.det(M[:, :2])))))
        a = cv2.GaussianBlur(ga.astype(np.float32), (0, 0), sigma)
        b = cv2.GaussianBlur(np.where(mask, warped, 0), (0, 0), sigma)
        x, y = b[mask], a[mask]
        keep = np.ones(len(x), bool)
        for _ in range(3):        # refit on the pixels that agree: overlays left out
            gain, offset = np.linalg.lstsq(np.vstack([x[keep], np.ones(keep.sum())]).T,
                                           y[keep], rcond=None)[0]
            res = np.abs(y - (gain * x + offset))
            keep = res <= max(np.percentile(res, 60) * 2.0, 2.0)
        r = np.abs(a - (gain * b + offset)) * mask
        H, W = h // BLOCK * BLOCK, w // BLOCK * BLOCK
        blocks = r[:H, :W].reshape(H // BLOCK, BLOCK, W // BLOCK, BLOCK).mean(axis=(1, 3))
        valid = mask[:H, :W].reshape(H // BLOCK, BLOCK, W // BLOCK, BLOCK).mean(axis=(1, 3)) > 0.9
        if not valid.any():
            return {"bad": 1.0, "interior": 0.0, "median": 255.0}
        bad = (blocks > BAD_LEVEL) & valid
        n, labels, stats, _ = cv2.connectedComponentsWithStats(bad.astype(np.uint8), connectivity=8)
        inner = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8),
                          borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
        touching = set(np.unique(labels[valid & ~inner & bad]).tolist()) - {0}
        interior = sum(int(stats[k][4]) for k in range(1, n) if k not in touching)
        return {"bad": float(bad.sum() / valid.sum()), "interior": interior / float(valid.sum()),
                "median": float(np.median(blocks[valid]))}

    def verify(self, path_a: str, path_b: str) -> dict:
        t = time.perf_counter()
        ga, gb = self.load(path_a), self.load(path_b)
        fa = self.features(ga)
        best = None
        for mirror in (False, True):
            g2 = np.ascontiguousarray(gb[:, ::-1]) if mirror else gb
            fit = self.fit(fa, self.features(g2))
            if fit and (best is None or fit[1] > best[1][1]):
                best = (g2, fit)
        out = {"inliers": 0, "second": 0, "bad": 1.0, "interior": 0.0, "median": 255.0,
               "shear": 0.0}
        if best is not None:
            g2, (M, inliers, second) = best
            _, upper = np.linalg.qr(M[:, :2])
            out = {"inliers": inliers, "second": second, **self.residual(ga, g2, M),
                   "shear": float(abs(upper[0, 1]) / max(abs(upper[0, 0]), 1e-9))}
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
