"""Sink strongly connected components of the choice digraph (Top Covering and PAC-Top-Cover).

A sink SCC is a strongly connected component with no edge leaving it: a set closed under
choice. Top Covering removes the sink SCCs of the digraph "i -> j iff j in B_i", recomputes
the choice sets on what remains, and repeats.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def sink_labels(n_nodes: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Label every node with its sink SCC (0, 1, ...) or -1 if its SCC has an outgoing edge.

    ``src[e] -> dst[e]`` are the edges (self-loops are allowed and ignored). Sink SCCs are
    numbered in order of their smallest node.
    """
    import scipy.sparse as sp  # imported here: keeps `hedonic --help` fast
    from scipy.sparse.csgraph import connected_components

    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    graph = sp.csr_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n_nodes, n_nodes))
    _, comp = connected_components(graph, directed=True, connection="strong")
    leaves = comp[src] != comp[dst]
    is_sink = np.ones(comp.max() + 1 if n_nodes else 0, dtype=bool)
    is_sink[comp[src[leaves]]] = False
    # renumber the sink components by their smallest node
    first = np.full(is_sink.size, n_nodes, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(n_nodes))
    sinks = np.flatnonzero(is_sink)
    new_id = np.full(is_sink.size, -1, dtype=np.int64)
    new_id[sinks[np.argsort(first[sinks])]] = np.arange(sinks.size)
    return new_id[comp]


def groups_of(labels: np.ndarray, ids: np.ndarray | None = None) -> list[np.ndarray]:
    """Members of each label in increasing label order (``ids[node]`` if given), each sorted.

    Nodes labelled -1 are skipped.
    """
    labels = np.asarray(labels)
    ids = np.arange(labels.size) if ids is None else np.asarray(ids)
    keep = labels >= 0
    lab, idk = labels[keep], ids[keep]
    if lab.size == 0:
        return []
    order = np.lexsort((idk, lab))
    return np.split(idk[order], np.flatnonzero(np.diff(lab[order])) + 1)


def sink_sccs(adjacency: Any) -> list[np.ndarray]:
    """The sink SCCs of a digraph given as an adjacency matrix (dense or scipy sparse).

    ``adjacency[i, j] != 0`` means an edge i -> j. Returns the node sets, each sorted, in order of
    their smallest node. Removing them and calling this again on the rest is one Top Covering
    round.
    """
    import scipy.sparse as sp

    adj = sp.coo_matrix(adjacency)
    if adj.shape[0] != adj.shape[1]:
        raise ValueError(f"adjacency must be square, got shape {adj.shape}")
    nz = adj.data != 0
    return groups_of(sink_labels(adj.shape[0], adj.row[nz], adj.col[nz]))
