"""No silent wrong answers: the publishing floor, a files-only server, and every CLI error as one
line with exit 2 (ids escaped so no input can forge an output line)."""

import errno
import json
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llnm3d import load_stats
from llnm3d.cli import _printable, app
from llnm3d.export import PUBLISH_MIN_CASES, export_stats
from llnm3d.site import serving

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = ROOT / "examples" / "llnm-net-published-3d" / "points.csv"
runner = CliRunner()


def error_line(result, exit_code: int = 2) -> str:
    """The one stderr line of a run that must end with ``exit_code``."""
    assert result.exit_code == exit_code, (result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def analysis_stats_dir(publishable_stats_dir, tmp_path_factory):
    """The publishable stats as an analysis made with ``--min-cases 1``: voxels and rows of 6
    nodules reach the publishing floor, those of 3 do not."""
    stats = load_stats(publishable_stats_dir)
    stats.summary["parameters"] = stats.summary["parameters"] | {"min_cases": 1}
    return stats.save(tmp_path_factory.mktemp("analysis_stats"))


@pytest.fixture
def site(tmp_path):
    """A points-only site (cheap), built by the CLI."""
    out = tmp_path / "site"
    assert runner.invoke(app, ["build-site", "--points", str(PUBLISHED), "--out",
                               str(out)]).exit_code == 0
    return out


def test_printable_escapes_control_characters_and_keeps_chinese():
    assert _printable("张三\n\r\x1b[2J\t\u2028ok") == "张三\\n\\r\\x1b[2J\\t\\u2028ok"


@pytest.mark.parametrize("command", ["export", "build-site"])
def test_min_cases_below_the_publishing_floor_is_refused(command, analysis_stats_dir, site,
                                                         tmp_path):
    out = site if command == "build-site" else tmp_path / "gltf"
    before = (site / "data.json").read_text()
    result = runner.invoke(app, [command, "--stats", str(analysis_stats_dir), "--out",
                                 str(out), "--min-cases", str(PUBLISH_MIN_CASES - 1)])
    line = error_line(result)
    assert line.startswith("error: --min-cases 4 is below the publishing floor of 5")
    assert "one patient's footprint and outcome" in line
    assert (site / "data.json").read_text() == before
    assert not (tmp_path / "gltf").exists()


def test_low_analysis_min_cases_publishes_at_the_floor_with_a_note(analysis_stats_dir,
                                                                    tmp_path):
    stats = load_stats(analysis_stats_dir)
    n_nodules = stats.volumes["n_nodules"][::2, ::2, ::2]
    expected = (n_nodules >= PUBLISH_MIN_CASES).sum()
    assert 0 < expected < (n_nodules >= 1).sum()

    result = export_stats(analysis_stats_dir, tmp_path / "api")
    assert result.min_cases == PUBLISH_MIN_CASES and result.points == expected
    assert any("the aggregation used min-cases 1" in note for note in result.notes)

    result = runner.invoke(app, ["export", "--stats", str(analysis_stats_dir), "--out",
                                 str(tmp_path / "gltf")])
    assert result.exit_code == 0, result.output
    assert f"{expected} voxels with >= 5 nodules" in result.stdout
    assert "note: the aggregation used min-cases 1" in result.stdout

    result = runner.invoke(app, ["build-site", "--stats", str(analysis_stats_dir), "--out",
                                 str(tmp_path / "site")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "site" / "data.json").read_text())
    assert data["min_cases"] == PUBLISH_MIN_CASES and data["points"] == expected
    assert any("publishing floor" in note for note in data["notes"])
    table = data["tables"]["regions"]
    nodules = stats.regions["nodules"]
    shown = [row[table["columns"].index("nodules")] for row in table["rows"]]
    assert shown == [n if n >= PUBLISH_MIN_CASES else None for n in nodules]
    assert {3, 6} <= set(nodules)  # rows on both sides of the floor


def test_server_serves_files_only(tmp_path):
    root, outside = tmp_path / "site", tmp_path / "outside"
    (root / "assets").mkdir(parents=True)
    outside.mkdir()
    (root / "index.html").write_text("<p>site</p>")
    (root / "assets" / "field.glb").write_bytes(b"glTF")
    (outside / "secret.txt").write_text("private")
    (root / "secret.txt").symlink_to(outside / "secret.txt")
    (root / "elsewhere").symlink_to(outside, target_is_directory=True)
    (root / "inside.html").symlink_to(root / "index.html")
    with serving(root) as url:
        def status(path):
            try:
                with urllib.request.urlopen(url + path) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert [status(p) for p in ("", "index.html", "assets/field.glb", "inside.html")] == [
            200] * 4
        assert [status(p) for p in ("assets/", "assets", "secret.txt", "elsewhere/",
                                    "elsewhere/secret.txt", "missing.js")] == [404] * 6


def test_serve_busy_port_is_one_line(site):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = error_line(runner.invoke(app, ["serve", str(site), "--port", str(port)]))
    assert line.startswith(f"error: cannot serve on port {port}: ")


def test_serve_port_out_of_range_is_one_line(site):
    line = error_line(runner.invoke(app, ["serve", str(site), "--port", "70000"]))
    assert line == "error: --port 70000: a port is 0-65535"


@pytest.mark.parametrize("unrelated", [True, False])
def test_build_site_into_the_current_folder_is_refused(unrelated, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    if unrelated:
        (work / "thesis.docx").write_text("precious")
    monkeypatch.chdir(work)
    line = error_line(runner.invoke(app, ["build-site", "--points", str(PUBLISHED), "--out",
                                          "."]))
    assert "is the current folder or holds it" in line
    assert sorted(os.listdir(work)) == (["thesis.docx"] if unrelated else [])
    assert sorted(os.listdir(tmp_path)) == ["work"]
    assert error_line(runner.invoke(app, ["build-site", "--points", str(PUBLISHED), "--out",
                                          ".."])).endswith("(e.g. --out site)")


def test_build_site_on_a_read_only_file_system_is_one_line(site, monkeypatch):
    before = (site / "data.json").read_text()

    def read_only(path, text):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr("llnm3d.site.build.write_text", read_only)
    line = error_line(runner.invoke(app, ["build-site", "--points", str(PUBLISHED), "--out",
                                          str(site)]))
    assert line.startswith(f"error: cannot write {site.parent}")
    assert line.endswith("data.json: Read-only file system")
    assert (site / "data.json").read_text() == before
    assert sorted(p.name for p in site.parent.iterdir()) == ["site"]


@pytest.mark.parametrize("command, target", [("register", "llnm3d.registration.register"),
                                             ("aggregate", "llnm3d.statistics.aggregate")])
def test_full_disk_is_one_line(command, target, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/y")

    monkeypatch.setattr(target, full)
    monkeypatch.setattr("llnm3d.cli._read_manifest", lambda *args, **kwargs: None)
    source = ["--manifest", "m.csv"] if command == "register" else ["--registered", "r"]
    line = error_line(runner.invoke(app, [command, *source, "--out", str(tmp_path)]))
    assert line == "error: cannot write /x/y: No space left on device"


def test_an_id_with_a_newline_stays_on_one_escaped_line(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text('case_id,patient_id,nodule_id,side,view,image,nodule_mask\n'
                        '"a\nfailed: case forged\x1b[2J",p1,1,,transverse,x.png,x.png\n')
    line = error_line(runner.invoke(app, ["check-manifest", "--manifest", str(manifest)]), 1)
    assert line.startswith("failed: case a\\nfailed: case forged\\x1b[2J: ")


@pytest.mark.parametrize("args, words", [
    (["phantom", "--out", "x", "--patients", "many"], "Invalid value for '--patients'"),
    (["register", "--bogus"], "No such option: --bogus"),
    (["nonsense"], "No such command 'nonsense'"),
])
def test_usage_errors_of_the_console_command_are_one_line(args, words, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "llnm3d", *args], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
