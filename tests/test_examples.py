"""The examples and figure script run end to end (slow: they render and generate cohorts)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_api_walkthrough_runs(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "atlas_and_phantom.py"),
                             str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "posterior-lower spec" in result.stdout
    assert (tmp_path / "cohort" / "manifest.csv").is_file()


@pytest.mark.slow
def test_figures_render(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "make_figures.py"), str(tmp_path)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    for name in ("atlas.png", "phantom_contact_sheet.png", "viewer.png",
                 "viewer_significance.png"):
        assert (tmp_path / name).stat().st_size > 10_000


@pytest.mark.slow
def test_thousand_patient_cohort_has_planted_rates(tmp_path, atlas):
    """A full rendered cohort at the size the issue names; rates match the spec."""
    import numpy as np
    import pandas as pd

    from llnm3d.phantom import make_phantom

    cohort = make_phantom(tmp_path, 1000, seed=21, atlas=atlas, progress=False)
    assert not cohort.failures and len(cohort.manifest) == 2 * len(cohort.truth)
    truth = cohort.truth
    bins = pd.cut(truth["capsule_distance_mm"], [0, 2.5, np.inf], right=False)
    grouped = truth.groupby(bins, observed=True)
    se = grouped["risk"].apply(lambda p: np.sqrt(np.sum(p * (1 - p))) / len(p))
    z = (grouped["label"].mean() - grouped["risk"].mean()) / se
    assert (z.abs() < 3.5).all()


@pytest.mark.slow
def test_spatial_analysis_walkthrough_runs(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "spatial_analysis.py"),
                             str(tmp_path), "--patients", "120"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "highest-risk region" in result.stdout and "0-1 mm" in result.stdout
    for name in ("capsule_distance.png", "probability_slices.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert (tmp_path / "stats" / "probability.nii.gz").is_file()


@pytest.mark.slow
def test_cli_walkthrough_for_an_own_cohort_runs(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(EXAMPLES / "own_cohort.sh"), str(tmp_path)],
                            capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "no thyroid mask, so the view cannot be registered" in result.stderr
    assert "exit code 1" in result.stdout and "0 failed" in result.stdout
    assert (tmp_path / "site" / "index.html").is_file()
    assert sorted(p.name for p in (tmp_path / "gltf").glob("*.glb")) == [
        "capsule.glb", "field.glb", "isosurfaces.glb"]


@pytest.mark.slow
@pytest.mark.browser
def test_site_screenshot_example(tmp_path):
    from llnm3d.site import build_site

    site = build_site(tmp_path / "site",
                      points_csv=EXAMPLES / "llnm-net-published-3d" / "points.csv")
    result = subprocess.run([sys.executable, str(EXAMPLES / "site_screenshot.py"), str(site),
                             str(tmp_path / "shot.png")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    pixels = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB"))
    assert pixels.shape[:2] == (860, 1400) and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
