"""Building the static viewer site: ``data.json``, ``index.html``, the assets and the vendored
three.js, written to a work folder and swapped in whole (see :mod:`llnm3d.site`)."""

from __future__ import annotations

import math
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from .._version import __version__
from ..atlas import Atlas, as_atlas
from ..export import (
    DEFAULT_FIELD_SPACING_MM,
    DEFAULT_SURFACE_SPACING_MM,
    FIELD_MAPS,
    colormaps,
    export_capsule,
    export_layers,
    export_points,
    metadata,
    published_points_to_atlas,
    read_points_csv,
)
from ..grid import grid_step
from ..io import InputError, ensure_writable_dir, read_json, to_json, write_text
from ..statistics import load_stats
from ..statistics.maps import CONTRAST_NOTE, NODULE_MODEL_NOTE
from .fingerprint import source_fingerprint

FORMAT = "llnm3d-site/1"
THREE_VERSION = "0.187.0"
DEFAULT_TITLE = "Where lateral lymph node metastasis risk concentrates in the thyroid"
_STATIC = ("viewer.css",)
_REGION_COLUMNS = ["region", "half", "nodules", "events", "risk", "ci_low", "ci_high",
                   "mean_model_probability"]
_DISTANCE_COLUMNS = ["bin", "nodules", "events", "risk", "ci_low", "ci_high",
                     "mean_model_probability"]
_SUPPRESSED = ["events", "risk", "ci_low", "ci_high", "mean_model_probability"]
# Longest run of the run-length coded label volume (runs are unsigned shorts).
_MAX_RUN = 65535


def _site_files():
    return resources.files("llnm3d.site")


def table_json(table: pd.DataFrame, columns: list[str], min_cases: int) -> dict:
    """A table as ``{"columns", "rows"}`` for the page; rows from fewer than ``min_cases``
    nodules keep their label but have counts and rates suppressed (``null``)."""
    rows = []
    for _, row in table[columns].iterrows():
        small = not row["nodules"] >= min_cases
        cells = []
        for column in columns:
            value = row[column]
            if small and (column in _SUPPRESSED or column == "nodules"):
                value = None
            elif isinstance(value, (float, np.floating)):
                value = None if not math.isfinite(value) else round(float(value), 4)
            elif isinstance(value, (np.integer,)):
                value = int(value)
            cells.append(value)
        rows.append(cells)
    return {"columns": columns, "rows": rows}


def run_lengths(values: np.ndarray, max_run: int = _MAX_RUN) -> tuple[np.ndarray, np.ndarray]:
    """Run-length code of ``values`` in C order: (lengths, values) of the runs, no run longer
    than ``max_run``; ``np.repeat(values, lengths)`` gives the flat array back."""
    flat = np.ravel(values)
    if not flat.size:
        return np.zeros(0, np.int64), flat[:0]
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.append(starts, flat.size))
    pieces = -(-lengths // max_run)
    split = np.full(int(pieces.sum()), max_run, np.int64)
    split[np.cumsum(pieces) - 1] = lengths - (pieces - 1) * max_run
    return split, np.repeat(flat[starts], pieces)


def _write_labels(atlas: Atlas, step: int, path: Path) -> dict:
    """The atlas labels on the field's grid (every ``step``-th voxel) for the slice panels:
    run-length coded as unsigned little-endian shorts (the run lengths), then the labels as
    bytes. Returns the ``slices`` entry of data.json."""
    grid = atlas.grid.subsampled(step)
    lengths, values = run_lengths(atlas.labels[::step, ::step, ::step])
    path.write_bytes(lengths.astype("<u2").tobytes() + values.astype(np.uint8).tobytes())
    return {"labels": f"assets/{path.name}", "runs": int(len(lengths)),
            "shape_zyx": list(grid.shape), "origin_mm": [float(v) for v in grid.origin_mm],
            "spacing_mm": float(grid.spacing_mm)}


def _field_maps(maps: dict[str, tuple[float, float]]) -> list[dict]:
    """The optional maps of the field for the viewer's map selector (data.json ``maps``)."""
    return [{"id": name, "attribute": FIELD_MAPS[name].attribute.lower(),
             "label": FIELD_MAPS[name].label, "units": FIELD_MAPS[name].units,
             "centre": FIELD_MAPS[name].centre,
             "range": [round(lo, 6), round(hi, 6)]} for name, (lo, hi) in maps.items()]


def _site_folder(out_dir: str | Path) -> Path:
    """``out_dir`` as an absolute path; refused when it is the working folder or holds it.

    The build replaces the whole folder, which would delete the folder the caller stands in
    (and ``Path(".")`` has no name to put a new folder under).
    """
    folder = Path(out_dir).resolve()
    if Path.cwd().resolve().is_relative_to(folder):
        raise InputError(f"{folder}: is the current folder or holds it; build-site replaces "
                         "the whole --out folder, so give it a folder of its own (e.g. --out "
                         "site)")
    return folder


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder that holds something other than an llnm3d site."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    entries = [p.name for p in out_dir.iterdir()]
    if not entries:
        return
    data = out_dir / "data.json"
    try:
        ours = data.is_file() and read_json(data).get("format") == FORMAT
    except InputError:
        ours = False
    if not ours:
        raise InputError(f"{out_dir}: not empty and not an llnm3d site; choose another --out "
                         "(build-site replaces the whole folder)")


def build_site(out_dir: str | Path, stats_dir: str | Path | None = None, *,
               points_csv: str | Path | None = None, atlas: Atlas | str | Path | None = None,
               title: str = DEFAULT_TITLE, description: str | None = None,
               levels: list[float] | None = None, min_cases: int | None = None,
               field_spacing_mm: float = DEFAULT_FIELD_SPACING_MM,
               surface_spacing_mm: float = DEFAULT_SURFACE_SPACING_MM) -> Path:
    """Build the static viewer site into ``out_dir`` (replaced as a whole, atomically).

    Parameters
    ----------
    out_dir : path
        The site folder; if it exists it must be empty or an earlier llnm3d site, and it must
        not be the working folder or hold it.
    stats_dir : path, optional
        An ``llnm3d aggregate`` folder: its probability field, capsule surface coloured by it,
        isosurfaces and tables are shown.
    points_csv : path, optional
        A coloured point set (x, y, z, r, g, b), e.g. the published LLNM-Net points; shown as
        its own layer beside the atlas (or alone without ``stats_dir``).
    atlas : Atlas or path, optional
        The atlas (or its folder) the stats were made on; default the bundled one (checked
        against the grid).
    title, description : str
        Plain text for the page heading (escaped; HTML in them is shown literally).
    levels : list of float, optional
        Isosurface probabilities, each in (0, 1); default the 75th and 95th percentiles of the
        shown voxels.
    min_cases : int, optional
        Publishing minimum of nodules per voxel and table row; default the aggregation's
        ``min_cases`` raised to :data:`llnm3d.export.PUBLISH_MIN_CASES` (a note says so), and
        never below either.
    field_spacing_mm, surface_spacing_mm : float
        Grid of the exported point field and of the surfaces (mm), in (0,
        :data:`llnm3d.export.MAX_SPACING_MM`].

    Returns
    -------
    Path
        ``out_dir``.
    """
    if stats_dir is None and points_csv is None:
        raise InputError("build-site needs --stats, --points or both")
    folder = _site_folder(out_dir)
    _check_out_dir(folder)
    stats = load_stats(stats_dir) if stats_dir is not None else None
    points = read_points_csv(points_csv) if points_csv is not None else None
    atlas = as_atlas(atlas)
    if stats is not None and atlas is None:
        spacing = stats.summary.get("parameters", {}).get("atlas", {}).get("spacing_mm")
        atlas = Atlas.default(spacing or stats.spacing_mm)
    atlas = atlas or Atlas.default()
    ensure_writable_dir(folder.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        data = _write_site(work, stats, points, atlas, title, description, levels, min_cases,
                           field_spacing_mm, surface_spacing_mm,
                           source=Path(points_csv).name if points_csv else None)
        _render(work, data)
        _swap_in(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return Path(out_dir)


def estimator_text(record: dict | None) -> str | None:
    """One line on how the risk map was estimated, for the cohort panel."""
    if not record:
        return None
    if record.get("name") == "spatial":
        return (f"spatial log-odds model (footprints of unit mass, {record['knot_spacing_mm']:g} "
                f"mm splines, smoothness by LAML: {record['edf']:.0f} effective degrees of "
                "freedom; significance: simultaneous 95 % band vs the cohort rate)")
    if record.get("name") == "kernel":
        return (f"kernel smoother at registered centres (sigma {record['bandwidth_mm']:g} mm, "
                "by leave-one-patient-out cross-validation)")
    return "weighted proportion of the nodules touching each voxel"


def smoothing_text(record: dict | None) -> str | None:
    """How much the risk map was smoothed, for the cohort panel."""
    if not record:
        return None
    if record.get("name") == "spatial":
        return (f"penalised {record['knot_spacing_mm']:g} mm B-splines, penalty chosen by LAML "
                f"(log lambda {record['log_lambda']:.2f}, {record['edf']:.1f} of "
                f"{record['max_edf']:.0f} effective degrees of freedom)")
    if record.get("name") == "kernel":
        return f"Gaussian kernel, sigma {record['bandwidth_mm']:g} mm"
    return "none (each voxel from the nodules touching it)"


def _write_site(work: Path, stats, points, atlas, title, description, levels, min_cases,
                field_spacing_mm, surface_spacing_mm, source) -> dict:
    assets = work / "assets"
    assets.mkdir()
    data = {"format": FORMAT, "title": title, "llnm3d_version": __version__,
            "three_version": THREE_VERSION, "colormaps": colormaps(),
            "build": {"source_fingerprint": source_fingerprint()},
            **{k: v for k, v in metadata(None, None).items() if k in ("units", "space",
                                                                        "region_names")},
            "layers": [], "tables": {}, "notes": []}
    if stats is not None:
        exported = export_layers(stats, assets, atlas=atlas, levels=levels,
                                 min_cases=min_cases, field_spacing_mm=field_spacing_mm,
                                 surface_spacing_mm=surface_spacing_mm)
        shown = exported.min_cases
        data |= {"quantity": "LLNM probability", "nodules": stats.summary.get("nodules"),
                 "events": stats.summary.get("events"),
                 "prevalence": stats.summary.get("prevalence"), "min_cases": shown,
                 "weight": stats.summary.get("parameters", {}).get("weight"),
                 "estimator": estimator_text(stats.summary.get("estimator")),
                 "probability_range": exported.probability_range,
                 "coverage_range": exported.coverage_range,
                 "field_spacing_mm": exported.field_spacing_mm,
                 "points": exported.points,
                 "isosurface_levels": exported.isosurface_levels,
                 "maps": _field_maps(exported.maps),
                 "smoothing": smoothing_text(stats.summary.get("estimator")),
                 "landmarks": atlas.landmarks,
                 "slices": _write_labels(atlas, grid_step(field_spacing_mm, atlas.spacing_mm),
                                         assets / "labels.bin")}
        data["tables"] = {
            "regions": table_json(stats.regions, _REGION_COLUMNS, shown),
            "capsule_distance": table_json(stats.capsule_distance, _DISTANCE_COLUMNS, shown)}
        # The site carries neither the nodule-model nor the contrast tables, so not their notes.
        data["notes"] += exported.notes + [
            str(n) for n in stats.summary.get("notes", [])
            if not str(n).startswith((NODULE_MODEL_NOTE, CONTRAST_NOTE))]
        data["layers"] += [
            {"id": "field", "label": "Probability field", "file": "assets/field.glb",
             "kind": "points", "visible": exported.points > 0},
            {"id": "capsule", "label": "Thyroid capsule", "file": "assets/capsule.glb",
             "kind": "mesh", "visible": True}]
        if exported.isosurface_levels:
            data["layers"].append({"id": "isosurfaces", "label": "Isosurfaces",
                                   "file": "assets/isosurfaces.glb", "kind": "mesh",
                                   "visible": False})
    else:
        export_capsule(atlas, assets / "capsule.glb", spacing_mm=surface_spacing_mm)
        data["layers"].append({"id": "capsule", "label": "Thyroid capsule (atlas)",
                               "file": "assets/capsule.glb", "kind": "mesh", "visible": True})
    if points is not None:
        width = float(np.ptp(atlas.surface.vertices[:, 0]))
        beside = width + 15.0 if stats is not None else 0.0
        export_points(points, published_points_to_atlas(points, atlas, beside),
                      assets / "published_points.glb", source)
        data["layers"].append({"id": "published_points",
                               "label": "Published LLNM-Net points", "kind": "points",
                               "file": "assets/published_points.glb", "visible": True,
                               "count": int(len(points))})
        data["notes"].append("Published LLNM-Net points: colours as published (their scale "
                             "was never published); positions rescaled to the atlas width"
                             + (" and shown beside it." if stats is not None else "."))
    data["description"] = description if description is not None else _describe(data)
    write_text(work / "data.json", to_json(data))
    return data


def _describe(data: dict) -> str:
    if data.get("nodules") is None:
        return "The published LLNM-Net point set on the llnm3d viewer."
    return (f"{data['nodules']:,} nodules ({data['events']:,} with lateral lymph node "
            f"metastasis) registered on the llnm3d thyroid atlas. Voxels and table rows with "
            f"fewer than {data['min_cases']} nodules are not shown.")


def _render(work: Path, data: dict) -> None:
    files = _site_files()
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(files.joinpath("index.html.j2").read_text())
    write_text(work / "index.html", template.render(
        title=data["title"], description=data["description"],
        llnm3d_version=__version__, three_version=THREE_VERSION))
    for name in _STATIC:
        write_text(work / name, files.joinpath(name).read_text())
    (work / "viewer").mkdir()
    for module in files.joinpath("viewer").iterdir():
        if module.name.endswith(".js"):
            write_text(work / "viewer" / module.name, module.read_text())
    with resources.as_file(files.joinpath("vendor")) as vendor:
        shutil.copytree(vendor, work / "vendor")
    (work / ".nojekyll").touch()


def _swap_in(work: Path, out_dir: Path) -> None:
    """Put the finished site in place: a reader sees the old or the new folder, never half."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
    work.chmod(0o755)
    try:
        work.rename(out_dir)
    except OSError:
        if old is not None:
            old.rename(out_dir)
        raise
    if old is not None:
        shutil.rmtree(old)


def site_size_bytes(site_dir: str | Path, include_vendor: bool = False) -> int:
    """Total bytes of the files in a built site (without ``vendor/`` unless asked)."""
    site_dir = Path(site_dir)
    return sum(p.stat().st_size for p in site_dir.rglob("*") if p.is_file()
               and (include_vendor or "vendor" not in p.relative_to(site_dir).parts))
