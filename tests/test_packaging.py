"""The package carries what it needs at run time, and says how it is licensed and cited."""

import tomllib
from pathlib import Path

import yaml

import llnm3d
from llnm3d.heatmap import MODEL_DIR, VIEWS

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(llnm3d.__file__).parent


def test_package_data_patterns_cover_every_non_python_file():
    # A file the patterns miss is left out of the wheel (as model/ once was), so a `pip
    # install .` or a wheel would break where an editable install works.
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["llnm3d"]
    covered = {path for pattern in patterns for path in PACKAGE.glob(pattern)}
    files = {path for path in PACKAGE.rglob("*") if path.is_file() and path.suffix != ".py"
             and "__pycache__" not in path.parts}
    assert files - covered == set()
    assert PACKAGE / "py.typed" in files


def test_bundled_weights_live_inside_the_package():
    assert MODEL_DIR.parent == PACKAGE
    for view in VIEWS:
        assert (MODEL_DIR / f"{view}.safetensors").is_file()
        assert (MODEL_DIR / f"{view}.json").is_file()
    # The top-level model/ folder keeps only the model card.
    assert sorted(p.name for p in (ROOT / "model").iterdir()) == ["MODEL_CARD.md"]


def test_license_and_citation():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0" and citation["title"].startswith("llnm3d")
    assert citation["version"] == llnm3d.__version__ and citation["license"] == "Apache-2.0"
    study = citation["references"][0]
    assert (study["doi"], study["volume"], study["start"], study["year"]) == (
        "10.1038/s41467-025-62042-z", 16, 7052, 2025)
