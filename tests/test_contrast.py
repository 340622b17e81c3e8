"""Group contrasts (llnm3d.statistics.contrast) on synthetic footprints whose truth is known:
the difference map and its interval, the outcome x group interaction test, the groups."""

from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import expit

from llnm3d.io import InputError
from llnm3d.statistics.contrast import (
    MAP_DESCRIPTIONS,
    MAP_KINDS,
    contrast_groups,
    difference_critical,
    difference_interval,
    difference_maps,
    estimate_contrast,
    group_log_odds,
    interaction_design,
    manifest_column,
)
from llnm3d.statistics.inference import OLSDesign, fwer_p_values
from llnm3d.statistics.spatial import SpatialFit, SplineBasis

SHAPE = (18, 12, 24)  # z, y, x: a 24 x 12 x 18 mm box of 1 mm voxels
ORIGIN_MM = np.array([-12.0, 0.0, -9.0])
SPOT_MM = np.array([0.0, 6.0, 0.0])
PERMUTATIONS = 200


def grid_points() -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    return ORIGIN_MM + np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1).astype(float)


def spot(points: np.ndarray, strength: float) -> np.ndarray:
    """Planted risk: a Gaussian spot (sigma 3 mm) at SPOT_MM on a 0.3 baseline."""
    d2 = np.sum((points - SPOT_MM) ** 2, axis=1)
    return expit(np.log(0.3 / 0.7) + strength * np.exp(-d2 / 18.0))


def two_groups(n: int, strength_a: float, strength_b: float, seed: int):
    """Ball footprints (radius 2-4 mm) at random centres, alternately in group A (g = 0) and
    B (g = 1), outcomes from each group's planted risk at the centre."""
    rng = np.random.default_rng(seed)
    points = grid_points()
    inner = np.all((points > ORIGIN_MM + 4)
                   & (points < ORIGIN_MM + np.array(SHAPE[::-1]) - 4), axis=1)
    centres = points[rng.choice(np.flatnonzero(inner), n)] + rng.uniform(-0.5, 0.5, (n, 3))
    g = (np.arange(n) % 2).astype(float)
    risk = np.where(g == 1, spot(centres, strength_b), spot(centres, strength_a))
    y = (rng.random(n) < risk).astype(float)
    radius = rng.uniform(2.0, 4.0, n)
    rows, cols = [], []
    for index, (centre, r) in enumerate(zip(centres, radius, strict=True)):
        inside = np.flatnonzero(np.sum((points - centre) ** 2, axis=1) <= r * r)
        rows.append(np.full(len(inside), index))
        cols.append(inside)
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    footprints = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(points)))
    return points, footprints, y, g


def interaction_fwer(footprints, y, g, shown, seed):
    """t and family-wise p of the outcome x group interaction at the shown points."""
    tested, confounds = interaction_design(y, g)
    design = OLSDesign(footprints.T.tocsr()[shown], tested, confounds)
    t = design.t_scores()
    maxima = design.permutation_maxima(PERMUTATIONS, seed, device="cpu")["t"]
    return t, fwer_p_values(t, maxima)


def test_a_spot_in_one_group_is_found_by_the_difference_map_and_the_interaction_test():
    points, footprints, y, g = two_groups(2000, 0.0, 3.0, seed=0)
    covered = np.asarray((footprints > 0).sum(axis=0)).ravel() > 0
    maps, record = difference_maps(footprints, y, g, points, covered, levels=("F", "M"))
    assert record["levels"] == ["F", "M"] and not record["notes"]
    assert set(maps) == set(MAP_DESCRIPTIONS) == set(MAP_KINDS)
    assert record["groups"]["M"] == {**record["groups"]["M"], "nodules": 1000,
                                     "events": int(y[g == 1].sum())}
    assert np.allclose(maps["contrast_difference"],
                       maps["contrast_probability_b"] - maps["contrast_probability_a"])
    shown = (maps["contrast_n_nodules_a"] >= 10) & (maps["contrast_n_nodules_b"] >= 10)
    assert shown.sum() > 1500
    low, high = maps["contrast_difference_ci_low"], maps["contrast_difference_ci_high"]
    assert np.all(low[shown] <= high[shown])
    distance = np.linalg.norm(points - SPOT_MM, axis=1)
    at_spot, far = shown & (distance < 2.0), shown & (distance > 8.0)
    assert at_spot.sum() > 20 and far.sum() > 300
    assert np.all(low[at_spot] > 0.2)  # B's risk is higher at the spot
    assert np.all(maps["contrast_probability_b_above_a"][at_spot] > 0.975)
    # The simultaneous band of the log-odds difference: family-wise, at the spot only.
    assert 2.5 < record["simultaneous_z"] < 5.0
    assert np.all(maps["contrast_significance"][at_spot] == 1)
    assert np.all(maps["contrast_significance"][far] == 0)
    assert np.all(np.isnan(maps["contrast_significance"][~shown]))
    covers_zero = (low[far] <= 0) & (0 <= high[far])
    assert covers_zero.mean() > 0.95  # no difference far from the spot
    truth = spot(points, 3.0) - spot(points, 0.0)
    assert np.mean((low[shown] <= truth[shown]) & (truth[shown] <= high[shown])) > 0.9

    t, p = interaction_fwer(footprints, y, g, shown, seed=0)
    assert np.nanmin(p[distance[shown] < 3.0]) < 0.05
    assert np.linalg.norm(points[shown][np.nanargmax(t)] - SPOT_MM) < 4.0


@pytest.mark.parametrize("strength", [0.0, 2.5])
def test_a_null_contrast_gives_no_family_wise_finding(strength):
    """No spot, or the same spot in both groups: no family-wise interaction in several seeds
    (at most one of four, the 5 % level's expectation being 0.2), and a difference map whose
    simultaneous band marks nothing and whose interval covers 0 almost everywhere."""
    points, footprints, y, g = two_groups(1200, strength, strength, seed=5)
    covered = np.asarray((footprints > 0).sum(axis=0)).ravel() > 0
    maps, record = difference_maps(footprints, y, g, points, covered)
    shown = np.isfinite(maps["contrast_significance"])
    assert shown.sum() > 1000 and np.all(maps["contrast_significance"][shown] == 0)
    low, high = maps["contrast_difference_ci_low"], maps["contrast_difference_ci_high"]
    assert np.mean((low[shown] <= 0) & (0 <= high[shown])) > 0.95
    findings = 0
    for seed in range(4):
        points, footprints, y, g = two_groups(1200, strength, strength, seed=100 + seed)
        shown = np.asarray((footprints[g == 0] > 0).sum(axis=0)).ravel() >= 10
        shown &= np.asarray((footprints[g == 1] > 0).sum(axis=0)).ravel() >= 10
        _, p = interaction_fwer(footprints, y, g, shown, seed)
        findings += bool(np.nanmin(p) <= 0.05)
    assert findings <= 1


def test_difference_interval_is_the_posterior_quantiles_and_covers():
    cases = np.array([  # log-odds mean and se of A, then of B: skewed, wide, narrow, uneven
        [-3.0, 1.0, -1.0, 0.8], [0.0, 0.3, 0.5, 0.3], [-4.0, 2.0, -4.0, 2.0],
        [2.0, 1.5, -2.0, 0.5], [-1.0, 0.1, -1.0, 0.1], [-1.0, 0.01, 1.0, 2.0]])
    low, high = difference_interval(*cases.T)
    rng = np.random.default_rng(0)
    for case, lo, hi in zip(cases, low, high, strict=True):
        draws = (expit(case[2] + case[3] * rng.standard_normal(1_000_000))
                 - expit(case[0] + case[1] * rng.standard_normal(1_000_000)))
        reference = np.quantile(draws, [0.025, 0.975])
        half_width = (reference[1] - reference[0]) / 2
        assert abs(lo - reference[0]) < 0.03 * half_width
        assert abs(hi - reference[1]) < 0.03 * half_width
    # Coverage: estimates scattered around a truth with the stated standard errors.
    for mean_a, se_a, mean_b, se_b in [(-3.0, 1.0, -1.0, 0.8), (-2.0, 0.5, -1.0, 0.5),
                                        (0.0, 0.3, 0.0, 0.3)]:
        repeats = 3000
        a = mean_a + se_a * rng.standard_normal(repeats)
        b = mean_b + se_b * rng.standard_normal(repeats)
        lo, hi = difference_interval(a, np.full(repeats, se_a), b, np.full(repeats, se_b))
        truth = expit(mean_b) - expit(mean_a)
        assert 0.93 < np.mean((lo <= truth) & (truth <= hi)) < 0.97
        assert lo.min() >= -1 and hi.max() <= 1
    nan = difference_interval(np.array([np.nan]), np.ones(1), np.zeros(1), np.ones(1))
    assert np.isnan(nan[0][0]) and np.isnan(nan[1][0])


def test_interaction_design_tests_the_product_adjusted_for_both_main_effects():
    rng = np.random.default_rng(1)
    n = 400
    y = (rng.random(n) < 0.4).astype(float)
    g = (rng.random(n) < 0.5).astype(float)
    age = rng.normal(50, 10, n)
    tested, confounds = interaction_design(y, g, age[:, None])
    assert np.array_equal(tested, y * g)
    assert np.array_equal(confounds, np.stack([y, g, age], axis=1))
    noise = rng.normal(0, 1, (3, n))
    weights = np.stack([
        5 * y + 5 * g + 0.1 * age + noise[0],  # main effects only
        y * g + 0.2 * noise[1],  # the interaction
        noise[2]])
    t = OLSDesign(sp.csr_matrix(weights), tested, confounds).t_scores()
    assert abs(t[0]) < 3 and t[1] > 10 and abs(t[2]) < 3


def test_a_group_too_small_for_the_spatial_model_gives_nan_maps_and_a_note():
    points, footprints, _, _ = two_groups(500, 0.0, 0.0, seed=3)
    rng = np.random.default_rng(3)
    site = np.array(["", "a"] + ["a"] * 98 + ["b"] * 400)  # one nodule without a value
    y = np.where(site == "a", np.arange(500) % 16 == 0, rng.random(500) < 0.3).astype(float)
    assert 5 <= y[site == "a"].sum() < 10  # enough for the groups, too few for a field
    nodules = pd.DataFrame({"label": y, "site": site})
    atlas = SimpleNamespace(labels=np.zeros(SHAPE), voxel_to_world=lambda ijk: ORIGIN_MM + ijk)
    covered = np.asarray((footprints > 0).sum(axis=0)).ravel() > 0
    maps, record = estimate_contrast(footprints.T, nodules, "site", atlas,
                                     np.arange(len(points)), covered)
    assert (record["column"], record["level_a"], record["level_b"]) == ("site", "a", "b")
    assert record["missing_value"] == 1 and record["groups"]["a"]["nodules"] == 99
    assert "not_fitted" in record["groups"]["a"] and "edf" in record["groups"]["b"]
    assert len(record["notes"]) == 1 and "level 'a'" in record["notes"][0]
    assert np.all(np.isnan(maps["contrast_probability_a"]))
    assert record["simultaneous_z"] is None
    for name in ("contrast_difference", "contrast_difference_ci_low",
                 "contrast_probability_b_above_a", "contrast_significance"):
        assert np.all(np.isnan(maps[name]))
    assert np.all(np.isfinite(maps["contrast_probability_b"][covered]))
    assert maps["contrast_n_nodules_a"].max() > 0


def test_group_log_odds_moves_a_group_to_the_pooled_covariate_mean():
    points = grid_points()[::50]
    basis = SplineBasis.covering(points)
    k = basis.size
    rng = np.random.default_rng(2)
    root = rng.normal(size=(k + 2, k + 2)) / np.sqrt(k)
    covariance = root @ root.T + 0.1 * np.eye(k + 2)
    fit = SpatialFit(basis, rng.normal(size=k), np.array([0.5, -1.0]), covariance, 0.0, 1.0,
                     0.0)
    shift = np.array([2.0, 0.5])
    estimate, se = group_log_odds(fit, points, shift)
    gradient = np.hstack([basis.matrix(points).toarray(), np.tile(shift, (len(points), 1))])
    assert np.allclose(estimate, gradient @ np.concatenate([fit.coefficients,
                                                            fit.covariate_effects]))
    assert np.allclose(se**2, np.einsum("ij,jk,ik->i", gradient, covariance, gradient))
    # The band of a difference of two such fields is wider than pointwise, and finite.
    assert 1.96 < difference_critical(fit, fit, points, shift, -shift) < 6.0


def test_contrast_groups_sorts_the_levels_and_leaves_out_missing_values():
    nodules = pd.DataFrame({"label": [1, 1, 0, 0] * 5 + [1, 0],
                            "sex": ["M", "F"] * 5 + ["F", "M"] * 5 + ["", None],
                            "scanner": [2.0, 1.0] * 10 + [np.nan, 1.0]})
    groups = contrast_groups(nodules, "sex")
    assert groups.levels == ("F", "M")
    assert groups.usable.tolist() == [True] * 20 + [False, False]
    assert groups.g[:20].tolist() == ([1.0, 0.0] * 5 + [0.0, 1.0] * 5)
    g, levels, usable = contrast_groups(nodules, "scanner")  # a plain tuple too
    assert levels == ("1", "2") and usable.sum() == 21


@pytest.mark.parametrize("values, labels, words", [
    (["F"] * 30, [0, 1] * 15, ["found 1", "'F' (30 nodules)"]),
    (["a", "b", "c"] * 10, [0, 1] * 15, ["found 3", "'a' (10 nodules)", "'c' (10 nodules)"]),
    (["F", "M"] * 15, [0, 1] * 15, ["level 'F' has 0 nodules with LLNM and 15 without"]),
    (["F", "M"] * 15, [i // 2 % 2 if i % 2 == 0 else int(i < 8) for i in range(30)],
     ["level 'M' has 4 nodules with LLNM and 11 without", "at least 5 of each outcome"]),
    ([""] * 30, [0, 1] * 15, ["found 0"]),
])
def test_contrast_groups_refuses_anything_but_two_fittable_levels(values, labels, words):
    nodules = pd.DataFrame({"label": labels, "group": values})
    with pytest.raises(InputError) as error:
        contrast_groups(nodules, "group")
    message = str(error.value)
    assert "\n" not in message and "'group'" in message
    for word in words:
        assert word in message
    with pytest.raises(InputError, match="'vendor' is not a column"):
        contrast_groups(nodules, "vendor")


def test_manifest_column_gives_one_value_per_nodule_and_refuses_disagreement(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not read here")
    header = "case_id,patient_id,nodule_id,side,view,image,scanner\n"
    rows = ["c1,P1,1,L,transverse,x.png,GE", "c2,P1,1,L,longitudinal,x.png,",
            "c3,P2,1,R,transverse,x.png,Philips", "c4,P2,1,R,longitudinal,x.png,Philips",
            "c5,P3,2,R,transverse,x.png,"]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(header + "\n".join(rows) + "\n", encoding="utf-8")
    values = manifest_column(manifest, "scanner")
    assert values.to_dict() == {"P1-N1": "GE", "P2-N1": "Philips", "P3-N2": ""}
    nodules = pd.DataFrame({"nodule": ["P2-N1", "P1-N1", "P9-N1"]})
    assert nodules["nodule"].map(values).fillna("").tolist() == ["Philips", "GE", ""]
    with pytest.raises(InputError, match="no column 'vendor'"):
        manifest_column(manifest, "vendor")
    manifest.write_text(header + "\n".join(rows).replace("longitudinal,x.png,Philips",
                                                         "longitudinal,x.png,Siemens") + "\n",
                        encoding="utf-8")
    with pytest.raises(InputError, match=r"P2-N1 \('Philips', 'Siemens'\)"):
        manifest_column(manifest, "scanner")


@pytest.fixture(scope="module")
def hospitals(atlas, tmp_path_factory):
    """A 30-patient phantom registered with uniform heatmaps, and a manifest that puts the
    odd-numbered patients in hospital "east" and the others in "west"."""
    from llnm3d import register
    from llnm3d.phantom import make_phantom

    folder = tmp_path_factory.mktemp("hospitals")
    cohort = make_phantom(folder / "phantom", 30, seed=3, atlas=atlas, workers=2,
                          progress=False)
    (folder / "heatmaps").mkdir()
    for case in cohort.manifest["case_id"]:
        np.savez(folder / "heatmaps" / f"{case}.npz",
                 heatmap=np.full((256, 256), 0.5, np.float32), probability=np.float32(0.4))
    registered = register(cohort.out_dir / "manifest.csv", heatmaps=folder, atlas=atlas,
                          out_dir=folder / "registered", workers=2, progress=False)
    manifest = pd.read_csv(cohort.out_dir / "manifest.csv", dtype=str)
    odd = manifest["patient_id"].str[1:].astype(int) % 2 == 1
    manifest["hospital"] = np.where(odd, "east", "west")
    manifest.to_csv(cohort.out_dir / "hospitals.csv", index=False)
    manifest["hospital"] = np.where(odd, "west", "east")  # the same groups, levels swapped
    manifest.to_csv(cohort.out_dir / "swapped.csv", index=False)
    return registered, cohort.out_dir


def test_aggregate_contrast_writes_each_groups_maps_and_the_interaction_test(
        hospitals, atlas, tmp_path):
    from llnm3d import aggregate, load_stats

    registered, folder = hospitals
    options = dict(atlas=atlas, min_cases=3, permutations=40, contrast="hospital",
                   estimator="weighted", progress=False)
    stats = aggregate(registered, out_dir=tmp_path / "a",
                      contrast_manifest=folder / "hospitals.csv", **options)
    record = stats.summary["contrast"]
    assert (record["level_a"], record["level_b"]) == ("east", "west")
    qc = registered.qc[registered.qc["status"] != "failed"]
    # intercept, outcome, group, footprint extent and the tested product: n - 5
    assert record["t_degrees_of_freedom"] == len(qc) - 5
    assert record["interaction_test"]["confounds"] == ["outcome", "group", "extent"]
    tested = np.isfinite(stats.volumes["t"])
    for name in ("contrast_t", "contrast_t_p_fwer", "contrast_tfce", "contrast_tfce_p_fwer",
                 "contrast_t_log10p_fwer"):
        assert np.array_equal(np.isfinite(stats.volumes[name]), tested), name
    # About 20 nodules of each outcome per hospital: too few for either risk map, which is
    # said, not drawn (the fitted path: test_aggregate_contrast_finds_a_spot_planted_in_one_group)
    assert np.all(np.isnan(stats.volumes["contrast_difference"]))
    assert any("too few outcomes" in note and "not shown" in note for note in record["notes"])
    assert any(note.startswith("contrast: level 'east'") for note in stats.summary["notes"])
    assert (tmp_path / "a" / "permutations" / "contrast" / "block-00000.npz").is_file()
    assert "contrast_clusters" in load_stats(tmp_path / "a").tables
    header = nib.load(tmp_path / "a" / "contrast_t.nii.gz").header
    assert header.get_intent() == ("t test", (float(len(qc) - 5),), "t")

    # Swapping the levels' names swaps A and B: every difference and t changes sign.
    swapped = aggregate(registered, out_dir=tmp_path / "b",
                        contrast_manifest=folder / "swapped.csv", **options)
    for name in ("contrast_t", "contrast_tfce"):
        np.testing.assert_allclose(swapped.volumes[name], -stats.volumes[name], atol=1e-5,
                                   err_msg=name)
    np.testing.assert_array_equal(swapped.volumes["contrast_t_p_fwer"],
                                  stats.volumes["contrast_t_p_fwer"])
    # A rerun reuses the saved blocks and gives the same maps.
    again = aggregate(registered, out_dir=tmp_path / "a",
                      contrast_manifest=folder / "hospitals.csv", **options)
    np.testing.assert_array_equal(again.volumes["contrast_tfce_p_fwer"],
                                  stats.volumes["contrast_tfce_p_fwer"])


def test_aggregate_contrast_errors_name_the_column(hospitals, atlas, tmp_path):
    from typer.testing import CliRunner

    from llnm3d import aggregate
    from llnm3d.cli import app

    registered, folder = hospitals
    with pytest.raises(InputError, match="'source' needs exactly two levels .* found 1"):
        aggregate(registered, atlas=atlas, contrast="source", permutations=0, progress=False)
    with pytest.raises(InputError, match="manifest has no column 'vendor'"):
        aggregate(registered, atlas=atlas, contrast="vendor", permutations=0, progress=False,
                  contrast_manifest=folder / "hospitals.csv")
    runner = CliRunner()
    result = runner.invoke(app, ["aggregate", "--registered", str(registered.out_dir),
                                 "--out", str(tmp_path / "x"),
                                 "--contrast-manifest", str(folder / "hospitals.csv")])
    assert result.exit_code == 2 and "needs --contrast COLUMN" in result.output
    result = runner.invoke(app, ["aggregate", "--registered", str(registered.out_dir),
                                 "--out", str(tmp_path / "y"), "--min-cases", "3",
                                 "--permutations", "0", "--estimator", "weighted",
                                 "--contrast", "hospital",
                                 "--contrast-manifest", str(folder / "hospitals.csv")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "y" / "contrast_difference.nii.gz").is_file()
    assert np.all(np.isnan(nib.load(tmp_path / "y" / "contrast_t_p_fwer.nii.gz").get_fdata()))
