import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from llnm3d.io import InputError
from llnm3d.phantom import PatientDeformation, RiskSpec, make_phantom, sample_truth
from llnm3d.phantom.cohort import MANIFEST_COLUMNS

DESIGN_COLUMNS = ["case_id", "patient_id", "nodule_id", "side", "view", "image", "thyroid_mask",
                  "nodule_mask", "pixel_spacing_mm", "label", "age", "sex", "report"]


def folder_digest(folder):
    """Hash of every file's name and bytes under a folder, phantom.json excluded."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def read(cohort, relative):
    return np.asarray(Image.open(cohort.out_dir / relative))


@pytest.fixture(scope="module")
def big_truth(atlas):
    """Truth of a few thousand nodules under the default spec (no images)."""
    return sample_truth(2500, seed=11, atlas=atlas, workers=2)


def binomial_check(table, by):
    """Empirical LLNM rate vs the spec's expected rate per group, in standard errors."""
    grouped = table.groupby(by, observed=True)
    out = pd.DataFrame({
        "n": grouped.size(),
        "rate": grouped["label"].mean(),
        "expected": grouped["risk"].mean(),
        "se": grouped["risk"].apply(lambda p: np.sqrt(np.sum(p * (1 - p))) / len(p)),
    })
    out["z"] = (out["rate"] - out["expected"]) / out["se"]
    return out


def capsule_bins(table):
    return pd.cut(table["capsule_distance_mm"], [0, 1, 2.5, 5, np.inf], right=False)


def test_manifest_has_design_columns_and_valid_files(cohort):
    assert list(cohort.manifest.columns) == DESIGN_COLUMNS == MANIFEST_COLUMNS
    assert cohort.manifest["case_id"].is_unique
    assert set(cohort.manifest["view"]) == {"transverse", "longitudinal"}
    assert len(cohort.manifest) == 2 * len(cohort.truth)
    on_disk = pd.read_csv(cohort.out_dir / "manifest.csv")
    assert list(on_disk.columns) == DESIGN_COLUMNS
    for column in ("image", "thyroid_mask", "nodule_mask"):
        assert all((cohort.out_dir / p).is_file() for p in cohort.manifest[column])
    assert not cohort.failures


def test_truth_is_separate_and_self_consistent(cohort, atlas):
    truth_json = json.loads((cohort.out_dir / "truth.json").read_text())
    assert truth_json["seed"] == 7
    assert truth_json["risk_spec"] == RiskSpec.default().data
    for _, nodule in cohort.truth.iterrows():
        patient = truth_json["patients"][nodule["patient_id"]]
        deformation = PatientDeformation.from_dict(patient["deformation"])
        centre = nodule[[f"centre_patient_{a}_mm" for a in "xyz"]].to_numpy(float)
        atlas_centre = nodule[[f"centre_atlas_{a}_mm" for a in "xyz"]].to_numpy(float)
        assert np.allclose(deformation.to_atlas(centre[None])[0], atlas_centre, atol=1e-6)
        region = atlas.region_of(atlas_centre[None])[0]
        assert region == nodule["region"]
        assert region // 10 == (1 if nodule["side"] == "R" else 2)
        assert nodule["capsule_distance_mm"] < nodule["centre_capsule_distance_mm"]
    spec = RiskSpec.default()
    assert np.allclose(spec.probability(cohort.truth), cohort.truth["risk"])


def test_nodule_mask_inside_thyroid_mask_and_through_the_centre(cohort):
    truth_json = json.loads((cohort.out_dir / "truth.json").read_text())
    truth = cohort.truth.set_index(["patient_id", "nodule_id"])
    for _, row in cohort.manifest.iterrows():
        thyroid = read(cohort, row["thyroid_mask"]) > 127
        nodule = read(cohort, row["nodule_mask"]) > 127
        assert nodule.any(), row["case_id"]
        assert not (nodule & ~thyroid).any(), row["case_id"]
        plane = truth_json["patients"][row["patient_id"]]["images"][row["case_id"]]
        assert plane["spacing_mm"] == row["pixel_spacing_mm"]
        centre = truth.loc[(row["patient_id"], row["nodule_id"]),
                           [f"centre_patient_{a}_mm" for a in "xyz"]].to_numpy(float)
        offset = centre - np.asarray(plane["origin_mm"])
        r = int(round(offset @ np.asarray(plane["row_dir"]) / plane["spacing_mm"]))
        c = int(round(offset @ np.asarray(plane["col_dir"]) / plane["spacing_mm"]))
        assert nodule[r, c], row["case_id"]


def test_image_conventions(cohort):
    truth_json = json.loads((cohort.out_dir / "truth.json").read_text())
    for _, row in cohort.manifest.iterrows():
        plane = truth_json["patients"][row["patient_id"]]["images"][row["case_id"]]
        assert plane["row_dir"] == [0.0, 1.0, 0.0]  # depth downward (posterior)
        expected_col = [1.0, 0.0, 0.0] if row["view"] == "transverse" else [0.0, 0.0, -1.0]
        assert plane["col_dir"] == expected_col  # patient right / cranial on the image left


def test_echogenicity_shows_in_the_image(cohort):
    truth = cohort.truth.set_index(["patient_id", "nodule_id"])
    contrasts = {"hypoechoic": [], "very_hypoechoic": [], "hyperechoic": []}
    for _, row in cohort.manifest.iterrows():
        kind = truth.loc[(row["patient_id"], row["nodule_id"]), "echogenicity"]
        if kind not in contrasts:
            continue
        image = read(cohort, row["image"]).astype(float)
        nodule = read(cohort, row["nodule_mask"]) > 127
        parenchyma = (read(cohort, row["thyroid_mask"]) > 127) & ~nodule
        contrasts[kind].append(np.median(image[nodule]) - np.median(image[parenchyma]))
    dark = contrasts["hypoechoic"] + contrasts["very_hypoechoic"]
    assert dark and all(c < 0 for c in dark)
    assert all(c > 0 for c in contrasts["hyperechoic"])


def test_reports_use_tirads_vocabulary(cohort):
    truth = cohort.truth.set_index(["patient_id", "nodule_id"])
    for _, row in cohort.manifest.iterrows():
        nodule = truth.loc[(row["patient_id"], row["nodule_id"])]
        report = row["report"]
        assert report.startswith(("Right lobe", "Left lobe"))
        assert f"{nodule['lobe_third']} third" in report
        assert nodule["echogenicity"].replace("_", " ") in report
        assert f"TR{nodule['tirads_level']}" in report


def test_same_seed_same_output_regardless_of_workers(tmp_path, atlas):
    a = make_phantom(tmp_path / "a", 4, seed=3, atlas=atlas, workers=1, progress=False)
    b = make_phantom(tmp_path / "b", 4, seed=3, atlas=atlas, workers=2, progress=False)
    c = make_phantom(tmp_path / "c", 4, seed=4, atlas=atlas, workers=1, progress=False)
    assert folder_digest(a.out_dir) == folder_digest(b.out_dir)
    assert folder_digest(a.out_dir) != folder_digest(c.out_dir)


def test_sample_truth_matches_the_rendered_cohort(cohort, atlas):
    pd.testing.assert_frame_equal(sample_truth(12, seed=7, atlas=atlas, workers=1), cohort.truth)


def test_killed_run_resumes_to_identical_output(tmp_path, atlas):
    full = make_phantom(tmp_path / "full", 3, seed=5, atlas=atlas, workers=1, progress=False)
    partial_dir = tmp_path / "partial"
    make_phantom(partial_dir, 3, seed=5, atlas=atlas, workers=1, progress=False)
    # Simulate a run killed part-way: some images never written, tables not yet written.
    for path in sorted((partial_dir / "images").glob("*.png"))[2:]:
        path.unlink()
    (partial_dir / "manifest.csv").unlink()
    make_phantom(partial_dir, 3, seed=5, atlas=atlas, workers=1, progress=False)
    assert folder_digest(partial_dir) == folder_digest(full.out_dir)


def test_resume_with_other_parameters_is_refused(tmp_path, atlas):
    make_phantom(tmp_path, 2, seed=1, atlas=atlas, workers=1, progress=False)
    with pytest.raises(InputError, match="other parameters"):
        make_phantom(tmp_path, 2, seed=2, atlas=atlas, workers=1, progress=False)


def test_default_spec_rates_match_expected_per_capsule_bin_and_third(big_truth):
    assert len(big_truth) > 3000
    assert 0.4 < big_truth["label"].mean() < 0.6  # prevalence near 50 %
    for by in (capsule_bins(big_truth), "lobe_third"):
        check = binomial_check(big_truth, by)
        assert (check["n"] >= 15).all()
        assert (check["z"].abs() < 3.5).all(), check
    capsule = binomial_check(big_truth, capsule_bins(big_truth))["expected"].to_numpy()
    assert capsule[0] > capsule[1] > capsule[2] + 0.25  # sharply higher within 2.5 mm
    thirds = binomial_check(big_truth, "lobe_third")["expected"]
    assert min(thirds["upper"], thirds["middle"]) > thirds["lower"] + 0.1


def test_other_spec_changes_the_rates_accordingly(atlas):
    # A posterior-lower hot spot in both lobes and nothing else.
    spec = RiskSpec.from_dict({
        "format": "llnm3d-risk-spec/1", "intercept": -1.5,
        "terms": [{"type": "gaussian", "centre_mm": [18.0, 12.0, -10.0], "sigma_mm": 7.0,
                   "coefficient": 4.0, "mirror_x": True}]})
    truth = sample_truth(1500, seed=12, risk_spec=spec, atlas=atlas, workers=2)
    check = binomial_check(truth, "lobe_third")
    assert (check["z"].abs() < 3.5).all(), check
    assert check.loc["lower", "rate"] > check.loc["upper", "rate"] + 0.2
    posterior = truth["y_mm"] > truth["y_mm"].median()
    lower = truth["lobe_third"] == "lower"
    assert truth.loc[posterior & lower, "label"].mean() > truth.loc[~posterior & lower,
                                                                   "label"].mean() + 0.1
    # no capsule effect planted: the rates near and far from the capsule are close
    capsule = binomial_check(truth, capsule_bins(truth))
    assert (capsule["z"].abs() < 3.5).all(), capsule


def test_attribute_distributions(big_truth):
    assert big_truth["diameter_mm"].median() == pytest.approx(6.0, abs=0.8)
    assert big_truth["taller_than_wide"].mean() == pytest.approx(0.25, abs=0.04)
    assert big_truth["microcalcification"].mean() == pytest.approx(0.30, abs=0.04)
    assert set(big_truth["margin"]) == {"smooth", "lobulated", "irregular"}
    taller = big_truth["taller_than_wide"] == 1
    assert (big_truth.loc[taller, "semi_axis_y_mm"] > big_truth.loc[taller, "semi_axis_x_mm"]).all()
    assert (big_truth.groupby("patient_id").size() <= 3).all()
    assert (big_truth["capsule_distance_mm"] > 0).all()


def test_deformation_inverse_and_size_range(rng):
    centres = {1: np.array([-19.0, 8.5, 5.0]), 2: np.array([19.0, 8.5, 5.0])}
    for _ in range(10):
        deformation = PatientDeformation.random(rng, centres)
        assert 0.85 <= deformation.global_scale <= 1.15
        points = rng.uniform(-30, 30, size=(200, 3))
        assert np.allclose(deformation.to_atlas(deformation.to_patient(points)), points,
                           atol=1e-6)
        restored = PatientDeformation.from_dict(json.loads(json.dumps(deformation.as_dict())))
        assert np.allclose(restored.to_atlas(points), deformation.to_atlas(points))
