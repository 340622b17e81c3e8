"""The demo site committed in site/ (what GitHub Pages serves)."""

import json
import re
from pathlib import Path

from llnm3d.site import site_size_bytes, source_fingerprint

SITE = Path(__file__).resolve().parents[1] / "site"


def test_published_site_was_built_by_the_current_code():
    data = json.loads((SITE / "data.json").read_text())
    assert data["build"]["source_fingerprint"] == source_fingerprint(), (
        "site/ is stale: the code or weights changed since it was built; run `make site`")


def test_published_site_is_small_and_carries_no_ids():
    assert site_size_bytes(SITE) < 800_000
    # Demo patients are P00001..., nodules P00001-N1, images P00001-N1-trans.
    for path in SITE.rglob("*"):
        if path.is_file() and "vendor" not in path.parts:
            assert not re.search(rb"P\d{5}", path.read_bytes()), path
