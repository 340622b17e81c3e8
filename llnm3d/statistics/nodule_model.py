"""Nodule-level logistic models of LLNM: adjusted odds ratios by capsule distance.

``capsule_distance.csv`` gives raw proportions per capsule-distance bin; this module fits the
logistic regressions a reviewer asks for, on the same nodules and the same left-closed bins
(:data:`~llnm3d.statistics.tables.DEFAULT_BINS_MM`), each adjusted for region (lobe third,
isthmus), size, age and sex:

``capsule_bins``
    one odds ratio per capsule-distance bin against a reference bin;
``capsule_trend``
    the bin index (0 nearest the capsule, 1, 2, ...) as an ordinal score: the odds ratio per
    bin step away from the capsule and the p-value of the trend test;
``capsule_continuous``
    the capsule distance itself: the odds ratio per 1 mm farther from the capsule.

Nodules of one patient are correlated, so standard errors are cluster-robust by
``patient_id`` when at least :data:`MIN_PATIENTS_CLUSTERED` patients enter a model, and
model-based otherwise. A model that cannot be estimated honestly (too few events per
parameter, separation, a singular design) gives NaN rows and a note saying why instead of
absurd odds ratios. The reasoning and how to read the table: docs/nodule-model.md.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
import pandas as pd
import statsmodels.api as sm
from scipy import stats
from statsmodels.tools.sm_exceptions import PerfectSeparationError, PerfectSeparationWarning

from ..atlas import ISTHMUS, THIRD_NAMES
from ..checks import check_choice
from .tables import DEFAULT_BINS_MM, check_bin_edges

MODELS = ("capsule_bins", "capsule_trend", "capsule_continuous")
COVARIATES = ("region", "size", "age", "sex")
TABLE_COLUMNS = ["model", "term", "level", "contrast", "odds_ratio", "ci_low", "ci_high", "p",
                 "level_nodules", "level_events", "nodules", "events", "excluded_nodules",
                 "covariance", "status"]
# Peduzzi et al. (1996): fewer than 10 events of the rarer outcome per estimated coefficient
# bias logistic coefficients and their intervals; below that floor a model is not fitted.
MIN_EVENTS_PER_PARAMETER = 10
# Cluster-robust (sandwich) variances are too small with few clusters; below this many
# patients the model-based variance is used (and the table says so).
MIN_PATIENTS_CLUSTERED = 50
# A reference level needs this many nodules of each outcome and this share of the model's
# nodules, so that the term's odds ratios are not dominated by the reference's own sampling
# error, and the reference does not flip between cohorts on a handful of nodules (the 5-10 mm
# bin of a phantom holds about 1.5 % of them).
MIN_REFERENCE_OUTCOMES = 10
MIN_REFERENCE_SHARE = 0.1
# Finite estimates beyond these only arise from (quasi-)separation or a near-singular design:
# an odds ratio of e^10 = 22,000 per mm or per bin, or a 95 % interval spanning 10^8.
MAX_ABS_LOG_ODDS_RATIO = 10.0
MAX_STANDARD_ERROR = 5.0
Z_95 = float(stats.norm.ppf(0.975))
SIZE_RANGE_MM = (0.0, 100.0)
AGE_RANGE_YEARS = (0.0, 120.0)
REGION_LEVELS = (*THIRD_NAMES.values(), "isthmus")


@dataclass(frozen=True)
class Term:
    """One term of a model, read from a column of the prepared nodule table.

    Attributes
    ----------
    name : str
        Name shown in the table's ``term`` column.
    column : str
        Column of the prepared table; missing values are NaN (numeric) or None (categorical).
    levels : tuple of str
        Categorical levels in display order; empty for a numeric term.
    reference : tuple of str
        Categorical: levels in order of preference as reference (see :func:`_choose_reference`).
    per : float
        Numeric: the odds ratio is given per this many units of the column.
    contrast : str
        Numeric: the contrast's wording (``per 1 mm``).
    required : bool
        The model's term of interest: if it cannot be estimated, neither can the model.
    """

    name: str
    column: str
    levels: tuple[str, ...] = ()
    reference: tuple[str, ...] = ()
    per: float = 1.0
    contrast: str = ""
    required: bool = False

    @property
    def categorical(self) -> bool:
        return bool(self.levels)


COVARIATE_TERMS = {
    "region": Term("region", "region_level", REGION_LEVELS,
                   reference=("lower", "middle", "upper", "isthmus")),
    "size": Term("size", "size_mm", per=1.0, contrast="per 1 mm larger diameter"),
    "age": Term("age", "age_years", per=10.0, contrast="per 10 years older"),
    "sex": Term("sex", "sex_level", ("F", "M"), reference=("F", "M")),
}


def nodule_model_table(nodules: pd.DataFrame, bins_mm=DEFAULT_BINS_MM,
                       covariates=COVARIATES) -> tuple[pd.DataFrame, list[str]]:
    """Adjusted odds ratios of LLNM by capsule distance: bins, trend and continuous models.

    Parameters
    ----------
    nodules : DataFrame, one row per included nodule
        Columns ``label`` (0/1), ``capsule_distance_mm`` (registered nodule edge to capsule,
        mm), ``region`` (atlas region code: lobe * 10 + third, or the isthmus),
        ``diameter_mm``, ``age`` (years), ``sex`` (``F``/``M``) and ``patient_id``. A nodule
        whose value of a used column is missing or invalid (a capsule distance outside the
        bins, a region code outside the gland, an age outside 0-120 years) is left out of
        the models and counted.
    bins_mm : sequence of float
        Capsule-distance bin edges (mm), left-closed, as in ``capsule_distance.csv`` (see
        :func:`~llnm3d.statistics.tables.check_bin_edges`).
    covariates : sequence of str
        Adjusting covariates, a subset of :data:`COVARIATES`: ``region`` (categorical: upper,
        middle, lower third, isthmus; reference lower), ``size`` (diameter, per 1 mm),
        ``age`` (per 10 years), ``sex`` (M vs F).

    Returns
    -------
    table : DataFrame
        One row per model, term and level (columns :data:`TABLE_COLUMNS`), in the order of
        :data:`MODELS`, the capsule term first, then the covariates as given, levels in
        display order. ``status`` says what each row is: ``estimated``, ``reference``,
        ``no nodules``, ``single outcome``, ``not adjusted`` or ``not estimated``.
    notes : list of str
        What a reader must know: exclusions, reference choices, the covariance used,
        levels left out, and why a model was not estimated.
    """
    edges = check_bin_edges(bins_mm)
    covariates = list(dict.fromkeys(check_choice("covariate", name, COVARIATES)
                                    for name in covariates))
    frame = prepare_nodules(nodules, edges)
    adjust = [COVARIATE_TERMS[name] for name in covariates]
    bin_names = tuple(bin_name(low, high) for low, high in pairwise(edges))
    capsule_terms = {
        "capsule_bins": Term("capsule_distance", "capsule_bin", bin_names,
                             reference=bin_names[::-1], required=True),
        "capsule_trend": Term("capsule_distance_trend", "capsule_bin_index", per=1.0,
                              contrast="per bin farther from the capsule", required=True),
        "capsule_continuous": Term("capsule_distance", "capsule_distance_mm", per=1.0,
                                   contrast="per 1 mm farther from the capsule",
                                   required=True),
    }
    tables, notes = [], []
    for model in MODELS:
        table, model_notes = fit_model(model, frame, [capsule_terms[model], *adjust])
        tables.append(table)
        notes += model_notes
    return pd.concat(tables, ignore_index=True), notes


def bin_name(low_mm: float, high_mm: float) -> str:
    """The name of a capsule-distance bin, as in ``capsule_distance.csv``."""
    return f">= {low_mm:g} mm" if np.isinf(high_mm) else f"{low_mm:g}-{high_mm:g} mm"


def prepare_nodules(nodules: pd.DataFrame, edges_mm: np.ndarray) -> pd.DataFrame:
    """The model columns of every nodule, invalid values made missing.

    Returns a table with ``label`` (0.0/1.0 or NaN), ``capsule_distance_mm``,
    ``capsule_bin`` (bin name), ``capsule_bin_index`` (0 = nearest the capsule),
    ``region_level``, ``size_mm``, ``age_years``, ``sex_level`` and ``cluster`` (the
    patient id; a nodule without one is its own cluster). Missing categorical values are
    None, missing numbers NaN.
    """
    label = _numbers(nodules, "label")
    distance = _numbers(nodules, "capsule_distance_mm")
    index = np.searchsorted(edges_mm, distance.to_numpy(), side="right") - 1
    in_bins = distance.notna().to_numpy() & (index >= 0) & (index < len(edges_mm) - 1)
    names = [bin_name(low, high) for low, high in pairwise(edges_mm)]
    code = _numbers(nodules, "region")
    size = _numbers(nodules, "diameter_mm")
    age = _numbers(nodules, "age")
    sex = nodules["sex"] if "sex" in nodules else pd.Series(None, index=nodules.index)
    patient = (nodules["patient_id"].astype("string") if "patient_id" in nodules
               else pd.Series(pd.NA, index=nodules.index, dtype="string"))
    # A nodule without a patient id shares no patient with any other.
    own = pd.Series([f"\0nodule {i}" for i in range(len(nodules))], index=nodules.index)
    patient = patient.where(patient.notna() & (patient.str.strip() != ""), own)
    return pd.DataFrame({
        "label": label.where(label.isin((0.0, 1.0))),
        "capsule_distance_mm": distance.where(in_bins),
        "capsule_bin": pd.Series([names[i] if ok else None
                                  for i, ok in zip(index, in_bins, strict=True)],
                                 index=nodules.index, dtype=object),
        "capsule_bin_index": pd.Series(np.where(in_bins, index, np.nan), index=nodules.index),
        "region_level": code.map(_region_level).astype(object),
        "size_mm": size.where((size > SIZE_RANGE_MM[0]) & (size <= SIZE_RANGE_MM[1])),
        "age_years": age.where(age.between(*AGE_RANGE_YEARS)),
        "sex_level": sex.where(sex.isin(("F", "M")), None).astype(object),
        "cluster": patient.astype(str),
    }).reset_index(drop=True)


def fit_model(model: str, frame: pd.DataFrame, terms: list[Term]
              ) -> tuple[pd.DataFrame, list[str]]:
    """Fit one logistic regression of ``frame["label"]`` on ``terms``.

    Parameters
    ----------
    model : str
        The model's name, in the table's ``model`` column and at the start of its notes.
    frame : DataFrame
        Prepared nodules (:func:`prepare_nodules`, or any table with ``label``, ``cluster``
        and the terms' columns).
    terms : list of Term
        The terms, the term of interest (``required``) first.

    Returns
    -------
    table : DataFrame
        The model's rows (columns :data:`TABLE_COLUMNS`).
    notes : list of str
        Exclusions, references, covariance, and why anything was not estimated.
    """
    notes = []
    missing = {term.name: frame[term.column].isna() for term in terms}
    missing["outcome"] = frame["label"].isna()
    left_out = np.logical_or.reduce(list(missing.values()))
    if left_out.any():
        reasons = ", ".join(f"{name} {int(m.sum())}" for name, m in missing.items() if m.any())
        notes.append(f"{model}: {int(left_out.sum())} of {len(frame)} nodules left out for "
                     f"missing or invalid values ({reasons})")
    complete = frame[~left_out]
    data, terms, kept, level_status, level_notes = _usable_levels(model, complete, terms)
    notes += level_notes
    nodules, events = len(data), int(data["label"].sum()) if len(data) else 0
    context = {"model": model, "nodules": nodules, "events": events,
               "excluded_nodules": len(frame) - nodules}
    refusal = _refusal(data, kept, len(complete))
    if refusal:
        notes.append(f"{model}: not estimated: {refusal}")
        return _rows(context, terms, level_status, data, complete, None, "not estimated"), notes
    design, columns = _design(data, kept)
    clusters = data["cluster"].nunique()
    clustered = clusters >= MIN_PATIENTS_CLUSTERED
    covariance = "cluster-robust (patient)" if clustered else "model-based"
    fit, fit_notes = _fit(data["label"].to_numpy(float), design, data["cluster"], clustered)
    notes += [f"{model}: {text}" for text in fit_notes]
    problem = _estimate_problem(fit, columns)
    if problem:
        notes.append(f"{model}: not estimated: {problem}")
        return _rows(context, terms, level_status, data, complete, None, "not estimated"), notes
    notes.append(f"{model}: {nodules} nodules, {events} events, {clusters} patients; "
                 f"{covariance} standard errors"
                 + ("" if clustered else f" (fewer than {MIN_PATIENTS_CLUSTERED} patients)"))
    estimates = {name: (fit.params[i], fit.bse[i]) for i, name in enumerate(columns)}
    return _rows({**context, "covariance": covariance}, terms, level_status, data, complete,
                 estimates, "estimated"), notes


def _numbers(table: pd.DataFrame, column: str) -> pd.Series:
    """A column as floats, anything that is not a finite number NaN (absent column: all NaN)."""
    if column not in table:
        return pd.Series(np.nan, index=table.index)
    values = pd.to_numeric(table[column].replace("", np.nan), errors="coerce").astype(float)
    return values.where(np.isfinite(values))


def _region_level(code: float) -> str | None:
    """Lobe third (``upper``/``middle``/``lower``) or ``isthmus`` of an atlas region code;
    None outside the gland or for an unknown code."""
    if not np.isfinite(code) or code != int(code):
        return None
    part, third = divmod(int(code), 10)
    if part == ISTHMUS and third == 0:
        return "isthmus"
    return THIRD_NAMES.get(third) if part in (1, 2) else None


def _usable_levels(model: str, data: pd.DataFrame, terms: list[Term]):
    """Drop categorical levels that cannot be estimated, and terms left with one level.

    A level without nodules is dropped. A level whose nodules all share one outcome has an
    infinite maximum-likelihood odds ratio (quasi-complete separation); the other
    coefficients' estimates are those of the model fitted without its nodules, so they are
    left out and the level's row says ``single outcome``. Leaving nodules out can empty a
    level of another term, so this repeats until nothing changes. Returns the remaining
    nodules, every term (categorical ones with their reference chosen, or none when not
    adjusted for), the terms the model keeps, each level's status and notes.
    """
    status: dict[tuple[str, str], str] = {}
    notes = []
    # With a single outcome overall there is nothing to separate; the model is refused.
    changed = data["label"].nunique() == 2
    while changed:
        changed = False
        for term in (t for t in terms if t.categorical):
            for level in term.levels:
                if (term.name, level) in status:
                    continue
                outcomes = data.loc[data[term.column] == level, "label"]
                if len(outcomes) == 0:
                    status[term.name, level] = "no nodules"
                elif outcomes.nunique() == 1:
                    status[term.name, level] = "single outcome"
                    notes.append(f"{model}: {term.name} {level}: all {len(outcomes)} nodules "
                                 f"have outcome {int(outcomes.iloc[0])}, so its odds ratio is "
                                 "not estimable (separation); they are left out of the fit")
                    data = data[data[term.column] != level]
                    changed = True
    resolved, kept = [], []
    for term in terms:
        if not term.categorical:
            if term.required or data[term.column].nunique() > 1:
                kept.append(term)
            else:
                notes.append(f"{model}: {term.name} takes one value: not adjusted for")
                status[term.name, ""] = "not adjusted"
            resolved.append(term)
            continue
        usable = [level for level in term.levels if (term.name, level) not in status]
        if not usable:
            # Only a required term gets here; _refusal says why the model is not fitted.
            resolved.append(replace(term, reference=()))
            kept.append(term)
            continue
        if len(usable) < 2 and not term.required:
            notes.append(f"{model}: {term.name} has fewer than two levels with both "
                         "outcomes: not adjusted for")
            status.update({(term.name, level): "not adjusted" for level in usable})
            resolved.append(replace(term, reference=()))
            continue
        reference, reason = _choose_reference(term, data, usable)
        notes.append(f"{model}: {term.name} reference {reference} ({reason})")
        term = replace(term, reference=(reference,))
        resolved.append(term)
        kept.append(term)
        status[term.name, reference] = "reference"
    return data, resolved, kept, status, notes


def _choose_reference(term: Term, data: pd.DataFrame, usable: list[str]) -> tuple[str, str]:
    """The reference level: the first of ``term.reference`` with at least
    :data:`MIN_REFERENCE_OUTCOMES` nodules of each outcome and :data:`MIN_REFERENCE_SHARE` of
    the nodules; if none has, the usable level with the most nodules of its rarer outcome.
    Returns it and the reason, for the notes."""
    usable = [level for level in term.reference if level in usable] or usable
    labels = {level: data.loc[data[term.column] == level, "label"] for level in usable}
    for level in usable:
        if (_rarer_outcome(labels[level]) >= MIN_REFERENCE_OUTCOMES
                and len(labels[level]) >= MIN_REFERENCE_SHARE * len(data)):
            if level == term.reference[0]:
                return level, "the preferred reference"
            return level, (f"the first of {', '.join(term.reference)} with >= "
                           f"{MIN_REFERENCE_OUTCOMES} nodules of each outcome and >= "
                           f"{MIN_REFERENCE_SHARE:.0%} of the nodules")
    level = max(usable, key=lambda name: _rarer_outcome(labels[name]))
    return level, (f"no level has {MIN_REFERENCE_OUTCOMES} nodules of each outcome and "
                   f"{MIN_REFERENCE_SHARE:.0%} of the nodules; the one with the most of its "
                   "rarer outcome")


def _rarer_outcome(labels: pd.Series) -> int:
    events = int(labels.sum())
    return min(events, len(labels) - events)


def _refusal(data: pd.DataFrame, terms: list[Term], complete: int) -> str | None:
    """Why a model cannot be fitted to ``data`` with ``terms`` (None if it can); ``complete``
    is the number of nodules with every value before single-outcome levels were left out."""
    if complete == 0:
        return "no nodule has every value the model needs"
    if len(data) == 0:
        return (f"every level of {terms[0].name} with nodules has nodules of one outcome "
                "only")
    if data["label"].nunique() < 2:
        return f"every nodule has outcome {int(data['label'].iloc[0])}"
    required = terms[0]
    if required.categorical and data[required.column].nunique() < 2:
        return f"{required.name} has fewer than two levels with both outcomes"
    if not required.categorical and data[required.column].nunique() < 2:
        return f"{required.name} takes one value"
    parameters = sum(max(data[t.column].nunique() - 1, 0) if t.categorical else 1
                     for t in terms)
    rarer = _rarer_outcome(data["label"])
    if rarer < MIN_EVENTS_PER_PARAMETER * parameters:
        return (f"{rarer} nodules of the rarer outcome for {parameters} coefficients, fewer "
                f"than {MIN_EVENTS_PER_PARAMETER} per coefficient")
    return None


def _design(data: pd.DataFrame, terms: list[Term]) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """The design matrix (intercept first) and each column's (term, level) key."""
    columns = [np.ones(len(data))]
    keys = [("intercept", "")]
    for term in terms:
        if term.categorical:
            for level in term.levels:
                if level != term.reference[0] and (data[term.column] == level).any():
                    columns.append((data[term.column] == level).to_numpy(float))
                    keys.append((term.name, level))
        else:
            columns.append(data[term.column].to_numpy(float) / term.per)
            keys.append((term.name, ""))
    return np.column_stack(columns), keys


def _fit(y: np.ndarray, design: np.ndarray, clusters: pd.Series, clustered: bool):
    """A binomial GLM fit (or None if statsmodels gave up), with statsmodels' warnings and
    errors as notes instead of on the terminal."""
    if np.linalg.matrix_rank(design) < design.shape[1]:
        return None, ["the design is singular (a covariate is determined by the others)"]
    if clustered:
        groups = pd.factorize(clusters)[0]
        options = {"cov_type": "cluster", "cov_kwds": {"groups": groups}}
    else:
        options = {}
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        try:
            fit = sm.GLM(y, design, family=sm.families.Binomial()).fit(maxiter=100, **options)
        except (PerfectSeparationError, np.linalg.LinAlgError, ValueError) as exc:
            return None, [f"statsmodels could not fit the model ({type(exc).__name__}: {exc})"]
    notes = list(dict.fromkeys(
        f"statsmodels warned: {str(w.message).splitlines()[0]}" for w in caught))
    if any(issubclass(w.category, PerfectSeparationWarning) for w in caught):
        return None, notes + ["separation: some combination of covariates predicts the "
                              "outcome perfectly"]
    if not fit.converged:
        return None, notes + ["the fit did not converge"]
    return fit, notes


def _estimate_problem(fit, keys: list[tuple[str, str]]) -> str | None:
    """Why the estimates of a finished fit must not be shown (None if they may)."""
    if fit is None:
        return "see the notes above"
    for (term, level), beta, se in zip(keys, fit.params, fit.bse, strict=True):
        if term == "intercept":
            continue
        name = f"{term} {level}".strip()
        if not (np.isfinite(beta) and np.isfinite(se)):
            return f"{name}: non-finite estimate or standard error"
        if abs(beta) > MAX_ABS_LOG_ODDS_RATIO or se > MAX_STANDARD_ERROR:
            return (f"{name}: log odds ratio {beta:.3g} with standard error {se:.3g} "
                    "(quasi-complete separation or a near-singular design)")
    return None


def _rows(context: dict, terms: list[Term], level_status: dict, data: pd.DataFrame,
          complete: pd.DataFrame, estimates: dict | None, status: str) -> pd.DataFrame:
    """The table rows of one model; ``estimates`` maps (term, level) to (log OR, SE).

    Levels are counted among the fitted nodules ``data``, except a ``single outcome`` level,
    whose nodules were left out of the fit: among the ``complete`` ones (no missing value).
    """
    rows = []
    base = {"covariance": "", **context}
    for term in terms:
        if term.categorical:
            reference = term.reference[0] if term.reference else ""
            for level in term.levels:
                separated = level_status.get((term.name, level)) == "single outcome"
                counted = complete if separated else data
                outcomes = counted.loc[counted[term.column] == level, "label"]
                counts = {"level_nodules": len(outcomes), "level_events": int(outcomes.sum())}
                rows.append({**base, "term": term.name, "level": level, **counts,
                             **_estimate_cells(term, level, reference, level_status,
                                               estimates, status)})
        else:
            rows.append({**base, "term": term.name, "level": "", "contrast": term.contrast,
                         "level_nodules": np.nan, "level_events": np.nan,
                         **_numeric_cells(term, level_status, estimates, status)})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _estimate_cells(term: Term, level: str, reference: str, level_status: dict,
                    estimates: dict | None, status: str) -> dict:
    """Contrast, odds ratio, interval, p and status of one categorical level."""
    cells = {"contrast": f"vs {reference}" if reference else "", "odds_ratio": np.nan,
             "ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
    level_state = level_status.get((term.name, level))
    if level_state == "reference":
        return {**cells, "contrast": "reference", "status": "reference",
                "odds_ratio": 1.0 if estimates is not None else np.nan}
    if level_state is not None:
        return {**cells, "status": level_state}
    if estimates is None:
        return {**cells, "status": status}
    return {**cells, **_odds_ratio(*estimates[term.name, level]), "status": status}


def _numeric_cells(term: Term, level_status: dict, estimates: dict | None, status: str
                   ) -> dict:
    if (term.name, "") in level_status:
        return {"odds_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan,
                "status": level_status[term.name, ""]}
    if estimates is None:
        return {"odds_ratio": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan,
                "status": status}
    return {**_odds_ratio(*estimates[term.name, ""]), "status": status}


def _odds_ratio(log_odds_ratio: float, standard_error: float) -> dict:
    """Odds ratio, 95 % Wald interval (on the log-odds scale) and two-sided Wald p."""
    return {"odds_ratio": float(np.exp(log_odds_ratio)),
            "ci_low": float(np.exp(log_odds_ratio - Z_95 * standard_error)),
            "ci_high": float(np.exp(log_odds_ratio + Z_95 * standard_error)),
            "p": float(2 * stats.norm.sf(abs(log_odds_ratio / standard_error)))}
