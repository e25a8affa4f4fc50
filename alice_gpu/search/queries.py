"""Search, queries: ``similar`` (top-k look-alikes) and ``duplicates`` (groups).

A query image inside the index uses its stored features; one outside it (or
changed since indexing) is decoded and featurised on the fly with the same
code as the pipeline. Only that case imports torch: hash searches run on
numpy / FAISS or, on a GPU, on our CUDA kernels through CuPy.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ..config import HASH_NAMES, QUERY_KINDS, Config, check_threshold
from ..decode import decode_path
from ..discover import normalize_path
from ..errors import QueryError
from ..gpu.kernels import cuda_hamming_pairs, cuda_hamming_topk, kernel_device
from ..records import STATUS_OK
from ..store import Store
from .groups import linked_groups
from .keep import keeper_key, keeper_reason, parse_keep
from .hamming import hamming_pairs, hamming_topk
from .vectors import VectorIndex

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
class WeakestPair:
    """The two files of a group that are furthest apart, and how far."""

    a: str
    b: str
    score: float
    distance: int | None = None


@dataclass(frozen=True)
class DuplicateGroup:
    files: list[GroupMember]
    keeper: str = ""
    keeper_reason: str = ""
    weakest: WeakestPair | None = None

    def to_dict(self) -> dict:
        return {"files": [asdict(m) for m in self.files], "keeper": self.keeper,
                "keeper_reason": self.keeper_reason,
                "weakest": None if self.weakest is None else asdict(self.weakest)}


@dataclass(frozen=True)
class DuplicatesResult:
    by: str
    threshold: float
    groups: list[DuplicateGroup] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"by": self.by, "threshold": self.threshold,
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


def computed_features(store: Store, path: str, by: str, cfg: Config, device: str
                      ) -> np.ndarray | int:
    """The query's embedding (or hash), decoded and featurised now (this imports torch)."""
    from ..features.extractor import FeatureExtractor
    from ..gpu.devices import resolve_precision, select_device

    dec = decode_path(normalize_path(path), cfg.decode.working_size)
    if dec.status != STATUS_OK:
        raise QueryError(f"cannot decode query image {path}: {dec.error}")
    dev = select_device(device)
    model = store.model if by == "embedding" else None
    extractor = FeatureExtractor.create(dev, model,
                                        precision=resolve_precision(dev, cfg.features.precision))
    feats = extractor.extract([dec.pixels], embed=model is not None)[0]
    if feats.error is not None:
        raise QueryError(f"cannot featurise query image {path}: {feats.error}")
    return feats.embedding if by == "embedding" else int(feats.hashes[by])


def similar(store: Store, vectors: VectorIndex, path: str, *, k: int, by: str, cfg: Config,
            device: str = "auto") -> SimilarResult:
    """Top-k look-alikes of the image at ``path``, best first."""
    check_by(by)
    if k < 1:
        raise QueryError("--k must be >= 1")
    feat = stored_features(store, path, by)
    inside = feat is not None
    if not inside:
        feat = computed_features(store, path, by, cfg, device)
    if by == "embedding":
        scores, ids = vectors.search(np.asarray(feat), k)
        rows = store.assets_by_ids(ids)
        matches = [Match(rows[i]["path"], round(float(s), 6), int(i))
                   for s, i in zip(scores, ids) if int(i) in rows]
    else:
        all_ids, hashes = store.hashes(by)
        gpu = kernel_device(device)
        dist, order = (hamming_topk(int(feat), hashes, k) if gpu is None
                       else cuda_hamming_topk(int(feat), hashes, k, gpu))
        rows = store.assets_by_ids(all_ids[order])
        matches = [Match(rows[int(i)]["path"], round(1.0 - int(d) / 64.0, 6), int(i), int(d))
                   for d, i in zip(dist, all_ids[order])]
    return SimilarResult(query=normalize_path(path), by=by, results=matches, query_in_index=inside)


def _pairs(store: Store, vectors: VectorIndex, by: str, thr: float, device: str
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair within the threshold, (id_a, id_b, closeness): higher is closer
    (cosine for embeddings, minus the Hamming distance for hashes)."""
    gpu = kernel_device(device)
    if by == "embedding":
        if gpu is None:
            return vectors.range_pairs(thr)         # exact when flat, else the IVF join
        import torch                                # exact: blocked brute force on the GPU

        from ..gpu.blocked import cosine_pairs

        return cosine_pairs(store.iter_embeddings(), thr, torch.device(f"cuda:{gpu}"),
                            block=16384)
    ids, hashes = store.hashes(by)
    i, j, d = (hamming_pairs(hashes, int(thr)) if gpu is None
               else cuda_hamming_pairs(hashes, int(thr), gpu))
    return ids[i], ids[j], -d.astype(np.float64)


def duplicates(store: Store, vectors: VectorIndex, *, by: str, threshold: float | None,
               cfg: Config, device: str = "auto", keep: str | None = None) -> DuplicatesResult:
    """Groups in which every two files are within the threshold, each around a keeper
    (:func:`~.groups.linked_groups`); largest group first."""
    check_by(by)
    check_threshold(by, threshold)
    rules = parse_keep(keep or cfg.query.keep)
    order_key = keeper_key(rules)
    thr: float = (float(cfg.query.embedding_threshold if threshold is None else threshold)
                  if by == "embedding" else
                  int(cfg.query.hash_threshold if threshold is None else threshold))
    a, b, close = _pairs(store, vectors, by, thr, device)
    rows: dict[int, dict] = {}

    def rank_of(nodes: np.ndarray) -> np.ndarray:
        rows.update(store.assets_by_ids(nodes))
        order = sorted(range(len(nodes)), key=lambda k: order_key(rows[int(nodes[k])]))
        rank = np.empty(len(nodes), np.int64)
        rank[order] = np.arange(len(nodes))
        return rank

    out = [_group(rows, members.tolist(), pairs, by, rules)
           for members, pairs in linked_groups(a, b, close, rank_of)]
    out.sort(key=lambda g: (-len(g.files), g.files[0].path))
    return DuplicatesResult(by=by, threshold=thr, groups=out)


def _group(rows: dict[int, dict], members: list[int], pairs: list[tuple[int, int, float]],
           by: str, rules: list) -> DuplicateGroup:
    files = sorted((GroupMember(rows[i]["path"], i, rows[i]["width"], rows[i]["height"],
                                rows[i]["size"]) for i in members), key=lambda m: m.path)
    keeper = rows[members[0]]
    runner_up = min((rows[i] for i in members[1:]), key=keeper_key(rules))
    x, y, close = min(pairs, key=lambda p: (p[2], rows[p[0]]["path"], rows[p[1]]["path"]))
    x, y = sorted((x, y), key=lambda i: rows[i]["path"])
    if by == "embedding":
        weakest = WeakestPair(rows[x]["path"], rows[y]["path"], round(float(close), 6))
    else:
        weakest = WeakestPair(rows[x]["path"], rows[y]["path"],
                              round(1.0 + float(close) / 64.0, 6), int(-close))
    return DuplicateGroup(files, keeper["path"], keeper_reason(rules, keeper, runner_up), weakest)
