"""Group contrasts: does LLNM risk differ between two groups of nodules, and where?

The statistics of ``llnm3d aggregate --contrast COLUMN`` (men vs women, two hospitals, two
ultrasound vendors). ``COLUMN`` is a column of the registered nodules' QC table (``sex``),
``source`` (which registered folder a nodule came from), or a manifest column joined on the
nodule key with :func:`manifest_column`. Its two levels are sorted as text: level A is the
first, level B the second, and every difference is B minus A.

Two approaches:

- **How large is the difference, where?** The spatial risk model (:mod:`.spatial`: unit-mass
  footprints, LAML smoothness) is fitted to each group separately on one spline basis (the
  basis of all the contrasted nodules' footprints), giving two independent Gaussian
  posteriors of the log-odds fields ``f_A`` and ``f_B``. :func:`difference_maps` reports
  ``sigmoid(f_B) - sigmoid(f_A)`` on the probability scale with a pointwise 95 % interval
  (:func:`difference_interval`), the posterior probability that B's risk exceeds A's, and
  where a simultaneous 95 % band of ``f_B - f_A`` excludes 0 (:func:`difference_critical`):
  the model's family-wise answer.
- **Is there a difference anywhere, family-wise, without the model?** The voxelwise
  permutation t-test of the outcome x group interaction (:func:`interaction_design`): does
  the association between a voxel's weight and the outcome differ between the groups? It
  assumes no smoothness and is less powerful (docs/risk-model.md, "Group contrasts").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from scipy.special import expit, ndtri
from scipy.stats import qmc

from ..atlas import Atlas
from ..io import InputError
from ..manifest import read_manifest
from ..registration.cohort import nodule_key
from .spatial import SIMULTANEOUS_DRAWS, SIMULTANEOUS_VOXELS, SpatialFit, SplineBasis, fit_spatial

# Each level needs this many nodules of each outcome: with fewer, neither the level's risk
# map nor the within-level weight-outcome association (the interaction test) is estimable.
# Five of each lets the test run; the spatial model usually needs about 20 events of the
# rarer outcome per level (its smoothest field has about 10 free parameters) and otherwise
# reports the level as not fitted.
MIN_PER_OUTCOME = 5
# The interval of the difference comes from these quasi-random (scrambled Sobol) draws of the
# two posteriors, the same draws at every voxel, so the interval map is smooth and
# reproducible. Against the quantiles of 4 million random draws, 1024 put both bounds within
# 2 % of the interval's half-width on skewed, wide and narrow posteriors (tests/test_contrast.py
# checks 3 % against a million); 4096 within 1 %, at four times the cost (1024: 0.8 s per
# 40,000 voxels on one idle core).
DIFFERENCE_DRAWS = 1024
DRAWS_SEED = 0
CHUNK_VOXELS = 2048
LEVELS_SHOWN = 6
# The maps of :func:`difference_maps`: description (summary.json, sidecars) and (kind, units)
# as in :data:`.map_info.MAP_KINDS`, for ``aggregate`` to add to its own.
MAP_DESCRIPTIONS = {
    "contrast_probability_a": "group contrast: LLNM risk map of level A (the first level, "
                              "summary.json: contrast)",
    "contrast_probability_b": "group contrast: LLNM risk map of level B (the second level)",
    "contrast_difference": "group contrast: risk of level B minus level A",
    "contrast_difference_ci_low": "its pointwise 95 % interval, lower bound",
    "contrast_difference_ci_high": "its pointwise 95 % interval, upper bound",
    "contrast_probability_b_above_a": "group contrast: posterior probability that level B's "
                                      "risk exceeds level A's",
    "contrast_significance": "group contrast: +1 / -1 where the simultaneous 95 % band of the "
                             "log-odds difference lies wholly above / below 0 (family-wise), "
                             "0 elsewhere",
    "contrast_n_nodules_a": "group contrast: level A's nodules touching the voxel",
    "contrast_n_nodules_b": "group contrast: level B's nodules touching the voxel",
}
_DIFFERENCE_UNITS = "probability difference (-1 to 1)"
MAP_KINDS = {
    "contrast_probability_a": ("probability", "probability (0-1)"),
    "contrast_probability_b": ("probability", "probability (0-1)"),
    "contrast_difference": ("estimate", _DIFFERENCE_UNITS),
    "contrast_difference_ci_low": ("estimate", _DIFFERENCE_UNITS),
    "contrast_difference_ci_high": ("estimate", _DIFFERENCE_UNITS),
    "contrast_probability_b_above_a": ("probability", "probability (0-1)"),
    "contrast_significance": ("estimate", "+1 B above / -1 B below A, 0 neither"),
    "contrast_n_nodules_a": ("estimate", "nodules"),
    "contrast_n_nodules_b": ("estimate", "nodules"),
}


class ContrastGroups(NamedTuple):
    """The two groups of a contrast.

    Attributes
    ----------
    g : ndarray of float, shape (n,)
        1 for level B (the second), 0 for level A; 0 also where ``usable`` is False.
    levels : tuple of (str, str)
        Level A and level B, sorted as text.
    usable : ndarray of bool, shape (n,)
        Nodules with a value of the column (missing and empty values are left out).
    """

    g: np.ndarray
    levels: tuple[str, str]
    usable: np.ndarray


def contrast_values(values: pd.Series) -> pd.Series:
    """A column's values as stripped text, "" where missing (NaN, None, empty); whole
    numbers without a decimal point (``1.0`` -> ``"1"``), so a numeric code reads as written."""
    def text(value) -> str:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return ""
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value).strip()
    return values.map(text)


def contrast_groups(nodules: pd.DataFrame, column: str,
                    min_per_outcome: int = MIN_PER_OUTCOME) -> ContrastGroups:
    """The two levels of ``column`` among ``nodules`` and each nodule's group.

    Parameters
    ----------
    nodules : pandas.DataFrame
        The included nodules, one row each, with ``label`` (0/1) and ``column``.
    column : str
        The grouping column; nodules whose value is missing or empty are left out.
    min_per_outcome : int
        Nodules of each outcome each level needs (:data:`MIN_PER_OUTCOME`).

    Raises
    ------
    InputError
        When the column is absent, when its values do not form exactly two levels, or when
        a level has fewer than ``min_per_outcome`` nodules of either outcome (the message
        names the column and each level with its counts).
    """
    if column not in nodules.columns:
        raise InputError(f"contrast column {column!r} is not a column of the nodules' table")
    values = contrast_values(nodules[column]).to_numpy()
    usable = values != ""
    y = nodules["label"].to_numpy(float)
    levels = sorted(set(values[usable]))
    found = ", ".join(f"{level!r} ({int(np.sum(values == level))} nodules)"
                      for level in levels[:LEVELS_SHOWN])
    if len(levels) > LEVELS_SHOWN:
        found += f", ... ({len(levels)} levels)"
    if len(levels) != 2:
        raise InputError(f"contrast column {column!r} needs exactly two levels among the "
                         f"included nodules with a value, found {len(levels)}"
                         f"{': ' + found if levels else ''}")
    for level in levels:
        events = int(np.sum(y[values == level] == 1))
        others = int(np.sum(y[values == level] == 0))
        if min(events, others) < min_per_outcome:
            raise InputError(f"contrast column {column!r}: level {level!r} has {events} nodules "
                             f"with LLNM and {others} without; each level needs at least "
                             f"{min_per_outcome} of each outcome (levels: {found})")
    g = (values == levels[1]).astype(float)
    return ContrastGroups(g, (levels[0], levels[1]), usable)


def manifest_column(manifest_path: str | Path, column: str) -> pd.Series:
    """One manifest column per nodule, to join onto the registered nodules by key.

    Returns
    -------
    pandas.Series of str
        Indexed by nodule key (``<patient_id>-N<nodule_id>``, as in ``qc.csv``), named
        ``column``: the value of the nodule's rows ("" when every row's cell is empty; empty
        cells beside a value are ignored). Join with
        ``nodules[column] = nodules["nodule"].map(series)``.

    Raises
    ------
    InputError
        When the manifest lacks the column, or the rows of a nodule hold different values
        (the message names the nodules and their values).
    """
    table = read_manifest(manifest_path).table
    if column not in table.columns:
        raise InputError(f"{manifest_path}: manifest has no column {column!r} for the contrast")
    keys = [nodule_key(p, n) for p, n in zip(table["patient_id"], table["nodule_id"], strict=True)]
    values = pd.Series(contrast_values(table[column]).to_numpy(), index=keys, name=column)
    filled = values[values != ""]
    distinct = filled.groupby(level=0).unique()
    disagree = distinct[distinct.map(len) > 1]
    if len(disagree):
        listed = "; ".join(f"{key} ({', '.join(repr(v) for v in sorted(found))})"
                           for key, found in disagree.iloc[:3].items())
        more = f" and {len(disagree) - 3} more" if len(disagree) > 3 else ""
        raise InputError(f"{manifest_path}: column {column!r} differs between the rows of "
                         f"nodule(s) {listed}{more}; one nodule needs one value")
    first = distinct.map(lambda found: found[0])
    return first.reindex(pd.unique(values.index), fill_value="").rename(column)


def interaction_design(y: np.ndarray, g: np.ndarray, covariates: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
    """The tested variable and confounds of the outcome x group interaction test.

    For ``OLSDesign(weights, tested, confounds)``: at each voxel the nodules' weights are
    regressed on ``y``, ``g``, ``y * g``, the covariates and an intercept, and the t of
    ``y * g`` is tested. OLSDesign residualises the tested variable on the confounds plus
    an intercept, so the interaction is tested adjusted for both main effects: the outcome
    (where LLNM nodules lie in both groups) and the group (where the groups' nodules lie).
    A positive t says the weight-outcome association at the voxel is stronger in level B
    than in level A (footprints of B's LLNM nodules gather there more than A's do); its
    permutations (Freedman-Lane, as for the outcome's t) give family-wise p.

    Parameters
    ----------
    y : ndarray, shape (n,)
        Outcomes (0/1) of the contrasted nodules.
    g : ndarray, shape (n,)
        Group (0 level A, 1 level B).
    covariates : ndarray, shape (n, c), optional
        Other confounds.

    Returns
    -------
    tested : ndarray, shape (n,)
        ``y * g``.
    confounds : ndarray, shape (n, 2 + c)
        ``y``, ``g`` and the covariates.
    """
    y, g = np.asarray(y, float), np.asarray(g, float)
    columns = [y[:, None], g[:, None]]
    if covariates is not None and np.size(covariates):
        columns.append(np.asarray(covariates, float).reshape(len(y), -1))
    return y * g, np.hstack(columns)


def difference_interval(estimate_a: np.ndarray, se_a: np.ndarray, estimate_b: np.ndarray,
                        se_b: np.ndarray, level: float = 0.95, draws: int = DIFFERENCE_DRAWS,
                        seed: int = DRAWS_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise interval of ``sigmoid(f_B) - sigmoid(f_A)`` for independent Gaussian
    posteriors ``f_A ~ N(estimate_a, se_a^2)``, ``f_B ~ N(estimate_b, se_b^2)`` (log-odds),
    each array shape (N,).

    The equal-tailed ``level`` quantiles of the difference over ``draws`` quasi-random
    posterior draws (scrambled Sobol, a power of two; :data:`DIFFERENCE_DRAWS`).
    Draws rather than the delta method: the posterior of a probability is skewed wherever
    the risk is near 0 or 1 or the log-odds are uncertain (sparse voxels), and the delta
    method's symmetric interval there is too narrow on one side and can leave [-1, 1]; the
    quantiles of the draws are those of the posterior itself, as ``sigmoid(f +- 1.96 se)``
    is for one group. The same draws serve every voxel.

    Returns
    -------
    low, high : ndarray, shape (N,)
        NaN where either input is NaN.
    """
    uniform = qmc.Sobol(2, scramble=True, seed=seed).random(draws)
    # Single precision halves the time; its rounding (1e-7) is far below the draws' error.
    z_a, z_b = ndtri(uniform).T.astype(np.float32)
    alpha = (1 - level) / 2
    low, high = np.empty(len(estimate_a)), np.empty(len(estimate_a))
    for start in range(0, len(estimate_a), CHUNK_VOXELS):
        part = slice(start, start + CHUNK_VOXELS)
        column = [np.asarray(v[part], np.float32)[:, None]
                  for v in (estimate_a, se_a, estimate_b, se_b)]
        difference = expit(column[2] + column[3] * z_b) - expit(column[0] + column[1] * z_a)
        low[part], high[part] = np.quantile(difference, [alpha, 1 - alpha], axis=1)
    missing = ~np.isfinite(estimate_a + se_a + estimate_b + se_b)
    return np.where(missing, np.nan, low), np.where(missing, np.nan, high)


def group_log_odds(fit: SpatialFit, points_mm: np.ndarray, shift: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """A group's log-odds field and its posterior standard error at atlas points (mm), each
    shape (N,), at covariates ``shift`` away from the group's own covariate mean (the
    pooled mean minus the group's, shape (c,); None: at the group's mean)."""
    estimate, se = fit.log_odds(points_mm)
    if shift is None or not len(fit.covariate_effects):
        return estimate, se
    k = fit.basis.size
    basis = fit.basis.matrix(points_mm)
    # Var(b.f + s.gamma) = b' S_ff b + 2 b' S_fg s + s' S_gg s
    cross = np.asarray(basis @ (fit.covariance[:k, k:] @ shift)).ravel()
    variance = se**2 + 2 * cross + shift @ fit.covariance[k:, k:] @ shift
    return estimate + shift @ fit.covariate_effects, np.sqrt(np.maximum(variance, 0.0))


def _posterior_rows(fit: SpatialFit, points_mm: np.ndarray, shift: np.ndarray | None
                    ) -> tuple[sp.csr_matrix, np.ndarray]:
    """Rows mapping a fit's parameters to its log-odds at the points (shifted covariates
    included) and the lower Cholesky factor of their posterior covariance."""
    k = fit.basis.size
    rows = fit.basis.matrix(points_mm)
    size = k
    if shift is not None and len(fit.covariate_effects):
        rows = sp.hstack([rows, sp.csr_matrix(np.tile(shift, (len(points_mm), 1)))]).tocsr()
        size = k + len(shift)
    covariance = fit.covariance[:size, :size]
    chol = np.linalg.cholesky(covariance + 1e-12 * np.eye(size))
    return rows, chol


def difference_critical(fit_a: SpatialFit, fit_b: SpatialFit, points_mm: np.ndarray,
                        shift_a: np.ndarray | None = None, shift_b: np.ndarray | None = None,
                        level: float = 0.95, draws: int = SIMULTANEOUS_DRAWS, seed: int = 0
                        ) -> float:
    """Critical value of a simultaneous band for ``f_B - f_A`` over ``points_mm`` (N, 3).

    As :func:`.spatial.simultaneous_critical` for one field: the ``level`` quantile, over
    joint draws of the two independent posteriors, of ``max |d_draw - d| / se_d`` with
    ``d = f_B - f_A`` and ``se_d = sqrt(se_A^2 + se_B^2)`` (at most
    :data:`.spatial.SIMULTANEOUS_VOXELS` of the points, a fixed subsample). ``shift_a`` and
    ``shift_b`` are as in :func:`group_log_odds`."""
    rng = np.random.default_rng(seed)
    if len(points_mm) > SIMULTANEOUS_VOXELS:
        points_mm = points_mm[rng.choice(len(points_mm), SIMULTANEOUS_VOXELS, replace=False)]
    rows_a, chol_a = _posterior_rows(fit_a, points_mm, shift_a)
    rows_b, chol_b = _posterior_rows(fit_b, points_mm, shift_b)
    se = np.hypot(group_log_odds(fit_a, points_mm, shift_a)[1],
                  group_log_odds(fit_b, points_mm, shift_b)[1])
    ok = se > 0
    maxima = np.empty(draws)
    for start in range(0, draws, 250):
        size = min(250, draws - start)
        deviation = (np.asarray(rows_b @ (chol_b @ rng.standard_normal((chol_b.shape[0], size))))
                     - np.asarray(rows_a @ (chol_a @ rng.standard_normal((chol_a.shape[0], size)))))
        maxima[start:start + size] = np.max(np.abs(deviation[ok]) / se[ok, None], axis=0)
    return float(np.quantile(maxima, level))


def difference_maps(footprints: sp.spmatrix, y: np.ndarray, g: np.ndarray,
                    points_mm: np.ndarray, covered: np.ndarray,
                    covariates: np.ndarray | None = None, levels: tuple[str, str] = ("A", "B"),
                    min_cases: int = 10) -> tuple[dict[str, np.ndarray], dict]:
    """The spatial risk model fitted to each group, and their difference, at atlas points.

    Parameters
    ----------
    footprints : sparse matrix, shape (n_nodules, n_points)
        The contrasted nodules' footprints at ``points_mm`` (unit mass is taken here).
    y, g : ndarray, shape (n_nodules,)
        Outcomes (0/1) and groups (0 level A, 1 level B).
    points_mm : ndarray, shape (n_points, 3)
        Atlas points (mm) of the maps.
    covered : ndarray of bool, shape (n_points,)
        Points any footprint touches; the shared spline basis covers them.
    covariates : ndarray, shape (n_nodules, c), optional
        Adjusting covariates; each group's map is evaluated at the pooled mean of the
        contrasted nodules, so the difference is not one of covariate composition.
    levels : (str, str)
        Names of levels A and B, for the record.
    min_cases : int
        The simultaneous band spans the points touched by at least this many nodules of
        each group (aggregate's ``--min-cases``).

    Returns
    -------
    maps : dict of str -> ndarray, shape (n_points,)
        ``contrast_probability_a`` / ``_b`` (each group's risk), ``contrast_difference``
        (B minus A, probability scale) with ``contrast_difference_ci_low`` / ``_high``
        (pointwise 95 %), ``contrast_probability_b_above_a`` (posterior probability that
        B's risk exceeds A's), ``contrast_significance`` (+1 / -1 where the simultaneous
        95 % band of ``f_B - f_A`` lies wholly above / below 0, 0 elsewhere on the band's
        points, NaN off them),
        ``contrast_n_nodules_a`` / ``_b`` (nodules touching each point). A group whose fit
        fails has NaN maps (and so have the difference and the significance).
    record : dict
        Levels, counts, each group's smoothness or why it was not fitted, the interval's
        method, and ``notes``.
    """
    footprints = sp.csr_matrix(footprints)
    y, g = np.asarray(y, float), np.asarray(g, float)
    basis = SplineBasis.covering(points_mm[covered])
    basis_matrix = basis.matrix(points_mm)
    penalty = basis.penalty()
    pooled = None if covariates is None else np.asarray(covariates, float).reshape(len(y), -1)
    maps: dict[str, np.ndarray] = {}
    fields: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    fits: dict[str, tuple[SpatialFit, np.ndarray | None]] = {}
    record: dict[str, Any] = {"levels": list(levels), "groups": {}, "notes": []}
    for suffix, level, member in (("a", levels[0], g == 0), ("b", levels[1], g == 1)):
        touched = (footprints[member] > 0).astype(np.float64)
        maps[f"contrast_n_nodules_{suffix}"] = np.asarray(touched.sum(axis=0)).ravel()
        group: dict[str, Any] = {"nodules": int(member.sum()), "events": int(y[member].sum())}
        z = None if pooled is None else pooled[member]
        try:
            fit = fit_spatial(footprints[member], y[member], basis_matrix, basis, z, penalty)
        except ValueError as exc:  # too few outcomes in this group for the spatial model
            group["not_fitted"] = str(exc)
            record["notes"].append(f"level {level!r}: {exc}; its map and the difference are "
                                   "not shown")
            fields[suffix] = (np.full(len(points_mm), np.nan),) * 2
        else:
            # z is None exactly when pooled is.
            shift = None if z is None or pooled is None else pooled.mean(axis=0) - z.mean(axis=0)
            fits[suffix] = (fit, shift)
            fields[suffix] = group_log_odds(fit, points_mm, shift)
            group.update(log_lambda=float(fit.log_lambda), edf=float(fit.edf),
                         max_edf=float(fit.max_edf), laml=float(fit.laml))
        maps[f"contrast_probability_{suffix}"] = expit(fields[suffix][0])
        record["groups"][level] = group
    (estimate_a, se_a), (estimate_b, se_b) = fields["a"], fields["b"]
    maps["contrast_difference"] = maps["contrast_probability_b"] - maps["contrast_probability_a"]
    maps["contrast_difference_ci_low"], maps["contrast_difference_ci_high"] = (
        difference_interval(estimate_a, se_a, estimate_b, se_b))
    with np.errstate(invalid="ignore", divide="ignore"):
        maps["contrast_probability_b_above_a"] = stats.norm.cdf(
            (estimate_b - estimate_a) / np.hypot(se_a, se_b))
    band = ((maps["contrast_n_nodules_a"] >= min_cases)
            & (maps["contrast_n_nodules_b"] >= min_cases))
    critical = float("nan")
    if len(fits) == 2 and band.any():
        (fit_a, shift_a), (fit_b, shift_b) = fits["a"], fits["b"]
        critical = difference_critical(fit_a, fit_b, points_mm[band], shift_a, shift_b)
    difference, margin = estimate_b - estimate_a, critical * np.hypot(se_a, se_b)
    # Outside the band's points the band says nothing: NaN, not 0.
    maps["contrast_significance"] = np.where(
        np.isnan(difference + margin) | ~band, np.nan,
        np.where(difference - margin > 0, 1.0, np.where(difference + margin < 0, -1.0, 0.0)))
    record.update(difference="level B minus level A, probability scale",
                  interval=f"pointwise 95 %, quantiles of {DIFFERENCE_DRAWS} quasi-random "
                           "draws of the two independent posteriors",
                  draws=DIFFERENCE_DRAWS, seed=DRAWS_SEED,
                  simultaneous_z=critical if np.isfinite(critical) else None,
                  simultaneous_voxels=int(band.sum()), min_cases=int(min_cases),
                  knot_spacing_mm=basis.knot_spacing_mm, basis_functions=basis.size)
    return maps, record


def estimate_contrast(footprints: sp.spmatrix, nodules: pd.DataFrame, column: str,
                      atlas: Atlas, domain: np.ndarray, covered: np.ndarray,
                      covariates: np.ndarray | None = None, min_cases: int = 10
                      ) -> tuple[dict, dict]:
    """The group contrast's maps on the analysis domain, as :func:`.maps.estimate_risk`.

    Parameters
    ----------
    footprints : sparse matrix, shape (n_domain, n_nodules)
        Each included nodule's footprint on the domain (:func:`.maps.weight_matrix`).
    nodules : pandas.DataFrame
        One row per footprint column, with ``label`` and ``column``.
    column : str
        The grouping column (:func:`contrast_groups`; nodules without a value are left out).
    atlas : Atlas
    domain : ndarray of int
        Flat atlas indices of the domain voxels.
    covered : ndarray of bool, shape (n_domain,)
        Voxels touched by any footprint.
    covariates : ndarray, shape (n_nodules, c), optional
        Adjusting covariates (rows as ``nodules``).
    min_cases : int
        As :func:`difference_maps`.

    Returns
    -------
    maps : dict of str -> ndarray, shape (n_domain,)
        As :func:`difference_maps`.
    record : dict
        For summary.json: the column, levels A and B, each level's counts and fit, the
        nodules left out for a missing value, notes.

    Raises
    ------
    InputError
        From :func:`contrast_groups`.
    """
    groups = contrast_groups(nodules, column)
    usable = groups.usable
    k, j, i = np.unravel_index(domain, atlas.labels.shape)
    points = atlas.voxel_to_world(np.stack([i, j, k], axis=1))
    columns = sp.csc_matrix(footprints)[:, np.flatnonzero(usable)]
    z = None if covariates is None else np.asarray(covariates, float)[usable]
    maps, record = difference_maps(columns.T, nodules["label"].to_numpy(float)[usable],
                                   groups.g[usable], points, covered, z, groups.levels,
                                   min_cases)
    record = {"column": column, "level_a": groups.levels[0], "level_b": groups.levels[1],
              "missing_value": int((~usable).sum()), **record}
    return maps, record
