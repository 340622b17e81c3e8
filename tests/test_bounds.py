"""No silent wrong answers: absurd parameters and values are refused (or excluded) by name."""

import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llnm3d import Atlas, aggregate, register
from llnm3d.checks import check_choice, check_number
from llnm3d.cli import app
from llnm3d.export import REQUIRED_MAPS, export_layers
from llnm3d.io import InputError
from llnm3d.manifest import read_manifest
from llnm3d.models.heatmap import compute_heatmaps
from llnm3d.models.qc import contact_sheet
from llnm3d.models.train import TrainSettings, train
from llnm3d.phantom import make_phantom
from llnm3d.phantom.cohort import sample_truth
from llnm3d.site import build_site
from llnm3d.statistics import Stats
from llnm3d.statistics.tables import capsule_distance_table

HEADER = ("case_id,patient_id,nodule_id,side,view,image,thyroid_mask,nodule_mask,"
          "pixel_spacing_mm,label,age,sex,report")


@pytest.fixture
def manifest(tmp_path):
    """A one-row manifest (its image a stub): enough for checks that precede any reading."""
    (tmp_path / "a.png").write_bytes(b"png")
    path = tmp_path / "manifest.csv"
    path.write_text(f"{HEADER}\nc1,p1,1,R,transverse,a.png,,,0.1,1,50,F,\n", encoding="utf-8")
    return path


def _stats() -> Stats:
    """A tiny valid Stats: the export checks run before its grid is matched to an atlas."""
    volumes = {name: np.full((2, 2, 2), 0.5, np.float32) for name in REQUIRED_MAPS}
    volumes["n_nodules"][:] = 10
    table = pd.DataFrame({"region": ["right upper"]})
    return Stats(volumes, np.zeros(3), 1.0, table, table,
                 {"parameters": {"min_cases": 5}, "maps": list(REQUIRED_MAPS)})


AGGREGATE_CASES = [
    ({"permutations": 1_000_000_000}, "permutations"),
    ({"permutations": -1}, "permutations"),
    ({"permutations": 2.5}, "permutations"),
    ({"min_cases": 0}, "min_cases"),
    ({"min_cases": float("nan")}, "min_cases"),
    ({"min_cases": 2.5}, "min_cases"),
    ({"min_cases": True}, "min_cases"),
    ({"prior_strength": -2}, "prior_strength"),
    ({"prior_strength": float("nan")}, "prior_strength"),
    ({"prior_strength": float("inf")}, "prior_strength"),
    ({"bins_mm": [5, 1]}, "bins_mm"),
    ({"bins_mm": [1]}, "bins_mm"),
    ({"bins_mm": [0, float("nan"), 5]}, "bins_mm"),
    ({"bins_mm": [float("inf"), 1]}, "bins_mm"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"workers": 0}, "workers"),
    ({"estimator": "spatail"}, "estimator"),
    ({"weight": "heatmaps"}, "weight"),
    ({"covariates": ["height"]}, "covariate"),
    ({"atlas": "atlas1mm"}, "atlas"),
    ({"atlas": 0.5}, "atlas"),
]


@pytest.mark.parametrize("kwargs, name", AGGREGATE_CASES)
def test_aggregate_refuses_absurd_parameters_by_name(tmp_path, kwargs, name):
    with pytest.raises(InputError, match=name):
        aggregate(tmp_path / "nowhere", progress=False, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"atlas": "nonexistent"}, "atlas"),
    ({"atlas": 3}, "atlas"),
    ({"min_weight": 1.0}, "min_weight"),
    ({"min_weight": float("nan")}, "min_weight"),
    ({"transform": "rigid"}, "transform"),
    ({"workers": -1}, "workers"),
])
def test_register_refuses_absurd_parameters_by_name(manifest, kwargs, name):
    with pytest.raises(InputError, match=name):
        register(manifest, progress=False, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"n_patients": 0}, "n_patients"),
    ({"n_patients": 10**9}, "n_patients"),
    ({"n_patients": 2.5}, "n_patients"),
    ({"seed": -1}, "seed"),
    ({"image_size_px": 10}, "image_size_px"),
    ({"image_size_px": 100_000}, "image_size_px"),
    ({"max_nodules": 0}, "max_nodules"),
    ({"workers": 0}, "workers"),
    ({"spacing_range_mm": (0.2, 0.1)}, "spacing_range_mm"),
    ({"spacing_range_mm": (0.1, 1e300)}, "spacing_range_mm"),
    ({"atlas": "atlas1mm"}, "atlas"),
])
def test_phantom_refuses_absurd_parameters_by_name(tmp_path, kwargs, name):
    arguments = {"n_patients": 2, **kwargs}
    with pytest.raises(InputError, match=name):
        make_phantom(tmp_path, progress=False, **arguments)
    assert not (tmp_path / "phantom.json").exists()  # refused before anything is written


def test_sample_truth_refuses_absurd_patients():
    with pytest.raises(InputError, match="n_patients"):
        sample_truth(0)


@pytest.mark.parametrize("kwargs, name", [
    ({"epochs": 0}, "epochs"),
    ({"epochs": 10**9}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"learning_rate": 5.0}, "learning_rate"),
    ({"modality_dropout": 1.0}, "modality_dropout"),
    ({"modality_dropout": -0.1}, "modality_dropout"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"warmup_epochs": -1}, "warmup_epochs"),
    ({"seed": -3}, "seed"),
    ({"config": "smal"}, "did you mean 'small'"),
])
def test_train_settings_refuse_absurd_values_by_name(kwargs, name):
    with pytest.raises(InputError, match=name):
        TrainSettings(**kwargs)


def test_train_refuses_unknown_view_and_workers(tmp_path, manifest):
    with pytest.raises(InputError, match="view"):
        train(manifest, "oblique", tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="workers"):
        train(manifest, "transverse", tmp_path / "out", workers=0, progress=False)


@pytest.mark.parametrize("kwargs, name", [
    ({"batch_size": 0}, "batch_size"),
    ({"batch_size": 1.5}, "batch_size"),
    ({"workers": 0}, "workers"),
    ({"layer": "fuse"}, "did you mean 'fused'"),
])
def test_heatmap_refuses_absurd_parameters_by_name(tmp_path, manifest, kwargs, name):
    with pytest.raises(InputError, match=name):
        compute_heatmaps(manifest, tmp_path / "out", progress=False, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"n": 0}, "n must"), ({"n": -5}, "n must"), ({"columns": 0}, "columns"),
    ({"tile_px": 10**6}, "tile_px"),
])
def test_contact_sheet_refuses_absurd_sizes(tmp_path, manifest, kwargs, name):
    with pytest.raises(InputError, match=name):
        contact_sheet(read_manifest(manifest), tmp_path / "sheet.png", **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"field_spacing_mm": 0.0}, "field_spacing_mm"),
    ({"field_spacing_mm": float("inf")}, "field_spacing_mm"),
    ({"field_spacing_mm": 1e6}, "field_spacing_mm"),
    ({"surface_spacing_mm": -1.0}, "surface_spacing_mm"),
    ({"levels": [0.5, 1.0]}, "levels"),
    ({"levels": [0.0]}, "levels"),
    ({"levels": [float("nan")]}, "levels"),
    ({"min_cases": 6.5}, "min_cases"),
    ({"min_cases": float("nan")}, "min_cases"),
    ({"atlas": "atlas1mm"}, "atlas"),
])
def test_export_refuses_absurd_parameters_by_name(tmp_path, kwargs, name):
    with pytest.raises(InputError, match=name):
        export_layers(_stats(), tmp_path / "out", **kwargs)
    assert not (tmp_path / "out" / "field.glb").exists()


@pytest.mark.parametrize("kwargs, name", [
    ({"levels": [2.0]}, "levels"), ({"atlas": "atlas1mm"}, "atlas"),
])
def test_build_site_refuses_absurd_parameters_by_name(tmp_path, kwargs, name):
    stats_dir = _stats().save(tmp_path / "stats")
    with pytest.raises(InputError, match=name):
        build_site(tmp_path / "site", stats_dir, **kwargs)


def test_atlas_spacing_and_section_level_are_checked(atlas):
    for spacing in (0.0, 5.0, float("nan")):
        with pytest.raises(InputError, match="spacing_mm"):
            Atlas.default(spacing)
    with pytest.raises(InputError, match="level_mm"):
        atlas.section("R", "transverse", float("inf"))


def test_capsule_distance_table_refuses_bad_bins():
    nodules = pd.DataFrame({"capsule_distance_mm": [1.0], "label": [1], "probability": [0.5]})
    with pytest.raises(InputError, match="bins_mm"):
        capsule_distance_table(nodules, [5, 1])
    assert len(capsule_distance_table(nodules, [0, 2, np.inf])) == 2


def test_checks_name_the_range_and_suggest_a_choice():
    with pytest.raises(InputError, match=r"permutations must be an integer in \[0, 100000\], "
                                         r"got 1000000000"):
        check_number("permutations", 10**9, low=0, high=100_000, integer=True)
    assert check_number("p", np.int64(3), low=1, integer=True) == 3
    with pytest.raises(InputError, match="did you mean 'kernel'"):
        check_choice("estimator", "kernal", ("spatial", "kernel", "weighted"))


@pytest.mark.parametrize("column, value, message", [
    ("age", "inf", "not a finite number"),
    ("age", "nan", "not a finite number"),
    ("age", "300", "outside the physical range 0-120 years"),
    ("age", "-1", "must be positive"),
    ("pixel_spacing_mm", "inf", "not a finite number"),
    ("pixel_spacing_mm", "1e300", "outside the physical range 0.01-2 mm"),
    ("pixel_spacing_mm", "1e-300", "outside the physical range 0.01-2 mm"),
    ("pixel_spacing_mm", "0", "must be positive"),
])
def test_manifest_refuses_unphysical_numbers_by_case(tmp_path, column, value, message):
    (tmp_path / "a.png").write_bytes(b"png")
    spacing, age = ("0.1", value) if column == "age" else (value, "50")
    (tmp_path / "manifest.csv").write_text(
        f"{HEADER}\nbad,p1,1,R,transverse,a.png,,,{spacing},1,{age},F,\n"
        "good,p2,1,L,transverse,a.png,,,0.1,0,120,M,\n", encoding="utf-8")
    m = read_manifest(tmp_path / "manifest.csv")
    assert [case for case, _ in m.problems] == ["bad"]
    assert f"{column} '{value}'" in m.problems[0][1] and message in m.problems[0][1]
    assert list(m.table["case_id"]) == ["good"]


def test_infinite_age_in_qc_csv_counts_as_missing_covariate(registered, atlas, tmp_path):
    folder = tmp_path / "registered"
    shutil.copytree(registered.out_dir, folder)
    qc = pd.read_csv(folder / "qc.csv", dtype=str, keep_default_na=False)
    ok = qc.index[qc["status"] != "failed"]
    qc.loc[ok[0], "age"] = "inf"
    qc.loc[ok[1], "age"] = "300"
    qc.to_csv(folder / "qc.csv", index=False)
    plain = aggregate(registered, atlas=atlas, min_cases=2, permutations=0, covariates=["age"],
                      estimator="weighted", progress=False)
    edited = aggregate(folder, atlas=atlas, min_cases=2, permutations=0, covariates=["age"],
                       estimator="weighted", progress=False)
    excluded = edited.summary["excluded"]["missing covariate age"]
    assert excluded == plain.summary["excluded"]["missing covariate age"] + 2
    assert edited.summary["nodules"] == plain.summary["nodules"] - 2
    t = edited.volumes["t"]
    assert np.isfinite(t).any() and np.nanmax(np.abs(t)) < 50


def test_register_takes_an_atlas_folder(cohort, atlas, tmp_path):
    atlas.save(tmp_path / "atlas")
    m = read_manifest(cohort.out_dir / "manifest.csv")
    m.table = m.table[m.table["patient_id"] == m.table["patient_id"].iloc[0]]
    result = register(m, atlas=str(tmp_path / "atlas"), workers=1, progress=False)
    assert len(result.qc) and (result.qc["status"] != "failed").all(), result.qc["reason"]


def test_cli_refuses_a_billion_permutations_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["aggregate", "--registered", str(tmp_path),
                                      "--out", str(tmp_path / "out"),
                                      "--permutations", "1000000000"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "permutations" in lines[0] and "100000" in lines[0]
