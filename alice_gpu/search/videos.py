"""Search, videos: copies of a video told by aligning their frames in time.

Two videos are a copy when their sampled frames line up at one time offset: each
frame of one matched to frames of the other (pHash within ``MATCH_BITS`` in one of
the 8 orientations, so a turned or mirrored copy aligns; or embedding cosine for
an edited one), each match voting for an offset, and the best offset's matches
covering most of the time the two share. The shorter video must fit inside the
longer at that offset (a trimmed copy, an excerpt); frames it shares only at the
start (an intro, a title card) cover too little of it to count. Black, uniform
and fade frames were never sampled (decode.video).

Candidates are pairs with a frame in common (multi-index hashing over every
frame's pHash, in all orientations) and each video's nearest videos by the
video-level embedding; only those are aligned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..config import QueryConfig
from ..records import ORIENTATIONS
from ..store import Store
from .hamming import hamming_cross_pairs, hamming_pairs
from .vectors import VectorIndex

log = logging.getLogger(__name__)

MATCH_BITS = 12          # two frames of one moment, re-encoded, scaled or turned
CANDIDATE_BITS = 8       # a frame in common makes two videos candidates
MATCH_COSINE = 0.9       # frames of one moment in an edited copy (embeddings)
OFFSET_TOLERANCE = 1.25  # seconds: sampled frames of two copies are up to this far apart
COVERAGE = 0.6           # share of each video's frames in the shared time that match
FIT = 0.7                # the time shared, as a share of the shorter video
MIN_SHARED = 2.0         # seconds
NEIGHBOURS = 16          # nearest videos by embedding, a video (a family of copies and more)


@dataclass(frozen=True)
class VideoVerdict:
    """How two videos align: ``b``'s time = ``a``'s time + ``offset``."""

    verified: bool
    method: str = "frames"
    reason: str = ""
    offset: float = 0.0
    coverage: float = 0.0       # the lower of the two videos' matched shares
    matched: int = 0
    shared: float = 0.0         # seconds the two share at that offset
    orientation: int = 0        # b ≈ ORIENTATIONS[orientation] of a
    durations: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict:
        return {"verified": self.verified, "method": self.method, "reason": self.reason,
                "offset": round(self.offset, 2), "coverage": round(self.coverage, 3),
                "matched": self.matched, "shared": round(self.shared, 2)}

    def describe(self, from_keeper: bool = True) -> str:
        """The copy's edit in time, e.g. "trimmed: starts 3.0 s in, ends 5.0 s early"."""
        if not self.verified:
            return ""
        da, db = self.durations
        off = self.offset if from_keeper else -self.offset
        if not from_keeper:
            da, db = db, da
        start = -off                    # where the copy starts, in the keeper's time
        parts = []
        if start > OFFSET_TOLERANCE:
            parts.append(f"starts {start:.1f} s in")
        elif start < -OFFSET_TOLERANCE:
            parts.append(f"starts {-start:.1f} s before")
        end = da - (start + db)
        if end > OFFSET_TOLERANCE:
            parts.append(f"ends {end:.1f} s early")
        return ("trimmed: " + ", ".join(parts)) if parts else ""


class FrameSet:
    """Every frame of every video, by video: times, pHashes in 8 orientations."""

    def __init__(self, store: Store):
        got = store.frame_hashes()
        self.frame_id, self.t = got["id"], got["t"]
        self.codes = np.concatenate([got["phash"][:, None], got["orient"]], axis=1)
        self.ids, self.start = np.unique(self.frame_id, return_index=True)
        self.end = np.append(self.start[1:], len(self.frame_id))
        self.duration = store.video_durations(self.ids)

    def rows(self, vid: int) -> slice:
        k = int(np.searchsorted(self.ids, vid))
        return slice(int(self.start[k]), int(self.end[k]))

    def hash_candidates(self) -> set[tuple[int, int]]:
        """Video pairs with a frame within ``CANDIDATE_BITS`` as they are or turned (the
        frame pairs, many per video pair, reduced in numpy)."""
        h0 = self.codes[:, 0]
        i, j, _ = hamming_pairs(h0, CANDIDATE_BITS)
        a, b = [self.frame_id[i]], [self.frame_id[j]]
        n = len(h0)
        if n:
            turned = np.ascontiguousarray(self.codes[:, 1:].T).reshape(-1)
            bi, qj, _ = hamming_cross_pairs(h0, turned, CANDIDATE_BITS)
            a.append(self.frame_id[qj % n])
            b.append(self.frame_id[bi])
        x, y = np.concatenate(a), np.concatenate(b)
        lo, hi = np.minimum(x, y), np.maximum(x, y)
        pairs = np.unique(np.stack([lo[lo != hi], hi[lo != hi]], axis=1), axis=0)
        return set(map(tuple, pairs.tolist()))


def align(match: np.ndarray, ta: np.ndarray, tb: np.ndarray, da: float, db: float,
          ) -> tuple[float, float, int, float]:
    """(offset, coverage, matched, shared) of the best offset for a boolean (Fa, Fb)
    match matrix: ``b``'s time = ``a``'s + offset."""
    i, j = np.nonzero(match)
    if len(i) == 0:
        return 0.0, 0.0, 0, 0.0
    votes = np.sort(tb[j] - ta[i])
    hi = np.searchsorted(votes, votes + 2 * OFFSET_TOLERANCE, "right")
    k = int(np.argmax(hi - np.arange(len(votes))))
    offset = float(np.median(votes[k:hi[k]]))
    lo_a, hi_a = max(0.0, -offset), min(da, db - offset)
    shared = max(0.0, hi_a - lo_a)
    if shared <= 0:
        return offset, 0.0, 0, 0.0
    good = np.abs(tb[j] - ta[i] - offset) <= OFFSET_TOLERANCE
    in_a = (ta >= lo_a - OFFSET_TOLERANCE) & (ta <= hi_a + OFFSET_TOLERANCE)
    in_b = (tb >= lo_a + offset - OFFSET_TOLERANCE) & (tb <= hi_a + offset + OFFSET_TOLERANCE)
    hit_a = np.zeros(len(ta), bool)
    hit_b = np.zeros(len(tb), bool)
    hit_a[i[good]] = True
    hit_b[j[good]] = True
    cov = min(hit_a[in_a].sum() / max(1, in_a.sum()), hit_b[in_b].sum() / max(1, in_b.sum()))
    return offset, float(cov), int(min(hit_a.sum(), hit_b.sum())), shared


def _judge(offset: float, cov: float, matched: int, shared: float, da: float, db: float,
           orientation: int) -> VideoVerdict:
    shorter = max(1e-6, min(da, db))
    if matched < 2:
        why = "no frames in common"
    elif shared < min(MIN_SHARED, 0.9 * shorter) or shared < FIT * shorter:
        why = f"they share {shared:.1f} s at the best offset, {shared / shorter:.0%} of the shorter"
    elif cov < COVERAGE:
        why = f"only {cov:.0%} of the frames in the time they share match"
    else:
        return VideoVerdict(True, offset=offset, coverage=cov, matched=matched, shared=shared,
                            orientation=orientation, durations=(da, db))
    return VideoVerdict(False, reason=why, offset=offset, coverage=cov, matched=matched,
                        shared=shared, orientation=orientation, durations=(da, db))


def check_by_hashes(fs: FrameSet, a: int, b: int) -> VideoVerdict:
    """``a`` and ``b`` aligned on their frames' pHashes, in the orientation that matches
    most (b ≈ that orientation of a)."""
    ra, rb = fs.rows(a), fs.rows(b)
    ca, cb = fs.codes[ra], fs.codes[rb, 0]
    da, db = _dur(fs, a, ra), _dur(fs, b, rb)
    best = None
    for o in range(len(ORIENTATIONS)):
        d = np.bitwise_count(ca[:, o][:, None] ^ cb[None, :])
        got = align(d <= MATCH_BITS, fs.t[ra], fs.t[rb], da, db)
        if best is None or (got[1], got[2]) > (best[0][1], best[0][2]):
            best = (got, o)
    (offset, cov, matched, shared), o = best
    return _judge(offset, cov, matched, shared, da, db, o)


def check_by_embeddings(ea: np.ndarray, eb: np.ndarray, ta: np.ndarray, tb: np.ndarray,
                        da: float, db: float) -> VideoVerdict:
    """``a`` and ``b`` aligned on their frames' embeddings (an edited copy)."""
    got = align((ea @ eb.T) >= MATCH_COSINE, ta, tb, da, db)
    v = _judge(*got, da, db, 0)
    return VideoVerdict(v.verified, "embeddings", v.reason, v.offset, v.coverage, v.matched,
                        v.shared, 0, v.durations)


def _dur(fs: FrameSet, vid: int, rows: slice) -> float:
    d = fs.duration.get(int(vid))
    return float(d) if d else float(fs.t[rows.stop - 1]) + 1.0


def embedding_candidates(store: Store, vectors: VectorIndex, ids: np.ndarray, floor: float
                         ) -> dict[tuple[int, int], float]:
    """Each video's nearest videos by the video-level embedding, cosine >= ``floor``."""
    out: dict[tuple[int, int], float] = {}
    if not vectors.count():
        return out
    for vid in ids.tolist():
        emb = store.embedding_of(vid)
        if emb is None:
            continue
        scores, found = vectors.search(emb, NEIGHBOURS * 4)
        keep = np.isin(found, ids) & (found != vid) & (scores >= floor)
        for s, other in list(zip(scores[keep], found[keep]))[:NEIGHBOURS]:
            key = (min(vid, int(other)), max(vid, int(other)))
            out[key] = max(out.get(key, -1.0), float(s))
    return out


def video_pairs(store: Store, vectors: VectorIndex, q: QueryConfig, similar_floor: float,
                report: dict | None = None
                ) -> list[tuple[int, int, str, float, int, VideoVerdict]]:
    """(a, b, tier, score, orientation, verdict) of the video pairs that are copies
    (near: frames align by pHash; edited: by embedding) or look-alikes (similar: the
    video-level embeddings, cosine >= ``similar_floor``). Candidates: a frame in common,
    or video embeddings at cosine >= ``q.candidate_threshold`` (or the similar floor)."""
    t0 = time.perf_counter()
    fs = FrameSet(store)
    if len(fs.ids) < 2:
        return []
    cand = {p: -1.0 for p in fs.hash_candidates()}
    cand.update(embedding_candidates(store, vectors, fs.ids,
                                     min(q.candidate_threshold, similar_floor)))
    embs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    out = []
    for (a, b), cos in sorted(cand.items()):
        v = check_by_hashes(fs, a, b)
        tier = "near" if v.verified else ""
        if not v.verified:              # an edited copy: its frames' embeddings align
            v2 = _embedding_check(store, fs, embs, a, b)
            if v2 is not None and v2.verified:
                v, tier = v2, "edited"
            elif cos >= similar_floor:
                tier = "similar"
        if tier:
            score = round(1.0 - 0.5 * (1.0 - v.coverage), 6) if v.verified else cos
            out.append((a, b, tier, score, v.orientation, v))
    if report is not None:
        report["videos"] = {"videos": len(fs.ids), "candidates": len(cand),
                            "copies": sum(1 for p in out if p[2] in ("near", "edited")),
                            "seconds": round(time.perf_counter() - t0, 2)}
    return out


def _embedding_check(store: Store, fs: FrameSet, cache: dict, a: int, b: int
                     ) -> VideoVerdict | None:
    if len(cache) > 256:          # a few hundred videos' frames at most in memory
        cache.clear()
    for vid in (a, b):
        if vid not in cache:
            cache[vid] = store.frame_embeddings(vid)
    (ta, ea), (tb, eb) = cache[a], cache[b]
    if not len(ea) or not len(eb):
        return None
    return check_by_embeddings(ea, eb, ta, tb, _dur(fs, a, fs.rows(a)), _dur(fs, b, fs.rows(b)))


def frame_hits(store: Store, query: np.ndarray, k: int, allowed: np.ndarray | None = None
               ) -> dict[int, tuple[float, float]]:
    """The ``k`` videos whose best frame is closest to ``query`` (an embedding): video id
    -> (cosine, the frame's time in seconds). Frames are streamed in slices."""
    best: dict[int, tuple[float, float]] = {}
    q = np.asarray(query, np.float32).reshape(-1)
    for ids, times, vecs in store.iter_frame_embeddings():
        if allowed is not None:
            keep = np.isin(ids, allowed)
            ids, times, vecs = ids[keep], times[keep], vecs[keep]
        if not len(ids):
            continue
        scores = vecs @ q
        order = np.lexsort((-scores, ids))          # by video, best frame first
        first = np.ones(len(order), bool)
        first[1:] = ids[order][1:] != ids[order][:-1]
        for r in order[first].tolist():
            vid, s = int(ids[r]), float(scores[r])
            if vid not in best or s > best[vid][0]:
                best[vid] = (s, float(times[r]))
        if len(best) > 4 * k:                        # bounded: the k best so far, with room
            keep_ids = sorted(best, key=lambda v: -best[v][0])[:2 * k]
            best = {v: best[v] for v in keep_ids}
    top = sorted(best, key=lambda v: -best[v][0])[:k]
    return {v: best[v] for v in top}


REFINE_SPAN = 1.0     # seconds around a sampled frame searched for the still's moment


def refine_stills(store: Store, matches: list, query: str, feat: np.ndarray, featurise,
                  limit: int) -> list:
    """A still's video matches, each scored at the still's own moment: the frames within
    ``REFINE_SPAN`` of the sampled frame that matched are compared with the still (grey,
    64 px, in the 8 orientations), and the closest is embedded as the index embeds a
    picture. The sampled frames are up to a keyframe apart; without this a copy whose
    sample happens to sit nearer the moment outranks the clip the still came from."""
    import os
    import tempfile
    from dataclasses import replace

    from ..decode.video import frame_image, frames_near

    target = _standard(_still(query))
    out = []
    with tempfile.TemporaryDirectory(prefix="alice-still-") as tmp:
        for rank, m in enumerate(matches):
            if m.kind != "video" or m.at is None or rank >= limit:
                out.append(m)
                continue
            try:
                near = frames_near(m.path, m.at, REFINE_SPAN)
                if not near:
                    raise ValueError("no frames")
                t = min(near, key=lambda f: _distance(target, _standard(f[1])))[0]
                still = os.path.join(tmp, f"{m.id}.bmp")     # uncompressed: no encode cost
                frame_image(m.path, t).save(still)
                row = featurise(still)
            except Exception as exc:  # noqa: BLE001 - a file gone or damaged: as sampled
                log.debug("not refined: %s (%s)", m.path, exc)
                out.append(m)
                continue
            if row.embedding is None:
                out.append(m)
                continue
            score = float(np.dot(row.embedding, feat))
            out.append(replace(m, score=round(max(score, m.score), 6), at=round(t, 2)))
    return sorted(out, key=lambda m: (-m.score, m.id))


def _still(path: str) -> np.ndarray:
    """The query picture as the frames are compared: upright grey 32 x 32."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("L")
        return np.asarray(im.resize((32, 32), Image.Resampling.BILINEAR))


def _standard(grey: np.ndarray) -> np.ndarray:
    x = grey.astype(np.float32)
    return (x - x.mean()) / (x.std() + 1e-3)


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    """The least mean squared difference of ``b`` to ``a`` in one of the 8 orientations."""
    best = np.inf
    for k in range(4):
        r = np.rot90(b, k)
        if r.shape != a.shape:
            continue
        best = min(best, float(((r - a) ** 2).mean()), float(((r[:, ::-1] - a) ** 2).mean()))
    return best

