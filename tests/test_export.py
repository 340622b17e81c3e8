import gzip
import json
import shutil
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import trimesh
from scipy import ndimage
from typer.testing import CliRunner

from llnm3d import load_stats
from llnm3d.cli import app
from llnm3d.export import (
    PUBLISH_MIN_CASES,
    apply_colormap,
    export_field,
    export_isosurfaces,
    export_points,
    export_stats,
    published_points_to_atlas,
    read_points_csv,
)
from llnm3d.io import InputError

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "examples" / "llnm-net-published-3d" / "points.csv"
_DTYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32,
           5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


def read_glb(path):
    """(glTF JSON, function accessor index -> array as stored, normalised values in 0-1)."""
    raw = Path(path).read_bytes()
    magic, version, length = struct.unpack_from("<4sII", raw)
    assert (magic, version, length) == (b"glTF", 2, len(raw))
    json_length, _ = struct.unpack_from("<I4s", raw, 12)
    doc = json.loads(raw[20:20 + json_length])
    blob = raw[20 + json_length + 8:]

    def accessor(index):
        spec = doc["accessors"][index]
        view = doc["bufferViews"][spec["bufferView"]]
        dtype = np.dtype(_DTYPES[spec["componentType"]])
        width = _WIDTH[spec["type"]]
        stride = view.get("byteStride", width * dtype.itemsize) // dtype.itemsize
        flat = np.frombuffer(blob, dtype, count=spec["count"] * stride,
                             offset=view["byteOffset"] + spec.get("byteOffset", 0))
        values = flat.reshape(spec["count"], stride)[:, :width]
        if spec.get("normalized"):
            values = values / np.iinfo(dtype).max
        return values[:, 0] if width == 1 else values

    return doc, accessor


def node_points_mm(doc, accessor, node):
    """Vertex positions of a node's mesh in atlas mm (its translation and scale applied)."""
    primitive = doc["meshes"][node["mesh"]]["primitives"][0]
    steps = accessor(primitive["attributes"]["POSITION"]).astype(float)
    return np.asarray(node.get("translation", [0, 0, 0])) + steps * np.asarray(
        node.get("scale", [1, 1, 1]))


def winding_number(mesh, points):
    """Generalised winding number of a closed mesh at points (1 inside, 0 outside)."""
    triangles = mesh.triangles
    total = np.zeros(len(points))
    for start in range(0, len(points), 256):
        a, b, c = (triangles[None, :, i] - points[start:start + 256, None] for i in range(3))
        la, lb, lc = (np.linalg.norm(v, axis=2) for v in (a, b, c))
        numerator = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        denominator = (la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc
                       + np.einsum("pfi,pfi->pf", b, c) * la + np.einsum("pfi,pfi->pf", c, a) * lb)
        total[start:start + 256] = np.arctan2(numerator, denominator).sum(axis=1) / (2 * np.pi)
    return total


def validate(paths):
    """Khronos glTF validator reports (npm package, installed by the Makefile)."""
    if not (ROOT / "node_modules" / "gltf-validator").is_dir():
        pytest.fail("node_modules/gltf-validator is missing: run `make test` (it runs npm ci)")
    result = subprocess.run(["node", str(ROOT / "tests" / "validate_gltf.mjs"),
                             *map(str, paths)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def exported(publishable_stats_dir, atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("glb")
    return out, export_stats(publishable_stats_dir, out, atlas=atlas)


def test_every_file_passes_the_khronos_validator(exported, atlas, tmp_path):
    out, _ = exported
    points = read_points_csv(PUBLISHED)
    export_points(points, published_points_to_atlas(points, atlas), tmp_path / "points.glb",
                  "points.csv")
    files = sorted(out.glob("*.glb")) + [tmp_path / "points.glb"]
    assert len(files) == 4
    for report in validate(files):
        issues = report["issues"]
        assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, report


def test_field_points_carry_the_map_values_at_their_voxels(exported, publishable_stats_dir):
    out, result = exported
    stats = load_stats(publishable_stats_dir)
    doc, accessor = read_glb(out / "field.glb")
    node = next(n for n in doc["nodes"] if n.get("name") == "probability_field")
    attributes = doc["meshes"][node["mesh"]]["primitives"][0]["attributes"]
    assert doc["meshes"][node["mesh"]]["primitives"][0]["mode"] == 0
    points_mm = node_points_mm(doc, accessor, node)
    # One point per shown voxel of the 1 mm grid (every 2nd voxel of the 0.5 mm map).
    shown = np.isfinite(stats.volumes["probability"][::2, ::2, ::2]) & (
        stats.volumes["n_nodules"][::2, ::2, ::2] >= PUBLISH_MIN_CASES)
    assert len(points_mm) == shown.sum() == result.points > 100
    np.testing.assert_allclose(accessor(attributes["_PROB"]),
                               stats.value_at("probability", points_mm), atol=1e-6)
    np.testing.assert_allclose(accessor(attributes["_N"]),
                               stats.value_at("n_nodules", points_mm))
    ci = accessor(attributes["_CI"])
    np.testing.assert_allclose(ci[:, 0], stats.value_at("probability_ci_low", points_mm),
                               atol=1e-4)
    np.testing.assert_allclose(ci[:, 1], stats.value_at("probability_ci_high", points_mm),
                               atol=1e-4)
    assert (accessor(attributes["_N"]) >= PUBLISH_MIN_CASES).all()
    extras = doc["asset"]["extras"]
    assert extras["units"] == "mm" and extras["min_cases"] == PUBLISH_MIN_CASES
    assert result.notes == [
        "the aggregation used min-cases 2; published voxels and table rows need at least 5 "
        "nodules (the publishing floor), so fewer are not shown"]
    assert extras["nodules"] == stats.summary["nodules"]
    assert extras["probability_range"] == pytest.approx(
        [accessor(attributes["_PROB"]).min(), accessor(attributes["_PROB"]).max()])
    # The root node turns LPS into glTF's Y-up frame: superior (+z) becomes +Y.
    root = doc["nodes"][0]
    rotation = trimesh.transformations.quaternion_matrix(
        np.roll(root["rotation"], 1))[:3, :3]
    np.testing.assert_allclose(rotation @ [0, 0, 1], [0, 1, 0], atol=1e-7)
    np.testing.assert_allclose(rotation @ [0, -1, 0], [0, 0, 1], atol=1e-7)


def test_raising_min_cases_hides_voxels_and_lowering_it_is_refused(publishable_stats_dir, tmp_path):
    stats = load_stats(publishable_stats_dir)
    low = export_field(stats, tmp_path / "a.glb")
    high = export_field(stats, tmp_path / "b.glb", min_cases=7)
    expected = (stats.volumes["n_nodules"][::2, ::2, ::2] >= 7) & np.isfinite(
        stats.volumes["probability"][::2, ::2, ::2])
    assert high.points == expected.sum() < low.points
    assert high.notes == []  # a threshold asked for needs no note
    with pytest.raises(InputError, match="below the publishing floor of 5"):
        export_field(stats, tmp_path / "c.glb", min_cases=4)
    strict = replace(stats, summary=stats.summary | {"parameters": {"min_cases": 6}})
    with pytest.raises(InputError, match="below the aggregation's 6"):
        export_field(strict, tmp_path / "d.glb", min_cases=5)


def test_capsule_and_isosurfaces_are_closed_and_in_the_right_place(exported,
                                                                   publishable_stats_dir, atlas):
    out, result = exported
    stats = load_stats(publishable_stats_dir)
    doc, accessor = read_glb(out / "capsule.glb")
    node = next(n for n in doc["nodes"] if n.get("name") == "capsule")
    primitive = doc["meshes"][node["mesh"]]["primitives"][0]
    mesh = trimesh.Trimesh(node_points_mm(doc, accessor, node),
                           accessor(primitive["indices"]).reshape(-1, 3))
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(atlas.surface.volume, rel=0.03)
    prob = accessor(primitive["attributes"]["_PROB"])
    known = prob >= 0
    assert known.any()
    # A vertex without a value has no shown voxel just inside it.
    normals_mm = accessor(primitive["attributes"]["NORMAL"])
    probe = mesh.vertices[~known] - 0.75 * normals_mm[~known]
    shown = np.where(stats.volumes["n_nodules"] >= PUBLISH_MIN_CASES,
                     stats.volumes["probability"], np.nan)
    assert np.isnan(shown[tuple(np.rint(atlas.world_to_voxel(probe)).astype(int)[:, ::-1].T)]
                    ).all()
    low, high = result.probability_range
    assert prob[known].min() >= low - 1e-6 and prob[known].max() <= high + 1e-6
    normals = accessor(primitive["attributes"]["NORMAL"])
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-4)

    level = 0.5 * (low + high)
    export_isosurfaces(stats, out / "iso.glb", [level], spacing_mm=0.5)
    doc, accessor = read_glb(out / "iso.glb")
    node = next(n for n in doc["nodes"] if n.get("mesh") is not None)
    assert node["extras"]["level"] == level
    primitive = doc["meshes"][node["mesh"]]["primitives"][0]
    surface = trimesh.Trimesh(node_points_mm(doc, accessor, node),
                              accessor(primitive["indices"]).reshape(-1, 3))
    # Voxels a voxel away from the level set (smoothing may move the surface a fraction).
    probability = np.nan_to_num(stats.volumes["probability"])
    above = np.argwhere(ndimage.binary_erosion(probability >= level))
    below = np.argwhere(ndimage.binary_erosion(probability < level) & (probability > 0))
    inside_above = winding_number(surface, atlas.voxel_to_world(above[:, ::-1])) > 0.5
    inside_below = winding_number(surface, atlas.voxel_to_world(below[:, ::-1][::20])) > 0.5
    assert inside_above.mean() > 0.95 and inside_below.mean() < 0.05
    assert export_isosurfaces(stats, out / "none.glb", [0.99]) == []


def test_colormap_endpoints_and_unknown_name():
    rgb = apply_colormap([0.0, 1.0, 2.0], (0.0, 1.0))
    np.testing.assert_allclose(rgb[0], [0.0, 0.1351, 0.3048], atol=1e-4)  # cividis start
    np.testing.assert_allclose(rgb[1], rgb[2])
    with pytest.raises(InputError, match="unknown colour map"):
        apply_colormap([0.5], (0, 1), "jet")


def test_bad_stats_folders_give_clear_errors(publishable_stats_dir, tmp_path):
    broken = tmp_path / "missing"
    shutil.copytree(publishable_stats_dir, broken)
    (broken / "probability.nii.gz").unlink()
    with pytest.raises(InputError, match="probability.nii.gz is missing"):
        export_stats(broken, tmp_path / "out1")
    malformed = tmp_path / "malformed"
    shutil.copytree(publishable_stats_dir, malformed)
    (malformed / "n_nodules.nii.gz").write_bytes(gzip.compress(b"not a nifti")[:20])
    with pytest.raises(InputError, match="n_nodules.nii.gz"):
        export_stats(malformed, tmp_path / "out2")
    with pytest.raises(InputError, match="no summary.json"):
        export_stats(tmp_path, tmp_path / "out3")


def test_points_csv_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x,y,z,r,g,b\n1,2,3,0.1,0.2,0.3\n1,oops,3,0.1,0.2,0.3\n")
    with pytest.raises(InputError, match=r"bad.csv: non-numeric .* line\(s\) \[3\]"):
        read_points_csv(bad)
    short = tmp_path / "short.csv"
    short.write_text("x,y,z\n1,2,3\n")
    with pytest.raises(InputError, match="missing column.*r, g, b"):
        read_points_csv(short)
    bytes_scale = tmp_path / "bytes.csv"
    bytes_scale.write_text("\ufeffx;y;z;r;g;b\n1;2;3;255;128;0\n")
    np.testing.assert_allclose(read_points_csv(bytes_scale)[["r", "g", "b"]].iloc[0],
                               [1, 128 / 255, 0])


def test_cli_export(publishable_stats_dir, tmp_path):
    result = CliRunner().invoke(app, ["export", "--stats", str(publishable_stats_dir), "--out",
                                      str(tmp_path), "--levels", "0.3,0.35"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.glb")) == [
        "capsule.glb", "field.glb", "isosurfaces.glb"]
    result = CliRunner().invoke(app, ["export", "--stats", str(tmp_path), "--out",
                                      str(tmp_path / "x")])
    assert result.exit_code == 2 and "no summary.json" in result.output
    result = CliRunner().invoke(app, ["export", "--stats", str(publishable_stats_dir), "--out",
                                      str(tmp_path), "--levels", "high"])
    assert result.exit_code == 2 and "--levels" in result.output
