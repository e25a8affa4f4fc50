"""Search, residual: how far two aligned pictures are from one capture.

The pixel half of :mod:`.verify`: the second picture warped onto the first, a tone
curve fitted on the pixels that agree, and the residual in blocks (the share that
differ, those inside the picture, the median, the blurred ones); the shape of the map
(:func:`skew`); and the area one picture shows of the other.
"""

from __future__ import annotations

import warnings

import numpy as np

BAD_LEVEL = 20.0           # a block differs when its mean residual is above this (grey levels)
TONE_SAMPLE = 16384        # pixels the tone curve is fitted on


def skew(lin: np.ndarray) -> float:
    """How far a linear map is from what copies do: a turn and a scale, possibly stretched
    along the axes of one of the two pictures (a squash, then a turn). A view from
    another angle stretches along some other direction. 0 for a copy's map."""
    u, sv, vt = np.linalg.svd(lin)
    stretch = sv[0] / max(sv[1], 1e-9) - 1.0
    if stretch < 1e-3:
        return 0.0

    def off_axis(vec: np.ndarray) -> float:        # sin of twice the angle to an axis
        return abs(float(np.sin(2.0 * np.arctan2(vec[1], vec[0]))))

    return stretch * min(off_axis(u[:, 0]), off_axis(vt[0]))


def residual(cv2, ga: np.ndarray, gb: np.ndarray, M: np.ndarray) -> dict:
    """``gb`` warped onto ``ga`` by ``M``, both blurred to the coarser resolution, a gain
    and offset fitted on the pixels that agree (an overlay left out): the share of bad
    blocks (mean residual above ``BAD_LEVEL``), the share of bad blocks that do not touch
    the overlap's edge, and the median block residual."""
    h, w = ga.shape
    worst = {"bad": 1.0, "interior": 0.0, "median": 255.0, "smoothed": 0.0, "gain": 1.0,
             "offset": 0.0}
    warped = cv2.warpAffine(gb.astype(np.float32), M, (w, h), flags=cv2.INTER_LINEAR,
                            borderValue=-1)
    mask = cv2.warpAffine(np.ones_like(gb, np.float32), M, (w, h),
                          flags=cv2.INTER_NEAREST, borderValue=0) > 0.5
    mask &= warped >= 0
    if mask.mean() < 0.05:
        return worst
    sigma = 1.5 * max(1.0, float(np.sqrt(abs(np.linalg.det(M[:, :2])))))
    a = cv2.GaussianBlur(ga.astype(np.float32), (0, 0), sigma)
    b = cv2.GaussianBlur(np.where(mask, warped, 0), (0, 0), sigma)
    x, y = b[mask], a[mask]
    tone = _tone_curve(x, y)
    xs = x[::7]                          # the curve's overall slope and level
    gain, offset = np.polyfit(xs, tone(xs), 1) if len(xs) > 32 and np.ptp(xs) > 1.0 \
        else (1.0, 0.0)
    linear = (gain * b + offset).astype(np.float32)
    b = tone(b).astype(np.float32)
    r = np.abs(a - b) * mask
    block = int(max(4, min(16, min(h, w) // 8)))
    H, W = h // block * block, w // block * block

    def per_block(x: np.ndarray) -> np.ndarray:
        return x[:H, :W].reshape(H // block, block, W // block, block).mean(axis=(1, 3))

    blocks = per_block(r)
    valid = per_block(mask.astype(np.float32)) > 0.9
    if not valid.any():
        return worst
    bad = (blocks > BAD_LEVEL) & valid
    smoothed = _smoothed(cv2, a, linear, bad, per_block)
    bad &= ~smoothed                     # a blur laid over part of the picture is an edit
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bad.astype(np.uint8), connectivity=8)
    inner = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8),
                      borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    touching = set(np.unique(labels[valid & ~inner & bad]).tolist()) - {0}
    rows, cols = valid.shape
    strips = {k for k in touching              # a caption or banner: a strip along an edge
              if (stats[k][2] >= 0.6 * cols and stats[k][3] <= 0.35 * rows)
              or (stats[k][3] >= 0.6 * rows and stats[k][2] <= 0.35 * cols)}
    interior = sum(int(stats[k][4]) for k in range(1, n) if k not in strips)
    overlay = np.isin(labels, list(strips)) | smoothed          # a caption strip, a blur
    rest = valid & ~overlay
    rest = rest if rest.any() else valid
    median = float(np.median(blocks[rest]))
    return {"bad": float(bad.sum() / valid.sum()), "interior": interior / float(valid.sum()),
            "median": median,
            "smoothed": float(smoothed.sum() / valid.sum()), "gain": float(gain),
            "offset": float(offset)}


def _tone_curve(x: np.ndarray, y: np.ndarray):
    """b's grey levels mapped onto a's by a cubic fitted on the pixels that agree (levels,
    curves, a gamma and a saturation change are one capture; an overlay is left out)."""
    step = max(1, len(x) // TONE_SAMPLE)      # a strided sample fits as well, 10x sooner
    x, y = x[::step].astype(np.float64) / 255.0, y[::step].astype(np.float64)
    keep = np.ones(len(x), bool)
    coef = np.array([0.0, 0.0, 255.0, 0.0])
    for _ in range(3):
        if keep.sum() < 32 or np.ptp(x[keep]) < 1e-5:
            break
        with warnings.catch_warnings():        # a flat picture: a poorly fitted cubic is fine
            warnings.simplefilter("ignore", np.exceptions.RankWarning)
            coef = np.polyfit(x[keep], y[keep], 3)
        res = np.abs(y - np.polyval(coef, x))
        keep = res <= max(np.percentile(res, 60) * 2.0, 2.0)
    return lambda v: np.polyval(coef, v / 255.0)


def _smoothed(cv2, a: np.ndarray, b: np.ndarray, bad: np.ndarray, per_block) -> np.ndarray:
    """The bad blocks where one picture is a blurred version of the other: in (almost)
    all of them the same picture has under half the other's fine detail. Another
    capture's differences (a subject that moved) go both ways."""
    none = np.zeros_like(bad)
    if not bad.any():
        return none
    ea = per_block(np.abs(cv2.Laplacian(a, cv2.CV_32F)))
    eb = per_block(np.abs(cv2.Laplacian(b, cv2.CV_32F)))
    for soft in (eb < 0.5 * ea, ea < 0.5 * eb):
        if (soft & bad).sum() >= 0.8 * bad.sum():
            return soft & bad
    return none


def clip_area(poly: np.ndarray, w: float, h: float) -> float:
    """Area of a convex polygon clipped to the rectangle [0, w] x [0, h]
    (Sutherland-Hodgman, four edges)."""
    pts = [tuple(p) for p in poly.tolist()]
    for axis, bound, keep_low in ((0, 0.0, False), (0, w, True), (1, 0.0, False), (1, h, True)):
        out = []
        for i, p in enumerate(pts):
            q = pts[i - 1]
            pin = p[axis] <= bound if keep_low else p[axis] >= bound
            qin = q[axis] <= bound if keep_low else q[axis] >= bound
            if pin != qin:
                t = (bound - q[axis]) / (p[axis] - q[axis])
                out.append((q[0] + t * (p[0] - q[0]), q[1] + t * (p[1] - q[1])))
            if pin:
                out.append(p)
        pts = out
        if not pts:
            return 0.0
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return float(abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))) / 2.0)
