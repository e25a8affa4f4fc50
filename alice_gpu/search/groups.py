"""Search, groups: near-duplicate groups as the connected components of a pair graph.

scipy's ``connected_components`` (C, linear in nodes + edges) replaces a
hand-written union-find; it is imported on first use, when there are pairs.
"""

from __future__ import annotations

import numpy as np


def connected_groups(a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """The groups of ids joined by the edges (a[k], b[k]); ids in no edge are in no group.

    Each group is a sorted array of ids; the groups come in no particular order.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if len(a) == 0:
        return []
    from scipy.sparse import coo_array
    from scipy.sparse.csgraph import connected_components

    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    n = len(nodes)
    graph = coo_array((np.ones(len(a), dtype=np.int8), (inverse[:len(a)], inverse[len(a):])),
                      shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")             # nodes are sorted: so is each group
    cuts = np.flatnonzero(np.diff(labels[order])) + 1
    return [nodes[part] for part in np.split(order, cuts)]
