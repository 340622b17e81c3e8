"""The voxelwise association tests of an aggregation, family-wise corrected by permutations.

At each tested voxel (enough nodules touch it):

- ``chi2``: the proportion test, touched/not x LLNM/not (uncorrected);
- ``t``: the OLS t of the outcome's effect on the footprint weight, adjusted for the
  covariates (:mod:`.inference`), with its parametric p, Benjamini-Hochberg q and family-wise
  p from max-``|t|`` permutations;
- ``tfce``: threshold-free cluster enhancement of the t-map (E = 0.5, H = 2, 100 steps, both
  signs), family-wise p from max-``|TFCE|`` permutations;
- ``cluster_mass``: the mass of the voxel's cluster at a cluster-forming threshold (two-sided
  parametric p of t below ``cluster_p``), family-wise p from max-mass permutations; the
  clusters are listed in ``clusters.csv``.

All family-wise p come from the same Freedman-Lane permutations (one null per statistic, the
maximum over voxels), streamed in blocks that a killed run reuses (``permutations/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats as distributions

from ..io import atomic_path
from .clusters import (
    CONNECTIVITIES,
    TFCE_E,
    TFCE_H,
    TFCE_STEPS,
    ClusterStatistics,
    cluster_masses,
    voxel_edges,
)
from .inference import OLSDesign, fdr_bh, fwer_p_values, proportion_chi2

DEFAULT_CLUSTER_P = 0.001
CLUSTER_COLUMNS = ["cluster", "sign", "voxels", "volume_mm3", "mass", "p_fwer", "peak_t",
                   "peak_x_mm", "peak_y_mm", "peak_z_mm", "peak_region"]


@dataclass(frozen=True)
class TestSettings:
    """How the voxelwise tests run (recorded in summary.json).

    Attributes
    ----------
    permutations : int
        Freedman-Lane permutations for family-wise p (0: none).
    seed : int
        Seed of the permutations.
    tfce : bool
        Compute TFCE and its family-wise p.
    cluster_p : float or None
        Cluster-forming threshold of the cluster mass, as a two-sided parametric p of t
        (None: no cluster mass).
    connectivity : {6, 26}
        Voxel neighbourhood of clusters (faces; faces, edges and corners).
    device : str, optional
        torch device of the permutations (default: CUDA when available).
    """

    permutations: int = 1000
    seed: int = 0
    tfce: bool = True
    cluster_p: float | None = DEFAULT_CLUSTER_P
    connectivity: int = 6
    device: str | None = None

    def record(self, dof: int | None) -> dict:
        """What summary.json records of the tests (the cluster threshold in t needs the
        degrees of freedom)."""
        return {
            "permutations": self.permutations, "scheme": "Freedman-Lane (nilearn permuted_ols)",
            "connectivity": self.connectivity,
            "tfce": {"E": TFCE_E, "H": TFCE_H, "steps": TFCE_STEPS} if self.tfce else None,
            "cluster_mass": None if self.cluster_p is None else {
                "cluster_forming_p": self.cluster_p,
                "cluster_forming_t": None if dof is None else cluster_threshold(
                    self.cluster_p, dof)},
        }


def cluster_threshold(cluster_p: float, dof: int) -> float:
    """The ``|t|`` above which a voxel joins a cluster: two-sided p below ``cluster_p``."""
    return float(distributions.t.isf(cluster_p / 2, dof))


def test_names(settings: TestSettings) -> tuple[str, ...]:
    """The maps :func:`voxelwise_tests` returns, in order."""
    return ("chi2", "chi2_p", *permutation_test_names(settings))


def permutation_test_names(settings: TestSettings) -> tuple[str, ...]:
    """The maps :func:`permutation_tests` returns, in order."""
    return ("t", "t_p", "t_q_fdr", "t_p_fwer",
            *(("tfce", "tfce_p_fwer") if settings.tfce else ()),
            *(("cluster_mass", "cluster_mass_p_fwer") if settings.cluster_p is not None else ()))


def voxelwise_tests(weights: sp.spmatrix, y: np.ndarray, confounds: np.ndarray | None,
                    n_touch: np.ndarray, events_touch: np.ndarray, ijk: np.ndarray,
                    settings: TestSettings, folder: Path | None = None,
                    progress: bool = False) -> tuple[dict[str, np.ndarray], int, np.ndarray]:
    """The test maps at the tested voxels.

    Parameters
    ----------
    weights : sparse matrix, shape (n_tested, n_nodules)
        Footprint weight of each nodule at each tested voxel.
    y : ndarray, shape (n_nodules,)
        Outcome (0/1), both values present.
    confounds : ndarray, shape (n_nodules, c), optional
        Covariates of the t-test.
    n_touch, events_touch : ndarray, shape (n_tested,)
        Nodules touching each voxel and how many of them have LLNM (the proportion test).
    ijk : ndarray of int, shape (n_tested, 3)
        Grid indices of the tested voxels (their neighbourhoods make the clusters).
    settings : TestSettings
    folder : Path, optional
        Where permutation blocks are saved and reused (``permutations/``).

    Returns
    -------
    maps : dict of str -> ndarray of float64, shape (n_tested,)
        :func:`test_names`; family-wise p maps are NaN without permutations.
    dof : int
        Degrees of freedom of the t-test.
    cluster : ndarray of int, shape (n_tested,)
        Each voxel's cluster of the cluster mass (numbers as :func:`.clusters.cluster_masses`;
        -1 outside clusters, all -1 without cluster mass).
    """
    chi2, chi2_p = proportion_chi2(n_touch, events_touch, len(y), int(y.sum()))
    design = OLSDesign(weights, y, confounds)
    maps, cluster = permutation_tests(design, ijk, settings, folder, progress)
    return {"chi2": chi2, "chi2_p": chi2_p, **maps}, int(design.dof), cluster


def permutation_tests(design: OLSDesign, ijk: np.ndarray, settings: TestSettings,
                      folder: Path | None = None, progress: bool = False
                      ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The t-test of a design and its family-wise corrected statistics.

    Returns
    -------
    maps : dict of str -> ndarray of float64, shape (n_tested,)
        ``t``, ``t_p``, ``t_q_fdr``, ``t_p_fwer`` and, as ``settings`` asks, ``tfce``,
        ``tfce_p_fwer``, ``cluster_mass``, ``cluster_mass_p_fwer``.
    cluster : ndarray of int, shape (n_tested,)
        As :func:`voxelwise_tests`.
    """
    t = design.t_scores()
    p = design.p_values(t)
    threshold = (None if settings.cluster_p is None
                 else cluster_threshold(settings.cluster_p, design.dof))
    clusters = ClusterStatistics(voxel_edges(ijk, settings.connectivity), tfce=settings.tfce,
                                 mass_threshold=threshold)
    observed = clusters.observed(t)
    maxima = permutation_maxima(design, clusters, settings, folder, progress)
    maps = {"t": t, "t_p": p, "t_q_fdr": fdr_bh(p), "t_p_fwer": _fwer(t, maxima["t"])}
    for name, values in observed.items():
        maps[name] = np.where(np.isfinite(t), values, np.nan)
        maps[f"{name}_p_fwer"] = _fwer(maps[name], maxima[name])
    if threshold is not None:
        # Voxels outside every cluster have no cluster-level p.
        maps["cluster_mass_p_fwer"][observed["cluster_mass"] == 0] = np.nan
        cluster = cluster_masses(t, clusters.edges, threshold)[0]
    else:
        cluster = np.full(len(t), -1)
    return maps, cluster


def _fwer(values: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    if not len(maxima):
        return np.full(len(values), np.nan)
    return fwer_p_values(values, maxima)


def permutation_maxima(design: OLSDesign, clusters: ClusterStatistics,
                       settings: TestSettings, folder: Path | None,
                       progress: bool) -> dict[str, np.ndarray]:
    """The permutation maxima of every statistic, reusing the blocks saved in ``folder`` and
    saving each new block there (``block-NNNNN.npz``, one array per statistic)."""
    done, save = {}, None
    if folder is not None:
        folder.mkdir(exist_ok=True)
        for path in folder.glob("block-*.npz"):
            try:
                with np.load(path) as saved:
                    done[int(path.stem.split("-")[1])] = {k: saved[k] for k in saved.files}
            except (OSError, ValueError, EOFError, KeyError):
                continue  # an unreadable block is drawn again

        def save(block, maxima):
            with atomic_path(folder / f"block-{block:05d}.npz") as tmp:
                np.savez(tmp, **maxima)
    return design.permutation_maxima(settings.permutations, settings.seed, settings.device,
                                     progress, done, save, clusters)


def cluster_table(maps: dict[str, np.ndarray], cluster: np.ndarray, points_mm: np.ndarray,
                  regions: np.ndarray, spacing_mm: float) -> pd.DataFrame:
    """One row per cluster of the cluster mass (:data:`CLUSTER_COLUMNS`), by decreasing mass.

    Parameters
    ----------
    maps : dict
        Output of :func:`voxelwise_tests` (``t``, ``cluster_mass``, ``cluster_mass_p_fwer``).
    cluster : ndarray of int, shape (n_tested,)
        Each voxel's cluster (-1 outside).
    points_mm : ndarray, shape (n_tested, 3)
        Atlas coordinates of the tested voxels.
    regions : ndarray of str, shape (n_tested,)
        Atlas region name of each tested voxel.
    spacing_mm : float
        Grid spacing (for the volume).
    """
    rows = []
    t = maps["t"]
    for number in np.unique(cluster[cluster >= 0]):
        members = np.flatnonzero(cluster == number)
        peak = members[np.argmax(np.abs(t[members]))]
        rows.append({"sign": "+" if t[peak] > 0 else "-", "voxels": len(members),
                     "volume_mm3": len(members) * spacing_mm**3,
                     "mass": abs(float(maps["cluster_mass"][peak])),
                     "p_fwer": float(maps["cluster_mass_p_fwer"][peak]),
                     "peak_t": float(t[peak]), "peak_x_mm": points_mm[peak, 0],
                     "peak_y_mm": points_mm[peak, 1], "peak_z_mm": points_mm[peak, 2],
                     "peak_region": regions[peak]})
    table = pd.DataFrame(rows, columns=CLUSTER_COLUMNS[1:])
    table = table.sort_values("mass", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "cluster", np.arange(1, len(table) + 1))
    return table


def check_test_settings(settings: TestSettings) -> None:
    """Raise InputError, naming the parameter, for settings outside what they allow."""
    from ..checks import check_choice, check_number

    # By repr: the text "6" and the float 6.0 are not the int 6.
    check_choice("connectivity", repr(settings.connectivity), map(str, CONNECTIVITIES))
    if settings.cluster_p is not None:
        check_number("cluster_p", settings.cluster_p, low=0, high=0.5, low_inclusive=False)
