"""The vendored three.js is exactly what `make vendor-three` makes from the pinned npm package:
each module minified by the pinned esbuild, its licence comment kept, the licence file as is."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "llnm3d" / "site" / "vendor" / "three"
NPM_THREE = ROOT / "node_modules" / "three"
ESBUILD = ROOT / "node_modules" / ".bin" / "esbuild"
FILES = re.search(r"THREE_FILES := (.*?)\n\n", (ROOT / "Makefile").read_text(), re.S).group(1)


@pytest.mark.skipif(not ESBUILD.exists(), reason="node tools not installed (make test installs "
                    "them)")
def test_vendored_three_is_the_minified_pinned_package(tmp_path):
    names = FILES.replace("\\\n", " ").split()
    assert sorted(p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*")
                  if p.is_file()) == sorted(names)
    for name in names:
        vendored = (VENDOR / name).read_bytes()
        if not name.endswith(".js"):
            assert vendored == (NPM_THREE / name).read_bytes(), name
            continue
        out = tmp_path / Path(name).name
        subprocess.run([str(ESBUILD), str(NPM_THREE / name), "--minify",
                        "--legal-comments=inline", "--log-level=warning", f"--outfile={out}"],
                       check=True)
        assert vendored == out.read_bytes(), name
        assert len(vendored) < 0.6 * (NPM_THREE / name).stat().st_size, name
    assert b"SPDX-License-Identifier: MIT" in (VENDOR / "build" / "three.core.js").read_bytes()
