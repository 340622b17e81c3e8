"""The wheel as a user installs it: built, installed into a fresh environment, and run outside
the repository on the real LLNM-Net samples with the bundled weights (``make test-wheel``)."""

import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from llnm3d.io import file_digest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "examples" / "llnm-net-samples"
# What a source distribution holds: the wheel is built from a copy of these alone, so neither
# a stale build/ folder nor files outside the package can end up in it.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "llnm3d")


def _run(*args, cwd):
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _build_wheel(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", ".*"))
        else:
            shutil.copy2(ROOT / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
         tmp_path / "dist", source, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("llnm3d-*.whl")
    return wheel


def _fresh_environment(folder: Path) -> Path:
    """A new virtual environment that sees this one's dependencies (torch and the rest are
    not installed again) but not its editable llnm3d; returns its python."""
    _run(sys.executable, "-m", "venv", "--without-pip", folder, cwd=folder.parent)
    python = folder / "bin" / "python"
    site = _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                cwd=folder.parent).strip()
    # A path in a .pth file joins sys.path, but the .pth files inside it (the editable
    # install's finder) are not run, so `import llnm3d` can only find the wheel's copy.
    here = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    Path(site, "dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    return python


def test_wheel_installs_and_runs_the_bundled_model_outside_the_repository(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for view in ("transverse", "longitudinal"):
        assert {f"llnm3d/weights/{view}.safetensors", f"llnm3d/weights/{view}.json"} <= names
    assert "llnm3d/py.typed" in names
    # The viewer's modules and the vendored three.js: what build-site copies into a site.
    viewer = {Path(n).name for n in names if n.startswith("llnm3d/site/viewer/")}
    assert viewer == {p.name for p in (ROOT / "llnm3d" / "site" / "viewer").glob("*.js")}
    assert "llnm3d/site/vendor/three/three.bundle.min.js" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)

    work = tmp_path / "elsewhere"
    work.mkdir()
    python = _fresh_environment(tmp_path / "env")
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet",
         wheel, cwd=work)
    _run(sys.executable, "-m", "pip", "--python", python, "check", cwd=work)
    located = _run(python, "-c", "import llnm3d.models.heatmap as h; print(h.__file__); "
                   "print(h.MODEL_DIR)", cwd=work).split()
    assert all(Path(p).is_relative_to(tmp_path / "env") for p in located), located

    _run(tmp_path / "env" / "bin" / "llnm3d", "heatmap", "--manifest",
         SAMPLES / "manifest.csv", "--out", work / "heat", "--resize-masks", "--device", "cpu",
         cwd=work)
    predictions = pd.read_csv(work / "heat" / "predictions.csv")
    assert len(predictions) == 10 and predictions["probability"].between(0, 1).all()
    assert len(list((work / "heat" / "heatmaps").glob("*.npz"))) == 10
    record = json.loads((work / "heat" / "heatmap.json").read_text())
    # The installed weights are the bundled ones, byte for byte.
    assert record["parameters"]["model_sha256"] == {
        view: file_digest(ROOT / "llnm3d" / "weights" / f"{view}.safetensors")
        for view in ("transverse", "longitudinal")}
