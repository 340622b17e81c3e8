import json
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from llnm3d import Atlas, aggregate, load_stats
from llnm3d.cli import app
from llnm3d.io import InputError
from llnm3d.registration import load_patch
from llnm3d.statistics import maps as maps_module
from llnm3d.statistics.inference import (
    OLSDesign,
    fdr_bh,
    fwer_p_values,
    jeffreys_interval,
    proportion_chi2,
)


def _problem(seed=0, n=240, voxels=300):
    rng = np.random.default_rng(seed)
    weights = (rng.random((n, voxels)) < 0.3) * rng.random((n, voxels))
    y = (rng.random(n) < 0.5).astype(float)
    weights[:, :15] += 0.6 * y[:, None] * (rng.random((n, 15)) < 0.6)
    confounds = np.stack([rng.normal(50, 10, n), rng.random(n) < 0.5], 1).astype(float)
    return weights, y, confounds


@pytest.mark.parametrize("with_confounds", [False, True])
def test_ols_t_and_fwer_match_nilearn_permuted_ols(with_confounds):
    from nilearn.mass_univariate import permuted_ols

    weights, y, confounds = _problem()
    confounds = confounds if with_confounds else None
    n_perm = 2000
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = permuted_ols(y[:, None], weights, confounding_vars=confounds,
                                 n_perm=n_perm, random_state=0, output_type="dict")
    design = OLSDesign(sp.csr_matrix(weights.T), y, confounds)
    t = design.t_scores()
    assert np.max(np.abs(t - reference["t"].ravel())) <= 1e-4
    p = fwer_p_values(t, design.permutation_maxima(n_perm, seed=1, device="cpu")["t"])
    p_ref = 10 ** -reference["logp_max_t"].ravel()
    # Two independent Monte-Carlo estimates of the same p: within 4 standard errors.
    error = 4 * np.sqrt(2 * np.clip(p_ref * (1 - p_ref), 1e-4, None) / n_perm) + 2 / n_perm
    assert np.all(np.abs(p - p_ref) <= error)
    assert (p[:15] < 0.05).sum() >= 10 and (p[15:] < 0.05).sum() <= 3


def test_permutation_blocks_do_not_depend_on_what_ran_before():
    weights, y, _ = _problem(seed=3)
    design = OLSDesign(sp.csr_matrix(weights.T), y)
    full = design.permutation_maxima(600, seed=5, device="cpu")
    saved = {}
    design.permutation_maxima(600, seed=5, device="cpu", on_block=saved.__setitem__)
    resumed = design.permutation_maxima(600, seed=5, device="cpu", done={0: saved[0]})
    np.testing.assert_array_equal(full["t"], resumed["t"])
    dense = OLSDesign(sp.csr_matrix(weights.T), y)
    dense.weights = sp.csr_matrix(weights.T * (np.abs(weights.T) > 0.99))  # sparse path
    assert len(dense.permutation_maxima(10, seed=5, device="cpu")["t"]) == 10


def test_interval_chi2_and_fdr_against_references():
    low, high = jeffreys_interval(np.array([0, 3, 10]), np.array([10, 10, 10]))
    assert low[0] == 0 and high[2] == 1
    np.testing.assert_allclose([low[1], high[1]], [0.0927, 0.6058], atol=1e-3)
    from scipy.stats import chi2_contingency

    chi2, p = proportion_chi2(np.array([30.0]), np.array([20.0]), 100, 45)
    reference = chi2_contingency([[20, 10], [25, 45]], correction=False)
    assert chi2[0] == pytest.approx(reference[0]) and p[0] == pytest.approx(reference[1])
    q = fdr_bh(np.array([0.01, 0.04, 0.03, np.nan, 0.5]))
    np.testing.assert_allclose(q[[0, 1, 2, 4]], [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert np.isnan(q[3])


def test_maps_count_what_the_patches_hold(registered, atlas, tmp_path):
    stats = aggregate(registered, atlas=atlas, out_dir=tmp_path, weight="mask", min_cases=2,
                      permutations=50, progress=False)
    counts = np.zeros(atlas.labels.shape)
    events = np.zeros(atlas.labels.shape)
    for nodule, patch in registered.patches():
        label = registered.qc.set_index("nodule").loc[nodule, "label"]
        counts[patch.slices] += patch.mask
        events[patch.slices] += patch.mask * label
    domain = atlas.capsule_distance < 1.5
    np.testing.assert_array_equal(stats.volumes["n_nodules"][domain], counts[domain])
    enough = domain & (counts >= 2)
    np.testing.assert_allclose(stats.volumes["proportion"][enough],
                               events[enough] / counts[enough], rtol=1e-6)
    assert np.isnan(stats.volumes["probability"][domain & (counts < 2)]).all()
    probability = stats.volumes["probability"][enough]
    assert np.all((stats.volumes["probability_ci_low"][enough] <= probability + 1e-6)
                  & (probability <= stats.volumes["probability_ci_high"][enough] + 1e-6))
    assert stats.summary["nodules"] == len(registered.qc)
    assert stats.regions.query("half == 'whole'")["nodules"].sum() == len(registered.qc)
    assert stats.capsule_distance["nodules"].sum() == len(registered.qc)
    # Saved and read back, queried at a point.
    reloaded = load_stats(tmp_path)
    for name, volume in stats.volumes.items():
        np.testing.assert_array_equal(reloaded.volumes[name], volume)
    k, j, i = np.argwhere(enough)[0]
    point = atlas.voxel_to_world([[i, j, k]])
    answer = reloaded.probability_at(point)
    assert answer["probability"][0] == pytest.approx(stats.volumes["probability"][k, j, i])
    assert answer["n_nodules"][0] == counts[k, j, i]


def test_result_does_not_depend_on_blocks_workers_or_dask(registered, atlas, monkeypatch):
    monkeypatch.setattr(maps_module, "BLOCK_SIZE", 4)
    runs = [aggregate(registered, atlas=atlas, permutations=20, min_cases=2, workers=w,
                      scheduler=s, progress=False)
            for w, s in ((1, None), (2, None), (2, "local"))]
    for other in runs[1:]:
        for name, volume in runs[0].volumes.items():
            np.testing.assert_array_equal(volume, other.volumes[name])


def test_killed_run_resumes_to_identical_results_and_update_adds(registered, atlas, tmp_path,
                                                                  monkeypatch):
    # 10 blocks of 2 nodules; the state is saved after the first 8; the run dies in block 10.
    monkeypatch.setattr(maps_module, "BLOCK_SIZE", 2)
    full = aggregate(registered, atlas=atlas, out_dir=tmp_path / "full", permutations=300,
                     min_cases=2, workers=1, progress=False)
    original = maps_module.accumulate_block
    calls = []

    def dies(*args):
        if len(calls) == 9:
            raise KeyboardInterrupt
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(maps_module, "accumulate_block", dies)
    with pytest.raises(KeyboardInterrupt):
        aggregate(registered, atlas=atlas, out_dir=tmp_path / "resumed", permutations=300,
                  min_cases=2, workers=1, progress=False)
    saved = maps_module.Accumulator.load(tmp_path / "resumed" / "accumulators.npz")[0]
    assert len(saved.nodules) == 16
    monkeypatch.setattr(maps_module, "accumulate_block", original)
    resumed = aggregate(registered, atlas=atlas, out_dir=tmp_path / "resumed", permutations=300,
                        min_cases=2, workers=1, progress=False)
    for name, volume in full.volumes.items():
        np.testing.assert_array_equal(volume, resumed.volumes[name])
    pd.testing.assert_frame_equal(full.regions, resumed.regions)

    # Half the nodules first, then --update with all: the same maps (sums in another order).
    half = registered.qc.iloc[: len(registered.qc) // 2]
    partial = type(registered)(half, registered.out_dir)
    aggregate(partial, atlas=atlas, out_dir=tmp_path / "update", permutations=300, min_cases=2,
              progress=False)
    with pytest.raises(InputError, match="--update"):
        aggregate(registered, atlas=atlas, out_dir=tmp_path / "update", permutations=300,
                  min_cases=2, progress=False)
    updated = aggregate(registered, atlas=atlas, out_dir=tmp_path / "update", permutations=300,
                        min_cases=2, update=True, progress=False)
    for name in ("n_nodules", "sum_weight", "probability", "t"):
        np.testing.assert_allclose(updated.volumes[name], full.volumes[name], rtol=1e-9,
                                   equal_nan=True)
    assert updated.summary["nodules"] == full.summary["nodules"]


def test_bad_inputs_are_reported_not_silently_absorbed(registered, atlas, tmp_path):
    with pytest.raises(InputError, match="another atlas grid"):
        aggregate(registered, atlas=Atlas.default(1.0), progress=False)
    qc = registered.qc.copy()
    qc.loc[:2, "label"] = np.nan
    stats = aggregate(type(registered)(qc, registered.out_dir), atlas=atlas, min_cases=2,
                      permutations=0, progress=False)
    assert stats.summary["excluded"]["missing outcome"] == 3
    assert stats.summary["nodules"] == len(qc) - 3

    # All outcomes equal: maps, but no association test, and a note that says why.
    qc = registered.qc.assign(label=0.0)
    stats = aggregate(type(registered)(qc, registered.out_dir), atlas=atlas, min_cases=2,
                      permutations=10, progress=False)
    assert any("no association test" in note for note in stats.summary["notes"])
    assert any("the weighted map is shown" in note for note in stats.summary["notes"])
    assert stats.summary["estimator"]["name"] == "weighted"
    assert np.nanmax(stats.volumes["proportion"]) == 0 and np.isnan(stats.volumes["t"]).all()

    # A nodule whose patch is empty is left out and counted.
    folder = tmp_path / "registered"
    folder.mkdir()
    (folder / "patches").mkdir()
    for name in ("qc.csv", "register.json"):
        (folder / name).write_bytes((registered.out_dir / name).read_bytes())
    for path in (registered.out_dir / "patches").glob("*.npz"):
        (folder / "patches" / path.name).write_bytes(path.read_bytes())
    first = registered.qc["nodule"].iloc[0]
    patch = load_patch(folder / "patches" / f"{first}.npz")
    with np.load(folder / "patches" / f"{first}.npz") as data:
        qc_row = json.loads(str(data["qc"]))
    patch.mask[:] = False
    patch.heatmap[:] = 0
    from llnm3d.registration.cohort import save_patch

    save_patch(folder / "patches" / f"{first}.npz", patch, qc_row)
    stats = aggregate(folder, atlas=atlas, out_dir=tmp_path / "stats", min_cases=2,
                      permutations=0, progress=False)
    assert stats.summary["excluded"]["empty patch"] == 1
    again = aggregate(folder, atlas=atlas, out_dir=tmp_path / "stats", min_cases=2,
                      permutations=0, progress=False)  # a finished result is just reloaded
    assert again.summary["excluded"] == stats.summary["excluded"]

    with pytest.raises(InputError, match="unknown covariate"):
        aggregate(registered, atlas=atlas, covariates=["height"], progress=False)


def test_covariates_enter_the_test(registered, atlas):
    plain = aggregate(registered, atlas=atlas, min_cases=2, permutations=0, progress=False)
    adjusted = aggregate(registered, atlas=atlas, min_cases=2, permutations=0,
                         covariates=["age", "sex", "size"], progress=False)
    # Covariates adjust the spatial model and the test, not the weighted proportion.
    np.testing.assert_array_equal(plain.volumes["mask_weighted_probability"],
                                  adjusted.volumes["mask_weighted_probability"])
    finite = np.isfinite(plain.volumes["t"]) & np.isfinite(adjusted.volumes["t"])
    assert finite.sum() > 100
    assert not np.allclose(plain.volumes["t"][finite], adjusted.volumes["t"][finite])


def test_cli_aggregate(registered, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["aggregate", "--registered", str(registered.out_dir),
                                 "--out", str(tmp_path), "--weight", "mask", "--min-cases", "2",
                                 "--permutations", "20"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "probability.nii.gz").exists() and (tmp_path / "regions.csv").exists()
    result = runner.invoke(app, ["aggregate", "--registered", str(tmp_path), "--out",
                                 str(tmp_path / "x")])
    assert result.exit_code == 2 and "not a registration folder" in result.output
