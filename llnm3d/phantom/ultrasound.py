"""B-mode-like ultrasound images of a phantom patient, with thyroid and nodule masks.

A view is a plane through the patient's body laid out in the image conventions of
docs/conventions.md (:class:`ViewPlane`): the probe sits on the skin at the top row, depth runs
down the rows, transverse views show the patient's right on the image left, longitudinal views
cranial on the image left. Each pixel is mapped to the atlas through the patient's deformation
to decide what tissue it shows. The intensity model, in order:

- tissue echo level: skin (bright), subcutaneous fat, strap muscles (dark, striated), thyroid
  parenchyma (bright, homogeneous), nodules by echogenicity (hyperechoic brighter than the
  parenchyma, isoechoic about equal, hypoechoic darker, very hypoechoic darker than the strap
  muscles) with low-frequency internal texture, punctate echogenic foci for microcalcifications;
- the carotid artery: anechoic lumen, bright wall, posterior acoustic enhancement;
- the trachea: a bright curved ring at the air interface, an acoustic shadow below it, and
  fading reverberation bands at multiples of the interface's depth;
- multiplicative speckle (Rayleigh amplitude of correlated complex Gaussian noise, longer
  laterally than axially), depth attenuation, log-like compression to 8 bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from scipy import ndimage

from ..atlas import Atlas
from .deform import PatientDeformation
from .nodules import Nodule

NODULE_ECHO = {"hyperechoic": 0.95, "isoechoic": 0.72, "hypoechoic": 0.42, "very_hypoechoic": 0.16}
PARENCHYMA_ECHO = 0.72
_COARSE_STEP_PX = 8


@dataclass(frozen=True)
class ViewPlane:
    """Geometry of one image in the patient's body (mm).

    ``origin_mm`` is the centre of pixel [0, 0]; ``row_dir`` and ``col_dir`` are unit vectors of
    increasing row and column; pixels are square with side ``spacing_mm``.
    """

    view: str
    origin_mm: tuple[float, float, float]
    row_dir: tuple[float, float, float]
    col_dir: tuple[float, float, float]
    spacing_mm: float
    shape: tuple[int, int]

    @classmethod
    def through(cls, view: str, centre_mm: np.ndarray, skin_y_mm: float, spacing_mm: float,
                shape: tuple[int, int], lateral_offset_mm: float) -> ViewPlane:
        """Plane of ``view`` through ``centre_mm`` with the probe on the skin at ``skin_y_mm``;
        the image centre is shifted sideways by ``lateral_offset_mm`` from the point."""
        half_width = (shape[1] - 1) / 2 * spacing_mm
        if view == "transverse":
            col_dir = (1.0, 0.0, 0.0)
            origin = (centre_mm[0] + lateral_offset_mm - half_width, skin_y_mm, centre_mm[2])
        elif view == "longitudinal":
            col_dir = (0.0, 0.0, -1.0)
            origin = (centre_mm[0], skin_y_mm, centre_mm[2] + lateral_offset_mm + half_width)
        else:
            raise ValueError(f"unknown view {view!r}")
        # An image's 2D shape (callers may pass a list).
        size = cast("tuple[int, int]", tuple(shape))
        return cls(view, (float(origin[0]), float(origin[1]), float(origin[2])), (0.0, 1.0, 0.0),
                   col_dir, float(spacing_mm), size)

    def pixel_points(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Patient positions (mm), shape (N, 3), of pixel indices."""
        return (np.asarray(self.origin_mm) + self.spacing_mm * (
            np.ravel(rows)[:, None] * np.asarray(self.row_dir)
            + np.ravel(cols)[:, None] * np.asarray(self.col_dir)))

    def as_dict(self) -> dict:
        return {"view": self.view, "origin_mm": list(self.origin_mm),
                "row_dir": list(self.row_dir), "col_dir": list(self.col_dir),
                "spacing_mm": self.spacing_mm, "shape": list(self.shape)}


def _upsample_weights(n_out: int, n_nodes: int) -> np.ndarray:
    """Linear-interpolation matrix, shape (n_out, n_nodes), from evenly spaced nodes spanning
    the same extent as ``n_out`` pixels."""
    position = np.linspace(0, n_nodes - 1, n_out)
    lower = np.minimum(np.floor(position).astype(int), n_nodes - 2)
    frac = position - lower
    weights = np.zeros((n_out, n_nodes))
    weights[np.arange(n_out), lower] = 1 - frac
    weights[np.arange(n_out), lower + 1] = frac
    return weights


def _atlas_coordinates(plane: ViewPlane, deformation: PatientDeformation) -> np.ndarray:
    """Atlas position of every pixel, shape (H, W, 3).

    The deformation is smooth on the scale of many pixels, so it is evaluated on a coarse grid
    of nodes and interpolated bilinearly (error far below a pixel), which keeps rendering fast.
    """
    height, width = plane.shape
    n_rows, n_cols = (height - 1) // _COARSE_STEP_PX + 2, (width - 1) // _COARSE_STEP_PX + 2
    rr, cc = np.meshgrid(np.linspace(0, height - 1, n_rows), np.linspace(0, width - 1, n_cols),
                         indexing="ij")
    nodes = deformation.to_atlas(plane.pixel_points(rr, cc)).reshape(n_rows, n_cols, 3)
    return np.einsum("hr,rcd,wc->hwd", _upsample_weights(height, n_rows), nodes,
                     _upsample_weights(width, n_cols), optimize=True)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: int) -> np.ndarray:
    """Unit-variance smooth random field with features about ``scale_px`` pixels across."""
    nodes = rng.normal(size=(shape[0] // scale_px + 2, shape[1] // scale_px + 2))
    field = _upsample_weights(shape[0], nodes.shape[0]) @ nodes @ _upsample_weights(
        shape[1], nodes.shape[1]).T
    return (field - field.mean()) / (field.std() + 1e-9)


def _below(mask: np.ndarray) -> np.ndarray:
    """Pixels deeper than (further down the rows from) any pixel of ``mask`` in their column."""
    return np.maximum.accumulate(mask, axis=0) & ~mask


def _reverberation(wall: np.ndarray, depth_mm: np.ndarray) -> np.ndarray:
    """Fading bright bands behind an air interface, repeating at the interface's depth (the
    echo bouncing between probe and air)."""
    has_wall = wall.any(axis=0)
    wall_depth = np.where(has_wall, depth_mm[np.argmax(wall, axis=0), 0], 1e9)
    bounces = depth_mm / wall_depth
    band = np.abs(bounces - np.round(bounces)) * wall_depth < 0.4
    return np.where(band & (bounces > 1.5), 0.5 / np.maximum(bounces, 1.0), 0.0)


def render_view(plane: ViewPlane, atlas: Atlas, deformation: PatientDeformation,
                nodules: list[Nodule], target: Nodule, rng: np.random.Generator,
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate one B-mode image.

    Returns
    -------
    image : ndarray of uint8, shape (H, W)
    thyroid_mask : ndarray of bool, shape (H, W)
        The whole gland (any part) in the plane.
    nodule_mask : ndarray of bool, shape (H, W)
        The ``target`` nodule only (other nodules in the plane show in the image, unmasked).
    """
    height, width = plane.shape
    rows, cols = np.indices(plane.shape)
    atlas_xyz = _atlas_coordinates(plane, deformation)
    distance = atlas.capsule_distance_mm(atlas_xyz.reshape(-1, 3)).reshape(plane.shape)
    thyroid = np.nan_to_num(distance, nan=1.0) < 0
    depth_mm = rows * plane.spacing_mm

    echo = np.full(plane.shape, 0.42)
    echo[depth_mm < 4.0] = 0.5
    muscle = (depth_mm >= 4.0) & (depth_mm < 7.0)
    echo[muscle] = 0.28 + 0.06 * np.sin(depth_mm[muscle] * 9.0)
    echo[depth_mm < 1.2] = 0.9
    echo[thyroid] = PARENCHYMA_ECHO

    texture = _smooth_noise(rng, plane.shape, 16)
    nodule_mask = np.zeros(plane.shape, bool)
    normal = np.cross(plane.row_dir, plane.col_dir)
    for nodule in nodules:
        # Only pixels within the nodule's bounding sphere can be inside it.
        offset = nodule.centre_mm - np.asarray(plane.origin_mm)
        reach = nodule.bounding_radius_mm()
        if abs(offset @ normal) > reach:
            continue
        r0 = offset @ np.asarray(plane.row_dir) / plane.spacing_mm
        c0 = offset @ np.asarray(plane.col_dir) / plane.spacing_mm
        window = (np.abs(rows - r0) <= reach / plane.spacing_mm + 1) & (
            np.abs(cols - c0) <= reach / plane.spacing_mm + 1)
        inside = np.zeros(plane.shape, bool)
        inside[window] = nodule.contains(plane.pixel_points(rows[window], cols[window]))
        inside &= thyroid
        echo[inside] = NODULE_ECHO[nodule.echogenicity] * (1 + 0.12 * texture[inside])
        if nodule is target:
            nodule_mask = inside
        if len(nodule.calcifications_mm):
            offset = (nodule.calcifications_mm - np.asarray(plane.origin_mm))
            near = np.abs(offset @ normal) < 0.5
            for point in offset[near]:
                r = point @ np.asarray(plane.row_dir) / plane.spacing_mm
                c = point @ np.asarray(plane.col_dir) / plane.spacing_mm
                spot = (rows - r) ** 2 + (cols - c) ** 2 < (0.25 / plane.spacing_mm) ** 2
                echo[spot] = 1.6

    for name, structure in atlas.landmarks.items():
        cx, cy = structure["centre_xy_mm"]
        radius = structure["radius_mm"]
        dist = np.hypot(atlas_xyz[..., 0] - cx, atlas_xyz[..., 1] - cy) - radius
        if name.startswith("carotid"):
            lumen = dist < 0
            echo[_below(lumen)] *= 1.35
            echo[(dist >= 0) & (dist < 0.6)] = 0.9
            echo[lumen] = 0.02
        elif name == "trachea":
            wall = (np.abs(dist) < 0.8) & (atlas_xyz[..., 1] < cy)
            shadow = _below(wall)
            echo[shadow] = 0.05 + _reverberation(wall, depth_mm)[shadow]
            echo[wall] = 1.4

    field = rng.normal(size=(2, height, width))
    field = ndimage.gaussian_filter(field, (0, 0.8, 1.6))
    speckle = np.hypot(field[0], field[1])
    speckle /= speckle.mean()
    attenuation = np.exp(-0.012 * depth_mm)
    intensity = np.clip(echo * speckle * attenuation / 1.6, 0.0, 1.0) ** 0.75
    image = np.round(255 * intensity).astype(np.uint8)
    return image, thyroid, nodule_mask
