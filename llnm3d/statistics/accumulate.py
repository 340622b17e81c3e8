"""Streaming, associative accumulation of registered patches into voxelwise sums.

The analysis domain is the gland plus a margin (capsule distance below ``DOMAIN_MARGIN_MM``):
about 160,000 voxels of the default atlas, each a column of the accumulator arrays. A nodule's
patch adds its weight ``w`` (heatmap or nodule occupancy, 0..1) into

============  =======================================================================
array         sum over the nodules i touching the voxel (``w_i > 0``)
============  =======================================================================
n             1 (the number of nodules touching the voxel)
events        y_i (LLNM outcome 0/1)
sum_w         w_i
sum_w2        w_i ** 2 (for the effective number of nodules, Kish)
sum_wy        w_i * y_i
sum_wp        w_i * p_i over the nodules with a model probability p_i
sum_w_p       w_i over the nodules with a model probability
sum_h         the nodule's fused heatmap value (saliency), when patches carry one
============  =======================================================================

Sums of sums are sums: two accumulators :meth:`merge` into the accumulator of the union, so
blocks of nodules can run anywhere (local processes, a Dask cluster) and a result can be
extended with new nodules. Blocks are always merged in the same order (nodules sorted by key,
fixed-size blocks), so the arrays do not depend on how many workers made them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atlas import Atlas
from ..io import to_json, write_npz
from ..registration import load_patch

DOMAIN_MARGIN_MM = 1.5
SUM_NAMES = ("n", "events", "sum_w", "sum_w2", "sum_wy", "sum_wp", "sum_w_p", "sum_h")


def analysis_domain(atlas: Atlas) -> np.ndarray:
    """Flat indices (into the atlas array) of the voxels the statistics cover."""
    return np.flatnonzero(atlas.capsule_distance < DOMAIN_MARGIN_MM)


@dataclass
class Accumulator:
    """Voxelwise sums over the analysis domain and the nodules they include.

    Attributes
    ----------
    sums : dict of str -> ndarray of float64, shape (n_domain,)
        The arrays of the module docstring.
    nodules : list of str
        Keys of the nodules added, in the order they were added.
    empty_nodules : list of str
        Keys of nodules seen whose patch has no weight on the domain (left out).
    outside_weight : float
        Weight that fell outside the domain (registration slightly off the gland).
    """

    sums: dict[str, np.ndarray]
    nodules: list[str] = field(default_factory=list)
    empty_nodules: list[str] = field(default_factory=list)
    outside_weight: float = 0.0

    @property
    def seen(self) -> set[str]:
        """Every nodule this accumulator has looked at."""
        return set(self.nodules) | set(self.empty_nodules)

    @classmethod
    def zeros(cls, n_domain: int) -> Accumulator:
        return cls({name: np.zeros(n_domain) for name in SUM_NAMES})

    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other`` into this accumulator (in place) and return it."""
        overlap = self.seen & other.seen
        if overlap:
            raise ValueError(f"nodules counted twice: {sorted(overlap)[:3]}")
        for name in SUM_NAMES:
            self.sums[name] += other.sums[name]
        self.nodules.extend(other.nodules)
        self.empty_nodules.extend(other.empty_nodules)
        self.outside_weight += other.outside_weight
        return self

    def save(self, path: Path, extra: dict | None = None) -> None:
        """Write atomically (compressed .npz) with ``extra`` JSON metadata."""
        write_npz(path, **self.sums, nodules=to_json(self.nodules),
                  empty_nodules=to_json(self.empty_nodules),
                  outside_weight=self.outside_weight, extra=to_json(extra or {}))

    @classmethod
    def load(cls, path: Path) -> tuple[Accumulator, dict]:
        with np.load(path) as data:
            sums = {name: data[name] for name in SUM_NAMES}
            lists = [json.loads(str(data[key])) for key in ("nodules", "empty_nodules")]
            return (cls(sums, lists[0], lists[1], float(data["outside_weight"])),
                    json.loads(str(data["extra"])))


@dataclass(frozen=True)
class NoduleInput:
    """What the accumulation needs of one nodule: its patch file and its numbers."""

    key: str
    patch_path: Path
    # The 0/1 outcome; the phantom's planted_risk_map passes each nodule's true risk instead.
    label: float
    probability: float | None


def patch_weights(path: Path, weight: str, lookup: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    """A patch's non-zero weights on the analysis domain.

    Returns
    -------
    columns : ndarray of int64
        Domain indices of the voxels with ``w > 0``.
    w : ndarray of float64
    heat : ndarray of float64 or None
        The fused heatmap at those voxels (None without heatmaps).
    outside : float
        Weight falling outside the domain.
    """
    patch = load_patch(path)
    if weight == "mask":
        values = patch.mask.astype(np.float64)
    else:
        # aggregate refuses heatmap weights for nodules registered without heatmaps.
        assert patch.heatmap is not None
        values = patch.heatmap.astype(np.float64)
    heat = None if patch.heatmap is None else patch.heatmap.astype(np.float64)
    k, j, i = np.nonzero(values > 0)
    shape = patch.grid.shape
    flat = np.ravel_multi_index((k + patch.start_zyx[0], j + patch.start_zyx[1],
                                 i + patch.start_zyx[2]), shape)
    columns = lookup[flat]
    w = values[k, j, i]
    inside = columns >= 0
    heat = None if heat is None else heat[k, j, i][inside]
    return columns[inside], w[inside], heat, float(w[~inside].sum())


def accumulate_block(nodules: list[NoduleInput], weight: str, lookup: np.ndarray,
                     n_domain: int) -> Accumulator:
    """The accumulator of one block of nodules, added in the order given; nodules whose patch
    has no weight on the domain are not added."""
    block = Accumulator.zeros(n_domain)
    sums = block.sums
    for nodule in nodules:
        columns, w, heat, outside = patch_weights(nodule.patch_path, weight, lookup)
        if not len(columns):
            block.empty_nodules.append(nodule.key)  # left out of every statistic, and counted
            continue
        sums["n"][columns] += 1.0
        sums["events"][columns] += nodule.label
        sums["sum_w"][columns] += w
        sums["sum_w2"][columns] += w * w
        sums["sum_wy"][columns] += w * nodule.label
        if nodule.probability is not None:
            sums["sum_wp"][columns] += w * nodule.probability
            sums["sum_w_p"][columns] += w
        if heat is not None:
            sums["sum_h"][columns] += heat
        block.nodules.append(nodule.key)
        block.outside_weight += outside
    return block


def domain_lookup(atlas: Atlas, domain: np.ndarray) -> np.ndarray:
    """Atlas-sized flat array: the domain index of each voxel, -1 outside the domain."""
    lookup = np.full(atlas.labels.size, -1, np.int64)
    lookup[domain] = np.arange(len(domain))
    return lookup
