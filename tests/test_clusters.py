"""TFCE and cluster mass (llnm3d.statistics.clusters) against nilearn, and the permutation
engine's Freedman-Lane maxima against nilearn's permuted_ols on the same permutations."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import scipy.sparse as sp
from nilearn.maskers import NiftiMasker
from nilearn.mass_univariate import permuted_ols
from nilearn.mass_univariate._utils import calculate_cluster_measures, calculate_tfce
from scipy.ndimage import gaussian_filter, generate_binary_structure

from llnm3d.statistics import inference
from llnm3d.statistics.clusters import (
    ClusterStatistics,
    cluster_masses,
    tfce,
    voxel_edges,
)
from llnm3d.statistics.inference import OLSDesign, fwer_p_values

SHAPE = (16, 14, 12)


def smooth_map(seed: int, scale: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random volume and a mask with holes (untested voxels split clusters)."""
    rng = np.random.default_rng(seed)
    volume = gaussian_filter(rng.normal(size=SHAPE), 1.5) * scale
    return volume, rng.random(SHAPE) > 0.15


@pytest.mark.parametrize("connectivity", [6, 26])
def test_voxel_edges_are_the_grid_neighbours(connectivity):
    ijk = np.argwhere(np.ones((3, 3, 3), bool))
    edges = voxel_edges(ijk, connectivity)
    # Interior voxel (1, 1, 1) has 6 or 26 neighbours; a corner 3 or 7.
    degree = np.bincount(edges.ravel(), minlength=27)
    assert degree[13] == connectivity
    assert degree[0] == (3 if connectivity == 6 else 7)
    steps = np.abs(ijk[edges[:, 0]] - ijk[edges[:, 1]])
    assert steps.max() == 1 and len(np.unique(np.sort(edges, axis=1), axis=0)) == len(edges)


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tfce_equals_nilearn(connectivity, seed):
    volume, mask = smooth_map(seed)
    edges = voxel_edges(np.argwhere(mask), connectivity)
    structure = generate_binary_structure(3, 1 if connectivity == 6 else 3)
    expected = calculate_tfce(np.where(mask, volume, 0)[..., None], structure)[..., 0][mask]
    ours = tfce(volume[mask], edges)
    assert np.abs(expected).max() > 100  # clusters of both signs, many thresholds
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-9)


def test_tfce_of_one_cluster_is_the_closed_form():
    # A flat cluster of 10 voxels at t = 3: every threshold h_k = 0.03 k <= 3 sees all 10.
    stat = np.full(10, 3.0)
    edges = voxel_edges(np.stack([np.arange(10), np.zeros(10), np.zeros(10)], axis=1))
    thresholds = np.linspace(0, 3, 101)[1:]
    np.testing.assert_allclose(tfce(stat, edges), np.sqrt(10) * np.sum(thresholds**2))
    np.testing.assert_allclose(tfce(-stat, edges), -np.sqrt(10) * np.sum(thresholds**2))


@pytest.mark.parametrize("threshold", [0.5, 1.5])
def test_cluster_masses_equal_nilearn(threshold):
    volume, mask = smooth_map(3)
    cluster, mass = cluster_masses(volume[mask], voxel_edges(np.argwhere(mask)), threshold)
    assert len(mass) >= 3
    _, expected = calculate_cluster_measures(np.where(mask, volume, 0)[..., None], threshold,
                                             generate_binary_structure(3, 1), True)
    assert mass.max() == pytest.approx(expected[0], rel=1e-12)
    t = volume[mask]
    assert (cluster >= 0).sum() == (np.abs(t) > threshold).sum()
    np.testing.assert_allclose(np.bincount(cluster[cluster >= 0],
                                           weights=np.abs(t[cluster >= 0]) - threshold), mass)


def nilearn_orders(n: int, n_perm: int, random_state: int) -> np.ndarray:
    """The row orders of nilearn's permuted_ols (n_jobs=1): one RandomState drawn from the
    seed, shuffles applied one after the other to the already shuffled rows."""
    rng = np.random.RandomState(np.random.RandomState(random_state).randint(
        1, np.iinfo(np.int32).max - 1))
    order, orders = np.arange(n), []
    for _ in range(n_perm):
        order = order[rng.permutation(n)]
        orders.append(order)
    return np.stack(orders, axis=1)


@pytest.mark.parametrize("covariates", [0, 2])
def test_permutation_maxima_equal_nilearn_permuted_ols(monkeypatch, covariates):
    """Same data and the same permutations: observed t, TFCE and cluster masses and the null
    maxima of |t|, TFCE and cluster mass equal nilearn's (double precision)."""
    monkeypatch.setattr(inference, "DTYPE", np.float64)
    rng = np.random.default_rng(7)
    n, n_perm, cluster_p = 60, 12, 0.05
    mask = np.zeros(SHAPE, bool)
    mask[2:14, 2:12, 2:10] = True
    mask[8, :, :] = False  # two slabs
    y = rng.integers(0, 2, n).astype(float)
    confounds = rng.normal(size=(n, covariates)) if covariates else None
    # Smooth footprints with an effect of y in one slab.
    images = gaussian_filter(rng.normal(size=(n, *SHAPE)), (0, 1.2, 1.2, 1.2))
    images[:, 3:7, 4:9, 3:8] += 0.15 * y[:, None, None, None]
    target = images[:, mask]
    masker = NiftiMasker(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4))).fit()
    out = permuted_ols(y[:, None], target, confounds, n_perm=n_perm, two_sided_test=True,
                       random_state=0, n_jobs=1, masker=masker, tfce=True,
                       threshold=cluster_p, output_type="dict", verbose=0)

    design = OLSDesign(sp.csr_matrix(target.T), y, confounds)
    t = design.t_scores()
    np.testing.assert_allclose(t, out["t"][0], rtol=1e-9, atol=1e-12)
    from scipy import stats
    threshold = stats.t.isf(cluster_p / 2, design.dof)
    clusters = ClusterStatistics(voxel_edges(np.argwhere(mask)), tfce=True,
                                 mass_threshold=threshold)
    observed = clusters.observed(t)
    np.testing.assert_allclose(observed["tfce"], out["tfce"][0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.abs(observed["cluster_mass"]), out["mass"][0], rtol=1e-9,
                               atol=1e-9)
    kernel = inference.permutation_kernel(design, "cpu")
    maxima = kernel.maxima(nilearn_orders(n, n_perm, 0), clusters)
    np.testing.assert_allclose(maxima["t"], out["h0_max_t"][0], rtol=1e-9)
    np.testing.assert_allclose(maxima["tfce"], out["h0_max_tfce"][0], rtol=1e-9)
    np.testing.assert_allclose(maxima["cluster_mass"], out["h0_max_mass"][0], rtol=1e-9)
    # FWER p of TFCE as nilearn's (its p counts the observed data as one permutation too).
    p = fwer_p_values(observed["tfce"], maxima["tfce"])
    np.testing.assert_allclose(-np.log10(p), out["logp_max_tfce"][0], rtol=1e-9)


def test_permutation_maxima_resume_block_by_block():
    rng = np.random.default_rng(3)
    mask = np.ones((8, 8, 6), bool)
    weights = gaussian_filter(rng.normal(size=(40, 8, 8, 6)), (0, 1, 1, 1))[:, mask]
    y = rng.integers(0, 2, 40).astype(float)
    design = OLSDesign(sp.csr_matrix(weights.T), y, rng.normal(size=(40, 1)))
    clusters = ClusterStatistics(voxel_edges(np.argwhere(mask)), mass_threshold=2.0)
    full = design.permutation_maxima(600, seed=5, device="cpu", clusters=clusters)
    assert set(full) == {"t", "tfce", "cluster_mass"} and len(full["tfce"]) == 600
    saved = {}
    design.permutation_maxima(600, seed=5, device="cpu", on_block=saved.__setitem__,
                              clusters=clusters)
    resumed = design.permutation_maxima(600, seed=5, device="cpu", done={1: saved[1]},
                                        clusters=clusters)
    for name in full:
        np.testing.assert_array_equal(resumed[name], full[name])
    # A block saved without a statistic now asked for is computed again.
    partial = {1: {"t": saved[1]["t"]}}
    again = design.permutation_maxima(600, seed=5, device="cpu", done=partial,
                                      clusters=clusters)
    np.testing.assert_array_equal(again["tfce"], full["tfce"])


@pytest.mark.parametrize("density, covariates", [(0.3, 0), (0.02, 2)])
def test_cpu_kernel_equals_the_torch_engine_and_double_precision(density, covariates):
    # The compiled CPU kernel and the torch engine (what a GPU runs, here on the CPU) give the
    # same permuted t-maps, and both match the double-precision statistic of the permuted
    # outcome (no covariates: Freedman-Lane is permuting y).
    rng = np.random.default_rng(11)
    n, voxels = 300, 2000
    weights = sp.random(voxels, n, density=density, random_state=4, format="lil")
    weights[5] = 0.0  # an untestable voxel: no weight
    weights = weights.tocsr()
    y = rng.integers(0, 2, n).astype(float)
    confounds = rng.normal(size=(n, covariates)) if covariates else None
    design = OLSDesign(weights, y, confounds)
    orders = np.stack([rng.permutation(n) for _ in range(37)], axis=1)
    cpu = inference.permutation_kernel(design, "cpu")
    engine = inference._TorchKernel(design, "cpu")
    t_cpu, t_torch = cpu.t(orders), engine.t(orders)
    assert t_cpu.shape == (37, voxels) and t_cpu.dtype == np.float32
    assert np.all(t_cpu[:, 5] == 0) and not design.valid[5]
    np.testing.assert_allclose(t_cpu, t_torch, rtol=1e-4, atol=1e-4)
    if not covariates:
        exact = np.stack([OLSDesign(weights, y[order]).t_scores() for order in orders.T])
        np.testing.assert_allclose(t_cpu[:, design.valid], exact[:, design.valid], rtol=1e-4,
                                   atol=1e-4)
