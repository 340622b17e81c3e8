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
times a dense (nodules x permutations x (1 + covariates)) block, in single precision. On the CPU
a compiled kernel does it and the t-statistic in one pass per voxel, in parallel over voxels,
touching only the nonzero weights (a dense matrix product does every zero too: at 16 % density
it is about 3x slower and holds a dense copy of the matrix); on a GPU torch does it, with the
matrix dense when that is faster and fits the memory budget. Cluster statistics of a block run
on the CPU (compiled, one permutation per core).
Permutation blocks draw from their own seeded streams, so the null does not depend on the
device or the block order.
"""

from __future__ import annotations

import warnings

import numba
import numpy as np
import scipy.sparse as sp
from scipy import stats
from tqdm.auto import tqdm

from .clusters import ClusterStatistics

PERMUTATION_BLOCK = 250
# Permutations run in single precision (twice the speed, half the memory); the maxima then
# carry relative errors near 1e-6, far below the Monte-Carlo error of any p. Observed t-maps
# are double precision.
DTYPE = np.float32
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
        # power() squares the stored values alone; multiply() would match sparsity patterns.
        sum_sq = np.asarray(self.weights.power(2).sum(axis=1)).ravel()
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
        kernel = permutation_kernel(self, device)
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
        return permutation_kernel(self, device).t(orders).T


def permutation_kernel(design: OLSDesign, device: str | None = None):
    """The engine that computes permuted t-maps of ``design``: compiled CPU code for
    ``device="cpu"``, torch on any other device (default: CUDA when available, else CPU)."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _CpuKernel(design) if device == "cpu" else _TorchKernel(design, device)


class _Kernel:
    """Permuted columns of an OLS design, and the maxima of a block's t-maps."""

    def __init__(self, design: OLSDesign):
        self.design = design
        # The permuted columns: q, then the confounds but the constant first one (x_r sums
        # to 0 against a constant, permuted or not).
        self.columns = np.column_stack([design.q, design.basis[:, 1:]]).astype(DTYPE)

    def permuted(self, orders: np.ndarray) -> np.ndarray:
        """(nodules, permutations x columns): all columns of permutation 0, then of 1, ..."""
        return np.ascontiguousarray(self.columns[orders].reshape(len(orders), -1))

    def t(self, orders: np.ndarray) -> np.ndarray:
        """t-maps of the permutations ``orders[:, j]``, shape (permutations, voxels),
        :data:`DTYPE`, 0 where untestable."""
        raise NotImplementedError

    def maxima(self, orders: np.ndarray, clusters: ClusterStatistics | None
               ) -> dict[str, np.ndarray]:
        t = self.t(orders)
        out = {"t": np.abs(t).max(axis=1).astype(np.float64)}
        if clusters is not None:
            out |= clusters.maxima(t)
        return out


class _CpuKernel(_Kernel):
    """Sparse weights times each block of permuted columns and the t-statistic, fused in one
    compiled pass per voxel (both cores); never densifies the weights."""

    def __init__(self, design: OLSDesign):
        super().__init__(design)
        weights = design.weights
        self.indptr = weights.indptr.astype(np.int64)
        self.indices = weights.indices.astype(np.int32)
        self.data = weights.data.astype(DTYPE)
        self.weights_basis = np.ascontiguousarray(design.weights_basis, dtype=DTYPE)
        self.basis = np.ascontiguousarray(design.basis, dtype=DTYPE)
        self.norm = np.where(design.valid, design.residual_norm, 1.0).astype(DTYPE)
        self.valid = np.ascontiguousarray(design.valid)

    def t(self, orders: np.ndarray) -> np.ndarray:
        permuted = self.permuted(orders)
        correction = np.ascontiguousarray(self.basis.T @ permuted)
        out = np.empty((orders.shape[1], len(self.norm)), DTYPE)
        _permuted_t(self.indptr, self.indices, self.data, permuted, correction,
                    self.weights_basis, self.norm, self.valid, DTYPE(self.design.dof), out)
        return out


@numba.njit(parallel=True, fastmath={"reassoc", "contract"}, cache=True)
def _permuted_t(indptr, indices, data, permuted, correction, weights_basis, norm, valid, dof,
                out):  # pragma: no cover - compiled
    size, n_voxels = out.shape
    width = permuted.shape[1]
    columns = width // size
    for voxel in numba.prange(n_voxels):
        if not valid[voxel]:
            out[:, voxel] = 0.0
            continue
        acc = np.zeros_like(permuted[0])
        start, end = indptr[voxel], indptr[voxel + 1]
        k = start
        # Four nonzeros per pass over the accumulator: a quarter of its loads and stores.
        while k + 4 <= end:
            w0, w1, w2, w3 = data[k], data[k + 1], data[k + 2], data[k + 3]
            r0, r1 = permuted[indices[k]], permuted[indices[k + 1]]
            r2, r3 = permuted[indices[k + 2]], permuted[indices[k + 3]]
            for c in range(width):
                acc[c] += w0 * r0[c] + w1 * r1[c] + w2 * r2[c] + w3 * r3[c]
            k += 4
        while k < end:
            w0, r0 = data[k], permuted[indices[k]]
            for c in range(width):
                acc[c] += w0 * r0[c]
            k += 1
        for m in range(correction.shape[0]):
            wb = weights_basis[voxel, m]
            for c in range(width):
                acc[c] -= wb * correction[m, c]
        scale = 1 / norm[voxel]
        for j in range(size):
            b = acc[j * columns] * scale
            a2 = b - b  # zero of the kernel's precision
            for c in range(j * columns + 1, (j + 1) * columns):
                a2 += (acc[c] * scale) ** 2
            out[j, voxel] = b * np.sqrt(dof / max(1 - a2 - b * b, 1e-15))


class _TorchKernel(_Kernel):
    """The same statistic with torch on an accelerator: the weights as a torch matrix (dense
    when that is faster and fits the memory budget), one product per block."""

    def __init__(self, design: OLSDesign, device: str):
        import torch

        super().__init__(design)
        self.torch, self.device = torch, device
        dtype = getattr(torch, np.dtype(DTYPE).name)
        self.matrix = _torch_matrix(design.weights, device, dtype)
        self.valid = torch.as_tensor(design.valid, device=device)
        self.norm = torch.as_tensor(np.where(design.valid, design.residual_norm, 1.0),
                                    dtype=dtype, device=device)
        self.weights_basis = torch.as_tensor(design.weights_basis, dtype=dtype, device=device)
        self.basis = torch.as_tensor(design.basis, dtype=dtype, device=device)

    def t(self, orders: np.ndarray) -> np.ndarray:
        torch = self.torch
        size = orders.shape[1]
        permuted = torch.as_tensor(self.permuted(orders), device=self.device)
        projection = self.matrix @ permuted - self.weights_basis @ (self.basis.T @ permuted)
        projection = (projection / self.norm[:, None]).reshape(len(self.norm), size, -1)
        b = projection[:, :, 0]
        a2 = (projection[:, :, 1:] ** 2).sum(dim=2)
        t = b * torch.sqrt(self.design.dof / torch.clamp(1.0 - a2 - b**2, min=1e-15))
        t = torch.where(self.valid[:, None], t, torch.zeros((), dtype=t.dtype,
                                                            device=self.device))
        return t.T.contiguous().cpu().numpy()


def _torch_matrix(weights: sp.csr_matrix, device: str, dtype):
    """``weights`` as a torch matrix of ``dtype`` on ``device``: dense above
    :data:`DENSE_ABOVE_DENSITY` if it fits :data:`DENSE_BUDGET_BYTES`, sparse CSR otherwise."""
    import torch

    density = weights.nnz / max(1, weights.shape[0] * weights.shape[1])
    if density > DENSE_ABOVE_DENSITY and weights.shape[0] * weights.shape[1] * 4 <= (
            DENSE_BUDGET_BYTES):
        # Dense in the kernel's precision straight away: a double-precision copy on the way
        # would double the peak memory in single precision.
        return torch.from_numpy(weights.astype(DTYPE).toarray()).to(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.as_tensor(weights.indptr, dtype=torch.int64),
            torch.as_tensor(weights.indices, dtype=torch.int64),
            torch.as_tensor(weights.data, dtype=dtype), size=weights.shape,
            check_invariants=True).to(device)


def fwer_p_values(t: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """Family-wise corrected p of each |t| against the permutation maxima (the observed data
    counted as one permutation)."""
    sorted_maxima = np.sort(maxima)
    exceed = len(maxima) - np.searchsorted(sorted_maxima, np.abs(t), side="left")
    p = (exceed + 1) / (len(maxima) + 1)
    return np.where(np.isfinite(t), p, np.nan)
