"""The package carries what it needs at run time, and says how it is licensed and cited."""

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

import llnm3d
from llnm3d.models.heatmap import MODEL_DIR, VIEWS

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


def test_package_face_loads_stages_on_first_use():
    # `import llnm3d` (and so `llnm3d --help`) pays for no stage; torch stays out of the
    # package face, the statistics, the site and the model subpackage itself; a public name
    # loads its stage when used.
    code = ("import sys, llnm3d\n"
            "loaded = lambda: sorted(m for m in ('llnm3d.registration', 'llnm3d.statistics',"
            " 'torch') if m in sys.modules)\n"
            "assert loaded() == [], loaded()\n"
            "import llnm3d.site, llnm3d.statistics.inference, llnm3d.cli, llnm3d.models\n"
            "assert 'torch' not in sys.modules\n"
            "assert llnm3d.aggregate.__module__ == 'llnm3d.statistics.maps'\n"
            "assert 'aggregate' in dir(llnm3d) and llnm3d.__version__\n"
            "try:\n    llnm3d.no_such_name\nexcept AttributeError:\n    pass\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    subprocess.run([sys.executable, "-c", code], check=True)
