"""Search, queries: ``similar`` (top-k look-alikes) and ``duplicates`` (groups).

A query image inside the index uses its stored features; one outside it (or
changed since indexing) is decoded and featurised on the fly by the stage
callables, under the plan the index's rows were made with (the API passes
that in). Only an embedding imports torch: hash searches run on numpy / FAISS
or, on a GPU, on our CUDA kernels through CuPy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from ..config import HASH_NAMES, QUERY_KINDS, TIERS, Config, check_threshold
from ..discover import is_video, normalize_path
from ..errors import QueryError
from ..gpu.kernels import cuda_hamming_topk, kernel_device
from ..records import ORIENT_INVERSE, ORIENTATIONS, STATUS_OK, AssetRecord
from ..store import Store
from .groups import linked_groups
from .keep import chosen_first, keeper_key, keeper_reason, parse_keep
from .edges import Edges, single_edges, tiered_edges
from .hamming import hamming_topk
from .vectors import VectorIndex

log = logging.getLogger(__name__)

STILL_MARGIN = 3      # videos past the k-th looked at again for a still (search/videos)
# a file outside the index to its row, made as the index made its rows (the API gives it)
Featurise = Callable[[str], AssetRecord]


@dataclass(frozen=True)
class Match:
    """One result: ``score`` is cosine for embeddings, 1 - distance/64 for hashes."""

    path: str
    score: float
    id: int
    distance: int | None = None
    kind: str = "image"              # "video": a video, by its frames
    at: float | None = None          # a video's frame that matched, in seconds from its start


@dataclass(frozen=True)
class SimilarResult:
    query: str
    by: str
    results: list[Match]
    query_in_index: bool

    def to_dict(self) -> dict:
        return {"query": self.query, "by": self.by, "query_in_index": self.query_in_index,
                "results": [asdict(m) for m in self.results]}


@dataclass(frozen=True)
class GroupMember:
    """A file of a group; ``tier``, ``score``, ``transform`` and ``distance`` say how it
    relates to the group's keeper (all empty for the keeper itself)."""

    path: str
    id: int
    width: int | None
    height: int | None
    size: int
    tier: str | None = None          # exact | near | edited | similar
    score: float | None = None       # 1.0 exact, 1 - bits/64 near, cosine edited / similar
    transform: str = ""              # how it differs from the keeper: "rotated 90°", "mirrored"
    distance: int | None = None      # pHash bits from the keeper (its best orientation)
    edit: str = ""                   # a checked copy's edit: "cropped to 72% of the area, ..."
    evidence: dict | None = None     # the pictures' check: verified, method, inliers, residual...


@dataclass(frozen=True)
class WeakestPair:
    """The two files of a group that are furthest apart, and how far."""

    a: str
    b: str
    score: float
    distance: int | None = None
    tier: str | None = None


@dataclass(frozen=True)
class DuplicateGroup:
    files: list[GroupMember]
    keeper: str = ""
    keeper_reason: str = ""
    weakest: WeakestPair | None = None
    tier: str | None = None          # the weakest tier of its members
    score: float | None = None       # the lowest score of a member in that tier

    @property
    def transforms(self) -> list[str]:
        return sorted({f.transform for f in self.files if f.transform})

    def to_dict(self) -> dict:
        return {"files": [asdict(m) for m in self.files], "keeper": self.keeper,
                "keeper_reason": self.keeper_reason,
                "weakest": None if self.weakest is None else asdict(self.weakest),
                "tier": self.tier, "score": self.score, "transform": self.transforms}


@dataclass(frozen=True)
class DuplicatesResult:
    by: str
    threshold: float
    groups: list[DuplicateGroup] = field(default_factory=list)
    thresholds: dict = field(default_factory=dict)
    tiers: list[str] = field(default_factory=list)
    # the pictures' checks: candidates, checked, copies, unchecked, seconds (tiered only)
    checks: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"by": self.by, "threshold": self.threshold, "thresholds": self.thresholds,
                "tiers": self.tiers, "checks": self.checks,
                "groups": [g.to_dict() for g in self.groups]}


def check_by(by: str) -> None:
    if by not in QUERY_KINDS:
        raise QueryError(f"unknown --by {by!r} (choose from {', '.join(QUERY_KINDS)})")


def stored_features(store: Store, path: str, by: str) -> np.ndarray | int | None:
    """The query's stored embedding (or hash) when it is indexed and unchanged, else None."""
    key = normalize_path(path)
    try:
        st = os.stat(key)
    except OSError as exc:
        raise QueryError(f"cannot read query image {path}: {exc.strerror}") from None
    row = store.asset(key)
    if not row or row["status"] != STATUS_OK or (row["size"], row["mtime_ns"]) != (
            st.st_size, st.st_mtime_ns):
        return None
    if by in HASH_NAMES:
        return None if row[by] is None else int(row[by])
    return store.embedding_of(row["id"])


def similar(store: Store, vectors: VectorIndex, path: str, *, k: int, by: str, cfg: Config,
            device: str = "auto", allowed: np.ndarray | None = None,
            featurise: Featurise | None = None) -> SimilarResult:
    """Top-k look-alikes of the image at ``path``, best first; only ids in ``allowed``
    (sorted) when given. A query outside the index (or changed since) is featurised by
    ``featurise(path)``, which makes its row the way the index made its rows."""
    check_by(by)
    if k < 1:
        raise QueryError("--k must be >= 1")
    feat = stored_features(store, path, by)
    inside = feat is not None
    if not inside:
        feat = _outside(path, by, featurise)
    still = by == "embedding" and featurise is not None and not is_video(path)
    found = search(store, vectors, feat, k=k + STILL_MARGIN if still else k, by=by,
                   device=device, allowed=allowed)
    if still and any(m.kind == "video" for m in found):    # a still: at its own moment
        from .videos import refine_stills

        found = refine_stills(store, found, path, np.asarray(feat), featurise, len(found))
    return SimilarResult(query=normalize_path(path), by=by, query_in_index=inside,
                         results=found[:k])


def similar_to(store: Store, vectors: VectorIndex, asset_id: int, *, k: int, by: str,
               device: str = "auto", allowed: np.ndarray | None = None) -> SimilarResult:
    """Top-k look-alikes of a file of the index, from what the index holds of it (its
    file need not be there, nor be read)."""
    check_by(by)
    row = store.assets_by_ids([int(asset_id)]).get(int(asset_id))
    if row is None or row["status"] != STATUS_OK:
        raise QueryError(f"no indexed file with id {asset_id}")
    feat = (store.embedding_of(int(asset_id)) if by == "embedding"
            else None if row[by] is None else int(row[by]))
    if feat is None:
        raise QueryError(f"{row['path']} has no {by} in the index")
    return SimilarResult(query=row["path"], by=by, query_in_index=True,
                         results=search(store, vectors, feat, k=k, by=by, device=device,
                                        allowed=allowed))


def search(store: Store, vectors: VectorIndex, feat: np.ndarray | int, *, k: int, by: str,
           device: str = "auto", allowed: np.ndarray | None = None) -> list[Match]:
    """The k nearest to a query's features (an embedding, or a hash), best first."""
    if k < 1:
        raise QueryError("--k must be >= 1")
    if by == "embedding":
        scores, ids = _filtered_search(vectors, np.asarray(feat), k, allowed)
        return _with_frames(store, np.asarray(feat), k, scores, ids, allowed)
    else:
        all_ids, hashes = store.hashes(by)
        if allowed is not None:                 # exact: the search runs on the allowed ones
            keep = np.isin(all_ids, allowed)
            all_ids, hashes = all_ids[keep], hashes[keep]
        gpu = kernel_device(device)
        dist, order = (hamming_topk(int(feat), hashes, k) if gpu is None
                       else cuda_hamming_topk(int(feat), hashes, k, gpu))
        rows = store.assets_by_ids(all_ids[order])
        matches = [Match(rows[int(i)]["path"], round(1.0 - int(d) / 64.0, 6), int(i), int(d))
                   for d, i in zip(dist, all_ids[order])]
    return matches


def _with_frames(store: Store, feat: np.ndarray, k: int, scores: np.ndarray, ids: np.ndarray,
                 allowed: np.ndarray | None) -> list[Match]:
    """The index's nearest files, and the videos with a frame as near (a still from a
    video finds the video, with the frame's time): each file once, at its best score."""
    best = {int(i): (float(s), None) for s, i in zip(scores, ids)}
    if store.frame_count():
        from .videos import frame_hits

        for vid, (s, t) in frame_hits(store, feat, k, allowed).items():
            if vid not in best or s >= best[vid][0]:
                best[vid] = (s, t)
    top = sorted(best, key=lambda i: (-best[i][0], i))[:k]
    rows = store.assets_by_ids(np.asarray(top, np.int64))
    return [Match(rows[i]["path"], round(best[i][0], 6), i,
                  kind="video" if rows[i].get("kind") == "video" else "image",
                  at=None if best[i][1] is None else round(best[i][1], 2))
            for i in top if i in rows]


def _outside(path: str, by: str, featurise: Featurise | None) -> np.ndarray | int:
    """The embedding (or hash) of a query image that is not in the index, made now."""
    if featurise is None:
        raise QueryError(f"{path} is not in the index (or changed since it was indexed)")
    row = featurise(normalize_path(path))
    if row.status != STATUS_OK:
        raise QueryError(f"cannot decode query image {path}: {row.error}")
    if by == "embedding":
        if row.embedding is None:
            raise QueryError(f"cannot featurise query image {path}: no embedding")
        return row.embedding
    return int(row.hashes[by])


def _filtered_search(vectors: VectorIndex, query: np.ndarray, k: int,
                     allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k among the allowed ids: searched wider until k of them are found (or all)."""
    if allowed is None:
        return vectors.search(query, k)
    if len(allowed) == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    want, total = k, max(vectors.count(), 1)
    while True:
        scores, ids = vectors.search(query, want)
        keep = np.isin(ids, allowed)
        if keep.sum() >= k or want >= total:
            return scores[keep][:k], ids[keep][:k]
        want = min(total, want * 8)


def check_tiers(text: str, what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TIERS]
    if bad or not names:
        raise QueryError(f"unknown {what} {', '.join(bad) or repr(text)} "
                         f"(choose from {', '.join(TIERS)})")
    return names


def duplicates(store: Store, vectors: VectorIndex, *, by: str, threshold: float | None,
               cfg: Config, device: str = "auto", keep: str | None = None,
               tiers: str | None = None, allowed: np.ndarray | None = None
               ) -> DuplicatesResult:
    """Groups in which every two files are within the threshold, each around a keeper
    (:func:`~.groups.linked_groups`); largest group first.

    ``by="tiered"`` (the default answer) joins four signals, each pair keeping its
    strongest tier: same bytes (exact), pHash within ``near_threshold`` in any of the 8
    orientations (near), embedding cosine (edited copy, similar). Otherwise one signal
    at one threshold.
    """
    if by != "tiered":
        check_by(by)
    check_threshold(by, threshold)
    apart, chosen = store.decision_constraints()     # what a person decided, as it holds
    rules = chosen_first(chosen, parse_keep(keep or cfg.query.keep))
    order_key = keeper_key(rules)
    q = cfg.query
    checks: dict = {}
    if by == "tiered":
        wanted = check_tiers(tiers or q.tiers, "tier")
        thr: float = int(q.near_threshold if threshold is None else threshold)
        edges = tiered_edges(store, vectors, q, wanted, device, near=int(thr), report=checks)
        thresholds = {"near": thr, "edited": q.edited_threshold}
        if "similar" in wanted:
            thresholds["similar"] = q.similar_threshold
    else:
        wanted = list(TIERS)
        thr = (float(q.embedding_threshold if threshold is None else threshold)
               if by == "embedding" else int(q.hash_threshold if threshold is None else threshold))
        edges = single_edges(store, vectors, by, thr, q, device)
        thresholds = {by: thr}
    if allowed is not None:                     # both files of a pair must match the filters
        edges = edges.within(allowed)
    edges = edges.apart(apart)                  # pairs declared "not duplicates" are none
    rows: dict[int, dict] = {}

    def rank_of(nodes: np.ndarray) -> np.ndarray:
        rows.update(store.assets_by_ids(nodes))
        order = sorted(range(len(nodes)), key=lambda k: order_key(rows[int(nodes[k])]))
        rank = np.empty(len(nodes), np.int64)
        rank[order] = np.arange(len(nodes))
        return rank

    out = [_group(rows, members.tolist(), pairs, edges, rules)
           for members, pairs in linked_groups(edges.a, edges.b, edges.closeness(), rank_of)]
    out.sort(key=lambda g: (-len(g.files), g.files[0].path))
    return DuplicatesResult(by=by, threshold=thr, groups=out, thresholds=thresholds,
                            tiers=wanted, checks=checks)


def _evidence(verdict, from_keeper: bool) -> tuple[str, dict | None]:
    """A checked pair's edit in words and its evidence, seen from the keeper."""
    if verdict is None:
        return "", None
    if hasattr(verdict, "describe"):                 # two videos aligned (.videos)
        return verdict.describe(bool(from_keeper)), verdict.to_dict()
    from .verify import describe_edit

    return describe_edit(verdict, bool(from_keeper)), verdict.to_dict()


def _group(rows: dict[int, dict], members: list[int], pairs: list[tuple[int, int, float]],
           edges: Edges, rules: list) -> DuplicateGroup:
    keeper_id = members[0]
    keeper = rows[keeper_id]
    files = []
    for i in members:
        r = rows[i]
        if i == keeper_id:
            files.append(GroupMember(r["path"], i, r["width"], r["height"], r["size"]))
            continue
        e = edges.find(keeper_id, i)
        orient = int(edges.orient[e])
        if edges.a[e] != keeper_id:                  # stored as keeper ≈ t(member)
            orient = ORIENT_INVERSE[orient]
        dist = int(edges.dist[e])
        verdict = edges.evidence.get((int(edges.a[e]), int(edges.b[e])))
        files.append(GroupMember(r["path"], i, r["width"], r["height"], r["size"],
                                 TIERS[edges.tier[e]], round(float(edges.score[e]), 6),
                                 ORIENTATIONS[orient][0], None if dist < 0 else dist,
                                 *_evidence(verdict, edges.a[e] == keeper_id)))
    files.sort(key=lambda m: m.path)
    runner_up = min((rows[i] for i in members[1:]), key=keeper_key(rules))
    x, y, _ = min(pairs, key=lambda p: (p[2], rows[p[0]]["path"], rows[p[1]]["path"]))
    x, y = sorted((x, y), key=lambda i: rows[i]["path"])
    e = edges.find(x, y)
    dist = int(edges.dist[e])
    weakest = WeakestPair(rows[x]["path"], rows[y]["path"], round(float(edges.score[e]), 6),
                          None if dist < 0 else dist, TIERS[edges.tier[e]])
    worst = max(TIERS.index(f.tier) for f in files if f.tier)
    score = min(f.score for f in files if f.tier == TIERS[worst])
    return DuplicateGroup(files, keeper["path"], keeper_reason(rules, keeper, runner_up),
                          weakest, TIERS[worst], score)
