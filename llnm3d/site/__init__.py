"""The static 3D viewer site (``llnm3d build-site``).

A folder that works as-is on GitHub Pages or any static host: ``index.html`` (Jinja2 template,
autoescaped), the viewer (``viewer/*.js``, ES modules, and ``viewer.css``), ``data.json``
(metadata and tables), ``assets/*.glb`` (:mod:`llnm3d.export`), ``assets/labels.bin`` (the
atlas for the slice panels) and three.js vendored from its npm package (``vendor/three``, MIT).
No CDN, no network at view time, relative paths only. The layout is in ``docs/site-format.md``.

Modules: :mod:`~llnm3d.site.build` (the build), :mod:`~llnm3d.site.serve` (a local http
server), :mod:`~llnm3d.site.fingerprint` (what identifies the code that built a site).
"""

from __future__ import annotations

from .build import (
    DEFAULT_TITLE,
    FORMAT,
    THREE_VERSION,
    build_site,
    estimator_text,
    site_size_bytes,
    table_json,
)
from .fingerprint import code_text, source_fingerprint
from .serve import serving

__all__ = ["DEFAULT_TITLE", "FORMAT", "THREE_VERSION", "build_site", "code_text",
           "estimator_text", "serving", "site_size_bytes", "source_fingerprint", "table_json"]
