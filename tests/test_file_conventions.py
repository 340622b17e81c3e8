"""Standard file conventions: NIfTI intents and sidecars of the maps, atlas label tables for
3D Slicer and ITK-SNAP, a Y-up atlas GLB and glTF files in metres on request."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import trimesh
from test_export import node_points_mm, read_glb, validate
from typer.testing import CliRunner

from llnm3d.atlas import REGION_NAMES
from llnm3d.cli import app
from llnm3d.export import export_stats
from llnm3d.export.gltf import LPS_TO_GLTF_ROTATION
from llnm3d.io import read_volume, write_volume
from llnm3d.nifti import NiftiHeader
from llnm3d.statistics import MAP_DESCRIPTIONS
from llnm3d.statistics.map_info import MAP_KINDS, NEG_LOG10_MAPS, neg_log10


def _intent(path):
    header = nib.load(path).header
    return header.get_intent(), header["descrip"].item().decode(), (
        float(header["cal_min"]), float(header["cal_max"]))


def test_a_volume_keeps_its_values_and_says_what_they_are(tmp_path):
    values = np.random.default_rng(0).normal(size=(4, 5, 6)).astype(np.float32)
    values[1, 2, 3] = np.nan
    origin = np.array([-3.5, 2.0, 7.25])
    write_volume(tmp_path / "t.nii.gz", values, origin, 0.75,
                 NiftiHeader("t test", (37,), "t", "llnm3d t"))
    read, read_origin, spacing = read_volume(tmp_path / "t.nii.gz")
    np.testing.assert_array_equal(read, values)  # NaN kept, bit for bit
    np.testing.assert_allclose(read_origin, origin)
    assert spacing == 0.75
    intent, descrip, cal = _intent(tmp_path / "t.nii.gz")
    assert intent == ("t test", (37.0,), "t") and descrip == "llnm3d t"
    assert cal == (float(np.nanmin(values)), float(np.nanmax(values)))


def test_every_map_kind_is_described():
    assert set(MAP_KINDS) == set(MAP_DESCRIPTIONS)


def test_maps_carry_intent_description_range_and_a_sidecar(stats_dir):
    summary = json.loads((stats_dir / "summary.json").read_text())
    # intercept, outcome and the footprint-extent covariate (on by default)
    assert summary["t_degrees_of_freedom"] == summary["nodules"] - 3
    assert summary["tests"]["covariates"] == ["extent"]
    assert {log for p, log in NEG_LOG10_MAPS.items()
            if not p.startswith("contrast_")} <= set(summary["maps"])
    for name in summary["maps"]:
        volume = read_volume(stats_dir / f"{name}.nii.gz")[0]
        (intent, params, intent_name), descrip, cal = _intent(stats_dir / f"{name}.nii.gz")
        assert descrip == f"llnm3d {name}"
        kind, units = MAP_KINDS[name]
        expected = {"t": ("t test", (float(summary["t_degrees_of_freedom"]),)),
                    "chi2": ("chi2", (1.0,)), "p": ("p value", ())}.get(kind, ("estimate", ()))
        assert (intent, params) == expected, name
        if kind in ("p", "probability"):
            assert cal == (0.0, 1.0), name
        elif np.isfinite(volume).any():
            assert cal == pytest.approx((np.nanmin(volume), np.nanmax(volume))), name
        if kind == "neglog10p":
            assert intent_name == "-log10(p)"
        sidecar = json.loads((stats_dir / f"{name}.json").read_text())
        assert sidecar["name"] == name and sidecar["file"] == f"{name}.nii.gz"
        assert sidecar["description"] == MAP_DESCRIPTIONS[name] and sidecar["units"] == units
        assert sidecar["intent"]["code"] == nib.load(
            stats_dir / f"{name}.nii.gz").header["intent_code"]
        assert sidecar["intent"]["parameters"] == list(params)
        assert sidecar["estimator"] == summary["estimator"]["name"]
        assert sidecar["cohort"] == {"nodules": summary["nodules"], "events": summary["events"],
                                     "prevalence": summary["prevalence"], "min_cases": 2}


def test_log10_maps_are_minus_log10_of_their_p_maps(stats_dir):
    for p_name, log_name in NEG_LOG10_MAPS.items():
        if p_name.startswith("contrast_"):
            continue  # no contrast here (tests/test_contrast.py)
        p = read_volume(stats_dir / f"{p_name}.nii.gz")[0].astype(np.float64)
        log_p = read_volume(stats_dir / f"{log_name}.nii.gz")[0]
        assert np.array_equal(np.isnan(p), np.isnan(log_p)), log_name
        tested = np.isfinite(p)
        # cluster-mass p exists only inside clusters, which 20 nodules may not form
        assert tested.any() or p_name == "cluster_mass_p_fwer", p_name
        # float32 p carries 7 digits; p = 0 in float32 (below 1e-45) keeps its size here
        np.testing.assert_allclose(log_p[tested & (p > 1e-30)],
                                   -np.log10(p[tested & (p > 1e-30)]), rtol=1e-5)
    np.testing.assert_allclose(neg_log10([1.0, 0.01, 0.5]), [0.0, 2.0, -np.log10(0.5)])
    # p = 0 (an underflowed tail) gets the floor's finite value, NaN (untested) stays NaN
    assert neg_log10(0.0) == pytest.approx(307.65, abs=0.01) and np.isnan(neg_log10(np.nan))


def _label_table_rows(folder: Path) -> tuple[dict, dict]:
    slicer = {}
    for line in (folder / "labels.ctbl").read_text().splitlines():
        if line and not line.startswith("#"):
            label, name, *rgba = line.split()
            slicer[int(label)] = (name, tuple(map(int, rgba)))
    itksnap = {}
    for line in (folder / "labels.itksnap.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            fields, name = line.split('"')[0].split(), line.split('"')[1]
            itksnap[int(fields[0])] = (name, tuple(map(int, fields[1:4])))
    return slicer, itksnap


def test_atlas_labels_colour_tables_and_y_up_surface(atlas, tmp_path):
    atlas.save(tmp_path)
    (intent, _, _), descrip, cal = _intent(tmp_path / "labels.nii.gz")
    assert intent == "label" and cal == (0.0, 30.0) and descrip.startswith("llnm3d")
    assert _intent(tmp_path / "capsule_distance.nii.gz")[0][0] == "estimate"
    slicer, itksnap = _label_table_rows(tmp_path)
    labels = {int(v) for v in np.unique(atlas.labels)}
    assert set(slicer) == set(itksnap) == labels | {0} == set(REGION_NAMES) | {0}
    for label, name in REGION_NAMES.items():
        assert slicer[label][0] == name.replace(" ", "_") and itksnap[label][0] == name
        assert slicer[label][1][:3] == itksnap[label][1] and slicer[label][1][3] == 255
    assert slicer[0][1][3] == 0  # the background is transparent

    doc, accessor = read_glb(tmp_path / "capsule.glb")
    root = doc["nodes"][0]
    assert root["rotation"] == LPS_TO_GLTF_ROTATION
    node = next(n for n in doc["nodes"] if n.get("name") == "capsule")
    points_mm = node_points_mm(doc, accessor, node)
    np.testing.assert_allclose(points_mm.min(axis=0), atlas.surface.bounds[0], atol=0.01)
    np.testing.assert_allclose(points_mm.max(axis=0), atlas.surface.bounds[1], atol=0.01)
    assert doc["asset"]["extras"]["units"] == "mm"
    report, = validate([tmp_path / "capsule.glb"])
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report


def _world_points(doc, accessor, node):
    """A node's vertices in the glTF world frame (the root node's rotation and scale)."""
    root = doc["nodes"][0]
    matrix = trimesh.transformations.quaternion_matrix(np.roll(root["rotation"], 1))[:3, :3]
    matrix = matrix * np.asarray(root.get("scale", [1, 1, 1]))
    return node_points_mm(doc, accessor, node) @ matrix.T


def test_export_in_metres_scales_positions_and_passes_the_validator(publishable_stats_dir,
                                                                    atlas, tmp_path):
    export_stats(publishable_stats_dir, tmp_path / "mm", atlas=atlas, levels=[0.3])
    export_stats(publishable_stats_dir, tmp_path / "m", atlas=atlas, levels=[0.3], units="m")
    files = ("field.glb", "capsule.glb", "isosurfaces.glb")
    for name in files:
        mm_doc, mm_accessor = read_glb(tmp_path / "mm" / name)
        m_doc, m_accessor = read_glb(tmp_path / "m" / name)
        assert (mm_doc["asset"]["extras"]["units"], m_doc["asset"]["extras"]["units"]) == (
            "mm", "m")
        assert len(mm_doc["nodes"]) == len(m_doc["nodes"]) > 1
        for mm_node, m_node in zip(mm_doc["nodes"][1:], m_doc["nodes"][1:], strict=True):
            mm_world = _world_points(mm_doc, mm_accessor, mm_node)
            m_world = _world_points(m_doc, m_accessor, m_node)
            np.testing.assert_allclose(m_world, 1e-3 * mm_world, rtol=1e-6, atol=1e-9)
            # superior (+z in atlas mm) is up (+Y), now in metres
            top_mm = node_points_mm(m_doc, m_accessor, m_node)[:, 2].max()
            assert m_world[:, 1].max() == pytest.approx(1e-3 * top_mm)
    for report in validate([tmp_path / "m" / name for name in files]):
        assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report


def test_cli_export_units(publishable_stats_dir, tmp_path):
    result = CliRunner().invoke(app, ["export", "--stats", str(publishable_stats_dir), "--out",
                                      str(tmp_path), "--units", "m"])
    assert result.exit_code == 0, result.output
    doc, _ = read_glb(tmp_path / "field.glb")
    assert doc["asset"]["extras"]["units"] == "m" and doc["nodes"][0]["scale"] == [1e-3] * 3
    result = CliRunner().invoke(app, ["export", "--stats", str(publishable_stats_dir), "--out",
                                      str(tmp_path / "km"), "--units", "km"])
    assert result.exit_code == 2 and "unknown units 'km'" in result.output
    assert not (tmp_path / "km").exists()
