"""Search, groups: near-duplicate groups from a graph of pairs within a threshold.

``linked_groups`` (what ``duplicates`` answers): complete linkage around a keeper,
so a group never chains.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def linked_groups(a: np.ndarray, b: np.ndarray, closeness: np.ndarray,
                  rank_of: Callable[[np.ndarray], np.ndarray]
                  ) -> list[tuple[np.ndarray, list[tuple[int, int, float]]]]:
    """Groups in which every two files are within the threshold (complete linkage).

    ``(a[k], b[k])`` are the pairs within the threshold, ``closeness[k]`` how close
    (higher is closer); ``rank_of(ids)`` ranks the files that appear in a pair as
    keepers (lower is better, no ties). The best-ranked file not yet grouped starts a group
    as its keeper; its neighbours join, closest first, when they are within the
    threshold of every file already in it. So A~B and B~C never put A and C
    together unless A~C, and the answer is the same on every run. Returns, per
    group (keeper first), its ids and every pair inside it.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if len(a) == 0:
        return []
    from scipy.sparse import csr_array

    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    rank = np.asarray(rank_of(nodes))
    n, m = len(nodes), len(a)
    rows = np.concatenate([inverse[:m], inverse[m:]])
    cols = np.concatenate([inverse[m:], inverse[:m]])
    graph = csr_array((np.concatenate([closeness, closeness]).astype(np.float64), (rows, cols)),
                      shape=(n, n))
    graph.sum_duplicates()
    indptr, indices, data = graph.indptr, graph.indices, graph.data
    taken = np.zeros(n, bool)
    out = []
    for k in np.argsort(rank, kind="stable").tolist():
        if taken[k]:
            continue
        nbr, close = indices[indptr[k]:indptr[k + 1]], data[indptr[k]:indptr[k + 1]]
        free = ~taken[nbr]
        nbr, close = nbr[free], close[free]
        if len(nbr) == 0:
            continue
        members, pairs = [k], []
        for c in nbr[np.lexsort((rank[nbr], -close))].tolist():
            near = dict(zip(indices[indptr[c]:indptr[c + 1]].tolist(),
                            data[indptr[c]:indptr[c + 1]].tolist()))
            if all(mbr in near for mbr in members):
                pairs += [(mbr, c, near[mbr]) for mbr in members]
                members.append(c)
        if len(members) > 1:
            taken[members] = True
            out.append((nodes[members], [(int(nodes[x]), int(nodes[y]), s) for x, y, s in pairs]))
    return out
