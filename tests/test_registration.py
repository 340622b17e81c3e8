import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from typer.testing import CliRunner

from llnm3d import load_registered, register
from llnm3d.cli import app
from llnm3d.io import InputError
from llnm3d.registration import ViewImage, atlas_plane, load_patch, register_view
from llnm3d.registration import cohort as cohort_module
from llnm3d.validation import registration_errors


def _synthetic_view(atlas, view, level_mm, side, scale, angle_deg, pixel_mm=0.15, size=256):
    """An image made from the atlas section at ``level_mm`` through a known similarity.

    Image mm ``u`` maps to section mm ``h = scale * R(angle) (u - c) + c + shift`` with ``c``
    the image centre, the shift putting the image centre 2 mm off the lobe's centre; the nodule
    is a 2.5 mm disc at the lobe's centre.
    """
    section = atlas_plane(atlas, view, level_mm)
    rows, cols = np.nonzero(section.mask)
    x_mm = section.pixel_to_atlas(rows, cols)[:, 0]
    lobe = x_mm < 0 if side == "R" else x_mm > 0
    nodule_hw = np.array([cols[lobe].mean(), rows[lobe].mean()]) * section.spacing_mm
    angle = np.radians(angle_deg)
    matrix = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.full(2, (size - 1) / 2 * pixel_mm)
    offset = nodule_hw + np.array([2.0, -2.0]) - matrix @ centre
    rows, cols = np.indices((size, size)).reshape(2, -1)
    hw = np.stack([cols, rows], 1) * pixel_mm @ matrix.T + offset
    pixels = hw[:, ::-1] / section.spacing_mm
    thyroid = ndimage.map_coordinates(section.mask.astype(float), pixels.T, order=1) >= 0.5
    nodule = np.linalg.norm(hw - nodule_hw, axis=1) <= 2.5
    image = ViewImage("synthetic", view, thyroid.reshape(size, size),
                      (nodule & thyroid).reshape(size, size), None, pixel_mm)
    return image, matrix, offset


@pytest.mark.parametrize("view, level, side, scale, angle", [
    ("transverse", 8.0, "R", 1.12, 4.0),
    ("transverse", 14.0, "L", 0.9, -3.0),
    ("longitudinal", -18.0, "R", 1.1, 4.0),
    ("longitudinal", 20.0, "L", 0.88, -2.0),
])
def test_register_view_recovers_a_known_similarity(atlas, view, level, side, scale, angle):
    image, matrix, offset = _synthetic_view(atlas, view, level, side, scale, angle)
    result = register_view(image, atlas, level, side)
    assert result.scale == pytest.approx(scale, abs=0.03)
    assert result.rotation_deg == pytest.approx(angle, abs=1.5)
    # Every pixel of the thyroid lands within a fraction of a millimetre of its true place.
    rows, cols = np.nonzero(image.thyroid_mask)
    uv = np.stack([cols, rows], 1) * image.pixel_mm
    error = np.linalg.norm(uv @ (result.matrix - matrix).T + result.offset - offset, axis=1)
    assert np.median(error) < 0.3 and error.max() < 1.0
    assert result.dice > 0.95


def test_atlas_plane_layout_follows_the_image_conventions(atlas):
    transverse = atlas_plane(atlas, "transverse", 5.0)
    # Columns run along +x (patient left): the right lobe is on the image left.
    cols = np.nonzero(transverse.mask.any(axis=0))[0]
    x_mm = transverse.pixel_to_atlas(np.zeros(2), cols[[0, -1]])[:, 0]
    assert x_mm[0] < -15 and x_mm[1] > 15
    longitudinal = atlas_plane(atlas, "longitudinal", -18.0)
    points = longitudinal.pixel_to_atlas(np.zeros(2), np.array([0, 10]))
    assert points[0, 2] > points[1, 2]  # cranial on the image left
    hit = np.argwhere(longitudinal.mask)[0]
    centre = longitudinal.pixel_to_atlas(hit[:1], hit[1:])
    assert atlas.capsule_distance_mm(centre)[0] < 0.5
    assert not atlas_plane(atlas, "transverse", 500.0).mask.any()


@pytest.fixture(scope="module")
def registered(cohort, atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("registered")
    return register(cohort.out_dir / "manifest.csv", atlas=atlas, out_dir=out, workers=2,
                    progress=False)


def test_registration_finds_the_true_centres(registered, cohort, atlas):
    assert (registered.qc["status"] != "failed").all()
    errors = registration_errors(registered.qc, cohort.out_dir, atlas, registered.patch)
    assert len(errors) == len(cohort.truth)
    assert errors["error_mm"].median() < 1.5
    assert errors["error_mm"].max() < 5.0
    assert (errors["region"] == errors["region_true"]).mean() > 0.75
    assert np.abs(errors["capsule_distance_mm"] - errors["capsule_distance_true_mm"]).median() < 0.6
    assert errors["nodule_dice"].median() > 0.5
    assert (registered.qc["transverse_dice"] > 0.9).all()


def test_left_and_right_never_swap(registered):
    qc = registered.qc
    right = qc["side"] == "R"
    assert (qc.loc[right, "centre_x_mm"] < 0).all() and (qc.loc[~right, "centre_x_mm"] > 0).all()
    assert (qc.loc[right, "region"] // 10 != 2).all()
    assert (qc.loc[~right, "region"] // 10 != 1).all()
    for nodule, patch in registered.patches():
        x_mm = patch.grid.origin_mm[0] + patch.grid.spacing_mm * (
            patch.start_zyx[2] + np.nonzero(patch.mask.any(axis=(0, 1)))[0])
        side = qc.set_index("nodule").loc[nodule, "side"]
        assert (x_mm < 0).all() if side == "R" else (x_mm > 0).all()


def _copy_cohort(cohort, tmp_path):
    root = tmp_path / "cohort"
    shutil.copytree(cohort.out_dir, root, ignore=shutil.ignore_patterns("truth*"))
    return root, pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)


def test_flip_horizontal_undoes_a_mirrored_image(cohort, atlas, tmp_path):
    root, manifest = _copy_cohort(cohort, tmp_path)
    first = manifest[manifest["patient_id"] == manifest["patient_id"].iloc[0]].head(2).copy()
    for column in ("image", "thyroid_mask", "nodule_mask"):
        for path in first[column]:
            flipped = np.asarray(Image.open(root / path))[:, ::-1]
            Image.fromarray(np.ascontiguousarray(flipped)).save(root / path.replace(".png",
                                                                                    "_f.png"))
        first[column] = first[column].str.replace(".png", "_f.png")
    first["flip_horizontal"] = "1"
    plain = manifest[manifest["case_id"].isin(first["case_id"])]
    plain.to_csv(root / "plain.csv", index=False)
    first.to_csv(root / "flipped.csv", index=False)
    a = register(root / "plain.csv", atlas=atlas, workers=1, progress=False).qc
    b = register(root / "flipped.csv", atlas=atlas, workers=1, progress=False).qc
    columns = ["centre_x_mm", "centre_y_mm", "centre_z_mm"]
    np.testing.assert_allclose(a[columns].to_numpy(float), b[columns].to_numpy(float), atol=1e-6)


def test_bad_inputs_fail_by_id_and_the_rest_complete(cohort, atlas, tmp_path):
    root, manifest = _copy_cohort(cohort, tmp_path)
    cases = manifest["case_id"].tolist()
    nodules = manifest.drop_duplicates(["patient_id", "nodule_id"])
    keys = (nodules["patient_id"] + "-N" + nodules["nodule_id"]).tolist()
    size = np.asarray(Image.open(root / manifest["image"].iloc[0])).shape

    def rewrite(case, column, array):
        path = manifest.loc[manifest["case_id"] == case, column].iloc[0]
        Image.fromarray(array.astype(np.uint8) * 255).save(root / path)

    rewrite(cases[0], "thyroid_mask", np.zeros(size, bool))                     # empty
    rewrite(cases[2], "nodule_mask", np.pad(np.ones((10, 10), bool),
                                            ((0, size[0] - 10), (0, size[1] - 10))))  # outside
    rewrite(cases[4], "thyroid_mask", np.ones((100, 100), bool))               # wrong size
    manifest.loc[manifest["case_id"] == cases[6], "thyroid_mask"] = ""        # no mask
    heatmaps = tmp_path / "heat" / "heatmaps"
    heatmaps.mkdir(parents=True)
    for case in cases:
        value = np.full(size, np.nan if case == cases[8] else 0.5, np.float32)
        np.savez(heatmaps / f"{case}.npz", heatmap=value, probability=np.float32(0.5))
    manifest.to_csv(root / "manifest.csv", index=False)
    result = register(root / "manifest.csv", heatmaps=tmp_path / "heat", atlas=atlas,
                      out_dir=tmp_path / "out", workers=2, progress=False)
    reasons = dict(result.failures)
    expected = {keys[0]: "thyroid_mask is empty", keys[1]: "nodule mask lies outside",
                keys[2]: "thyroid_mask is 100x100 pixels", keys[3]: "no thyroid mask",
                keys[4]: "NaN"}
    assert set(reasons) == set(expected)
    for index, (key, text) in enumerate(expected.items()):
        assert text in reasons[key] and cases[2 * index] in reasons[key]
    qc = result.qc.set_index("nodule")
    assert (qc.loc[keys[5:], "status"] != "failed").all()
    assert (qc.loc[list(expected), "status"] == "failed").all()
    assert (tmp_path / "out" / "qc.csv").exists()

    # The user may accept a coarse location for the nodule without a thyroid mask.
    manifest["lobe_third"], manifest["front_back"] = "upper", "back"
    manifest.to_csv(root / "manifest.csv", index=False)
    coarse = register(root / "manifest.csv", heatmaps=tmp_path / "heat", atlas=atlas,
                      out_dir=tmp_path / "out2", workers=1, progress=False,
                      allow_coarse_location=True).qc.set_index("nodule")
    assert coarse.loc[keys[3], "status"] == "warning"
    assert "coarse location" in coarse.loc[keys[3], "reason"]
    assert coarse.loc[keys[3], "region"] % 10 == 1


def test_one_view_is_spread_by_the_prior_and_flagged(cohort, atlas, tmp_path):
    root, manifest = _copy_cohort(cohort, tmp_path)
    manifest = manifest[manifest["view"] == "transverse"].head(3)
    manifest.to_csv(root / "one.csv", index=False)
    qc = register(root / "one.csv", atlas=atlas, workers=1, progress=False).qc
    assert (qc["status"] == "warning").all()
    assert qc["reason"].str.contains("transverse view only: z from the prior").all()
    truth = cohort.truth.assign(nodule=cohort.truth["patient_id"] + "-N"
                                + cohort.truth["nodule_id"].astype(str)).set_index("nodule")
    x_error = qc["centre_x_mm"].to_numpy() - truth.loc[qc["nodule"], "centre_atlas_x_mm"]
    assert np.abs(x_error).max() < 2.5


def test_resume_after_interruption_gives_identical_results(cohort, atlas, tmp_path,
                                                           monkeypatch):
    manifest = cohort.out_dir / "manifest.csv"
    full = register(manifest, atlas=atlas, out_dir=tmp_path / "full", workers=1, progress=False)
    original = cohort_module._register_one
    calls = []

    def dies_after_five(context, job):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(job.nodule)
        return original(context, job)

    monkeypatch.setattr(cohort_module, "_register_one", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        register(manifest, atlas=atlas, out_dir=tmp_path / "resumed", workers=1, progress=False)
    assert len(list((tmp_path / "resumed" / "patches").glob("*.npz"))) == 5
    assert not (tmp_path / "resumed" / "qc.csv").exists()
    monkeypatch.setattr(cohort_module, "_register_one", original)
    resumed = register(manifest, atlas=atlas, out_dir=tmp_path / "resumed", workers=1,
                       progress=False)
    pd.testing.assert_frame_equal(full.qc, resumed.qc)
    for path in sorted((tmp_path / "full" / "patches").glob("*.npz")):
        assert path.read_bytes() == (tmp_path / "resumed" / "patches" / path.name).read_bytes()
    # Other parameters into the same folder are refused rather than mixed.
    with pytest.raises(InputError, match="other parameters"):
        register(manifest, atlas=atlas, out_dir=tmp_path / "resumed", transform="affine",
                 progress=False)


def test_dask_cluster_gives_the_same_result_as_local_processes(cohort, atlas, registered,
                                                               tmp_path):
    on_dask = register(cohort.out_dir / "manifest.csv", atlas=atlas, out_dir=tmp_path,
                       workers=2, scheduler="local", progress=False)
    pd.testing.assert_frame_equal(registered.qc, on_dask.qc)
    for path in sorted((registered.out_dir / "patches").glob("*.npz")):
        assert path.read_bytes() == (tmp_path / "patches" / path.name).read_bytes()


def test_patches_round_trip_and_know_their_grid(registered, atlas):
    reloaded = load_registered(registered.out_dir)
    pd.testing.assert_frame_equal(reloaded.qc, registered.qc, check_dtype=False)
    nodule = registered.qc["nodule"].iloc[0]
    patch = load_patch(registered.out_dir / "patches" / f"{nodule}.npz")
    assert patch.grid == atlas.grid
    assert patch.heatmap is None and patch.mask.any()
    dense = patch.to_dense()
    assert dense.sum() == patch.mask.sum()
    row = registered.qc.iloc[0]
    centre = atlas.world_to_voxel([[row["centre_x_mm"], row["centre_y_mm"],
                                    row["centre_z_mm"]]])[0][::-1]
    k, j, i = np.rint(centre).astype(int)
    assert dense[k, j, i] == 1.0
    with pytest.raises(InputError, match="not a registration folder"):
        load_registered(registered.out_dir / "patches")


def test_cli_exit_codes_follow_the_convention(cohort, tmp_path):
    root, manifest = _copy_cohort(cohort, tmp_path)
    manifest.loc[0, "side"] = ""
    manifest.loc[0, "report"] = ""  # a report naming the lobe would fill the side
    manifest.to_csv(root / "manifest.csv", index=False)
    runner = CliRunner()
    result = runner.invoke(app, ["register", "--manifest", str(root / "manifest.csv"),
                                 "--out", str(tmp_path / "out"), "--workers", "1"])
    key = f"{manifest.loc[0, 'patient_id']}-N{manifest.loc[0, 'nodule_id']}"
    assert result.exit_code == 1
    assert f"failed: nodule {key}: " in result.output
    assert "side (L/R) is missing" in result.output
    result = runner.invoke(app, ["register", "--manifest", str(tmp_path / "none.csv"),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "manifest not found" in result.output
    result = runner.invoke(app, ["register", "--manifest", str(root / "manifest.csv"),
                                 "--out", str(tmp_path / "out2"), "--heatmaps",
                                 str(tmp_path)])
    assert result.exit_code == 2 and "no heatmaps/ folder" in result.output


@pytest.mark.parametrize("option, value, words", [
    ("max_rounds", 0, "max_rounds must be an integer >= 1"),
    ("max_rounds", 2.0, "max_rounds must be an integer"),
    ("tolerance_mm", 0.0, "tolerance_mm must be a number > 0"),
])
def test_register_nodule_refuses_options_that_cannot_converge(atlas, option, value, words):
    from llnm3d.registration.fusion import register_nodule

    with pytest.raises(InputError, match=words):
        register_nodule({}, atlas, "R", **{option: value})
