"""Search, verify: is a pair one capture (a copy) or two (look-alikes)?

A copy (re-encoded, resized, cropped, turned, retouched, captioned) maps onto its
original by one affine transform with many consistent keypoint matches, and once
aligned its pixels agree up to a gain and an offset, except where something was laid
over the picture (a banner touches the edge of the overlap, a watermark is small).
Another capture of the scene (a burst, another view, a moving subject) has parallax
or motion: matches that follow a second motion, or blocks that disagree inside the
picture. Embedding cosine cannot tell the two apart; this check can.

Two checks, the cheaper first:

- ``pixels``: when the pHashes say ``b`` is ``a`` in some orientation and the aspect
  ratios agree, ``b`` is resized onto ``a`` turned, and the residual decides (the
  ``near`` tier: the same pixels, give or take re-encoding, size and orientation);
- ``keypoints``: ORB features matched with Lowe's ratio, an affine map fitted by
  RANSAC (``b`` also tried mirrored), then the same residual over the overlap (the
  ``edited`` tier, with the crop, scale and turn named).

The thresholds (``RULE``) were set on one half of ``photo_collection``'s generated
copies and clip frames and checked on the other (``benchmarks/probe_verify.py``,
``benchmarks/bench_provenance.py``; RESULTS.md). Checks run in a process pool of
their own; a worker keeps the last files it read, so pairs sharing a file read it
once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .residual import clip_area, residual, skew

log = logging.getLogger(__name__)

SIDE = 512                 # the longest side the check looks at (pixels)
FEATURES = 1500            # ORB keypoints per picture
MOVED_PX = 12.0           # a match this far from the map's prediction moved (pixels)
RULE = {"inliers": 25, "second_abs": 25, "second_rel": 0.08, "bad": 0.18, "interior": 0.07,
        "median": 3.0, "shear": 0.05,
        # matches this exact (median px) mean the pixel grids coincide: nothing was
        # resampled, so a larger residual is a tone or colour edit, not another capture
        "grid_px": 0.3, "grid_median": 6.0,
        # the tones of a copy follow the original's (levels, curves): not flattened, not inverted
        "gain": (0.5, 2.0),
        # one picture this many times the other's size: the median limit grows as sqrt(zoom)
        "zoomed": 1.5}
# pixels: one picture squashed onto the other by at most this factor along one side
MAX_STRETCH = 3.0
MIN_SIDE = 16              # pixels: a smaller picture has nothing to compare
# (quarter turns, mirrored) of a keypoint fit -> ``records.ORIENTATIONS`` index (b ≈ t(a))
ORIENT_OF = {(0, False): 0, (0, True): 1, (2, True): 2, (2, False): 3, (1, True): 4,
             (1, False): 5, (3, False): 6, (3, True): 7}
AXIS_DEGREES = 10.0        # a turn this close to a quarter is that quarter (a named orientation)
CHUNK = 16                 # pairs per task sent to a worker
CACHED_FILES = 24          # files a worker keeps (grey picture and its features)


@dataclass(frozen=True)
class Verdict:
    """What the check found for a pair ``(a, b)``; ``b`` is described against ``a``."""

    verified: bool               # one capture: a copy
    method: str = ""             # "pixels" | "keypoints" | "" (not verified)
    reason: str = ""             # why not, in words
    inliers: int = 0             # keypoint matches that agree on the transform
    residual: float = 255.0      # median 16 px block difference once aligned (grey levels)
    scale: float = 1.0           # b's pixels per a's pixels (original sizes)
    angle: float = 0.0           # degrees b is turned (counter-clockwise), after un-mirroring
    mirrored: bool = False
    area_a: float = 1.0          # share of a's picture that b shows
    area_b: float = 1.0          # share of b's picture that a shows
    gain: float = 1.0            # b's grey levels against a's
    offset: float = 0.0
    changed: float = 0.0         # share of the overlap's blocks that differ (an overlay, a retouch)
    blurred: float = 0.0         # share of the overlap's blocks blurred in one of the two
    stretch: float = 1.0         # b's aspect ratio against a's (pixels: a squash)

    def orientation(self) -> tuple[int, bool] | None:
        """(quarter turns, mirrored) when the turn is within ``AXIS_DEGREES`` of a
        quarter, else None (a free rotation)."""
        quarters = round(self.angle / 90.0)
        if abs(self.angle - 90.0 * quarters) > AXIS_DEGREES:
            return None
        return quarters % 4, self.mirrored

    def to_dict(self) -> dict:
        return {"verified": self.verified, "method": self.method, "reason": self.reason,
                "inliers": self.inliers, "residual": round(self.residual, 2),
                "scale": round(self.scale, 3), "angle": round(self.angle, 1),
                "mirrored": self.mirrored, "area": round(min(self.area_a, self.area_b), 3),
                "changed": round(self.changed, 3), "blurred": round(self.blurred, 3)}


class _Picture:
    """A file as the check sees it: grey, longest side ``SIDE``, EXIF orientation applied."""

    def __init__(self, path: str):
        from PIL import Image, ImageOps

        from ..decode.pillow import openable

        with Image.open(path, formats=openable()) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                w, h = h, w
            im.draft("L", (SIDE, SIDE))
            im = ImageOps.exif_transpose(im).convert("L")
            im.thumbnail((SIDE, SIDE), Image.Resampling.BILINEAR)
            self.grey = np.asarray(im)
        self.full = (w, h)
        self.factor = w / self.grey.shape[1]          # original pixels per checked pixel
        self._feats: dict[bool, tuple] = {}

    def features(self, cv2, orb, mirrored: bool = False) -> tuple:
        if mirrored not in self._feats:
            grey = np.ascontiguousarray(self.grey[:, ::-1]) if mirrored else self.grey
            kp, des = orb.detectAndCompute(grey, None)
            pts = np.float32([k.pt for k in kp]) if kp else np.zeros((0, 2), np.float32)
            self._feats[mirrored] = (pts, des)
        return self._feats[mirrored]


class Checker:
    """One worker's check: its OpenCV objects and the files it read last."""

    def __init__(self) -> None:
        import cv2
        from cachetools import LRUCache

        cv2.setNumThreads(1)
        self.cv2 = cv2
        self.orb = cv2.ORB_create(nfeatures=FEATURES, fastThreshold=10)
        self.matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
        self.cache: LRUCache = LRUCache(CACHED_FILES)

    def picture(self, path: str) -> _Picture:
        pic = self.cache.get(path)
        if pic is None:
            pic = self.cache[path] = _Picture(path)
        return pic

    def verify(self, path_a: str, path_b: str, orient: int = -1) -> Verdict:
        """The verdict on ``b`` against ``a``; ``orient``: the orientation the pHashes
        found (``b`` ≈ ORIENTATIONS[orient] of ``a``), -1 when they found none."""
        try:
            a, b = self.picture(path_a), self.picture(path_b)
        except Exception as exc:  # noqa: BLE001 - a file that changed or went away is data
            return Verdict(False, reason=f"not checked: {_why(exc)}")
        if min(a.grey.shape + b.grey.shape) < MIN_SIDE:
            return Verdict(False, reason=f"not checked: a picture is under {MIN_SIDE} pixels")
        try:
            if orient >= 0:
                found = self._pixels(a, b, orient)
                if found is not None:
                    return found
            return self._keypoints(a, b)
        except Exception as exc:  # noqa: BLE001 - one odd picture never ends the answer
            log.warning("could not compare %s and %s: %s", path_a, path_b, _why(exc))
            return Verdict(False, reason=f"not checked: {_why(exc)}")

    def _pixels(self, a: _Picture, b: _Picture, orient: int) -> Verdict | None:
        from ..features.hashes_np import orient_pixels
        from ..records import ORIENTATIONS

        ta = orient_pixels(a.grey, orient)
        (ha, wa), (hb, wb) = ta.shape, b.grey.shape
        stretch = (wb / hb) / (wa / ha)         # a squash is a resize along one side
        if not 1.0 / MAX_STRETCH <= stretch <= MAX_STRETCH:
            return None
        small, large = (ta, b.grey) if ha * wa <= hb * wb else (b.grey, ta)
        large = self.cv2.resize(large, (small.shape[1], small.shape[0]),
                                interpolation=self.cv2.INTER_AREA)
        x, y = (small, large) if small is ta else (large, small)
        res = residual(self.cv2, x, y, np.float32([[1, 0, 0], [0, 1, 0]]))
        if not _photometric_ok(res):
            return None
        angle = {3: 180.0, 5: 90.0, 6: 270.0, 4: 90.0, 7: 270.0, 2: 180.0}.get(orient, 0.0)
        transposed = ORIENTATIONS[orient][1]
        return Verdict(True, "pixels", inliers=0, residual=res["median"], changed=res["bad"],
                       blurred=res["smoothed"],
                       scale=b.full[0] / (a.full[1] if transposed else a.full[0]),
                       angle=angle, mirrored=orient in (1, 2, 4, 7), gain=res["gain"],
                       offset=res["offset"], stretch=stretch)

    def _keypoints(self, a: _Picture, b: _Picture) -> Verdict:
        fa = a.features(self.cv2, self.orb)
        best, best_ok = None, False
        for mirrored in (False, True):
            fit = self._fit(fa, b.features(self.cv2, self.orb, mirrored))
            if fit is None:
                continue
            gb = np.ascontiguousarray(b.grey[:, ::-1]) if mirrored else b.grey
            stats = {**fit, **residual(self.cv2, a.grey, gb, fit["M"])}
            ok = judge(stats) == ""
            if best is None or (ok, stats["inliers"]) > (best_ok, best[1]["inliers"]):
                best, best_ok = (mirrored, stats), ok
            if ok:
                break                                   # upright first: most copies are
        if best is None:
            return Verdict(False, reason="not the same picture: too few matching features")
        mirrored, s = best
        shape = _describe(s["M"], a, b, mirrored)
        why = judge(s)
        return Verdict(why == "", "keypoints" if why == "" else "", why, s["inliers"],
                       s["median"], gain=s["gain"], offset=s["offset"], changed=s["bad"],
                       blurred=s["smoothed"], mirrored=mirrored,
                       **shape)

    def _fit(self, fa: tuple, fb: tuple) -> dict | None:
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
        # a similarity (turn, scale, shift) is what most copies are; a full affine only when
        # it explains clearly more matches (a squash)
        M, inl = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                             ransacReprojThreshold=4.0, maxIters=2000,
                                             confidence=0.995)
        Ma, ina = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=4.0,
                                       maxIters=2000, confidence=0.995)
        better = Ma is not None and (M is None or ina.sum() > 1.15 * inl.sum())
        if better and (M is None or inl.sum() < RULE["inliers"]
                       or skew(Ma[:, :2]) <= RULE["shear"]):
            M, inl = Ma, ina           # (a skewed affine loses to a similarity that holds)
        if M is None:
            return None
        inl = inl.ravel().astype(bool)
        second = 0
        out_s, out_d = src[~inl], dst[~inl]
        if len(out_s) >= 8:      # a second motion among the matches the map left out
            M2, in2 = cv2.estimateAffinePartial2D(out_s, out_d, method=cv2.RANSAC,
                                                  ransacReprojThreshold=4.0)
            if M2 is not None:
                pts = out_s[in2.ravel().astype(bool)]
                gap = np.linalg.norm(pts @ M[:, :2].T + M[:, 2] - (pts @ M2[:, :2].T + M2[:, 2]),
                                     axis=1)
                second = int((gap > MOVED_PX).sum())
        err = np.linalg.norm(src[inl] @ M[:, :2].T + M[:, 2] - dst[inl], axis=1)
        return {"M": M, "inliers": int(inl.sum()), "second": second,
                "reproj": float(np.median(err)) if len(err) else 4.0,
                "zoom": _zoom(M),
                "ratio": float(inl.mean()),
                "shear": skew(M[:, :2])}


def _zoom(M: np.ndarray) -> float:
    """How many times larger one checked picture is than the other (>= 1)."""
    s = float(np.sqrt(abs(np.linalg.det(M[:, :2]))))
    return max(s, 1.0 / max(s, 1e-9))


def _photometric_ok(s: dict) -> bool:
    """The residual allowed grows with the zoom between the two when one is at most
    two thirds of the other (a small copy, enlarged to be compared, carries its
    resampling and compression at that scale); another view at about the same scale
    is held to the plain limit."""
    zoom = s.get("zoom", 1.0)
    limit = RULE["grid_median"] if s.get("reproj", 4.0) <= RULE["grid_px"] else \
        RULE["median"] * (float(np.sqrt(zoom)) if zoom >= RULE["zoomed"] else 1.0)
    return s["bad"] <= RULE["bad"] and s["interior"] <= RULE["interior"] \
        and s["median"] <= limit and RULE["gain"][0] <= s["gain"] <= RULE["gain"][1]


def judge(s: dict) -> str:
    """'' when the statistics say one capture, else why not (a phrase)."""
    if s["inliers"] < RULE["inliers"]:
        return f"not the same picture: {s['inliers']} matching features"
    if s["second"] > max(RULE["second_abs"], RULE["second_rel"] * s["inliers"]):
        return "another capture: part of the picture moved"
    if s["shear"] > RULE["shear"]:
        return "another capture: seen from another angle"
    if not _photometric_ok(s):
        return "another capture: the pixels differ once aligned"
    return ""


def _describe(M: np.ndarray, a: _Picture, b: _Picture, mirrored: bool) -> dict:
    """Scale, turn and the shares each picture shows of the other, from ``M`` (b's
    checked pixels → a's), in the files' own pixels."""
    lin = M[:, :2]
    s = float(np.sqrt(abs(np.linalg.det(lin))))
    angle = float(np.degrees(np.arctan2(lin[1, 0], lin[0, 0]))) % 360.0
    hb, wb = b.grey.shape
    corners = np.float32([[0, 0], [wb, 0], [wb, hb], [0, hb]])
    foot = corners @ lin.T + M[:, 2]              # b's outline in a's checked pixels
    ha, wa = a.grey.shape
    inside = clip_area(foot, wa, ha)
    return {"scale": b.factor / max(s * a.factor, 1e-9),
            "angle": round((360.0 - angle) % 360.0, 2) % 360.0,
            "area_a": min(1.0, inside / float(wa * ha)),
            "area_b": min(1.0, inside / max(float(abs(np.linalg.det(lin))) * wb * hb, 1e-9))}


def _why(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "the file is gone"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__


def describe_edit(v: Verdict, from_keeper: bool = True) -> str:
    """How a copy differs from the other file, in words, e.g. "cropped to 72% of the
    area, scaled 0.5×, retouched" (a quarter turn or a mirror is the pair's
    ``transform``; a free rotation is said here). ``from_keeper``: ``b`` is the copy,
    described against ``a``; else the roles are swapped."""
    if not v.verified:
        return ""
    parts = []
    shown, shows = (v.area_a, v.area_b) if from_keeper else (v.area_b, v.area_a)
    if shown < 0.97:
        parts.append(f"cropped to {shown:.0%} of the area")
    elif shows < 0.97:
        parts.append(f"uncropped: the other is {shows:.0%} of it")
    scale = v.scale if from_keeper else 1.0 / max(v.scale, 1e-9)
    if abs(scale - 1.0) > 0.03:
        parts.append(f"scaled {scale:.2g}×")
    stretch = v.stretch if from_keeper else 1.0 / max(v.stretch, 1e-9)
    if abs(stretch - 1.0) > 0.02:
        parts.append(f"squashed to {stretch:.2g}× the aspect ratio")
    quarters = round(v.angle / 90.0)
    off = v.angle - 90.0 * quarters
    if v.orientation() is None:
        angle = v.angle if from_keeper else (360.0 - v.angle) % 360.0
        parts.append(f"rotated {angle:.0f}°" + (", mirrored" if v.mirrored else ""))
    elif abs(off) > 1.0:
        parts.append(f"rotated {abs(off):.0f}°")
    if abs(v.gain - 1.0) > 0.08 or abs(v.offset) > 8.0:
        parts.append("levels changed")
    if v.blurred >= 0.01:
        parts.append(f"blurred over {v.blurred:.0%} of it")
    if v.changed >= 0.01:
        parts.append(f"{v.changed:.0%} of it changed (an overlay or a retouch)")
    return ", ".join(parts) or "re-encoded"


_CHECKER: Checker | None = None


def check_chunk(pairs: Sequence[tuple[str, str, int]]) -> list[Verdict]:
    """What a worker runs: the verdicts of a few pairs, files kept between chunks."""
    global _CHECKER
    if _CHECKER is None:
        _CHECKER = Checker()
    return [_CHECKER.verify(a, b, o) for a, b, o in pairs]


def _init_worker() -> None:
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - a declared dependency
        pass


def verify_pairs(pairs: Sequence[tuple[str, str, int]], workers: int,
                 progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
    """Verdicts for ``(path_a, path_b, orientation)`` pairs, in order, checked in a pool
    of ``workers`` processes (loky's, started apart from this process's threads), the
    pairs sharing a file sent together so it is read once."""
    if not pairs:
        return []
    from loky import get_reusable_executor

    order = sorted(range(len(pairs)), key=lambda k: (pairs[k][0], pairs[k][1]))
    chunks = [order[s:s + CHUNK] for s in range(0, len(order), CHUNK)]
    n = max(1, min(workers, os.cpu_count() or 1, len(chunks)))
    pool = get_reusable_executor(max_workers=n, initializer=_init_worker)
    futures = [pool.submit(check_chunk, [pairs[k] for k in c]) for c in chunks]
    out: list[Verdict | None] = [None] * len(pairs)
    done = 0
    for chunk, fut in zip(chunks, futures):
        for k, verdict in zip(chunk, fut.result()):
            out[k] = verdict
        done += len(chunk)
        if progress is not None:
            progress(done, len(pairs))
    return out  # type: ignore[return-value]
