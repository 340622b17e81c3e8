"""Spatial risk model: a smooth log-odds field over the atlas fitted to the nodules' outcomes.

Model. Nodule ``i`` has LLNM with probability ``sigmoid(eta_i)``,

    eta_i = sum_v a_iv f(v) + z_i . gamma,

where ``a_i`` is the nodule's registered footprint (fused nodule mask, or heatmap) normalised
to unit mass, so a nodule enters once whatever its extent: a wide footprint spreads the same
evidence thinner instead of weighing more. ``f`` is a smooth field on a tensor-product
quadratic B-spline basis (knots every ``knot_spacing_mm``; the basis sums to one, so the
intercept is part of ``f``) and ``z_i`` optional centred covariates. ``f`` is penalised by the
sum of squared second differences of its coefficients along x, y and z (P-splines, Eilers &
Marx 1996) with weight ``lambda``; ``lambda`` is chosen from the data by maximising the
Laplace-approximate marginal likelihood (LAML, the REML criterion of generalised models;
Wood 2011) over ``log lambda``, so the smoothness is not a fixed constant.

Uncertainty. The Bayesian posterior covariance ``(X'WX + P)^-1`` of the coefficients (Wood
2006; its intervals have close to nominal coverage averaged over the field, Nychka 1988) gives
at each voxel the standard error of ``f(v)``, a pointwise 95 % interval, the posterior
probability that the risk exceeds the cohort rate, and a simultaneous 95 % band: the
95th percentile over posterior draws of ``max_v |f_draw(v) - f(v)| / se(v)`` replaces 1.96.
Voxels where the simultaneous band excludes the cohort rate are family-wise significant.

The map reported at a voxel is ``sigmoid(f(v))`` (with covariates: at the covariates' cohort
mean), the risk of a nodule whose footprint is concentrated at ``v``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import scipy.linalg as la
import scipy.sparse as sp
from scipy import stats
from scipy.special import expit

KNOT_SPACING_MM = 3.0
RIDGE = 1e-6
LOG_LAMBDA_RANGE = (-4.0, 14.0)
LOG_LAMBDA_STEP = 2.0
SIMULTANEOUS_DRAWS = 1000
SIMULTANEOUS_VOXELS = 20000
EVENTS_PER_PARAMETER = 2


@dataclass(frozen=True)
class SplineBasis:
    """Tensor-product quadratic B-splines on a regular knot lattice, restricted to the
    functions that are non-zero somewhere on a set of voxels.

    Attributes
    ----------
    origin_mm : ndarray, shape (3,)
        Lattice origin (x, y, z) in atlas mm; function ``(a, b, c)`` peaks at
        ``origin_mm + knot_spacing_mm * ((a, b, c) - 0.5)``.
    knot_spacing_mm : float
    counts : tuple of int
        Functions per axis (x, y, z) of the full lattice.
    active : ndarray of int64
        Flat lattice indices (C order over (x, y, z)) of the functions kept, shape (K,).
    """

    origin_mm: np.ndarray
    knot_spacing_mm: float
    counts: tuple[int, int, int]
    active: np.ndarray

    @classmethod
    def covering(cls, points_mm: np.ndarray, knot_spacing_mm: float = KNOT_SPACING_MM
                 ) -> SplineBasis:
        """The basis of the functions that touch ``points_mm`` (N, 3)."""
        low = points_mm.min(axis=0) - knot_spacing_mm
        # One count per axis of the (N, 3) points.
        counts = cast("tuple[int, int, int]",
                      tuple(int(c) for c in np.floor((points_mm.max(axis=0) - low)
                                                     / knot_spacing_mm) + 3))
        full = cls(low, float(knot_spacing_mm), counts, np.arange(int(np.prod(counts))))
        used = np.unique(full._lattice_entries(points_mm)[0])
        return cls(low, float(knot_spacing_mm), counts, used)

    @property
    def size(self) -> int:
        return len(self.active)

    def position(self) -> np.ndarray:
        """Column of each lattice function in the kept basis (-1 for functions not kept)."""
        position = np.full(int(np.prod(self.counts)), -1, np.int64)
        position[self.active] = np.arange(self.size)
        return position

    def _lattice_entries(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lattice indices and values, each shape (N, 27), of the functions at each point."""
        t = (np.atleast_2d(points_mm) - self.origin_mm) / self.knot_spacing_mm
        m = np.floor(t).astype(np.int64)
        u = t - m
        weights = np.stack([(1 - u) ** 2 / 2, (-2 * u**2 + 2 * u + 1) / 2, u**2 / 2])  # (3,N,3)
        indices, values = [], []
        for a in range(3):
            for b in range(3):
                for c in range(3):
                    index = np.ravel_multi_index(
                        (m[:, 0] + a, m[:, 1] + b, m[:, 2] + c), self.counts, mode="clip")
                    indices.append(index)
                    values.append(weights[a, :, 0] * weights[b, :, 1] * weights[c, :, 2])
        return np.stack(indices, axis=1), np.stack(values, axis=1)

    def matrix(self, points_mm: np.ndarray) -> sp.csr_matrix:
        """Sparse (N, K) values of the kept functions at atlas points (mm)."""
        indices, values = self._lattice_entries(points_mm)
        columns = self.position()[indices]
        keep = (columns >= 0) & (values > 0)
        rows = np.broadcast_to(np.arange(len(indices))[:, None], indices.shape)
        return sp.csr_matrix((values[keep], (rows[keep], columns[keep])),
                             shape=(len(indices), self.size))

    def penalty(self) -> np.ndarray:
        """Dense (K, K) second-difference penalty along x, y and z; a difference enters only
        when its three functions are all kept."""
        lattice = self.position().reshape(self.counts)
        rows = []
        for axis in range(3):
            a = np.moveaxis(lattice, axis, 0)
            triples = np.stack([a[:-2], a[1:-1], a[2:]], axis=-1).reshape(-1, 3)
            rows.append(triples[np.all(triples >= 0, axis=1)])
        triples = np.concatenate(rows)
        n = len(triples)
        difference = sp.csr_matrix(
            (np.tile([1.0, -2.0, 1.0], n), (np.repeat(np.arange(n), 3), triples.ravel())),
            shape=(n, self.size))
        return (difference.T @ difference).toarray()


@dataclass
class SpatialFit:
    """A fitted spatial risk model.

    Attributes
    ----------
    basis : SplineBasis
    coefficients : ndarray, shape (K,)
        Spline coefficients of the log-odds field ``f``.
    covariate_effects : ndarray, shape (c,)
        Log-odds per unit of each (centred) covariate.
    covariance : ndarray, shape (K + c, K + c)
        Bayesian posterior covariance of (coefficients, covariate_effects).
    log_lambda : float
        Chosen log smoothing parameter.
    edf : float
        Effective degrees of freedom (field and covariates).
    laml : float
        Negative log marginal likelihood (Laplace) at the chosen smoothness (lower is better).
    search : list of (log_lambda, laml)
        Every smoothness tried.
    simultaneous_z : float
        Critical value of the simultaneous 95 % band (set by :func:`simultaneous_critical`).
    max_edf : float
        The events-per-parameter bound the chosen smoothness respects.
    """

    basis: SplineBasis
    coefficients: np.ndarray
    covariate_effects: np.ndarray
    covariance: np.ndarray
    log_lambda: float
    edf: float
    laml: float
    search: list = field(default_factory=list)
    simultaneous_z: float = float("nan")
    max_edf: float = float("inf")

    def log_odds(self, points_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``f`` and its standard error at atlas points (mm), each shape (N,)."""
        indices, values = self.basis._lattice_entries(points_mm)
        columns = self.basis.position()[indices]
        values = np.where(columns >= 0, values, 0.0)
        columns = np.maximum(columns, 0)
        estimate = np.sum(values * self.coefficients[columns], axis=1)
        k = self.basis.size
        cov = self.covariance[:k, :k]
        variance = np.zeros(len(columns))
        for a in range(columns.shape[1]):
            variance += values[:, a] * np.sum(values * cov[columns[:, a][:, None], columns],
                                              axis=1)
        return estimate, np.sqrt(np.maximum(variance, 0.0))


def _newton(X, Z, y, penalty, theta, max_iter=50, tol=1e-7):
    """Penalised logistic regression by Newton's method with step halving.

    Returns (theta, lower Cholesky factor of the penalised Hessian at convergence, the
    Hessian, log likelihood). The Hessian is the one of the last step, which at convergence
    differs from the final one by a step below the tolerance."""
    design = sp.hstack([X, sp.csr_matrix(Z)]).tocsr() if Z.shape[1] else X
    design_t = design.T.tocsr()

    def objective(t):
        eta = design @ t
        loglik = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
        return loglik, -loglik + 0.5 * t @ penalty @ t, eta

    loglik, value, eta = objective(theta)
    for _ in range(max_iter):
        mu = expit(eta)
        root = sp.diags(np.sqrt(mu * (1 - mu))) @ design
        hessian = (root.T @ root).toarray() + penalty
        chol = la.cholesky(hessian, lower=True, check_finite=False)
        step = la.cho_solve((chol, True), design_t @ (y - mu) - penalty @ theta,
                            check_finite=False)
        for _ in range(30):
            new_loglik, new_value, new_eta = objective(theta + step)
            if new_value <= value + 1e-10 * abs(value):
                break
            step /= 2
        change = abs(value - new_value)
        theta, loglik, value, eta = theta + step, new_loglik, new_value, new_eta
        if change < tol * (abs(value) + 1.0):
            break
    return theta, chol, hessian, loglik


def fit_spatial(footprints: sp.spmatrix, y: np.ndarray, basis_matrix: sp.spmatrix,
                basis: SplineBasis, covariates: np.ndarray | None = None,
                penalty: np.ndarray | None = None, max_edf: float | None = None
                ) -> SpatialFit:
    """Fit the spatial risk model with its smoothness chosen by LAML.

    Parameters
    ----------
    footprints : sparse matrix, shape (n_nodules, n_voxels)
        Each nodule's registered footprint (non-negative; normalised to unit mass here).
    y : ndarray, shape (n_nodules,)
        Outcomes (0/1).
    basis_matrix : sparse matrix, shape (n_voxels, K)
        ``basis.matrix`` at the footprints' voxels.
    basis : SplineBasis
    covariates : ndarray, shape (n_nodules, c), optional
        Adjusting covariates (centred here).
    penalty : ndarray, shape (K, K), optional
        ``basis.penalty()`` (computed when omitted).
    max_edf : float, optional
        Most effective parameters (field and covariates) allowed; default: the rarer
        outcome's count over :data:`EVENTS_PER_PARAMETER`.

    Raises
    ------
    ValueError
        When even the smoothest field needs more parameters than ``max_edf``.
    """
    footprints = sp.csr_matrix(footprints, dtype=np.float64)
    mass = np.asarray(footprints.sum(axis=1)).ravel()
    if np.any(mass <= 0):
        raise ValueError("every nodule needs a footprint with positive mass")
    X = (sp.diags(1.0 / mass) @ footprints @ basis_matrix).tocsr()
    y = np.asarray(y, float)
    Z = np.zeros((len(y), 0)) if covariates is None else np.asarray(covariates, float)
    Z = Z - Z.mean(axis=0) if Z.size else Z
    S = basis.penalty() if penalty is None else penalty
    k, c = S.shape[0], Z.shape[1]
    # Scale lambda so the search range means the same for any cohort size.
    scale = max(float(np.asarray(X.multiply(X).sum())) * 0.25 / max(np.trace(S), 1e-12), 1e-12)
    eigen = np.clip(np.linalg.eigvalsh(S), 0.0, None)
    ridge = RIDGE * scale
    prevalence = np.clip(y.mean(), 1e-3, 1 - 1e-3)
    start = np.concatenate([np.full(k, np.log(prevalence / (1 - prevalence))), np.zeros(c)])
    cache: dict[float, tuple] = {}

    def evaluate(rho: float) -> float:
        rho = float(round(rho, 6))
        if rho in cache:
            return cache[rho][0]
        lam = scale * np.exp(rho)
        penalty_full = np.zeros((k + c, k + c))
        penalty_full[:k, :k] = lam * S + ridge * np.eye(k)
        nearest = min(cache, key=lambda r: abs(r - rho)) if cache else None
        theta0 = cache[nearest][1] if nearest is not None else start
        theta, chol, hessian, loglik = _newton(X, Z, y, penalty_full, theta0)
        log_det_h = 2 * np.sum(np.log(np.diag(chol)))
        log_det_p = np.sum(np.log(lam * eigen + ridge))
        score = (-loglik + 0.5 * theta @ penalty_full @ theta + 0.5 * log_det_h
                 - 0.5 * log_det_p)
        cache[rho] = (score, theta, chol, hessian, penalty_full)
        return score

    # A coarse grid from smooth to rough (warm starts stay stable), then the vertex of the
    # parabola through the best grid point and its neighbours: the criterion is smooth in
    # log lambda, and a few tenths in log lambda change the map very little.
    grid = np.arange(LOG_LAMBDA_RANGE[1], LOG_LAMBDA_RANGE[0] - 1e-9, -LOG_LAMBDA_STEP)
    scores = []
    for rho in grid:
        scores.append(evaluate(rho))
        if len(scores) > 2 and scores[-1] > scores[-2] > scores[-3]:
            break  # past the minimum: rougher fits only get worse
    best = int(np.argmin(scores))
    if 0 < best < len(scores) - 1:
        x = grid[best - 1:best + 2]
        f = np.asarray(scores[best - 1:best + 2])
        curvature = f[0] - 2 * f[1] + f[2]
        if curvature > 0:
            evaluate(x[1] - LOG_LAMBDA_STEP * (f[0] - f[2]) / (2 * curvature))
    # A guard against separation, not a modelling rule: on a small cohort a field with about
    # as many effective parameters as events of the rarer outcome separates the outcomes and
    # the Laplace approximation then favours ever rougher fits. At most one effective
    # parameter per two such events (it never bound in the validation study). Among the
    # smoothness values tried, the best criterion whose effective degrees of freedom respect
    # that bound is kept.
    if max_edf is None:
        max_edf = min(y.sum(), len(y) - y.sum()) / EVENTS_PER_PARAMETER
    identity = np.eye(k + c)
    for rho in sorted(cache, key=lambda r: cache[r][0]):
        score, theta, chol, hessian, penalty_full = cache[rho]
        covariance = la.cho_solve((chol, True), identity, check_finite=False)
        edf = float(np.sum(covariance * (hessian - penalty_full).T))
        if edf <= max_edf:
            break
    else:
        raise ValueError(f"too few outcomes for the spatial model: even the smoothest field "
                         f"has {edf:.0f} effective parameters, more than the {max_edf:.1f} "
                         f"that {min(y.sum(), len(y) - y.sum()):.0f} events of the rarer "
                         f"outcome support ({EVENTS_PER_PARAMETER} per parameter)")
    return SpatialFit(basis, theta[:k], theta[k:], covariance, rho, edf, score,
                      sorted((r, v[0]) for r, v in cache.items()), max_edf=float(max_edf))


def simultaneous_critical(fit: SpatialFit, points_mm: np.ndarray, level: float = 0.95,
                          draws: int = SIMULTANEOUS_DRAWS, seed: int = 0) -> float:
    """Critical value of a simultaneous band for ``f`` over ``points_mm``.

    The ``level`` quantile over posterior draws of ``max |f_draw - f| / se`` (at most
    :data:`SIMULTANEOUS_VOXELS` of the points, a fixed subsample, are used: the field is
    smooth on the knot scale)."""
    rng = np.random.default_rng(seed)
    if len(points_mm) > SIMULTANEOUS_VOXELS:
        points_mm = points_mm[rng.choice(len(points_mm), SIMULTANEOUS_VOXELS, replace=False)]
    _, se = fit.log_odds(points_mm)
    k = fit.basis.size
    chol = la.cholesky(fit.covariance[:k, :k] + 1e-12 * np.eye(k), lower=True,
                       check_finite=False)
    B = fit.basis.matrix(points_mm)
    ok = se > 0
    maxima = np.empty(draws)
    for start in range(0, draws, 250):
        z = rng.standard_normal((k, min(250, draws - start)))
        deviation = np.asarray(B @ (chol @ z))
        maxima[start:start + z.shape[1]] = np.max(np.abs(deviation[ok]) / se[ok, None], axis=0)
    return float(np.quantile(maxima, level))


def risk_maps(fit: SpatialFit, points_mm: np.ndarray, rate: float) -> dict[str, np.ndarray]:
    """The maps of a fit at atlas points (mm), each shape (N,).

    ``probability`` with its pointwise 95 % interval, ``log_odds`` and ``log_odds_se``,
    ``probability_above_rate`` (posterior probability that the risk exceeds ``rate``, the
    cohort rate) and ``significance`` (+1 / -1 where the simultaneous 95 % band lies wholly
    above / below ``rate``, 0 elsewhere)."""
    estimate, se = fit.log_odds(points_mm)
    z = stats.norm.ppf(0.975)
    reference = np.log(rate / (1 - rate))
    with np.errstate(divide="ignore", invalid="ignore"):
        above = stats.norm.cdf((estimate - reference) / se)
    band = fit.simultaneous_z * se
    significance = np.where(estimate - band > reference, 1.0,
                            np.where(estimate + band < reference, -1.0, 0.0))
    return {"probability": expit(estimate), "probability_ci_low": expit(estimate - z * se),
            "probability_ci_high": expit(estimate + z * se), "log_odds": estimate,
            "log_odds_se": se, "probability_above_rate": above, "significance": significance}


def mean_difference(fit: SpatialFit, points_a: np.ndarray, points_b: np.ndarray) -> dict:
    """Difference of the mean log-odds over two sets of atlas points (mm), with its posterior
    standard error and two-sided p: for example one lobe against the mirror image of the other.

    Returns a dict with ``log_odds``, ``se``, ``z`` and ``p``."""
    gradient = (np.asarray(fit.basis.matrix(points_a).mean(axis=0)).ravel()
                - np.asarray(fit.basis.matrix(points_b).mean(axis=0)).ravel())
    k = fit.basis.size
    difference = float(gradient @ fit.coefficients)
    se = float(np.sqrt(max(gradient @ fit.covariance[:k, :k] @ gradient, 0.0)))
    z = difference / se if se > 0 else float("nan")
    return {"log_odds": difference, "se": se, "z": z, "p": float(2 * stats.norm.sf(abs(z)))}
