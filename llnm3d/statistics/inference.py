"""Voxelwise inference: intervals, the proportion test, the OLS t-test, FDR, permutations.

OLS t-test, as nilearn's ``permuted_ols(tested_vars=y, target_vars=X, confounding_vars=Z)``:
at each voxel the nodules' weights ``x`` (the target) are regressed on the outcome ``y`` (the
tested variate) with an intercept and the covariates ``Z``. With ``Zo`` an orthonormal basis of
``[1, Z]`` (k columns, the first constant), ``q`` the residual of ``y`` on ``Zo`` scaled to unit
norm and ``x_r`` the residual of ``x``, the partial correlation is ``r = x_r . q / |x_r|`` and
``t = r * sqrt((n - k - 1) / (1 - r^2))``.

Family-wise error by the max-statistic permutation method, Freedman-Lane with covariates (the
scheme of nilearn's ``permuted_ols``, which permutes ``q`` and ``Zo`` together): for a
permutation ``P``, ``x_r`` is regressed on ``[P Zo, P q]`` (orthonormal columns), giving
``b = x_r . P q / |x_r|``, ``a2 = sum_j (x_r . P z_j / |x_r|)^2`` and
``t = b * sqrt((n - k - 1) / (1 - a2 - b^2))``; this equals regressing the permuted reduced-model
residuals ``P^T x_r`` on ``[q, Zo]``, Freedman and Lane's statistic. The constant column adds
nothing (``x_r`` sums to 0), so without covariates this is permuting ``y``. The maximum ``|t|``
over voxels of each permutation forms the null distribution, as do the maxima of the cluster
statistics of the permuted t-maps (:mod:`.clusters`: TFCE, cluster mass); a voxel's corrected
p is the share of permutations whose maximum reaches its value, counting the observed data as
one permutation. Since ``P q`` and ``P z_j`` are no longer orthogonal to ``Zo``,
``x_r . v = x . v - (x . Zo)(Zo . v)``.

The work is one product per block of permutations: the sparse (voxels x nodules) weight matrix
times a dense (nodules x permutations x (1 + covariates)) block, done by torch on the GPU when
there is one (CPU otherwise), in single precision; a sparse matrix becomes dense when that is
faster and fits the memory budget. Cluster statistics of a block run on the CPU (compiled,
one permutation per core).
Permutation blocks draw from their own seeded streams, so the null does not depend on the
device or the block order.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from scipy import stats
from tqdm.auto import tqdm

from .clusters import ClusterStatistics

PERMUTATION_BLOCK = 250
# Permutations run in single precision (twice the speed, half the memory); the maxima then
# carry relative errors near 1e-6, far below the Monte-Carlo error of any p. Observed t-maps
# are double precision.
DTYPE = torch.float32
DENSE_BUDGET_BYTES = 2 * 1024**3
DENSE_ABOVE_DENSITY = 0.05


def jeffreys_interval(events: np.ndarray, n: np.ndarray, level: float = 0.95
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Jeffreys interval of a proportion (Beta(events + 1/2, n - events + 1/2) quantiles);
    ``events`` and ``n`` may be fractional (effective counts)."""
    alpha = (1 - level) / 2
    a, b = np.asarray(events, float) + 0.5, np.asarray(n, float) - np.asarray(events, float) + 0.5
    with np.errstate(invalid="ignore"):
        low = np.where(events > 0, stats.beta.ppf(alpha, a, b), 0.0)
        high = np.where(events < n, stats.beta.ppf(1 - alpha, a, b), 1.0)
    return low, high


def proportion_chi2(n_touch: np.ndarray, events_touch: np.ndarray, n_total: int,
                    events_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson chi-square (1 dof, no continuity correction) of the 2x2 table touched/not x
    LLNM/not at each voxel; returns (chi2, p). NaN where a margin is empty."""
    table = np.stack([events_touch, n_touch - events_touch,
                      events_total - events_touch,
                      (n_total - n_touch) - (events_total - events_touch)])
    rows = np.stack([n_touch, n_total - n_touch])
    cols = np.array([events_total, n_total - events_total], float)
    expected = np.stack([rows[0] * cols[0], rows[0] * cols[1], rows[1] * cols[0],
                         rows[1] * cols[1]]) / n_total
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2 = np.sum((table - expected) ** 2 / expected, axis=0)
    chi2 = np.where(np.all(expected > 0, axis=0), chi2, np.nan)
    return chi2, stats.chi2.sf(chi2, 1)


def fdr_bh(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of the finite p-values (NaN elsewhere)."""
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    values = p[finite]
    order = np.argsort(values)
    ranked = values[order] * len(values) / np.arange(1, len(values) + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(values)
    out[order] = np.minimum(ranked, 1.0)
    q[finite] = out
    return q


def orthonormal_confounds(confounds: np.ndarray | None, n: int) -> np.ndarray:
    """Orthonormal basis (n, k) of an intercept plus the confounds; its first column is
    constant."""
    columns = [np.ones((n, 1))]
    if confounds is not None and confounds.size:
        columns.append(np.asarray(confounds, float).reshape(n, -1))
    q, r = np.linalg.qr(np.hstack(columns))
    keep = np.abs(np.diag(r)) > 1e-10 * np.abs(r).max()
    return q[:, keep]


class OLSDesign:
    """The per-voxel regression of weights on the outcome, ready for observed data and
    permutations.

    Parameters
    ----------
    weights : scipy.sparse matrix, shape (n_voxels, n_nodules)
        Weight of each nodule at each tested voxel.
    y : ndarray, shape (n_nodules,)
        Outcome (0/1).
    confounds : ndarray, shape (n_nodules, c), optional
        Covariates (an intercept is always added).
    """

    def __init__(self, weights: sp.spmatrix, y: np.ndarray, confounds: np.ndarray | None = None):
        self.weights = sp.csr_matrix(weights, dtype=np.float64)
        n = self.weights.shape[1]
        self.basis = orthonormal_confounds(confounds, n)
        self.dof = n - self.basis.shape[1] - 1
        residual = np.asarray(y, float) - self.basis @ (self.basis.T @ y)
        norm = np.linalg.norm(residual)
        self.testable = norm > 1e-10 and self.dof > 0
        self.q = residual / norm if self.testable else residual
        self.weights_basis = np.asarray(self.weights @ self.basis)
        sum_sq = np.asarray(self.weights.multiply(self.weights).sum(axis=1)).ravel()
        residual_sq = sum_sq - np.sum(self.weights_basis**2, axis=1)
        self.residual_norm = np.sqrt(np.maximum(residual_sq, 0.0))
        self.valid = self.residual_norm > 1e-9 * np.maximum(np.sqrt(sum_sq), 1e-300)

    def _t_from_r(self, r: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return r * np.sqrt(self.dof / np.maximum(1.0 - r**2, 1e-15))

    def t_scores(self) -> np.ndarray:
        """t of the outcome's effect on the weight at each voxel (NaN where untestable)."""
        if not self.testable:
            return np.full(self.weights.shape[0], np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.asarray(self.weights @ self.q).ravel() / self.residual_norm
        return np.where(self.valid, self._t_from_r(r), np.nan)

    def p_values(self, t: np.ndarray) -> np.ndarray:
        """Two-sided parametric p of the t-scores (Student t, ``dof`` degrees of freedom)."""
        return 2 * stats.t.sf(np.abs(t), self.dof)

    def permutation_maxima(self, n_perm: int, seed: int, device: str | None = None,
                           progress: bool = False, done: dict[int, dict] | None = None,
                           on_block=None, clusters: ClusterStatistics | None = None
                           ) -> dict[str, np.ndarray]:
        """Maxima over voxels of ``n_perm`` permutations.

        Blocks of :data:`PERMUTATION_BLOCK` permutations use their own seeded streams, so
        block ``b`` is the same whatever ran before it; ``done`` maps block indices already
        computed to their maxima (a resumed run), and ``on_block(b, maxima)`` is called
        after each new block (to save it).

        Returns
        -------
        dict of str -> ndarray, shape (n_perm,)
            ``"t"``: max ``|t|``; with ``clusters``, also its statistics' maxima
            (:meth:`ClusterStatistics.maxima`). Empty arrays when untestable.
        """
        names = ("t", *(clusters.names if clusters is not None else ()))
        if not self.testable or n_perm == 0:
            return {name: np.zeros(0) for name in names}
        n_blocks = -(-n_perm // PERMUTATION_BLOCK)
        streams = np.random.SeedSequence(seed).spawn(n_blocks)
        done = dict(done or {})
        kernel = _PermutationKernel(self, device)
        for block in tqdm(range(n_blocks), desc="permutations", unit="block",
                          disable=not progress):
            if block in done and all(name in done[block] for name in names):
                continue
            size = min(PERMUTATION_BLOCK, n_perm - block * PERMUTATION_BLOCK)
            rng = np.random.default_rng(streams[block])
            orders = np.stack([rng.permutation(len(self.q)) for _ in range(size)], axis=1)
            done[block] = kernel.maxima(orders, clusters)
            if on_block is not None:
                on_block(block, done[block])
        return {name: np.concatenate([done[b][name] for b in range(n_blocks)])
                for name in names}

    def permuted_t(self, orders: np.ndarray, device: str | None = None) -> np.ndarray:
        """t-maps of given permutations, shape (n_voxels, p), single precision (0 where
        untestable).

        ``orders[:, j]`` is permutation j of the nodules: row ``i`` of the permuted design
        is row ``orders[i, j]`` of the original (as ``tested_vars[order]`` in nilearn).
        """
        return _PermutationKernel(self, device).t(orders).cpu().numpy()

    def _device_matrix(self, device: str) -> torch.Tensor:
        weights = self.weights
        density = weights.nnz / max(1, weights.shape[0] * weights.shape[1])
        if density > DENSE_ABOVE_DENSITY and weights.shape[0] * weights.shape[1] * 4 <= (
                DENSE_BUDGET_BYTES):
            return torch.as_tensor(weights.toarray(), dtype=DTYPE, device=device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                torch.as_tensor(weights.indptr, dtype=torch.int64),
                torch.as_tensor(weights.indices, dtype=torch.int64),
                torch.as_tensor(weights.data, dtype=DTYPE), size=weights.shape,
                check_invariants=True).to(device)


class _PermutationKernel:
    """An OLS design's arrays on a torch device, and the t-maps and maxima of permutation
    blocks (see the module docstring for the statistic)."""

    def __init__(self, design: OLSDesign, device: str | None):
        self.design = design
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.matrix = design._device_matrix(self.device)
        self.valid = torch.as_tensor(design.valid, device=self.device)
        self.norm = torch.as_tensor(np.where(design.valid, design.residual_norm, 1.0),
                                    dtype=DTYPE, device=self.device)
        self.weights_basis = torch.as_tensor(design.weights_basis, dtype=DTYPE,
                                             device=self.device)
        self.basis = torch.as_tensor(design.basis, dtype=DTYPE, device=self.device)
        # The permuted columns: q, then the confounds but the constant first one (x_r sums
        # to 0 against a constant, permuted or not).
        self.columns = np.column_stack([design.q, design.basis[:, 1:]])

    def t(self, orders: np.ndarray) -> torch.Tensor:
        size = orders.shape[1]
        # (nodules, permutations x columns): all columns of permutation 0, then of 1, ...
        permuted = torch.as_tensor(self.columns[orders].reshape(len(orders), -1), dtype=DTYPE,
                                   device=self.device)
        projection = self.matrix @ permuted - self.weights_basis @ (self.basis.T @ permuted)
        projection = (projection / self.norm[:, None]).reshape(len(self.norm), size, -1)
        b = projection[:, :, 0]
        a2 = (projection[:, :, 1:] ** 2).sum(dim=2)
        t = b * torch.sqrt(self.design.dof / torch.clamp(1.0 - a2 - b**2, min=1e-15))
        return torch.where(self.valid[:, None], t, torch.zeros((), dtype=t.dtype,
                                                             device=self.device))

    def maxima(self, orders: np.ndarray, clusters: ClusterStatistics | None
               ) -> dict[str, np.ndarray]:
        t = self.t(orders)
        out = {"t": t.abs().max(dim=0).values.cpu().numpy().astype(np.float64)}
        if clusters is not None:
            out |= clusters.maxima(t.T.contiguous().cpu().numpy())
        return out


def fwer_p_values(t: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """Family-wise corrected p of each |t| against the permutation maxima (the observed data
    counted as one permutation)."""
    sorted_maxima = np.sort(maxima)
    exceed = len(maxima) - np.searchsorted(sorted_maxima, np.abs(t), side="left")
    p = (exceed + 1) / (len(maxima) + 1)
    return np.where(np.isfinite(t), p, np.nan)
