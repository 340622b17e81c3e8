import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from llnm3d import site as site_module
from llnm3d.cli import app
from llnm3d.export import FIELD_MAPS
from llnm3d.io import InputError
from llnm3d.site import build as site_build
from llnm3d.site import build_site, site_size_bytes
from llnm3d.site.build import run_lengths

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "examples" / "llnm-net-published-3d" / "points.csv"
HOSTILE = '</title><script>alert("x")</script> & <b>bold</b>'


@pytest.fixture(scope="module")
def built(publishable_stats_dir, atlas, tmp_path_factory):
    out = tmp_path_factory.mktemp("sites") / "site"
    return build_site(out, publishable_stats_dir, points_csv=PUBLISHED, atlas=atlas, title=HOSTILE,
                      description=HOSTILE)


def test_site_is_self_contained_with_relative_paths(built):
    for name in ("index.html", "viewer/main.js", "viewer.css", "data.json", ".nojekyll",
                 "vendor/three/LICENSE", "vendor/three/three.bundle.min.js"):
        assert (built / name).is_file(), name
    assert "MIT" in (built / "vendor/three/LICENSE").read_text()
    data = json.loads((built / "data.json").read_text())
    assert data["format"] == "llnm3d-site/1"
    assert {layer["id"] for layer in data["layers"]} >= {"field", "capsule", "published_points"}
    for layer in data["layers"]:
        assert not Path(layer["file"]).is_absolute() and (built / layer["file"]).is_file()
    html = (built / "index.html").read_text()
    # Nothing from the network: no absolute URLs in what the page loads.
    modules = sorted((built / "viewer").glob("*.js"))
    assert len(modules) > 1
    for page in [html] + [module.read_text() for module in modules]:
        assert not re.search(r"""(src|href|from|import)\s*=?\s*\(?["']\s*(https?:)?//""", page)
    # Every relative import of a viewer module names a module that is there.
    for module in modules:
        for target in re.findall(r"""from\s+'(\./[^']+)'""", module.read_text()):
            assert (module.parent / target).is_file(), (module.name, target)
    imports = json.loads(re.search(r'<script type="importmap">(.*?)</script>', html,
                                   re.S).group(1))["imports"]
    assert imports and all((built / target).is_file() for target in imports.values())


def test_text_reaching_html_is_escaped(built):
    html = (built / "index.html").read_text()
    assert "<script>alert" not in html and "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(" in html
    assert json.loads((built / "data.json").read_text())["title"] == HOSTILE


def test_site_carries_aggregates_only(built, cohort, registered, publishable_stats_dir):
    """No case id, patient id, nodule key or input path anywhere in the built files."""
    needles = set(cohort.manifest["case_id"]) | set(cohort.manifest["patient_id"])
    needles |= set(registered.qc["nodule"]) | {str(publishable_stats_dir), str(registered.out_dir),
                                              str(cohort.out_dir)}
    for path in built.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            found = [n for n in needles if n.encode() in content]
            assert not found, (path, found[:5])
    # Notes of the tables the site does not carry stay in summary.json.
    summary = json.loads((publishable_stats_dir / "summary.json").read_text())
    assert any(n.startswith("nodule model: ") for n in summary["notes"])
    notes = json.loads((built / "data.json").read_text())["notes"]
    assert not any(n.startswith(("nodule model: ", "contrast: ")) for n in notes)


def test_table_rows_below_min_cases_are_suppressed(built, publishable_stats_dir):
    data = json.loads((built / "data.json").read_text())
    regions = data["tables"]["regions"]
    columns = regions["columns"]
    from llnm3d import load_stats

    table = load_stats(publishable_stats_dir).regions
    for cells, (_, row) in zip(regions["rows"], table.iterrows(), strict=True):
        record = dict(zip(columns, cells, strict=True))
        assert record["region"] == row["region"]
        if row["nodules"] < data["min_cases"]:
            assert record["nodules"] is None and record["risk"] is None
        else:
            assert record["nodules"] == row["nodules"]
            assert record["risk"] == pytest.approx(row["risk"], abs=1e-4)


def test_empty_map_builds_a_page_that_says_so(publishable_stats_dir, atlas, tmp_path):
    out = build_site(tmp_path / "site", publishable_stats_dir, atlas=atlas, min_cases=10_000)
    data = json.loads((out / "data.json").read_text())
    assert data["points"] == 0 and data["probability_range"] is None
    assert any("no voxel has at least 10000 nodules" in note for note in data["notes"])
    assert next(x for x in data["layers"] if x["id"] == "field")["visible"] is False
    assert all(row[2] is None for row in data["tables"]["regions"]["rows"])


def test_rebuild_replaces_atomically_and_refuses_foreign_folders(publishable_stats_dir, atlas,
                                                                 tmp_path, monkeypatch):
    out = build_site(tmp_path / "site", publishable_stats_dir, atlas=atlas, title="first")
    before = (out / "data.json").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("killed while rendering")

    monkeypatch.setattr(site_build, "_render", broken)
    with pytest.raises(RuntimeError):
        build_site(out, publishable_stats_dir, atlas=atlas, title="second")
    assert (out / "data.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]  # no half-built leftovers
    monkeypatch.undo()
    build_site(out, publishable_stats_dir, atlas=atlas, title="second")
    assert json.loads((out / "data.json").read_text())["title"] == "second"

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(InputError, match="not an llnm3d site"):
        build_site(foreign, publishable_stats_dir, atlas=atlas)
    assert (foreign / "thesis.docx").read_text() == "precious"


def test_points_only_site_and_cli(tmp_path, publishable_stats_dir):
    result = CliRunner().invoke(app, ["build-site", "--points", str(PUBLISHED), "--out",
                                      str(tmp_path / "points")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "points" / "data.json").read_text())
    assert [x["id"] for x in data["layers"]] == ["capsule", "published_points"]
    assert data["layers"][1]["count"] == 4580
    assert site_size_bytes(tmp_path / "points") < 300_000  # the published page: 2 MB
    result = CliRunner().invoke(app, ["build-site", "--out", str(tmp_path / "none")])
    assert result.exit_code == 2 and "needs --stats, --points" in result.output
    result = CliRunner().invoke(app, ["build-site", "--stats", str(tmp_path), "--out",
                                      str(tmp_path / "x")])
    assert result.exit_code == 2 and "no summary.json" in result.output


def test_a_cohort_too_small_for_any_voxel_builds_a_site_that_says_so(registered, atlas,
                                                                      tmp_path):
    from llnm3d import aggregate

    stats = aggregate(registered, atlas=atlas, out_dir=tmp_path / "stats", min_cases=1000,
                      permutations=0, progress=False, workers=1)
    assert stats.summary["estimator"]["name"] == "weighted"
    assert any("spatial estimator is not fitted" in n for n in stats.summary["notes"])
    out = build_site(tmp_path / "site", tmp_path / "stats", atlas=atlas)
    data = json.loads((out / "data.json").read_text())
    assert data["estimator"].startswith("weighted proportion") and data["points"] == 0
    assert any("not fitted" in note for note in data["notes"])


def test_source_fingerprint_follows_code_not_docstrings_or_comments():
    source = '"""Module doc."""\n\nX = 1  # why\n\n\ndef f(a):\n    """Doc\n    of f."""\n' \
             '    # a comment\n    return a + X\n'
    same = '"""Another doc."""\nX = 1\n\ndef f(a):\n    """Other."""\n    return a + X  # ok\n'
    assert site_module.code_text(source) == site_module.code_text(same) == (
        "X = 1\ndef f(a):\n    return a + X")
    # Code changes, a string that is not a docstring, or a '#' inside a string all count.
    assert site_module.code_text(source.replace("a + X", "a - X")) != site_module.code_text(
        source)
    assert "'# kept'" in site_module.code_text("def g():\n    return '# kept'\n")
    assert site_module.code_text("def h(): return 1\n") == "def h(): return 1"


@pytest.mark.parametrize("max_run", [3, 65535])
def test_run_lengths_round_trip(max_run):
    rng = np.random.default_rng(1)
    values = np.repeat(rng.integers(0, 4, 50), rng.integers(1, 12, 50)).astype(np.uint8)
    lengths, runs = run_lengths(values.reshape(-1, 1), max_run=max_run)
    assert lengths.max() <= max_run
    assert np.array_equal(np.repeat(runs, lengths), values)
    assert run_lengths(np.zeros(0, np.uint8))[0].size == 0


def test_slice_labels_are_the_atlas_on_the_field_grid(built, atlas):
    """labels.bin decodes (as viewer/slices.js does) to the atlas labels at the field's
    spacing, and the field's voxels sit on that grid."""
    data = json.loads((built / "data.json").read_text())
    spec = data["slices"]
    raw = (built / spec["labels"]).read_bytes()
    lengths = np.frombuffer(raw, "<u2", spec["runs"])
    values = np.frombuffer(raw, np.uint8, spec["runs"], offset=2 * spec["runs"])
    labels = np.repeat(values, lengths).reshape(spec["shape_zyx"])
    step = round(spec["spacing_mm"] / atlas.spacing_mm)
    assert spec["spacing_mm"] == data["field_spacing_mm"]
    assert np.array_equal(labels, atlas.labels[::step, ::step, ::step])
    assert np.allclose(spec["origin_mm"], atlas.origin_mm)
    assert data["landmarks"] == json.loads(json.dumps(atlas.landmarks))
    assert {m["id"] for m in data["maps"]} <= set(FIELD_MAPS)
