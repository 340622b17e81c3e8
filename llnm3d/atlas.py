"""The canonical thyroid atlas: label map, signed capsule distance and capsule surface in mm.

Atlas space is millimetres, LPS (+x patient left, +y posterior, +z superior), origin at the
centre of the isthmus. Volumes are arrays indexed ``[k, j, i]`` (z, y, x), as SimpleITK returns
them; voxel coordinates ``(i, j, k)`` follow x, y, z, and voxel ``(i, j, k)`` sits at
``origin_mm + spacing_mm * (i, j, k)``.

Region labels (``Atlas.labels``)
--------------------------------
======  ==========================  ======  ==========================
label   region                      label   region
======  ==========================  ======  ==========================
0       outside the gland           21      left lobe, upper third
11      right lobe, upper third     22      left lobe, middle third
12      right lobe, middle third    23      left lobe, lower third
13      right lobe, lower third     30      isthmus (and pyramidal lobe)
======  ==========================  ======  ==========================

so ``label // 10`` is the part (1 right lobe, 2 left lobe, 3 isthmus) and ``label % 10`` the
third (1 upper, 2 middle, 3 lower; 0 for the isthmus). Thirds split each lobe into three equal
lengths along the lobe's own long axis (its first principal axis, pointing upwards).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import trimesh
from scipy import ndimage

from ._version import __version__
from .anatomy import ISTHMUS, LEFT, RIGHT, ThyroidShape, gland_field_mm
from .checks import check_number
from .grid import Grid
from .io import InputError, atomic_path, read_json, read_volume, write_json, write_volume
from .label_tables import write_label_tables
from .mesh import surface_from_field
from .nifti import NiftiHeader

PART_NAMES = {RIGHT: "right", LEFT: "left", ISTHMUS: "isthmus"}
THIRD_NAMES = {1: "upper", 2: "middle", 3: "lower"}
REGION_NAMES = {
    10 * part + third: f"{PART_NAMES[part]} {THIRD_NAMES[third]}"
    for part in (RIGHT, LEFT)
    for third in (1, 2, 3)
} | {10 * ISTHMUS: "isthmus"}
# sRGB colour of each region in figures and in the label tables for 3D Slicer and ITK-SNAP:
# blues for the right lobe, oranges for the left, darker downwards; green for the isthmus.
REGION_COLOURS = {11: "#c6dbef", 12: "#6baed6", 13: "#2171b5", 21: "#fdd0a2", 22: "#fd8d3c",
                  23: "#d94801", 30: "#a1d99b"}

# Grid of the default atlas: the parametric gland plus at least 4 mm of margin on every side.
_DEFAULT_BOUNDS_MM = np.array([[-38.0, -10.0, -24.0], [38.0, 28.0, 40.0]])
# Its voxel sizes: at 0.1 mm that grid has about 180 million voxels; at 2 mm the isthmus, a
# few mm thick, is a voxel or two.
MIN_SPACING_MM, MAX_SPACING_MM = 0.1, 2.0


def part_name(lobe: int | str) -> int:
    """Part code (1 right, 2 left, 3 isthmus) from a code or a name such as ``"R"``/``"left"``."""
    if isinstance(lobe, (int, np.integer)) and int(lobe) in PART_NAMES:
        return int(lobe)
    key = str(lobe).strip().lower()
    aliases = {"r": RIGHT, "right": RIGHT, "l": LEFT, "left": LEFT, "isthmus": ISTHMUS}
    if key not in aliases:
        raise InputError(f"unknown side {lobe!r}: expected R or L")
    return aliases[key]


@dataclass(frozen=True)
class Section:
    """A 2D cross-section of the atlas, laid out like an ultrasound image.

    Transverse sections show the patient's right on the image left (columns run along +x) and
    depth downward (rows run along +y). Longitudinal sections show cranial on the image left
    (columns run along -z) and depth downward (rows along +y).

    Attributes
    ----------
    mask : ndarray of bool, shape (n_rows, n_cols)
        True inside the selected part of the gland.
    origin_mm : ndarray, shape (3,)
        Atlas position (mm) of the centre of pixel ``[0, 0]``.
    row_dir, col_dir : ndarray, shape (3,)
        Unit atlas directions of increasing row and column index.
    spacing_mm : float
        Pixel size in mm (equal along rows and columns).
    view : str
        ``"transverse"`` or ``"longitudinal"``.
    level_mm : float
        z of a transverse section, x of a longitudinal one (atlas mm).
    """

    mask: np.ndarray
    origin_mm: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing_mm: float
    view: str
    level_mm: float

    def pixel_to_atlas(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Atlas positions (mm), shape (N, 3), of (possibly fractional) pixel indices."""
        rows = np.asarray(rows, dtype=float).ravel()
        cols = np.asarray(cols, dtype=float).ravel()
        return (self.origin_mm + self.spacing_mm * (rows[:, None] * self.row_dir
                                                    + cols[:, None] * self.col_dir))

    def atlas_to_pixel(self, points_mm: np.ndarray) -> np.ndarray:
        """Fractional (row, col) indices, shape (N, 2), of atlas points projected on the plane."""
        rel = np.atleast_2d(points_mm) - self.origin_mm
        return np.stack([rel @ self.row_dir, rel @ self.col_dir], axis=1) / self.spacing_mm


@dataclass
class Atlas:
    """Canonical thyroid atlas on a regular isotropic grid in atlas space.

    Attributes
    ----------
    labels : ndarray of uint8, shape (nz, ny, nx)
        Region labels (see the module docstring for the encoding).
    capsule_distance : ndarray of float32, shape (nz, ny, nx)
        Signed distance to the capsule in mm, negative inside the gland.
    origin_mm : ndarray, shape (3,)
        Atlas position of voxel (0, 0, 0).
    spacing_mm : float
        Voxel size in mm.
    surface : trimesh.Trimesh
        Capsule surface (watertight, outward normals), vertices in atlas mm.
    lobe_axes : dict
        Per lobe (1 right, 2 left): ``{"centre_mm", "axis", "length_range_mm"}`` of the long axis
        used to split thirds.
    landmarks : dict
        Optional structures next to the gland (trachea, carotids) used by the phantom.
    metadata : dict
        Provenance: builder, shape parameters, software version.
    """

    labels: np.ndarray
    capsule_distance: np.ndarray
    origin_mm: np.ndarray
    spacing_mm: float
    surface: trimesh.Trimesh
    lobe_axes: dict = field(default_factory=dict)
    landmarks: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def default(cls, spacing_mm: float = 0.5) -> Atlas:
        """The bundled atlas (the parametric thyroid of :mod:`llnm3d.anatomy`).

        Built on first use (about a second at 0.5 mm) and cached per spacing; the cached arrays
        are read-only. ``spacing_mm`` is :data:`MIN_SPACING_MM` to :data:`MAX_SPACING_MM`.
        """
        return _default_atlas(float(_check_spacing(spacing_mm)))

    @classmethod
    def from_shape(cls, shape: ThyroidShape | None = None, spacing_mm: float = 0.5) -> Atlas:
        """Voxelise a parametric :class:`~llnm3d.anatomy.ThyroidShape` at ``spacing_mm``
        (:data:`MIN_SPACING_MM` to :data:`MAX_SPACING_MM`)."""
        _check_spacing(spacing_mm)
        shape = shape or ThyroidShape()
        lo, hi = _DEFAULT_BOUNDS_MM
        counts = np.floor((hi - lo) / spacing_mm).astype(int) + 1
        grid = Grid(counts[::-1], lo, spacing_mm)
        x, y, z = grid.axes_mm()
        zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
        points = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1)
        field_mm, part = gland_field_mm(points, shape)
        inside = field_mm.reshape(zz.shape) < 0
        labels = np.where(inside, part.reshape(zz.shape) * 10, 0).astype(np.uint8)
        distance = signed_distance_mm(inside, spacing_mm)
        lobe_axes = {}
        for lobe in (RIGHT, LEFT):
            lobe_axes[lobe] = _split_thirds(labels, lobe, grid)
        return cls(
            labels=labels,
            capsule_distance=distance,
            origin_mm=lo.copy(),
            spacing_mm=spacing_mm,
            surface=surface_from_field(distance, lo, spacing_mm),
            lobe_axes=lobe_axes,
            landmarks=shape.landmarks(),
            metadata={"builder": "llnm3d.anatomy.ThyroidShape", "shape": shape.as_dict(),
                      "llnm3d_version": __version__},
        )

    # -- geometry -----------------------------------------------------------------------------

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return self.labels.shape

    @property
    def grid(self) -> Grid:
        """The atlas grid: shape of :attr:`labels`, :attr:`origin_mm`, :attr:`spacing_mm`."""
        return Grid(self.labels.shape, self.origin_mm, self.spacing_mm)

    def world_to_voxel(self, points_mm: np.ndarray) -> np.ndarray:
        """Fractional voxel coordinates (i, j, k), shape (N, 3), of atlas points (mm)."""
        return self.grid.voxel_coordinates(points_mm)

    def voxel_to_world(self, ijk: np.ndarray) -> np.ndarray:
        """Atlas positions (mm), shape (N, 3), of voxel coordinates (i, j, k)."""
        return self.grid.to_world(ijk)

    def region_of(self, points_mm: np.ndarray) -> np.ndarray:
        """Region label (see module docstring) of the voxel nearest each point; 0 outside."""
        return self.grid.sample(self.labels, points_mm, fill=0, dtype=np.uint8)

    def nearest_region_of(self, points_mm: np.ndarray) -> np.ndarray:
        """Region label of the gland voxel nearest each point (the point's own region inside
        the gland); 0 outside the grid."""
        return self.grid.sample(self._nearest_labels, points_mm, fill=0, dtype=np.uint8)

    @functools.cached_property
    def _nearest_labels(self) -> np.ndarray:
        indices = ndimage.distance_transform_edt(self.labels == 0, return_distances=False,
                                                 return_indices=True)
        return self.labels[tuple(indices)]

    def capsule_distance_mm(self, points_mm: np.ndarray) -> np.ndarray:
        """Signed distance (mm) to the capsule at each point, trilinear; NaN outside the grid."""
        ijk = self.world_to_voxel(points_mm)
        upper = np.array(self.labels.shape[::-1]) - 1
        inside_grid = np.all((ijk >= 0) & (ijk <= upper), axis=1)
        values = ndimage.map_coordinates(self.capsule_distance, ijk[:, ::-1].T, order=1,
                                         mode="nearest")
        return np.where(inside_grid, values, np.nan)

    def lobe_mask(self, lobe: int | str, include_isthmus: bool = False) -> np.ndarray:
        """Boolean volume, shape (nz, ny, nx), of one part of the gland."""
        parts = self.labels // 10
        mask = parts == part_name(lobe)
        return mask | (parts == ISTHMUS) if include_isthmus else mask

    def lobe_bounds_mm(self, lobe: int | str) -> np.ndarray:
        """Axis-aligned bounds of a part, shape (2, 3): rows are (min, max) x, y, z in mm."""
        k, j, i = np.nonzero(self.lobe_mask(lobe))
        ijk = np.stack([[i.min(), j.min(), k.min()], [i.max(), j.max(), k.max()]])
        return self.voxel_to_world(ijk)

    def section(self, lobe: int | str, view: str, level_mm: float, margin_mm: float = 5.0,
                include_isthmus: bool = False) -> Section:
        """Cross-section of one lobe as a 2D mask, laid out like an ultrasound image.

        Parameters
        ----------
        lobe : {"R", "L"} or int
            Which lobe.
        view : {"transverse", "longitudinal"}
            Transverse sections are axial planes ``z = level_mm``; longitudinal sections are
            sagittal planes ``x = level_mm``.
        level_mm : float
            Position of the plane in atlas mm.
        margin_mm : float
            Background margin around the lobe's extent.
        include_isthmus : bool
            Count isthmus voxels as part of the lobe (what an image of the lobe usually shows).

        Returns
        -------
        Section
            Mask on a grid with the atlas spacing; the grid covers the lobe's full extent in the
            plane's two directions, so sections at different levels share one layout.
        """
        part = part_name(lobe)
        check_number("level_mm", level_mm)
        check_number("margin_mm", margin_mm, low=0)
        bounds = self.lobe_bounds_mm(part)
        lo, hi = bounds[0] - margin_mm, bounds[1] + margin_mm
        if view == "transverse":
            row_dir, col_dir = np.array([0.0, 1.0, 0.0]), np.array([1.0, 0.0, 0.0])
            origin = np.array([lo[0], lo[1], level_mm])
            n_rows, n_cols = hi[1] - lo[1], hi[0] - lo[0]
        elif view == "longitudinal":
            row_dir, col_dir = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
            origin = np.array([level_mm, lo[1], hi[2]])
            n_rows, n_cols = hi[1] - lo[1], hi[2] - lo[2]
        else:
            raise InputError(f"unknown view {view!r}: expected transverse or longitudinal")
        shape = (int(n_rows / self.spacing_mm) + 1, int(n_cols / self.spacing_mm) + 1)
        rows, cols = np.indices(shape).reshape(2, -1)
        points = origin + self.spacing_mm * (rows[:, None] * row_dir + cols[:, None] * col_dir)
        parts = self.region_of(points) // 10
        selected = (parts == part) | ((parts == ISTHMUS) & include_isthmus)
        mask = (self.capsule_distance_mm(points) < 0) & selected
        return Section(mask.reshape(shape), origin, row_dir, col_dir, self.spacing_mm, view,
                       float(level_mm))

    # -- persistence --------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the atlas to a folder (atomically, file by file).

        Files: ``labels.nii.gz`` (uint8, NIfTI intent "label"), ``labels.ctbl`` and
        ``labels.itksnap.txt`` (region names and colours for 3D Slicer and ITK-SNAP),
        ``capsule_distance.nii.gz`` (float32, mm), ``capsule.stl`` (surface in atlas LPS mm),
        ``capsule.glb`` (the same surface Y-up, as ``llnm3d export`` writes it), ``atlas.json``
        (encoding, lobe axes, landmarks, provenance). Volumes carry origin, spacing and
        direction, so they open aligned in 3D Slicer and ITK-SNAP.
        """
        # export imports this module, so its glTF writer is imported here.
        from .export import export_capsule

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        labels_header = NiftiHeader(intent="label", intent_name="region",
                                    description="llnm3d atlas region labels (labels.ctbl)",
                                    display_range=(0.0, float(max(REGION_NAMES))))
        write_volume(path / "labels.nii.gz", self.labels.astype(np.uint8), self.origin_mm,
                     self.spacing_mm, labels_header)
        write_label_tables(path, REGION_NAMES, REGION_COLOURS)
        distance_header = NiftiHeader(intent_name="mm", description="llnm3d capsule distance, "
                                                                    "mm, negative inside")
        write_volume(path / "capsule_distance.nii.gz", self.capsule_distance.astype(np.float32),
                     self.origin_mm, self.spacing_mm, distance_header)
        with atomic_path(path / "capsule.stl") as tmp:
            self.surface.export(tmp, file_type="stl")
        export_capsule(self, path / "capsule.glb", spacing_mm=self.spacing_mm)
        write_json(path / "atlas.json", {
            "format": "llnm3d-atlas/1",
            "space": "atlas mm, LPS (+x left, +y posterior, +z superior), origin isthmus centre",
            "spacing_mm": self.spacing_mm,
            "region_labels": {str(k): v for k, v in REGION_NAMES.items()},
            "lobe_axes": {PART_NAMES[k]: v for k, v in self.lobe_axes.items()},
            "landmarks": self.landmarks,
            "metadata": self.metadata,
        })
        return path

    @classmethod
    def load(cls, path: str | Path) -> Atlas:
        """Read an atlas folder written by :meth:`save` (or a user's own with the same files).

        ``labels.nii.gz`` is required. Missing pieces are derived: the signed distance from the
        labels, the surface by marching cubes, lobe axes and thirds from the lobe labels (1 and 2
        suffice: a label map holding only parts 1/2/3 is split into thirds on load).
        """
        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: atlas folder not found")
        labels, origin, spacing = read_volume(path / "labels.nii.gz")
        labels = labels.astype(np.uint8)
        bare = labels.max() <= ISTHMUS  # parts only (1/2/3): thirds are derived below
        if bare:
            labels = labels * 10
        unknown = set(np.unique(labels)) - set(REGION_NAMES) - {0} - ({10, 20} if bare else set())
        if unknown:
            raise InputError(f"{path / 'labels.nii.gz'}: unknown region labels "
                             f"{sorted(int(v) for v in unknown)}")
        info = read_json(path / "atlas.json") if (path / "atlas.json").exists() else {}
        lobe_axes = {}
        for lobe in (RIGHT, LEFT):
            saved = None if bare else info.get("lobe_axes", {}).get(PART_NAMES[lobe])
            lobe_axes[lobe] = saved or _split_thirds(labels, lobe, Grid(labels.shape, origin,
                                                                         spacing))
        inside = labels > 0
        distance_file = path / "capsule_distance.nii.gz"
        if distance_file.exists():
            distance, d_origin, d_spacing = read_volume(distance_file)
            if distance.shape != labels.shape or not np.allclose(d_origin, origin) \
                    or not np.isclose(d_spacing, spacing):
                raise InputError(f"{distance_file}: grid differs from labels.nii.gz")
        else:
            distance = signed_distance_mm(inside, spacing)
        surface_file = path / "capsule.stl"
        if surface_file.exists():
            # force="mesh" makes load return one Trimesh (its stub says any geometry).
            surface = cast(trimesh.Trimesh, trimesh.load(surface_file, force="mesh"))
        else:
            surface = surface_from_field(distance, origin, spacing)
        return cls(labels=labels, capsule_distance=distance.astype(np.float32), origin_mm=origin,
                   spacing_mm=spacing, surface=surface, lobe_axes=lobe_axes,
                   landmarks=info.get("landmarks", {}), metadata=info.get("metadata", {}))


def _check_spacing(spacing_mm: float) -> float:
    return check_number("spacing_mm", spacing_mm, low=MIN_SPACING_MM, high=MAX_SPACING_MM)


def as_atlas(value: Atlas | str | Path | None) -> Atlas | None:
    """An :class:`Atlas` from what the API's ``atlas=`` parameters accept.

    Parameters
    ----------
    value : Atlas, path or None
        An atlas, the path of an atlas folder (read with :meth:`Atlas.load`), or None, which
        stays None so each caller keeps its own default.

    Raises
    ------
    InputError
        For anything else (e.g. an atlas name), naming the parameter, or an unreadable folder.
    """
    if value is None or isinstance(value, Atlas):
        return value
    if isinstance(value, (str, os.PathLike)):
        return Atlas.load(value)
    raise InputError(f"atlas must be an Atlas or the path of an atlas folder (from `llnm3d "
                     f"atlas`), got {type(value).__name__} {value!r:.60}")


def signed_distance_mm(inside: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Signed Euclidean distance (mm) to the boundary of a binary volume; negative inside.

    Voxel centres lie half a voxel from the boundary between an inside and an outside voxel, so
    half a voxel is taken off both sides: the zero level then sits on that boundary.
    """
    outside_dist = ndimage.distance_transform_edt(~inside, sampling=spacing_mm)
    inside_dist = ndimage.distance_transform_edt(inside, sampling=spacing_mm)
    half = spacing_mm / 2
    return np.where(inside, -(inside_dist - half), outside_dist - half).astype(np.float32)


def _split_thirds(labels: np.ndarray, lobe: int, grid: Grid) -> dict:
    """Relabel one lobe of ``labels`` (on ``grid``) into upper/middle/lower thirds in place;
    return its long axis.

    The long axis is the first principal axis of the lobe's voxels, oriented upwards; the lobe is
    cut into three equal lengths between its extreme projections on that axis.
    """
    k, j, i = np.nonzero(labels // 10 == lobe)
    if len(k) == 0:
        raise InputError(f"atlas has no {PART_NAMES[lobe]} lobe")
    points = grid.to_world(np.stack([i, j, k], axis=1))
    centre = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
    axis = vt[0] if vt[0][2] > 0 else -vt[0]
    proj = (points - centre) @ axis
    lo, hi = proj.min(), proj.max()
    third = np.clip(3 - np.floor((proj - lo) / (hi - lo) * 3).astype(int), 1, 3)
    labels[k, j, i] = (10 * lobe + third).astype(labels.dtype)
    return {"centre_mm": centre.tolist(), "axis": axis.tolist(),
            "length_range_mm": [float(lo), float(hi)]}


@functools.lru_cache(maxsize=4)
def _default_atlas(spacing_mm: float) -> Atlas:
    atlas = Atlas.from_shape(spacing_mm=spacing_mm)
    atlas.labels.setflags(write=False)
    atlas.capsule_distance.setflags(write=False)
    return atlas
