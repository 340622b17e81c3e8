"""Nodule-level logistic models (llnm3d.statistics.nodule_model) on cohorts simulated from
known logistic models: planted coefficients recovered, trend test calibrated, cluster-robust
errors, and refusals instead of absurd odds ratios."""

import warnings

import numpy as np
import pandas as pd
import pytest

from llnm3d.io import InputError
from llnm3d.statistics.nodule_model import MODELS, TABLE_COLUMNS, Z_95, nodule_model_table

# Planted log odds ratios. Bins of DEFAULT_BINS_MM nearest first, against 2.5-5 mm.
BIN_EDGES_MM = (0.0, 1.0, 2.5, 5.0, 10.0)
BIN_LOG_OR = {"0-1 mm": 1.5, "1-2.5 mm": 0.9, "2.5-5 mm": 0.0}
REGION_LOG_OR = {"upper": 0.6, "middle": 0.3, "lower": 0.0, "isthmus": -0.4}
SIZE_LOG_OR_PER_MM = 0.08
AGE_LOG_OR_PER_10_YEARS = -0.2
MALE_LOG_OR = 0.4


def simulate(n_nodules=4000, seed=0, capsule=None, nodules_per_patient=1.6,
             patient_sd=0.0, intercept=-0.6):
    """Nodules with covariates drawn at random and outcomes from the planted logistic model.

    ``capsule(distance_mm) -> log-odds`` replaces the planted bin effect (None: bins);
    ``patient_sd`` adds a shared normal random effect per patient (log-odds)."""
    rng = np.random.default_rng(seed)
    patients = max(1, int(n_nodules / nodules_per_patient))
    patient = np.sort(rng.integers(0, patients, n_nodules))
    age = rng.normal(45, 13, patients).clip(18, 85)[patient]
    sex = rng.choice(["F", "M"], patients, p=[0.7, 0.3])[patient]
    distance = rng.uniform(0.0, 5.0, n_nodules)
    region = rng.choice([11, 12, 13, 21, 22, 23, 30], n_nodules)
    size = rng.uniform(3.0, 15.0, n_nodules)
    if capsule is None:
        capsule_term = np.select([distance < 1.0, distance < 2.5], [1.5, 0.9], 0.0)
    else:
        capsule_term = capsule(distance)
    third = np.where(region == 30, "isthmus",
                     pd.Series(region % 10).map({1: "upper", 2: "middle", 3: "lower"}))
    log_odds = (intercept + capsule_term + pd.Series(third).map(REGION_LOG_OR).to_numpy()
                + SIZE_LOG_OR_PER_MM * (size - 6) + AGE_LOG_OR_PER_10_YEARS * (age - 45) / 10
                + MALE_LOG_OR * (sex == "M")
                + rng.normal(0, patient_sd, patients)[patient])
    label = (rng.random(n_nodules) < 1 / (1 + np.exp(-log_odds))).astype(int)
    return pd.DataFrame({"label": label, "capsule_distance_mm": distance, "region": region,
                         "region_name": "", "diameter_mm": size, "age": age, "sex": sex,
                         "patient_id": [f"P{i}" for i in patient]})


def rows(table, model, term):
    return table[(table["model"] == model) & (table["term"] == term)].set_index("level")


def log_or_and_se(row):
    """Log odds ratio and its standard error, read back from the 95 % Wald interval."""
    return (np.log(row["odds_ratio"]),
            (np.log(row["ci_high"]) - np.log(row["ci_low"])) / (2 * Z_95))


def assert_recovered(row, planted):
    estimate, se = log_or_and_se(row)
    assert abs(estimate - planted) < 3 * se, (row.to_dict(), planted)


@pytest.fixture(scope="module")
def planted_fit():
    return nodule_model_table(simulate())


def test_bins_model_recovers_planted_odds_ratios(planted_fit):
    table, notes = planted_fit
    assert list(table.columns) == TABLE_COLUMNS
    assert list(dict.fromkeys(table["model"])) == list(MODELS)
    bins = rows(table, "capsule_bins", "capsule_distance")
    assert list(bins.index) == ["0-1 mm", "1-2.5 mm", "2.5-5 mm", "5-10 mm", ">= 10 mm"]
    # Farthest bin with 10 nodules of each outcome: 5-10 and >= 10 mm are empty.
    assert bins.loc["2.5-5 mm", "status"] == "reference"
    assert bins.loc["2.5-5 mm", "odds_ratio"] == 1.0
    assert (bins.loc[["5-10 mm", ">= 10 mm"], "status"] == "no nodules").all()
    assert bins.loc["0-1 mm", "contrast"] == "vs 2.5-5 mm"
    for level in ("0-1 mm", "1-2.5 mm"):
        assert_recovered(bins.loc[level], BIN_LOG_OR[level])
    assert bins.loc["0-1 mm", "p"] < 1e-10
    region = rows(table, "capsule_bins", "region")
    assert region.loc["lower", "status"] == "reference"
    for level in ("upper", "middle", "isthmus"):
        assert_recovered(region.loc[level], REGION_LOG_OR[level])
    assert_recovered(rows(table, "capsule_bins", "size").iloc[0], SIZE_LOG_OR_PER_MM)
    assert_recovered(rows(table, "capsule_bins", "age").iloc[0], AGE_LOG_OR_PER_10_YEARS)
    assert_recovered(rows(table, "capsule_bins", "sex").loc["M"], MALE_LOG_OR)
    assert rows(table, "capsule_bins", "sex").loc["F", "status"] == "reference"
    # Level counts add up to the model's nodules and events.
    assert bins["level_nodules"].sum() == 4000 == bins["nodules"].iloc[0]
    assert bins["level_events"].sum() == bins["events"].iloc[0]
    assert (table["covariance"] == "cluster-robust (patient)").all()
    assert any("capsule_bins: capsule_distance reference 2.5-5 mm" in n for n in notes)


def test_continuous_model_recovers_a_linear_capsule_effect():
    per_mm = -0.45
    table, _ = nodule_model_table(simulate(seed=1, capsule=lambda d: per_mm * d))
    assert_recovered(rows(table, "capsule_continuous", "capsule_distance").iloc[0], per_mm)
    assert_recovered(rows(table, "capsule_continuous", "age").iloc[0], AGE_LOG_OR_PER_10_YEARS)
    trend = rows(table, "capsule_trend", "capsule_distance_trend").iloc[0]
    assert trend["odds_ratio"] < 1 and trend["p"] < 1e-10


def test_trend_test_detects_a_monotone_trend_and_holds_its_level_under_the_null():
    table, _ = nodule_model_table(simulate(n_nodules=800, seed=2,
                                           capsule=lambda d: -0.3 * np.floor(d)))
    assert rows(table, "capsule_trend", "capsule_distance_trend").iloc[0]["p"] < 1e-4
    p_null = []
    for seed in range(100):
        null = simulate(n_nodules=300, seed=100 + seed, capsule=lambda d: 0 * d)
        table, _ = nodule_model_table(null, covariates=())
        p_null.append(rows(table, "capsule_trend", "capsule_distance_trend").iloc[0]["p"])
    p_null = np.array(p_null)
    assert np.isfinite(p_null).all()
    assert 0.01 <= np.mean(p_null < 0.05) <= 0.12
    assert 0.3 < np.median(p_null) < 0.7


def test_cluster_robust_errors_widen_with_a_shared_patient_effect():
    # Age is a patient-level covariate: a shared random effect makes nodules of one patient
    # repeat its information, which model-based errors ignore.
    clustered = simulate(n_nodules=3000, seed=3, nodules_per_patient=4, patient_sd=2.0)
    unclustered = clustered.assign(patient_id=[f"N{i}" for i in range(len(clustered))])
    widths = {}
    for name, data in (("patients", clustered), ("nodules", unclustered)):
        age = rows(nodule_model_table(data)[0], "capsule_continuous", "age").iloc[0]
        widths[name] = np.log(age["ci_high"] / age["ci_low"])
    assert widths["patients"] > 1.3 * widths["nodules"]


def test_few_patients_use_model_based_errors():
    data = simulate(n_nodules=600, seed=4)
    data["patient_id"] = [f"P{i % 40}" for i in range(len(data))]
    table, notes = nodule_model_table(data, covariates=("size",))
    assert (table["covariance"] == "model-based").all()
    assert any("model-based standard errors (fewer than 50 patients)" in n for n in notes)


def test_a_bin_with_one_outcome_is_left_out_and_the_rest_is_estimated():
    data = simulate(seed=5)
    data.loc[data["capsule_distance_mm"] < 1.0, "label"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may reach the user's terminal
        table, notes = nodule_model_table(data)
    bins = rows(table, "capsule_bins", "capsule_distance")
    assert bins.loc["0-1 mm", "status"] == "single outcome"
    assert np.isnan(bins.loc["0-1 mm", "odds_ratio"])
    assert bins.loc["0-1 mm", "level_nodules"] == bins.loc["0-1 mm", "level_events"] > 500
    assert_recovered(bins.loc["1-2.5 mm"], BIN_LOG_OR["1-2.5 mm"])
    assert bins["nodules"].iloc[0] == 4000 - bins.loc["0-1 mm", "level_nodules"]
    assert any("0-1 mm: all" in n and "outcome 1" in n for n in notes)


def test_complete_separation_gives_nan_and_a_note_not_huge_odds_ratios():
    data = simulate(seed=6)
    data["label"] = (data["capsule_distance_mm"] < 2.0).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table, notes = nodule_model_table(data)
    continuous = table[table["model"] == "capsule_continuous"]
    assert (continuous["status"].isin(["not estimated", "reference"])).all()
    assert continuous["odds_ratio"].isna().all()
    assert any(n.startswith("capsule_continuous: not estimated") for n in notes)
    finite = table["odds_ratio"].dropna()
    assert ((finite < 1e4) & (finite > 1e-4)).all()


@pytest.mark.parametrize("data, reason", [
    (simulate(n_nodules=30, seed=7), "fewer than 10 per coefficient"),
    (simulate(n_nodules=200, seed=8).assign(label=0), "every nodule has outcome 0"),
    (simulate(n_nodules=50, seed=9).assign(age=np.nan), "no nodule has every value"),
    (simulate(n_nodules=5, seed=10).iloc[:0], "no nodule has every value"),
    (simulate(n_nodules=2, seed=12).assign(capsule_distance_mm=[0.5, 20.0], label=[0, 1]),
     "nodules of one outcome only"),
])
def test_models_that_cannot_be_estimated_are_refused_with_a_note(data, reason):
    table, notes = nodule_model_table(data)
    assert table["odds_ratio"].isna().all()
    assert set(table["status"]) <= {"not estimated", "reference", "no nodules",
                                    "single outcome", "not adjusted"}
    for model in MODELS:
        assert any(n.startswith(f"{model}: not estimated") and reason in n for n in notes)


def test_missing_covariates_are_excluded_and_counted():
    data = simulate(seed=11)
    data.loc[:36, "sex"] = ""
    data.loc[30:49, "age"] = np.nan
    data.loc[60:64, "region"] = 0  # outside the gland
    data.loc[70, "capsule_distance_mm"] = -1.0  # below the first bin edge
    table, notes = nodule_model_table(data)
    continuous = table[table["model"] == "capsule_continuous"]
    assert (continuous["excluded_nodules"] == 50 + 5 + 1).all()
    assert (continuous["nodules"] == 4000 - 56).all()
    assert any("capsule_continuous: 56 of 4000 nodules left out" in n and "sex 37" in n
               and "age 20" in n and "region 5" in n and "capsule_distance 1" in n
               for n in notes)
    # Without sex and age among the covariates, only region and distance exclude nodules.
    table, _ = nodule_model_table(data, covariates=("region", "size"))
    assert (table["excluded_nodules"] == 6).all()


def test_a_covariate_with_one_level_is_not_adjusted_for():
    data = simulate(n_nodules=2000, seed=12).assign(sex="F")
    table, notes = nodule_model_table(data)
    sex = rows(table, "capsule_bins", "sex")
    assert sex["status"].to_dict() == {"F": "not adjusted", "M": "no nodules"}
    assert sex["odds_ratio"].isna().all()
    assert rows(table, "capsule_bins", "size")["status"].iloc[0] == "estimated"
    assert any("sex has fewer than two levels" in n for n in notes)


def test_unknown_covariate_is_an_input_error():
    with pytest.raises(InputError, match="did you mean 'size'"):
        nodule_model_table(simulate(n_nodules=100), covariates=("sise",))
