"""glTF export of aggregated maps: probability field, capsule surface, isosurfaces.

Every file is a binary glTF (``.glb``) in atlas LPS millimetres under a root node that turns it
Y-up (see ``docs/site-format.md``) and, with ``units="m"``, scales it to metres (glTF's unit).
Voxels with fewer than ``min_cases`` nodules are never written, so the files carry aggregates
only; ``min_cases`` is never below :data:`PUBLISH_MIN_CASES`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from .._version import __version__
from ..atlas import REGION_NAMES, Atlas, as_atlas
from ..checks import check_choice, check_number
from ..grid import grid_step
from ..io import InputError, ensure_writable_dir
from ..mesh import surface_from_field
from ..statistics import MAP_DESCRIPTIONS, Stats, load_stats
from .gltf import (
    POINTS,
    TRIANGLES,
    UNIT_SCALES,
    GlbBuilder,
    color_bytes,
    quantize_normals,
    quantize_positions,
    srgb_to_linear,
)

if TYPE_CHECKING:
    import trimesh

DEFAULT_COLORMAP = "cividis"
DEFAULT_FIELD_SPACING_MM = 1.0
# Surfaces are smooth: a coarser mesh looks the same on screen at a third of the bytes.
DEFAULT_SURFACE_SPACING_MM = 1.5
# The capsule is coloured by the map this far inside it (mm), where the domain is dense.
_CAPSULE_PROBE_MM = (0.75, 1.5, 2.5)
FIELD_ATTRIBUTES = {
    "_PROB": "LLNM probability (0-1), shrunk towards the cohort prevalence",
    "_CI": "95 % Jeffreys interval (low, high), normalised unsigned shorts (0-1)",
    "_N": "nodules touching the voxel",
    "_REGION": "atlas region label (see region_names; 0 outside the gland)",
    "_DIST": "signed distance to the capsule (mm, negative inside)",
}


@dataclass(frozen=True)
class FieldMap:
    """A map the point field carries besides the probability, when the aggregation made it.

    ``centre`` is where a diverging colour scale is centred: ``"rate"`` (the cohort rate),
    a number, or None (sequential only).
    """

    attribute: str
    label: str
    units: str
    centre: str | float | None = None


# Optional maps of :data:`llnm3d.statistics.maps.MAP_DESCRIPTIONS` shown by the viewer's map
# selector; exported only where finite at every shown voxel (a note says when one is not).
FIELD_MAPS = {
    "probability_above_rate": FieldMap(
        "_ABOVE", "P(risk > cohort rate), spatial model", "posterior probability (0-1)", 0.5),
    "significance": FieldMap(
        "_SIG", "Simultaneous 95 % band vs the cohort rate, spatial model",
        "+1 above, -1 below, 0 neither", 0.0),
    "t": FieldMap("_T", "t, outcome vs footprint (voxelwise test)", "t", 0.0),
    "t_log10p_fwer": FieldMap("_T_LOG10P_FWER", "-log10 FWER p of t (permutation)", "-log10 p"),
    "tfce_log10p_fwer": FieldMap(
        "_TFCE_LOG10P_FWER", "-log10 FWER p of TFCE (permutation)", "-log10 p"),
}
REQUIRED_MAPS = ("probability", "probability_ci_low", "probability_ci_high", "n_nodules")
# Coarsest field and surface grid (mm): the atlas gland spans about 70 x 30 x 55 mm, so a
# coarser grid leaves a handful of points and no surface worth showing.
MAX_SPACING_MM = 10.0
# The lowest publishing min_cases (raise it with min_cases, never lower it): a voxel or table
# row from fewer nodules can disclose one patient's footprint and outcome.
PUBLISH_MIN_CASES = 5


@functools.cache
def colormaps() -> dict[str, list[list[float]]]:
    """The shared colour maps: name -> evenly spaced sRGB stops (also used by the viewer)."""
    text = resources.files("llnm3d.data").joinpath("colormaps.json").read_text()
    return json.loads(text)["maps"]


def apply_colormap(values: npt.ArrayLike, value_range: tuple[float, float],
                   name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """sRGB colours, shape (N, 3), of ``values`` scaled linearly over ``value_range``."""
    if name not in colormaps():
        raise InputError(f"unknown colour map {name!r}; known: {', '.join(colormaps())}")
    stops = np.asarray(colormaps()[name])
    low, high = value_range
    t = np.clip((np.asarray(values, float) - low) / max(high - low, 1e-12), 0, 1)
    position = np.linspace(0, 1, len(stops))
    return np.stack([np.interp(t, position, stops[:, c]) for c in range(3)], axis=1)


@dataclass
class ExportedField:
    """What :func:`export_field` wrote: point count, shown range and coverage range."""

    path: Path
    points: int
    probability_range: tuple[float, float] | None
    coverage_range: tuple[int, int] | None
    spacing_mm: float
    notes: list[str] = field(default_factory=list)
    maps: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExportedLayers:
    """What :func:`export_layers` wrote.

    Attributes
    ----------
    points : int
        Voxels in ``field.glb``.
    probability_range, coverage_range : tuple or None
        Probability and nodules per voxel over them (None when the field is empty).
    field_spacing_mm : float
        The field's grid (mm).
    isosurface_levels : list of float
        The levels ``isosurfaces.glb`` holds.
    min_cases : int
        The publishing minimum of nodules per voxel that was applied.
    notes : list of str
        What the reader should know (a raised minimum, a map left out).
    maps : dict of str -> (float, float)
        The field's optional maps (:data:`FIELD_MAPS`) and their ranges.
    """

    points: int
    probability_range: tuple[float, float] | None
    coverage_range: tuple[int, int] | None
    field_spacing_mm: float
    isosurface_levels: list[float]
    min_cases: int
    notes: list[str] = field(default_factory=list)
    maps: dict[str, tuple[float, float]] = field(default_factory=dict)


def check_stats(stats: Stats) -> None:
    """Raise InputError unless ``stats`` holds the maps the export needs, on one grid."""
    missing = [name for name in REQUIRED_MAPS if name not in stats.volumes]
    if missing:
        raise InputError(f"stats: map(s) {', '.join(missing)} missing; re-run `llnm3d aggregate`")
    shapes = {stats.volumes[name].shape for name in REQUIRED_MAPS}
    if len(shapes) > 1:
        raise InputError(f"stats: maps have different grids {sorted(shapes)}")
    probability = stats.volumes["probability"]
    finite = probability[np.isfinite(probability)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise InputError(f"stats: probability map outside 0-1 "
                         f"({finite.min():.3g} to {finite.max():.3g})")


def _aggregation_min_cases(stats: Stats) -> int:
    return int(stats.summary.get("parameters", {}).get("min_cases", 1))


def min_cases_of(stats: Stats, min_cases: int | None) -> int:
    """The publishing threshold of nodules per voxel and table row.

    Parameters
    ----------
    stats : Stats
        The aggregation to publish.
    min_cases : int, optional
        A threshold asked for; default the aggregation's ``min_cases``, raised to
        :data:`PUBLISH_MIN_CASES` when below it.

    Raises
    ------
    InputError
        If ``min_cases`` is below :data:`PUBLISH_MIN_CASES` or the aggregation's own.
    """
    used = _aggregation_min_cases(stats)
    if min_cases is None:
        return max(used, PUBLISH_MIN_CASES)
    check_number("min_cases", min_cases, low=1, integer=True)
    if min_cases < PUBLISH_MIN_CASES:
        raise InputError(f"--min-cases {min_cases} is below the publishing floor of "
                         f"{PUBLISH_MIN_CASES}: voxels and table rows from fewer nodules can "
                         "disclose one patient's footprint and outcome")
    if min_cases < used:
        raise InputError(f"--min-cases {min_cases} is below the aggregation's {used}; the maps "
                         "hold no values there")
    return int(min_cases)


def floor_note(stats: Stats, min_cases: int | None) -> str | None:
    """A note when the default threshold was raised to :data:`PUBLISH_MIN_CASES` (the
    aggregation's ``min_cases`` was lower), else None."""
    used = _aggregation_min_cases(stats)
    if min_cases is not None or used >= PUBLISH_MIN_CASES:
        return None
    return (f"the aggregation used min-cases {used}; published voxels and table rows need at "
            f"least {PUBLISH_MIN_CASES} nodules (the publishing floor), so fewer are not shown")


def shown_voxels(stats: Stats, min_cases: int) -> np.ndarray:
    """Boolean volume of the voxels that may be published: a value and >= ``min_cases``."""
    return np.isfinite(stats.volumes["probability"]) & (stats.volumes["n_nodules"] >= min_cases)


def metadata(stats: Stats | None, min_cases: int | None, units: str = "mm", **more) -> dict:
    """``asset.extras`` / site metadata: aggregates and provenance, no ids or paths.
    ``units`` is the files' length unit (:data:`llnm3d.export.gltf.UNIT_SCALES`)."""
    extras: dict[str, Any] = {
        "generator": f"llnm3d {__version__}", "llnm3d_version": __version__,
        "units": units, "space": f"atlas LPS {units} (+x left, +y posterior, "
                                 "+z superior), origin at the isthmus centre",
        "region_names": {str(k): v for k, v in REGION_NAMES.items()}}
    if stats is not None:
        extras |= {"quantity": "LLNM probability", "nodules": stats.summary.get("nodules"),
                   "events": stats.summary.get("events"),
                   "prevalence": stats.summary.get("prevalence"), "min_cases": min_cases}
    return extras | more


def export_field(stats: Stats, path: str | Path, *, min_cases: int | None = None,
                 spacing_mm: float = DEFAULT_FIELD_SPACING_MM,
                 atlas: Atlas | str | Path | None = None,
                 colormap: str = DEFAULT_COLORMAP, units: str = "mm") -> ExportedField:
    """Write the probability field as one glTF point primitive (in ``units``: mm or m).

    One point per voxel centre of a ``spacing_mm`` grid (every k-th voxel of the map, nearest
    sample, no smoothing) where the map holds a value from at least ``min_cases`` nodules
    (see :func:`min_cases_of`; the result's notes say when the default was raised to the
    publishing floor). Attributes: quantised ``POSITION`` (grid indices; the node's scale and
    translation give mm), ``COLOR_0`` (``colormap`` over the shown range) and the raw values
    as :data:`FIELD_ATTRIBUTES`, plus those of :data:`FIELD_MAPS` the stats hold (the
    result's ``maps``: name -> value range over the shown voxels).
    """
    check_stats(stats)
    notes = [note for note in [floor_note(stats, min_cases)] if note]
    min_cases = min_cases_of(stats, min_cases)
    step = grid_step(spacing_mm, stats.spacing_mm)
    sub = (slice(None, None, step),) * 3
    shown = shown_voxels(stats, min_cases)[sub]
    k, j, i = np.nonzero(shown)
    values = {name: stats.volumes[name][sub][shown].astype(np.float32) for name in REQUIRED_MAPS}
    builder = GlbBuilder(units)
    value_range, coverage = None, None
    maps: dict[str, tuple[float, float]] = {}
    if len(i):
        grid = np.stack([i, j, k], axis=1)
        index_type = np.uint8 if grid.max() < 256 else np.uint16
        probability = values["probability"]
        value_range = (float(probability.min()), float(probability.max()))
        coverage = (int(values["n_nodules"].min()), int(values["n_nodules"].max()))
        origin = np.asarray(stats.origin_mm, float)
        points_mm = stats.grid.subsampled(step).to_world(grid)
        atlas = as_atlas(atlas) or _matching_atlas(stats)
        region = atlas.region_of(points_mm).astype(np.float32)
        attributes = {
            "POSITION": builder.accessor(grid.astype(index_type), bounds=True),
            "COLOR_0": builder.accessor(color_bytes(srgb_to_linear(
                apply_colormap(probability, value_range, colormap))), normalized=True),
            "_PROB": builder.accessor(probability),
            "_CI": builder.accessor(np.rint(65535 * np.stack(
                [values["probability_ci_low"], values["probability_ci_high"]], axis=1)
            ).astype(np.uint16), normalized=True),
            "_N": builder.accessor(values["n_nodules"]),
            "_REGION": builder.accessor(region),
            "_DIST": builder.accessor(atlas.capsule_distance_mm(points_mm).astype(np.float32)),
        }
        for name, spec in FIELD_MAPS.items():
            if name not in stats.volumes:
                continue
            value = stats.volumes[name][sub][shown].astype(np.float32)
            if not np.isfinite(value).all():
                notes.append(f"map {name} not in the field: undefined at "
                             f"{int((~np.isfinite(value)).sum())} shown voxels")
                continue
            attributes[spec.attribute] = builder.accessor(value)
            maps[name] = (float(value.min()), float(value.max()))
        material = builder.material("probability", [1, 1, 1, 1])
        builder.add_node("probability_field", attributes, POINTS, material,
                         translation=origin, scale=stats.spacing_mm * step)
    else:
        notes.append(f"no voxel has at least {min_cases} nodules; the field is empty")
    builder.write(path, metadata(stats, min_cases, units, points=int(len(i)),
                                 field_spacing_mm=stats.spacing_mm * step,
                                 probability_range=value_range, colormap=colormap,
                                 attributes=FIELD_ATTRIBUTES | {
                                     FIELD_MAPS[name].attribute: MAP_DESCRIPTIONS[name]
                                     for name in maps}))
    return ExportedField(Path(path), int(len(i)), value_range, coverage,
                         stats.spacing_mm * step, notes, maps)


def _matching_atlas(stats: Stats) -> Atlas:
    """The default atlas on the stats grid; an error if the stats used another atlas."""
    atlas = Atlas.default(stats.spacing_mm)
    if atlas.shape_zyx != stats.volumes["probability"].shape or not np.allclose(
            atlas.origin_mm, stats.origin_mm):
        raise InputError("the stats were not made on the bundled atlas; pass the atlas "
                         "folder used for registration (--atlas)")
    return atlas


def web_surface(atlas: Atlas, spacing_mm: float) -> trimesh.Trimesh:
    """The capsule surface remeshed from the signed distance at ``spacing_mm`` (coarser than
    the atlas for a light web file; the atlas's own surface when the spacing matches)."""
    step = grid_step(spacing_mm, atlas.spacing_mm)
    if step == 1:
        return atlas.surface
    # Presmooth by one atlas voxel, not one coarse voxel: more would shrink the thin isthmus.
    return surface_from_field(atlas.capsule_distance[::step, ::step, ::step], atlas.origin_mm,
                              atlas.spacing_mm * step, presmooth_voxels=1 / step)


def _add_mesh(builder: GlbBuilder, name: str, mesh, material: int, extra_attributes=None,
              extras: dict | None = None) -> None:
    if extra_attributes is None:
        # Zero-area faces from marching cubes leave vertices without a normal.
        mesh = mesh.copy()
        mesh.update_faces(mesh.nondegenerate_faces())
        mesh.remove_unreferenced_vertices()
    steps, low, step = quantize_positions(np.asarray(mesh.vertices))
    faces = np.asarray(mesh.faces)
    index_type = np.uint16 if len(mesh.vertices) < 65536 else np.uint32
    attributes = {"POSITION": builder.accessor(steps, bounds=True),
                  "NORMAL": builder.accessor(quantize_normals(np.asarray(mesh.vertex_normals)),
                                             normalized=True)}
    for key, values in (extra_attributes or {}).items():
        attributes[key] = builder.accessor(values, normalized=values.dtype == np.uint8)
    indices = builder.accessor(faces.astype(index_type).ravel(), target=34963)
    builder.add_node(name, attributes, TRIANGLES, material, indices=indices, translation=low,
                     scale=step, extras=extras)


def export_capsule(atlas: Atlas, path: str | Path, stats: Stats | None = None, *,
                   min_cases: int | None = None,
                   spacing_mm: float = DEFAULT_SURFACE_SPACING_MM,
                   colormap: str = DEFAULT_COLORMAP,
                   value_range: tuple[float, float] | None = None, units: str = "mm") -> Path:
    """Write the atlas capsule surface (outward normals), coloured by the map just inside it
    (in ``units``: mm or m).

    Each vertex takes the probability of the first shown voxel found 0.75, 1.5 or 2.5 mm
    inside along its normal (``_PROB``; -1 and light grey where there is none).
    """
    mesh = web_surface(atlas, spacing_mm)
    builder = GlbBuilder(units)
    extra = {}
    if stats is not None:
        check_stats(stats)
        min_cases = min_cases_of(stats, min_cases)
        shown = replace(stats, volumes={"probability": np.where(
            shown_voxels(stats, min_cases), stats.volumes["probability"], np.nan)})
        vertices, normals = np.asarray(mesh.vertices), np.asarray(mesh.vertex_normals)
        probability = np.full(len(vertices), np.nan)
        for depth in _CAPSULE_PROBE_MM:
            todo = np.isnan(probability)
            probe = vertices[todo] - depth * normals[todo]
            probability[todo] = shown.value_at("probability", probe)
        known = np.isfinite(probability)
        colors = np.tile(srgb_to_linear([0.85, 0.85, 0.85]), (len(vertices), 1))
        if known.any():
            value_range = value_range or (float(probability[known].min()),
                                          float(probability[known].max()))
            colors[known] = srgb_to_linear(apply_colormap(probability[known], value_range,
                                                          colormap))
        extra = {"COLOR_0": color_bytes(colors),
                 "_PROB": np.where(known, probability, -1).astype(np.float32)}
    material = builder.material("capsule", [0.93, 0.80, 0.76, 0.35], blend=True)
    _add_mesh(builder, "capsule", mesh, material, extra)
    attributes = {"_PROB": "LLNM probability just inside the capsule; -1 where not shown"}
    builder.write(path, metadata(stats, min_cases, units,
                                 attributes=attributes if stats else {},
                                 surface_spacing_mm=atlas.spacing_mm
                                 * grid_step(spacing_mm, atlas.spacing_mm)))
    return Path(path)


def default_levels(probability: np.ndarray) -> list[float]:
    """Two isosurface levels: the 75th and 95th percentiles of the shown probabilities,
    rounded to 0.01 (distinct and inside the range)."""
    finite = probability[np.isfinite(probability)]
    if finite.size == 0:
        return []
    levels = sorted({round(float(np.percentile(finite, q)), 2) for q in (75, 95)})
    return [level for level in levels if finite.min() < level < finite.max()]


def check_levels(levels: list[float] | None) -> None:
    """Refuse isosurface levels that are not probabilities strictly between 0 and 1 (None
    asks for the default levels)."""
    for level in levels or ():
        check_number("levels", level, low=0, high=1, low_inclusive=False, high_inclusive=False)


def export_isosurfaces(stats: Stats, path: str | Path, levels: list[float] | None = None, *,
                       min_cases: int | None = None,
                       spacing_mm: float = DEFAULT_SURFACE_SPACING_MM,
                       colormap: str = DEFAULT_COLORMAP,
                       value_range: tuple[float, float] | None = None,
                       units: str = "mm") -> list[float]:
    """Write one closed surface per level around the voxels with probability >= level (in
    ``units``: mm or m).

    Returns the levels that produced a surface (a level above the map's maximum gives none).
    """
    check_stats(stats)
    min_cases = min_cases_of(stats, min_cases)
    probability = np.where(shown_voxels(stats, min_cases), stats.volumes["probability"], np.nan)
    check_levels(levels)
    levels = default_levels(probability) if levels is None else sorted(levels)
    step = grid_step(spacing_mm, stats.spacing_mm)
    field_zyx = np.nan_to_num(probability, nan=0.0)[::step, ::step, ::step]
    builder, written = GlbBuilder(units), []
    for level in levels:
        if not (field_zyx >= level).any():
            continue
        mesh = surface_from_field(-field_zyx, stats.origin_mm, stats.spacing_mm * step,
                                  level=-level, presmooth_voxels=0)
        rgb = apply_colormap([level], value_range or (min(levels), max(levels)), colormap)[0]
        material = builder.material(f"probability >= {level:g}",
                                    [*srgb_to_linear(rgb), 0.55], blend=True, double_sided=True)
        _add_mesh(builder, f"probability >= {level:g}", mesh, material,
                  extras={"level": level})
        written.append(level)
    builder.write(path, metadata(stats, min_cases, units, levels=written))
    return written


def read_points_csv(path: str | Path) -> pd.DataFrame:
    """Read a point set with columns x, y, z, r, g, b (colours 0-1 or 0-255).

    Raises InputError naming the file and the problem (missing columns, non-numeric or
    non-finite values, colours out of range, no rows).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: points file not found")
    try:
        table = pd.read_csv(path, sep=None, engine="python", encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable CSV ({exc})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in "xyzrgb" if c not in table.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (need x,y,z,r,g,b)")
    table = table[list("xyzrgb")]
    numeric = table.apply(pd.to_numeric, errors="coerce")
    bad = ~np.isfinite(numeric.to_numpy(float)).all(axis=1)
    if bad.any():
        rows = (np.flatnonzero(bad)[:5] + 2).tolist()
        raise InputError(f"{path}: non-numeric or missing values on line(s) {rows}")
    if numeric.empty:
        raise InputError(f"{path}: no points")
    colors = numeric[list("rgb")]
    if colors.to_numpy().max() > 1:
        colors = colors / 255.0
    if colors.to_numpy().min() < 0 or colors.to_numpy().max() > 1:
        raise InputError(f"{path}: colours must be 0-1 or 0-255")
    numeric[list("rgb")] = colors
    return numeric


def published_points_to_atlas(points: pd.DataFrame, atlas: Atlas,
                              offset_x_mm: float = 0.0) -> np.ndarray:
    """Place the published LLNM-Net point set (unitless 256 cube, +y superior, +z anterior)
    in atlas mm: axes mapped to LPS, centred, scaled so its width matches the atlas gland's,
    then shifted by ``offset_x_mm`` along x (to sit beside the atlas). Only a display
    placement: the published units were never stated."""
    xyz = points[list("xyz")].to_numpy(float)
    lps = np.stack([xyz[:, 0], -xyz[:, 2], xyz[:, 1]], axis=1)
    inside = atlas.labels > 0
    k, j, i = np.nonzero(inside)
    gland = atlas.origin_mm + atlas.spacing_mm * np.stack([i, j, k], axis=1)
    width = np.ptp(gland[:, 0])
    centre = (lps.max(axis=0) + lps.min(axis=0)) / 2
    scaled = (lps - centre) * width / max(np.ptp(lps[:, 0]), 1e-9)
    return scaled + (gland.max(axis=0) + gland.min(axis=0)) / 2 + [offset_x_mm, 0, 0]


def export_points(points: pd.DataFrame, positions_mm: np.ndarray, path: str | Path,
                  source: str) -> Path:
    """Write a coloured point set (e.g. the published LLNM-Net points) as one point primitive."""
    builder = GlbBuilder()
    attributes = {"POSITION": builder.accessor(positions_mm.astype(np.float32), bounds=True),
                  "COLOR_0": builder.accessor(color_bytes(srgb_to_linear(
                      points[list("rgb")].to_numpy(float))), normalized=True)}
    builder.add_node("published_points", attributes, POINTS,
                     builder.material("published colours", [1, 1, 1, 1]))
    builder.write(path, metadata(None, None, points=int(len(points)), source=source,
                                 note="published colours only; their scale was never "
                                      "published, positions rescaled for display"))
    return Path(path)


def export_layers(stats: Stats, out_dir: str | Path, *,
                  atlas: Atlas | str | Path | None = None,
                  levels: list[float] | None = None, min_cases: int | None = None,
                  field_spacing_mm: float = DEFAULT_FIELD_SPACING_MM,
                  surface_spacing_mm: float = DEFAULT_SURFACE_SPACING_MM,
                  colormap: str = DEFAULT_COLORMAP, units: str = "mm") -> ExportedLayers:
    """Write ``field.glb``, ``capsule.glb`` and ``isosurfaces.glb`` of ``stats`` into
    ``out_dir``; return what was written (:class:`ExportedLayers`). ``units``: ``mm`` (atlas
    mm, as the site's files) or ``m`` (metres, the glTF specification's unit)."""
    check_stats(stats)
    shown_min_cases = min_cases_of(stats, min_cases)  # refused before anything is written
    check_levels(levels)
    check_choice("units", units, UNIT_SCALES)
    for name, spacing in (("field_spacing_mm", field_spacing_mm),
                          ("surface_spacing_mm", surface_spacing_mm)):
        check_number(name, spacing, low=0, high=MAX_SPACING_MM, low_inclusive=False)
    atlas = as_atlas(atlas) or _matching_atlas(stats)
    out_dir = ensure_writable_dir(out_dir)
    exported = export_field(stats, out_dir / "field.glb", min_cases=min_cases,
                            spacing_mm=field_spacing_mm, atlas=atlas, colormap=colormap,
                            units=units)
    export_capsule(atlas, out_dir / "capsule.glb", stats, min_cases=min_cases,
                   spacing_mm=surface_spacing_mm, colormap=colormap,
                   value_range=exported.probability_range, units=units)
    written = export_isosurfaces(stats, out_dir / "isosurfaces.glb", levels,
                                 min_cases=min_cases, spacing_mm=surface_spacing_mm,
                                 colormap=colormap, value_range=exported.probability_range,
                                 units=units)
    return ExportedLayers(exported.points, exported.probability_range, exported.coverage_range,
                          exported.spacing_mm, written, shown_min_cases, exported.notes,
                          exported.maps)


def export_stats(stats_dir: str | Path, out_dir: str | Path, **options) -> ExportedLayers:
    """:func:`export_layers` of an ``llnm3d aggregate`` folder (``options`` as there)."""
    return export_layers(load_stats(stats_dir), out_dir, **options)
