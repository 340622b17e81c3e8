"""The parametric canonical thyroid behind the default atlas.

The default atlas is built from a parametric model rather than from the published LLNM-Net point
set (``points.csv``). That point set was normalised per axis to a unitless cube, so its true
proportions are lost, and once its lobes are scaled to adult sizes its lower half is a 15 mm thick
horseshoe instead of an isthmus a few mm thick. The parametric model keeps the features of that
shape (two pear-shaped lobes whose upper poles diverge, an isthmus in front of the trachea at the
junction of the lower and middle thirds, a small pyramidal lobe rising left of the midline) with
adult dimensions from ultrasound anatomy:

========================  ==========  =====================================================
quantity                  default     note
========================  ==========  =====================================================
lobe length               50 mm       cranio-caudal, along the lobe's long axis (adult 40-60)
lobe width                17 mm       medio-lateral (adult 15-20)
lobe depth                16 mm       antero-posterior (adult 13-20)
lobe long-axis tilt       8 deg, 10   upper pole lateral by 8 deg and posterior by 10 deg
upper-pole taper          0.3         cross-section shrinks to 70 % at the upper pole
trachea radius            9.5 mm      cylinder along z, its centre 12 mm behind the isthmus
isthmus                   4 x 12 mm   antero-posterior thickness x cranio-caudal height
pyramidal lobe            14 mm       a 2.5 mm radius finger, 3 mm left of the midline
carotid arteries          3.5 mm      radius; lateral and posterior to each lobe
========================  ==========  =====================================================

Coordinates are atlas space: millimetres, LPS (+x patient left, +y posterior, +z superior),
origin at the centre of the isthmus. The gland is the zero level set of a smooth signed field
(:func:`gland_field_mm`): each part is an implicit primitive, joined by a smooth minimum so the
surface has no creases, and the trachea (plus a 0.5 mm gap) is carved out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RIGHT, LEFT, ISTHMUS = 1, 2, 3


@dataclass(frozen=True)
class ThyroidShape:
    """Dimensions of the parametric thyroid (all lengths in mm, angles in degrees)."""

    lobe_length_mm: float = 50.0
    lobe_width_mm: float = 17.0
    lobe_depth_mm: float = 16.0
    lobe_centre_x_mm: float = 19.5
    lobe_centre_y_mm: float = 9.0
    lobe_centre_z_mm: float = 8.0
    lobe_tilt_lateral_deg: float = 8.0
    lobe_tilt_posterior_deg: float = 10.0
    upper_pole_taper: float = 0.3
    trachea_radius_mm: float = 9.5
    trachea_gap_mm: float = 0.5
    isthmus_thickness_mm: float = 4.0
    isthmus_height_mm: float = 12.0
    isthmus_half_angle_deg: float = 62.0
    pyramidal_length_mm: float = 14.0
    pyramidal_radius_mm: float = 2.5
    pyramidal_x_mm: float = 3.0
    carotid_radius_mm: float = 3.5
    blend_mm: float = 2.5

    @property
    def trachea_centre_y_mm(self) -> float:
        """The isthmus ring is centred on the trachea and passes through the origin."""
        return self.trachea_radius_mm + self.trachea_gap_mm + self.isthmus_thickness_mm / 2

    def lobe_axis(self, lobe: int) -> np.ndarray:
        """Unit long axis (lower pole -> upper pole) of ``lobe`` (RIGHT or LEFT), shape (3,)."""
        side = 1.0 if lobe == LEFT else -1.0
        axis = np.array(
            [
                side * np.tan(np.radians(self.lobe_tilt_lateral_deg)),
                np.tan(np.radians(self.lobe_tilt_posterior_deg)),
                1.0,
            ]
        )
        return axis / np.linalg.norm(axis)

    def lobe_centre_mm(self, lobe: int) -> np.ndarray:
        side = 1.0 if lobe == LEFT else -1.0
        return np.array([side * self.lobe_centre_x_mm, self.lobe_centre_y_mm,
                         self.lobe_centre_z_mm])

    def landmarks(self) -> dict[str, dict]:
        """Structures around the gland used to simulate ultrasound (cylinders along z)."""
        carotid_x = self.lobe_centre_x_mm + self.lobe_width_mm / 2 + 6.0
        carotid_y = self.lobe_centre_y_mm + 4.0
        return {
            "trachea": {"centre_xy_mm": [0.0, self.trachea_centre_y_mm],
                        "radius_mm": self.trachea_radius_mm},
            "carotid_right": {"centre_xy_mm": [-carotid_x, carotid_y],
                              "radius_mm": self.carotid_radius_mm},
            "carotid_left": {"centre_xy_mm": [carotid_x, carotid_y],
                             "radius_mm": self.carotid_radius_mm},
        }

    def as_dict(self) -> dict:
        return asdict(self)


def _lobe_field(points: np.ndarray, shape: ThyroidShape, lobe: int) -> np.ndarray:
    """Approximate signed distance (mm) to a tapered ellipsoidal lobe; negative inside."""
    u = shape.lobe_axis(lobe)
    v = np.cross([0.0, 1.0, 0.0], u)
    v /= np.linalg.norm(v)
    w = np.cross(u, v)
    rel = points - shape.lobe_centre_mm(lobe)
    half_length = shape.lobe_length_mm / 2
    t = rel @ u / half_length
    taper = np.clip(1.0 - shape.upper_pole_taper * t, 0.2, None)
    a = shape.lobe_width_mm / 2 * taper
    b = shape.lobe_depth_mm / 2 * taper
    f = np.sqrt((rel @ v / a) ** 2 + (rel @ w / b) ** 2 + t**2)
    return (f - 1.0) * min(shape.lobe_width_mm, shape.lobe_depth_mm) / 2


def _isthmus_field(points: np.ndarray, shape: ThyroidShape) -> np.ndarray:
    """Signed distance-like field of a curved slab wrapped in front of the trachea."""
    x, y, z = points[:, 0], points[:, 1] - shape.trachea_centre_y_mm, points[:, 2]
    r = np.hypot(x, y)
    radial = np.abs(r - shape.trachea_centre_y_mm) - shape.isthmus_thickness_mm / 2
    angle = np.arctan2(np.abs(x), -y)
    angular = (angle - np.radians(shape.isthmus_half_angle_deg)) * r
    vertical = np.abs(z) - shape.isthmus_height_mm / 2
    return _smooth_max(_smooth_max(radial, angular, 2.0), vertical, 2.0)


def _pyramidal_field(points: np.ndarray, shape: ThyroidShape) -> np.ndarray:
    """Exact signed distance to a capsule rising from the top of the isthmus."""
    start = np.array([shape.pyramidal_x_mm, 0.0, shape.isthmus_height_mm / 2 - 2.0])
    end = start + np.array([0.8, 1.0, shape.pyramidal_length_mm])
    seg = end - start
    h = np.clip((points - start) @ seg / (seg @ seg), 0.0, 1.0)
    nearest = start + h[:, None] * seg
    radius = shape.pyramidal_radius_mm * (1.0 - 0.3 * h)
    return np.linalg.norm(points - nearest, axis=1) - radius


def _smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: union of two implicit solids with a fillet of size ``k``."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _smooth_max(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    return -_smooth_min(-a, -b, k)


def part_fields_mm(points_mm: np.ndarray, shape: ThyroidShape) -> np.ndarray:
    """Fields of the parts, shape (N, 3): right lobe, left lobe, isthmus (with pyramidal lobe)."""
    isthmus = _smooth_min(_isthmus_field(points_mm, shape), _pyramidal_field(points_mm, shape), 1.5)
    return np.stack(
        [_lobe_field(points_mm, shape, RIGHT), _lobe_field(points_mm, shape, LEFT), isthmus], axis=1
    )


def gland_field_mm(points_mm: np.ndarray, shape: ThyroidShape) -> tuple[np.ndarray, np.ndarray]:
    """Smooth signed field of the whole gland and the part each point belongs to.

    Parameters
    ----------
    points_mm : ndarray, shape (N, 3)
        Atlas (LPS) positions in mm.

    Returns
    -------
    field : ndarray, shape (N,)
        Negative inside the gland, zero on the capsule; approximately a distance in mm near the
        surface (the exact signed distance is computed from the voxelised gland afterwards).
    part : ndarray of int, shape (N,)
        1 right lobe, 2 left lobe, 3 isthmus: the part whose field is lowest.
    """
    parts = part_fields_mm(points_mm, shape)
    field = _smooth_min(_smooth_min(parts[:, 0], parts[:, 1], shape.blend_mm), parts[:, 2],
                        shape.blend_mm)
    tx, ty = points_mm[:, 0], points_mm[:, 1] - shape.trachea_centre_y_mm
    trachea = np.hypot(tx, ty) - (shape.trachea_radius_mm + shape.trachea_gap_mm)
    field = _smooth_max(field, -trachea, 0.5)
    return field, np.argmin(parts, axis=1) + 1
