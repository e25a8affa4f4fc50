"""Search, edges: the pairs ``duplicates`` groups, each with its tier, score and transform.

Every signal yields pairs of asset ids; a pair found by several keeps its
strongest tier (exact > near > edited > similar), then its best score. All the
joins are sub-quadratic (a DuckDB hash join on content hashes, multi-index
hashing on pHashes, the vector index's range join), and the per-pair work is
vectorised over the pairs found, never over all n² pairs.

A pair ``(a, b)`` with orientation ``t`` means ``b`` looks like ``t`` applied to
``a`` (``records.ORIENTATIONS``), so a rotated or mirrored copy is named.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..config import TIERS, QueryConfig
from ..gpu.kernels import cuda_hamming_pairs, kernel_device
from ..records import ORIENT_INVERSE, ORIENTATIONS
from ..store import Store
from .hamming import hamming_cross_pairs, hamming_pairs
from .vectors import VectorIndex

log = logging.getLogger(__name__)

EXACT, NEAR, EDITED, SIMILAR = range(len(TIERS))
# an edited copy's transform is named only when its pHash in that orientation is this
# close (past it the pHash says nothing about orientation) ...
NAMING_BITS = 16
# ... and, for any pair, only when that orientation beats the upright one by more than
# this many bits (a symmetric picture looks alike mirrored: that is no transform)
UPRIGHT_MARGIN = 2
_INV = np.asarray(ORIENT_INVERSE, np.int8)
CHUNK_PAIRS = 262_144      # pairs whose 8 pHash distances are computed at once


@dataclass
class Edges:
    """Pairs a < b (sorted by (a, b), each once) with what joined them."""

    a: np.ndarray          # int64 ids
    b: np.ndarray
    tier: np.ndarray       # int8 index into TIERS
    score: np.ndarray      # float64: 1.0 exact, 1 - bits/64 near, cosine edited / similar
    dist: np.ndarray       # int64 pHash bits in the best orientation, -1 when unknown
    orient: np.ndarray     # int8: b ≈ ORIENTATIONS[orient] of a
    # (a, b) -> the pictures' check of that pair (verify.Verdict), for the pairs checked
    evidence: dict = field(default_factory=dict)

    @classmethod
    def empty(cls) -> "Edges":
        z = np.zeros(0, np.int64)
        return cls(z, z, z.astype(np.int8), z.astype(np.float64), z, z.astype(np.int8))

    @classmethod
    def best_of(cls, parts: list["Edges"], evidence: dict | None = None) -> "Edges":
        """One edge per pair: the strongest tier, then the highest score, then identity."""
        parts = [p for p in parts if len(p.a)]
        if not parts:
            return cls(*cls.empty().arrays(), evidence=evidence or {})
        a = np.concatenate([p.a for p in parts])
        b = np.concatenate([p.b for p in parts])
        orient = np.concatenate([p.orient for p in parts])
        swap = a > b                                   # b ≈ t(a)  ⇔  a ≈ t⁻¹(b)
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        orient = np.where(swap, _INV[orient], orient).astype(np.int8)
        tier = np.concatenate([p.tier for p in parts])
        score = np.concatenate([p.score for p in parts])
        dist = np.concatenate([p.dist for p in parts])
        order = np.lexsort((orient, -score, tier, b, a))
        a, b = a[order], b[order]
        first = np.ones(len(a), bool)
        first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
        keep = order[first]
        return cls(a[first], b[first], tier[keep], score[keep], dist[keep], orient[keep],
                   evidence or {})

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.a, self.b, self.tier, self.score, self.dist, self.orient

    def take(self, mask: np.ndarray) -> "Edges":
        """The pairs where ``mask`` holds (their evidence kept)."""
        return Edges(*(x[mask] for x in self.arrays()), evidence=self.evidence)

    def only(self, tiers: list[str]) -> "Edges":
        return self.take(np.isin(self.tier, [TIERS.index(t) for t in tiers]))

    def apart(self, sets: dict[int, frozenset[int]]) -> "Edges":
        """Without the pairs a person declared not duplicates: two files that share one
        of the decisions ``sets`` maps them to (asset id -> decision ids)."""
        if not sets or not len(self.a):
            return self
        decided = np.fromiter(sets, np.int64, len(sets))
        mask = np.ones(len(self.a), bool)            # only pairs of two decided files looked at
        for k in np.flatnonzero(np.isin(self.a, decided) & np.isin(self.b, decided)):
            mask[k] = not (sets[int(self.a[k])] & sets[int(self.b[k])])
        return self.take(mask)

    def within(self, ids: np.ndarray) -> "Edges":
        """The pairs whose two files are both among ``ids``."""
        return self.take(np.isin(self.a, ids) & np.isin(self.b, ids))

    def closeness(self) -> np.ndarray:
        """One number per pair, higher is closer: the tier first, then the score."""
        return (len(TIERS) - self.tier.astype(np.float64)) * 10.0 + self.score

    def find(self, x: int, y: int) -> int:
        """The row of pair {x, y} (it must be there)."""
        a, b = (x, y) if x < y else (y, x)
        lo = int(np.searchsorted(self.a, a, "left"))
        hi = int(np.searchsorted(self.a, a, "right"))
        k = lo + int(np.searchsorted(self.b[lo:hi], b))
        if k >= hi or self.b[k] != b:
            raise KeyError((x, y))
        return k


def _hash_edges(a: np.ndarray, b: np.ndarray, d: np.ndarray, orient: np.ndarray | int
                ) -> Edges:
    n = len(a)
    return Edges(a.astype(np.int64), b.astype(np.int64), np.full(n, NEAR, np.int8),
                 1.0 - d.astype(np.float64) / 64.0, d.astype(np.int64),
                 np.broadcast_to(np.asarray(orient, np.int8), (n,)).copy())


def exact_edges(store: Store) -> Edges:
    """Pairs with the same bytes (SHA-256 of the file), by a hash join in DuckDB."""
    a, b = store.same_content_pairs()
    n = len(a)
    return Edges(a, b, np.full(n, EXACT, np.int8), np.ones(n), np.zeros(n, np.int64),
                 np.zeros(n, np.int8))


class OrientedHashes:
    """Every OK asset's pHash and the pHashes of its 7 other orientations, by id."""

    def __init__(self, store: Store):
        ids, h0 = store.hashes("phash")
        oid, others = store.oriented_phashes()
        at = np.searchsorted(ids, oid)
        self.ids = oid                                 # rows without orientations are left out
        self.codes = np.concatenate([h0[at][:, None], others], axis=1) if len(oid) else \
            np.zeros((0, len(ORIENTATIONS)), np.uint64)
        self.all_ids, self.all_h0 = ids, h0

    def near_pairs(self, threshold: int, device: str, turned: int | None = None) -> Edges:
        """Pairs within ``threshold`` bits as they are, and, unless ``turned`` is None,
        within ``turned`` bits with one of the two rotated or mirrored (each asset's 7
        other pHashes against every pHash, a bipartite join)."""
        gpu = kernel_device(device)
        i, j, d = (hamming_pairs(self.all_h0, threshold) if gpu is None
                   else cuda_hamming_pairs(self.all_h0, threshold, gpu))
        parts = [_hash_edges(self.all_ids[i], self.all_ids[j], d, 0)]
        n = len(self.ids)
        if n and turned is not None:
            queries = np.ascontiguousarray(self.codes[:, 1:].T).reshape(-1)   # orientation-major
            bi, qj, d = hamming_cross_pairs(self.codes[:, 0], queries, min(threshold, turned))
            a, b = self.ids[qj % n], self.ids[bi]               # H_t(a) ≈ H_0(b): b ≈ t(a)
            t = (qj // n + 1).astype(np.int8)
            other = a != b                                      # a symmetric picture
            parts.append(_hash_edges(a[other], b[other], d[other], t[other]))
        return self.prefer_upright(Edges.best_of(parts))

    def upright_bits(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """pHash bits between the pairs as they are (both ids must have a pHash)."""
        ra, rb = np.searchsorted(self.all_ids, a), np.searchsorted(self.all_ids, b)
        return np.bitwise_count(self.all_h0[ra] ^ self.all_h0[rb]).astype(np.int64)

    def prefer_upright(self, edges: Edges) -> Edges:
        """Pairs found turned that are about as close upright name no transform (their
        distance and score stay those of the closest orientation)."""
        turned = np.flatnonzero(edges.orient != 0)
        if len(turned):
            d0 = self.upright_bits(edges.a[turned], edges.b[turned])
            edges.orient[turned[d0 <= edges.dist[turned] + UPRIGHT_MARGIN]] = 0
        return edges

    def distances(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """pHash bits between each pair in its best orientation (b ≈ t(a)), and that t;
        -1 bits where either has no stored orientations."""
        n = len(self.ids)
        if n == 0 or len(a) > CHUNK_PAIRS:          # a million candidates: 8 codes each, in parts
            parts = [self._distances(a[s:s + CHUNK_PAIRS], b[s:s + CHUNK_PAIRS])
                     for s in range(0, len(a), CHUNK_PAIRS)]
            if not parts:
                return np.zeros(0, np.int64), np.zeros(0, np.int8)
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return self._distances(a, b)

    def _distances(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.ids)
        if n == 0:
            return np.full(len(a), -1, np.int64), np.zeros(len(a), np.int8)
        ra = np.minimum(np.searchsorted(self.ids, a), n - 1)
        rb = np.minimum(np.searchsorted(self.ids, b), n - 1)
        known = (self.ids[ra] == a) & (self.ids[rb] == b)
        # b ≈ t(a) when a's orientation-t pHash is close to b's own
        d = np.bitwise_count(self.codes[ra] ^ self.codes[rb, :1]).astype(np.int8)
        t = np.argmin(d, axis=1)
        best = d[np.arange(len(a)), t].astype(np.int64)
        return np.where(known, best, -1), np.where(known, t, 0).astype(np.int8)


def embedding_pairs(store: Store, vectors: VectorIndex, threshold: float, device: str,
                    cap: int | None = None, strong: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(id_a, id_b, cosine) of every pair with cosine >= threshold (``cap``, ``strong``:
    only those :func:`~.ivfjoin.cap_per_node` keeps)."""
    gpu = kernel_device(device)
    if gpu is None or cap is not None:       # exact when flat, else the IVF join; capped:
        return vectors.range_pairs(threshold, cap, strong)   # never a dense GPU product
    import torch                                       # exact: blocked brute force on the GPU

    from ..gpu.blocked import cosine_pairs

    return cosine_pairs(store.iter_embeddings(), threshold, torch.device(f"cuda:{gpu}"),
                        block=16384)


def tiered_edges(store: Store, vectors: VectorIndex, q: QueryConfig, tiers: list[str],
                 device: str, near: int | None = None, report: dict | None = None) -> Edges:
    """The tiered answer's pairs, restricted to ``tiers`` (``near``: the near tier's bits,
    ``q.near_threshold`` by default); with ``q.verify``, each pair checked on its
    pictures (:mod:`.copies`), else tiered by the signals alone. Videos pair with videos
    only (exact: same bytes; else their frames aligned in time, :mod:`.videos`)."""
    edges = _picture_edges(store, vectors, q, tiers, device, near, report)
    videos = store.video_ids()
    if not len(videos):
        return edges
    from .videos import video_pairs

    mixed = (np.isin(edges.a, videos) | np.isin(edges.b, videos)) & (edges.tier != EXACT)
    edges = edges.take(~mixed)
    floor = q.similar_threshold if "similar" in tiers else 2.0
    found = video_pairs(store, vectors, q, floor, report)
    if not found:
        return edges
    a, b, tier, score, orient, verdicts = zip(*found)
    part = Edges(np.asarray(a, np.int64), np.asarray(b, np.int64),
                 np.asarray([TIERS.index(t) for t in tier], np.int8),
                 np.asarray(score, np.float64), np.full(len(a), -1, np.int64),
                 np.asarray(orient, np.int8))
    evidence = {**edges.evidence, **{(x, y): v for x, y, v in zip(a, b, verdicts)}}
    return Edges.best_of([edges, part], evidence=evidence).only(tiers)


def _picture_edges(store: Store, vectors: VectorIndex, q: QueryConfig, tiers: list[str],
                   device: str, near: int | None, report: dict | None) -> Edges:
    if q.verify:
        from .copies import verified_edges

        return verified_edges(store, vectors, q, tiers, device,
                              q.near_threshold if near is None else near, report)
    parts = []
    if "exact" in tiers:
        parts.append(exact_edges(store))
    hashes = OrientedHashes(store)
    if "near" in tiers:
        parts.append(hashes.near_pairs(q.near_threshold if near is None else near, device,
                                       q.turned_threshold))
    if ("edited" in tiers or "similar" in tiers):
        if store.embedding_count() == 0:
            log.warning("no embeddings in this index (it was built with --no-embed): "
                        "edited copies and look-alikes are not searched")
        else:
            floor = q.similar_threshold if "similar" in tiers else q.edited_threshold
            a, b, cos = embedding_pairs(store, vectors, floor, device)
            tier = np.where(cos >= q.edited_threshold, EDITED, SIMILAR).astype(np.int8)
            # the pHash names a transform (an edited copy that was also rotated), if it can
            dist, orient = hashes.distances(a, b)
            orient = np.where((dist >= 0) & (dist <= NAMING_BITS), orient, 0).astype(np.int8)
            known = dist >= 0
            if known.any():       # against the upright distance, as for near pairs
                d0 = np.full(len(a), -1, np.int64)
                d0[known] = hashes.upright_bits(a[known], b[known])
                orient = np.where(known & (d0 <= dist + UPRIGHT_MARGIN), 0, orient).astype(np.int8)
            parts.append(Edges(a.astype(np.int64), b.astype(np.int64), tier,
                               cos.astype(np.float64), dist, orient))
    return Edges.best_of(parts).only(tiers)


def single_edges(store: Store, vectors: VectorIndex, by: str, threshold: float,
                 q: QueryConfig, device: str) -> Edges:
    """One signal at one threshold, as it is: a hash (upright) or the embedding."""
    if by == "embedding":
        a, b, cos = embedding_pairs(store, vectors, threshold, device)
        tier = np.where(cos >= q.edited_threshold, EDITED, SIMILAR).astype(np.int8)
        n = len(a)
        return Edges.best_of([Edges(a.astype(np.int64), b.astype(np.int64), tier,
                                    cos.astype(np.float64), np.full(n, -1, np.int64),
                                    np.zeros(n, np.int8))])
    ids, codes = store.hashes(by)
    gpu = kernel_device(device)
    i, j, d = (hamming_pairs(codes, int(threshold)) if gpu is None
               else cuda_hamming_pairs(codes, int(threshold), gpu))
    return Edges.best_of([_hash_edges(ids[i], ids[j], d, 0)])
