"""Search, evaluate: how well ``duplicates`` and ``similar`` agree with a ground truth.

The ground truth is a CSV with ``file`` and ``group`` columns (and optionally
``transform``): files of one group show the same picture. ``duplicates`` is
scored on pairs (precision, recall, F1 of "these two files are in one group");
``similar`` on rankings: the N-S score (same-group files in the top 4, the query
included, as UKBench defines it) and mAP (average precision over the rest of the
group, the query left out). With a ``transform`` column, every figure is also
given per transform: the pairs and queries that involve a file so transformed.

With a ``relation`` column (``copy`` or ``lookalike``), ``duplicates`` is also scored
on provenance: two files of one group are a *copy* pair when both are labelled
``copy`` (the same capture), and a *look-alike* pair when either is labelled
``lookalike`` (another capture of the same subject). Copies get their own precision
and recall, and the look-alike pairs that ``duplicates`` groups together are counted:
each is a copy claimed where there is none.
"""

from __future__ import annotations

import csv
import itertools
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from ..discover import normalize_path
from ..errors import QueryError

NS_TOP = 4           # UKBench's N-S score counts the top 4
MAP_DEPTH = 100      # results ranked for mAP


@dataclass(frozen=True)
class Truth:
    group: dict[str, str]                    # path -> group
    transform: dict[str, str]                # path -> transform ("" when none)
    relation: dict[str, str] = field(default_factory=dict)   # path -> copy | lookalike

    @property
    def files(self) -> list[str]:
        return sorted(self.group)


RELATIONS = ("copy", "lookalike")


def read_truth(csv_path: str | os.PathLike[str], root: str | os.PathLike[str] | None = None
               ) -> Truth:
    """The CSV's files (relative paths are relative to ``root``, by default the CSV's
    folder)."""
    base = os.path.abspath(root) if root is not None else \
        os.path.dirname(os.path.abspath(csv_path))
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise QueryError(f"cannot read ground truth {csv_path}: {exc}") from None
    if not rows or not {"file", "group"} <= set(rows[0]):
        raise QueryError(f"{csv_path} needs the columns file,group (and optionally transform)")
    group, transform, relation = {}, {}, {}
    labelled = "relation" in rows[0]
    for n, row in enumerate(rows, 2):
        if not row["file"] or not row["group"]:
            raise QueryError(f"{csv_path} line {n}: empty file or group")
        path = normalize_path(os.path.join(base, row["file"]))
        if not os.path.isfile(path):
            raise QueryError(f"{csv_path} line {n}: no such file {path}")
        group[path] = row["group"]
        transform[path] = (row.get("transform") or "").strip()
        if labelled:
            rel = (row.get("relation") or "").strip()
            if rel not in RELATIONS:
                raise QueryError(f"{csv_path} line {n}: relation must be copy or lookalike, "
                                 f"not {rel!r}")
            relation[path] = rel
    return Truth(group, transform, relation)


@dataclass
class PairScore:
    true_pairs: int = 0
    predicted_pairs: int = 0
    correct_pairs: int = 0

    def figures(self) -> dict:
        p = self.correct_pairs / self.predicted_pairs if self.predicted_pairs else 1.0
        r = self.correct_pairs / self.true_pairs if self.true_pairs else 1.0
        return {**asdict(self), "precision": round(p, 4), "recall": round(r, 4),
                "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0}


@dataclass
class RankScore:
    queries: int = 0
    ns_sum: float = 0.0
    ap_sum: float = 0.0

    def figures(self) -> dict:
        n = self.queries
        return {"queries": n, "ns_score": round(self.ns_sum / n, 4) if n else None,
                "map": round(self.ap_sum / n, 4) if n else None}


@dataclass
class Evaluation:
    files: int
    groups: int
    duplicates: dict
    similar: dict
    per_transform: dict[str, dict] = field(default_factory=dict)
    relations: dict | None = None       # with a relation column: copies and look-alikes

    def to_dict(self) -> dict:
        return asdict(self)


def _pair_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _true_pairs(truth: Truth) -> set[tuple[str, str]]:
    by_group: dict[str, list[str]] = {}
    for path in truth.files:
        by_group.setdefault(truth.group[path], []).append(path)
    return {_pair_key(a, b) for members in by_group.values()
            for a, b in itertools.combinations(members, 2)}


def _predicted_pairs(truth: Truth, predicted: Iterable[Iterable[str]]) -> set[tuple[str, str]]:
    pred = set()
    for files in predicted:
        inside = sorted(files)
        pred |= {(a, b) for a, b in itertools.combinations(inside, 2)
                 if a in truth.group or b in truth.group}
    return pred


def score_relations(truth: Truth, pred: set[tuple[str, str]]) -> dict | None:
    """Copies' precision and recall, and the look-alike pairs called duplicates (None
    without a relation column)."""
    if not truth.relation:
        return None
    true = _true_pairs(truth)
    copies = {p for p in true if truth.relation[p[0]] == truth.relation[p[1]] == "copy"}
    lookalikes = true - copies

    def figures(keep) -> dict:
        c, lk, p = ({x for x in s if keep(x)} for s in (copies, lookalikes, pred))
        return {"copies": PairScore(len(c), len(p), len(p & c)).figures(),
                "lookalikes": {"pairs": len(lk), "called_duplicates": len(p & lk)}}

    def tags(pair: tuple[str, str]) -> set[str]:
        return {truth.transform.get(pair[0], ""), truth.transform.get(pair[1], "")} - {""}

    names = sorted(set().union(*(tags(x) for x in true | pred)))
    return {**figures(lambda x: True),
            "per_transform": {t: figures(lambda x, t=t: t in tags(x)) for t in names}}


def score_pairs(truth: Truth, predicted: Iterable[Iterable[str]] | set[tuple[str, str]]
                ) -> dict[str, PairScore]:
    """Pairwise scores, overall ("") and per transform."""
    true = _true_pairs(truth)
    pred = predicted if isinstance(predicted, set) else _predicted_pairs(truth, predicted)
    out: dict[str, PairScore] = {}
    for kind, pairs in (("true_pairs", true), ("predicted_pairs", pred),
                        ("correct_pairs", true & pred)):
        for a, b in pairs:
            tags = {""} | {truth.transform.get(a, ""), truth.transform.get(b, "")}
            for tag in tags:
                score = out.setdefault(tag, PairScore())
                setattr(score, kind, getattr(score, kind) + 1)
    out.setdefault("", PairScore())
    return out


def score_rankings(truth: Truth, ranked: Callable[[str], list[str]]) -> dict[str, RankScore]:
    """N-S and mAP of ``ranked(query)`` (paths, best first), overall and per transform."""
    out: dict[str, RankScore] = {"": RankScore()}
    for q in truth.files:
        relevant = {p for p in truth.files if p != q and truth.group[p] == truth.group[q]}
        if not relevant:
            continue                               # a singleton: nothing to find
        results = ranked(q)
        ns = sum(truth.group.get(p) == truth.group[q] for p in results[:NS_TOP])
        hits, precisions = 0, []
        for rank, p in enumerate((p for p in results if p != q), 1):
            if p in relevant:
                hits += 1
                precisions.append(hits / rank)
        ap = sum(precisions) / len(relevant)
        for tag in {"", truth.transform.get(q, "")}:
            score = out.setdefault(tag, RankScore())
            score.queries += 1
            score.ns_sum += ns
            score.ap_sum += ap
    return out


def evaluate(truth: Truth, groups: Iterable[Iterable[str]], ranked: Callable[[str], list[str]],
             duplicates_meta: dict, similar_meta: dict) -> Evaluation:
    pred = _predicted_pairs(truth, groups)
    pairs = score_pairs(truth, pred)
    ranks = score_rankings(truth, ranked)
    tags = sorted((set(pairs) | set(ranks)) - {""})
    return Evaluation(
        files=len(truth.group), groups=len(set(truth.group.values())),
        duplicates={**duplicates_meta, **pairs[""].figures()},
        similar={**similar_meta, **ranks[""].figures()},
        per_transform={t: {"duplicates": pairs.get(t, PairScore()).figures(),
                           "similar": ranks.get(t, RankScore()).figures()} for t in tags},
        relations=score_relations(truth, pred))
