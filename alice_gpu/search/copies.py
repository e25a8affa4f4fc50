"""Search, copies: the tiered answer with each candidate pair checked on its pictures.

Candidates are every pHash-near pair (any orientation) and the embedding neighbour
graph at a permissive cosine, each file keeping its closest few (never n² pairs).
Each candidate is then checked (:mod:`.verify`): one capture is ``near`` when its
pixels match in some orientation with the pHash close, ``edited`` when it matches as a
crop, turn or retouch; two captures, and pairs that could not be checked, are
``similar`` (never moved by default). Same bytes are ``exact`` without a check.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np

from ..config import TIERS, QueryConfig
from ..store import Store
from .edges import (EDITED, NEAR, SIMILAR, Edges, OrientedHashes, embedding_pairs,
                    exact_edges)
from .ivfjoin import cap_per_node
from .vectors import VectorIndex
from .verify import ORIENT_OF, Verdict, verify_pairs

log = logging.getLogger(__name__)


def _keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a.astype(np.int64) * (1 << 32) + b.astype(np.int64)


def candidate_edges(store: Store, vectors: VectorIndex, hashes: OrientedHashes,
                    q: QueryConfig, floor: float, near: int, device: str) -> Edges:
    """pHash-near pairs (tier near) and embedding pairs (tier similar): each file's
    nearest neighbour at cosine >= ``nearest_threshold`` and its closest
    ``candidates_per_image`` at ``floor`` or above; one edge per pair, each file keeping
    its closest few of both kinds."""
    parts = [hashes.near_pairs(near, device, q.turned_threshold)]
    cap = q.candidates_per_image
    if store.embedding_count() == 0:
        log.warning("no embeddings in this index (it was built with --no-embed): "
                    "edited copies and look-alikes are not searched")
    else:
        a, b, cos = embedding_pairs(store, vectors, min(floor, q.nearest_threshold), device,
                                    cap, strong=floor)
        vectors.release()                  # the index's pages are not needed past the join
        dist, orient = hashes.distances(a, b)
        parts.append(Edges(a.astype(np.int64), b.astype(np.int64),
                           np.full(len(a), SIMILAR, np.int8), cos.astype(np.float64), dist,
                           orient))
    edges = Edges.best_of(parts)
    a, b, _ = cap_per_node(edges.a, edges.b, edges.closeness(), cap)
    return edges.take(np.isin(_keys(edges.a, edges.b), _keys(a, b)))


def verified_edges(store: Store, vectors: VectorIndex, q: QueryConfig, tiers: list[str],
                   device: str, near: int, report: dict | None = None,
                   progress: Callable[[int, int], None] | None = None) -> Edges:
    """The tiered answer's pairs in ``tiers``, each non-exact pair checked on its pictures;
    ``report`` gets what the checks did (candidates, checked, copies, unchecked, seconds)."""
    same = exact_edges(store)
    parts = [same] if "exact" in tiers else []
    if not {"near", "edited", "similar"} & set(tiers):
        return Edges.best_of(parts).only(tiers)
    hashes = OrientedHashes(store)
    floor = min(q.candidate_threshold, q.similar_threshold) if "similar" in tiers \
        else q.candidate_threshold
    cand = candidate_edges(store, vectors, hashes, q, floor, near, device)
    cand = cand.take(~np.isin(_keys(cand.a, cand.b), _keys(same.a, same.b)))  # nothing to check
    videos = store.video_ids()                      # videos are aligned apart (.videos)
    cand = cand.take(~(np.isin(cand.a, videos) | np.isin(cand.b, videos)))
    t = time.perf_counter()
    checked = _check(store, cand, q, progress)           # row -> verdict, for the rows checked
    ok = np.zeros(len(cand.a), bool)
    pixels = np.zeros(len(cand.a), bool)
    for k, v in checked.items():
        ok[k], pixels[k] = v.verified, v.method == "pixels"
        if v.verified and v.method == "keypoints":       # the turn the keypoints found
            cand.orient[k] = ORIENT_OF.get(v.orientation(), 0)
    if report is not None:
        report.update(candidates=len(cand.a), checked=len(checked), copies=int(ok.sum()),
                      unchecked=len(cand.a) - len(checked),
                      seconds=round(time.perf_counter() - t, 2))
    near_hash = cand.tier == NEAR
    cand.tier = np.where(ok & pixels & near_hash, NEAR,
                         np.where(ok, EDITED, SIMILAR)).astype(np.int8)
    weak = ~ok & (cand.score < q.similar_threshold) & ~near_hash     # not even a look-alike
    kept = cand.take(~weak & np.isin(cand.tier, [TIERS.index(t) for t in tiers]))
    rows = np.flatnonzero(~weak & np.isin(cand.tier, [TIERS.index(t) for t in tiers]))
    kept.evidence = {(int(cand.a[k]), int(cand.b[k])): checked.get(int(k), UNCHECKED)
                     for k in rows.tolist()}
    parts.append(kept)
    return Edges.best_of(parts, evidence=kept.evidence).only(tiers)


UNCHECKED = Verdict(False, reason="not checked: a file of the pair is not there")


def _check(store: Store, cand: Edges, q: QueryConfig,
           progress: Callable[[int, int], None] | None) -> dict[int, Verdict]:
    """The verdicts of the candidates whose two files are there now, by row."""
    ids = np.unique(np.concatenate([cand.a, cand.b]))
    paths: dict[int, str] = {}
    for s in range(0, len(ids), PATH_SLICE):        # only the files that are there kept
        for i, p in store.paths_by_ids(ids[s:s + PATH_SLICE]).items():
            if os.path.isfile(p):
                paths[i] = p
    there = np.fromiter(paths, np.int64, len(paths))
    rows = np.flatnonzero(np.isin(cand.a, there) & np.isin(cand.b, there)).tolist()
    pairs = [(paths[int(cand.a[k])], paths[int(cand.b[k])],
              int(cand.orient[k]) if cand.tier[k] == NEAR else -1) for k in rows]
    t = time.perf_counter()
    found = verify_pairs(pairs, q.verify_workers or (os.cpu_count() or 1), progress)
    log.info("checked %d of %d candidate pairs on their pictures in %.1f s (%d not there)",
             len(rows), len(cand.a), time.perf_counter() - t, len(cand.a) - len(rows))
    return dict(zip(rows, found))


PATH_SLICE = 100_000
