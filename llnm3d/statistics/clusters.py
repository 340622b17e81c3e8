"""Cluster statistics of voxel maps on the atlas grid: TFCE and cluster mass.

Both follow nilearn's ``permuted_ols`` (``tfce=True``, ``threshold=``), which follows fslmaths
and FSL randomise, and give the same values on the same map (tests/test_clusters.py):

TFCE (threshold-free cluster enhancement, Smith & Nichols 2009) at voxel ``v`` with statistic
``t_v > 0`` is ``sum_k [t_v >= h_k] * e_k(v) ** E * h_k ** H`` over the thresholds
``h_k = k * max|t| / steps`` (k = 1..steps), where ``e_k(v)`` is the number of voxels of the
cluster (connected set of voxels with ``t >= h_k``) that holds ``v``. Two-sided, negative
voxels get ``-TFCE(-t)`` on the same thresholds. As in fslmaths the sum is not multiplied by
the step, so TFCE values are comparable between tools but not between step counts.

Cluster mass at a cluster-forming threshold ``t_c``: clusters of voxels with ``t > t_c`` and,
separately, ``t < -t_c``; a cluster's mass is ``sum(|t| - t_c)`` over its voxels.

Clusters are connected sets on the grid of the tested voxels (6-connectivity: faces; 26: faces,
edges and corners); untested voxels separate clusters. TFCE is computed exactly for the
discrete thresholds in one pass: the voxel graph's edges enter in decreasing order of the
threshold level at which both ends are present (Kruskal with union-find), which builds the
tree of clusters; a tree node's contribution is its size ** E times the sum of h_k ** H over
the levels it lives, and a voxel's TFCE is the sum along its path to the root. Positive and
negative voxels never share a cluster, so both signs are done in the same pass. This costs
about as much as one ``scipy.ndimage.label`` of the map, where the direct method labels the
map once per threshold (100 times per sign).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numba
import numpy as np

CONNECTIVITIES = (6, 26)
TFCE_E = 0.5
TFCE_H = 2.0
TFCE_STEPS = 100


@dataclass(frozen=True, eq=False)
class ClusterStatistics:
    """The cluster statistics of a permutation test, besides max ``|t|``.

    Attributes
    ----------
    edges : ndarray of int32, shape (m, 2)
        The voxel graph of the tested voxels (:func:`voxel_edges`).
    tfce : bool
        Compute TFCE (``e``, ``h``, ``steps``).
    mass_threshold : float or None
        Cluster-forming threshold on ``|t|`` of the cluster mass (None: no cluster mass).
    """

    edges: np.ndarray
    tfce: bool = True
    mass_threshold: float | None = None
    e: float = TFCE_E
    h: float = TFCE_H
    steps: int = TFCE_STEPS

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the statistics, as keys of :meth:`maxima` and :meth:`observed`."""
        return (("tfce",) if self.tfce else ()) + (
            ("cluster_mass",) if self.mass_threshold is not None else ())

    def maxima(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Largest ``|statistic|`` of each t-map, one per row of ``rows`` (p, n_voxels;
        float32 or float64, computed in that precision)."""
        rows = np.nan_to_num(np.ascontiguousarray(rows))
        out = {}
        if self.tfce:
            out["tfce"] = _max_tfce_rows(rows, self.edges,
                                         _extent_powers(rows.shape[1], self.e), self.h,
                                         self.steps)
        if self.mass_threshold is not None:
            out["cluster_mass"] = _max_mass_rows(rows, self.edges, float(self.mass_threshold))
        return out

    def observed(self, stat: np.ndarray) -> dict[str, np.ndarray]:
        """Each statistic at each voxel of the t-map ``stat`` (n_voxels,): TFCE (signed like
        ``t``), and the mass of the voxel's cluster (signed like its t, 0 outside clusters)."""
        out = {}
        if self.tfce:
            out["tfce"] = tfce(stat, self.edges, self.e, self.h, self.steps)
        if self.mass_threshold is not None:
            cluster, mass = cluster_masses(stat, self.edges, self.mass_threshold)
            inside = cluster >= 0
            values = np.zeros(len(cluster))
            values[inside] = mass[cluster[inside]] * np.sign(stat[inside])
            out["cluster_mass"] = values
        return out


def voxel_edges(ijk: np.ndarray, connectivity: int = 6) -> np.ndarray:
    """Pairs of neighbouring voxels among ``ijk``.

    Parameters
    ----------
    ijk : ndarray of int, shape (n, 3)
        Voxel indices on a grid (any axis order; distinct rows).
    connectivity : {6, 26}
        Neighbours share a face (6) or a face, edge or corner (26).

    Returns
    -------
    ndarray of int32, shape (m, 2)
        Each neighbouring pair once, as row positions into ``ijk``.
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 6 or 26, got {connectivity!r}")
    ijk = np.asarray(ijk, np.int64)
    if not len(ijk):
        return np.zeros((0, 2), np.int32)
    low = ijk.min(axis=0) - 1
    shape = ijk.max(axis=0) - low + 2
    flat = np.ravel_multi_index((ijk - low).T, shape)
    order = np.argsort(flat)
    sorted_flat = flat[order]
    offsets = [d for d in product((-1, 0, 1), repeat=3) if d > (0, 0, 0)]
    if connectivity == 6:
        offsets = [d for d in offsets if sum(map(abs, d)) == 1]
    pairs = []
    for offset in offsets:
        neighbour = np.ravel_multi_index((ijk - low + offset).T, shape)
        found = np.searchsorted(sorted_flat, neighbour)
        found = np.minimum(found, len(flat) - 1)
        hit = sorted_flat[found] == neighbour
        pairs.append(np.stack([np.flatnonzero(hit), order[found[hit]]], axis=1))
    return np.concatenate(pairs).astype(np.int32)


def tfce_thresholds(stat: np.ndarray, steps: int = TFCE_STEPS) -> np.ndarray:
    """The TFCE thresholds of a map: ``steps`` equal steps up to its largest ``|t|``."""
    top = float(np.nanmax(np.abs(stat))) if np.isfinite(stat).any() else 0.0
    return np.linspace(0.0, top, steps + 1)[1:]


def tfce(stat: np.ndarray, edges: np.ndarray, e: float = TFCE_E, h: float = TFCE_H,
         steps: int = TFCE_STEPS) -> np.ndarray:
    """Two-sided TFCE of a voxel map (signed like the map; NaN counts as 0).

    Parameters
    ----------
    stat : ndarray, shape (n,)
        Statistic at each tested voxel (a t-map).
    edges : ndarray of int32, shape (m, 2)
        Its voxel graph (:func:`voxel_edges`).
    e, h : float
        Extent and height exponents (0.5 and 2, the usual defaults).
    steps : int
        Number of thresholds (100, as fslmaths and nilearn).

    Returns
    -------
    ndarray of float64, shape (n,)
    """
    stat = np.nan_to_num(np.asarray(stat, np.float64))
    thresholds = tfce_thresholds(stat, steps)
    out = np.zeros(len(stat))
    if thresholds[-1] > 0:
        _tfce(stat, edges, thresholds, _extent_powers(len(stat), e), h, out)
    return out


def cluster_masses(stat: np.ndarray, edges: np.ndarray, threshold: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Clusters beyond ``+-threshold`` and their masses.

    Returns
    -------
    cluster : ndarray of int64, shape (n,)
        Cluster number of each voxel (0, 1, ... over positive then negative clusters), -1
        where ``|stat| <= threshold``.
    mass : ndarray of float64, shape (n_clusters,)
        ``sum(|stat| - threshold)`` over each cluster's voxels.
    """
    stat = np.nan_to_num(np.asarray(stat, np.float64))
    return _clusters(stat, edges, float(threshold))


def _extent_powers(n: int, e: float) -> np.ndarray:
    """``size ** e`` for cluster sizes 0 .. n (a table: a power per tree node is slow)."""
    return np.arange(n + 1, dtype=np.float64) ** e



@numba.njit(cache=True)
def _find(parent, i):
    while parent[i] != i:  # path halving
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True)
def _levels(stat, thresholds):
    """The number of thresholds each ``|stat|`` reaches (thresholds equally spaced from their
    step: a guess from the step, corrected against the thresholds themselves)."""
    steps = len(thresholds)
    scale = steps / thresholds[-1]
    level = np.empty(len(stat), np.int32)
    for i in range(len(stat)):
        v = abs(stat[i])
        k = min(max(int(v * scale), 0), steps)
        while k < steps and thresholds[k] <= v:
            k += 1
        while k > 0 and thresholds[k - 1] > v:
            k -= 1
        level[i] = k
    return level


@numba.njit(cache=True)
def _tfce(stat, edges, thresholds, extent_power, h, out):
    """Two-sided TFCE of ``stat`` written to ``out`` (skipped when ``out`` is empty, as the
    permutations need only the maximum); returns the largest ``|TFCE|``. Arrays are int32
    and allocated without zero-filling: this runs once per permutation, both cores at once,
    and memory traffic was half its time."""
    n = len(stat)
    steps = len(thresholds)
    # Level of a voxel: the number of thresholds its |t| reaches (it is in the map of its
    # sign at levels 0 .. level - 1); of an edge: the lower of its ends' levels, 0 when the
    # ends differ in sign.
    level = _levels(stat, thresholds)
    cumulative = np.empty(steps + 1)
    cumulative[0] = 0.0
    for k in range(steps):
        cumulative[k + 1] = cumulative[k] + thresholds[k] ** h
    edge_level = np.empty(len(edges), np.int32)
    counts = np.zeros(steps + 2, np.int64)
    for m in range(len(edges)):
        a, b = edges[m, 0], edges[m, 1]
        k = min(level[a], level[b]) if (stat[a] > 0) == (stat[b] > 0) else 0
        edge_level[m] = k
        counts[k] += 1
    # Edges by decreasing level (a counting sort: levels are 0 .. steps).
    start = np.zeros(steps + 2, np.int64)
    for k in range(steps, 0, -1):
        start[k - 1] = start[k] + counts[k]
    order = np.empty(start[0], np.int32)
    for m in range(len(edges)):
        k = edge_level[m]
        if k > 0:
            order[start[k]] = m
            start[k] += 1
    # The cluster tree: voxel i is leaf node i; merges add nodes n, n + 1, ...
    size = np.empty(2 * n, np.int32)
    born = np.empty(2 * n, np.int32)
    up = np.empty(2 * n, np.int32)
    parent = np.empty(n, np.int32)
    node_of = np.empty(n, np.int32)
    for i in range(n):
        size[i], born[i], up[i], parent[i], node_of[i] = 1, level[i], -1, i, i
    nodes = n
    for m in order:
        a = _find(parent, edges[m, 0])
        b = _find(parent, edges[m, 1])
        if a == b:
            continue
        merged = nodes
        nodes += 1
        node_a, node_b = node_of[a], node_of[b]
        up[node_a] = merged
        up[node_b] = merged
        up[merged] = -1
        size[merged] = size[node_a] + size[node_b]
        born[merged] = edge_level[m]
        if size[node_a] < size[node_b]:  # union by size keeps the trees shallow
            a, b = b, a
        parent[b] = a
        node_of[a] = merged
    # Parents have larger numbers than their children: sum the contributions root first.
    total = np.empty(nodes)
    for node in range(nodes - 1, -1, -1):
        above = up[node]
        if above < 0:
            total[node] = extent_power[size[node]] * cumulative[born[node]]
        else:
            total[node] = (extent_power[size[node]] * (cumulative[born[node]]
                                                       - cumulative[born[above]])
                           + total[above])
    largest = 0.0
    for i in range(n):
        value = total[i] if level[i] > 0 else 0.0
        largest = max(largest, value)
        if len(out):
            out[i] = value if stat[i] > 0 else -value
    return largest


@numba.njit(cache=True)
def _clusters(stat, edges, threshold):
    n = len(stat)
    parent = np.arange(n)
    sign = np.zeros(n, np.int64)
    for i in range(n):
        if stat[i] > threshold:
            sign[i] = 1
        elif stat[i] < -threshold:
            sign[i] = -1
    for m in range(len(edges)):
        a, b = edges[m, 0], edges[m, 1]
        if sign[a] != 0 and sign[a] == sign[b]:
            ra, rb = _find(parent, a), _find(parent, b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    cluster = np.full(n, -1, np.int64)
    number = np.full(n, -1, np.int64)
    count = 0
    for wanted in (1, -1):  # positive clusters first, in voxel order
        for i in range(n):
            if sign[i] == wanted:
                root = _find(parent, i)
                if number[root] < 0:
                    number[root] = count
                    count += 1
                cluster[i] = number[root]
    mass = np.zeros(count)
    for i in range(n):
        if cluster[i] >= 0:
            mass[cluster[i]] += abs(stat[i]) - threshold
    return cluster, mass


@numba.njit(parallel=True, cache=True)
def _max_tfce_rows(stats, edges, extent_power, h, steps):
    out = np.zeros(stats.shape[0])
    no_map = np.empty(0)
    for row in numba.prange(stats.shape[0]):
        stat = stats[row]
        top = np.max(np.abs(stat))
        if top > 0:
            thresholds = np.linspace(0.0, top, steps + 1)[1:]
            out[row] = _tfce(stat, edges, thresholds, extent_power, h, no_map)
    return out


@numba.njit(parallel=True, cache=True)
def _max_mass_rows(stats, edges, threshold):
    out = np.zeros(stats.shape[0])
    for row in numba.prange(stats.shape[0]):
        _, mass = _clusters(stats[row], edges, threshold)
        if len(mass):
            out[row] = mass.max()
    return out
