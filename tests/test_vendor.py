"""The vendored three.js is exactly what `make vendor-three` makes from the pinned npm package:
the part the viewer uses (tools/three-entry.js) bundled and minified by the pinned esbuild,
licence comments kept, and the licence file as is."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "llnm3d" / "site" / "vendor" / "three"
VIEWER = ROOT / "llnm3d" / "site" / "viewer"
ENTRY = ROOT / "tools" / "three-entry.js"
NPM_THREE = ROOT / "node_modules" / "three"
ESBUILD = ROOT / "node_modules" / ".bin" / "esbuild"
BUNDLE = re.search(r"THREE_BUNDLE := (\S+)", (ROOT / "Makefile").read_text()).group(1)


@pytest.mark.skipif(not ESBUILD.exists(), reason="node tools not installed (make test installs "
                    "them)")
def test_vendored_three_is_the_bundled_pinned_package(tmp_path):
    assert sorted(p.name for p in VENDOR.rglob("*") if p.is_file()) == [
        "LICENSE", Path(BUNDLE).name]
    assert (VENDOR / "LICENSE").read_bytes() == (NPM_THREE / "LICENSE").read_bytes()
    out = tmp_path / "bundle.js"
    subprocess.run([str(ESBUILD), str(ENTRY), "--bundle", "--format=esm", "--minify",
                    "--legal-comments=inline", "--log-level=warning", f"--outfile={out}"],
                   check=True, cwd=ROOT)
    bundle = (ROOT / BUNDLE).read_bytes()
    assert bundle == out.read_bytes()
    assert b"SPDX-License-Identifier: MIT" in bundle
    whole = sum((NPM_THREE / "build" / name).stat().st_size
                for name in ("three.core.js", "three.module.js"))
    assert len(bundle) < 0.35 * whole


def test_the_bundle_exports_every_three_name_the_viewer_uses():
    exported = set(re.findall(r"\b(\w+)\b", ENTRY.read_text().split("export", 1)[1]))
    for module in VIEWER.glob("*.js"):
        text = module.read_text()
        used = set(re.findall(r"\bTHREE\.(\w+)", text))
        used |= {name.strip() for group in re.findall(
            r"import \{([^}]*)\} from 'three", text) for name in group.split(",")}
        assert used <= exported, (module.name, sorted(used - exported))
        for source in re.findall(r"from '(three[^']*)'", text):
            assert source in ("three", "three/addons/loaders/GLTFLoader.js",
                              "three/addons/controls/OrbitControls.js"), (module.name, source)
