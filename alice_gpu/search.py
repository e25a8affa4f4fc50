"""Stage 8, queries: ``similar`` (top-k look-alikes) and ``duplicates`` (groups).

A query image inside the index uses its stored features; one outside it (or
changed since indexing) is decoded and featurised on the fly with the same
code as the pipeline.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .config import HASH_NAMES, QUERY_KINDS, Config
from .decoding import STATUS_OK, decode_path
from .discovery import normalize_path
from .device import cuda_hamming_pairs, cuda_hamming_topk, cuda_kernels_usable
from .errors import QueryError
from .features import FeatureExtractor
from .store import Store
from .vectors import VectorIndex, hamming_pairs, hamming_topk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    """One result: ``score`` is cosine for embeddings, 1 - distance/64 for hashes."""

    path: str
    score: float
    id: int
    distance: int | None = None


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
    path: str
    id: int
    width: int | None
    height: int | None
    size: int


@dataclass(frozen=True)
class DuplicateGroup:
    files: list[GroupMember]


@dataclass(frozen=True)
class DuplicatesResult:
    by: str
    threshold: float
    groups: list[DuplicateGroup] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"by": self.by, "threshold": self.threshold,
                "groups": [{"files": [asdict(m) for m in g.files]} for g in self.groups]}


def _check_by(by: str) -> None:
    if by not in QUERY_KINDS:
        raise QueryError(f"unknown --by {by!r} (choose from {', '.join(QUERY_KINDS)})")


def query_features(store: Store, path: str, by: str, cfg: Config, device: torch.device
                   ) -> tuple[np.ndarray | int, bool]:
    """The query's embedding (or hash), from the store when it is indexed and unchanged."""
    key = normalize_path(path)
    try:
        st = os.stat(key)
    except OSError as exc:
        raise QueryError(f"cannot read query image {path}: {exc.strerror}") from None
    row = store.asset(key)
    if row and row["status"] == STATUS_OK and (row["size"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
        if by in HASH_NAMES and row[by] is not None:
            return int(row[by]), True
        if by == "embedding":
            vec = store.embedding_of(row["id"])
            if vec is not None:
                return vec, True
    dec = decode_path(key, cfg.decode.working_size)
    if dec.status != STATUS_OK:
        raise QueryError(f"cannot decode query image {path}: {dec.error}")
    from .device import resolve_precision

    model = store.model if by == "embedding" else None
    extractor = FeatureExtractor.create(device, model,
                                        precision=resolve_precision(device, cfg.features.precision))
    feats = extractor.extract([dec.pixels], embed=model is not None)[0]
    if feats.error is not None:
        raise QueryError(f"cannot featurise query image {path}: {feats.error}")
    if by == "embedding":
        return feats.embedding, False
    return int(feats.hashes[by]), False


def similar(store: Store, vectors: VectorIndex, path: str, *, k: int, by: str, cfg: Config,
            device: torch.device) -> SimilarResult:
    _check_by(by)
    if k < 1:
        raise QueryError("--k must be >= 1")
    feat, inside = query_features(store, path, by, cfg, device)
    if by == "embedding":
        scores, ids = vectors.search(np.asarray(feat), k)
        rows = store.assets_by_ids(ids)
        matches = [Match(rows[i]["path"], round(float(s), 6), int(i))
                   for s, i in zip(scores, ids) if int(i) in rows]
    else:
        all_ids, hashes = store.hashes(by)
        if cuda_kernels_usable(device):
            dist, order = cuda_hamming_topk(int(feat), hashes, k, device)
        else:
            dist, order = hamming_topk(int(feat), hashes, k)
        rows = store.assets_by_ids(all_ids[order])
        matches = [Match(rows[int(i)]["path"], round(1.0 - int(d) / 64.0, 6), int(i), int(d))
                   for d, i in zip(dist, all_ids[order])]
    return SimilarResult(query=normalize_path(path), by=by, results=matches, query_in_index=inside)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def duplicates(store: Store, vectors: VectorIndex, *, by: str, threshold: float | None,
               cfg: Config, device: torch.device | None = None) -> DuplicatesResult:
    """Connected components of the "within threshold" graph, largest group first."""
    _check_by(by)
    if by == "embedding":
        thr = float(cfg.query.embedding_threshold if threshold is None else threshold)
        a, b, _ = vectors.range_pairs(thr)
    else:
        thr = int(cfg.query.hash_threshold if threshold is None else threshold)
        if thr != threshold and threshold is not None:
            raise QueryError("--threshold for hashes is a whole number of bits (0..64)")
        ids, hashes = store.hashes(by)
        if cuda_kernels_usable(device):
            i, j, _ = cuda_hamming_pairs(hashes, thr, device)
        else:
            i, j, _ = hamming_pairs(hashes, thr)
        a, b = ids[i], ids[j]
    uf = _UnionFind()
    for x, y in zip(a.tolist(), b.tolist()):
        uf.union(x, y)
    members: dict[int, list[int]] = {}
    for x in uf.parent:
        members.setdefault(uf.find(x), []).append(x)
    rows = store.assets_by_ids(uf.parent.keys())
    groups = []
    for ids_ in members.values():
        files = sorted((GroupMember(rows[i]["path"], i, rows[i]["width"], rows[i]["height"],
                                    rows[i]["size"]) for i in ids_), key=lambda m: m.path)
        groups.append(DuplicateGroup(files))
    groups.sort(key=lambda g: (-len(g.files), g.files[0].path))
    return DuplicatesResult(by=by, threshold=thr, groups=groups)
