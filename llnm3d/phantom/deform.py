"""Each phantom patient's thyroid: the atlas under a random smooth deformation.

The truth of a phantom patient is the mapping :meth:`PatientDeformation.to_atlas` from the
patient's own body coordinates (mm, LPS, roughly centred on the isthmus) to atlas space. It is
the composition of

1. a global scale (gland size, default +-15 %) and a small rotation (default up to 5 degrees
   about the z and x axes),
2. a per-lobe anisotropic scale about each lobe's centre (default +-10 % per axis), blended
   across the midline over a few mm so the isthmus never tears,
3. a gentle nonlinear warp: a sum of three plane sine waves of 0.8 mm amplitude and 40-70 mm
   wavelength (its Jacobian stays within about 0.6-1.4, so the map is invertible).

The parameters are plain numbers so truth.json can store them and validation code can rebuild
the mapping with :meth:`PatientDeformation.from_dict`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import cast

import numpy as np

_MIDLINE_BLEND_MM = 3.0


@dataclass(frozen=True)
class PatientDeformation:
    """Parameters of one patient's patient->atlas mapping (lengths in mm, angles in degrees)."""

    global_scale: float
    rotation_z_deg: float
    rotation_x_deg: float
    right_scale: tuple[float, float, float]
    left_scale: tuple[float, float, float]
    right_centre_mm: tuple[float, float, float]
    left_centre_mm: tuple[float, float, float]
    warp_amplitude_mm: tuple[tuple[float, float, float], ...]
    warp_wavevector_per_mm: tuple[tuple[float, float, float], ...]
    warp_phase: tuple[float, ...]

    @classmethod
    def random(cls, rng: np.random.Generator, lobe_centres_mm: dict[int, np.ndarray],
               global_scale_range: float = 0.15, lobe_scale_range: float = 0.10,
               rotation_deg: float = 5.0, warp_amplitude_mm: float = 0.8) -> PatientDeformation:
        """Draw a deformation; ``lobe_centres_mm`` maps 1 (right) and 2 (left) to atlas centres."""
        amplitudes, wavevectors = [], []
        for _ in range(3):
            direction = rng.normal(size=3)
            wavelength = rng.uniform(40.0, 70.0)
            wavevectors.append(direction / np.linalg.norm(direction) * 2 * np.pi / wavelength)
            amplitude = rng.normal(size=3)
            amplitudes.append(amplitude / np.linalg.norm(amplitude) * warp_amplitude_mm)
        return cls(
            global_scale=float(rng.uniform(1 - global_scale_range, 1 + global_scale_range)),
            rotation_z_deg=float(rng.uniform(-rotation_deg, rotation_deg)),
            rotation_x_deg=float(rng.uniform(-rotation_deg, rotation_deg)),
            right_scale=_floats(rng.uniform(1 - lobe_scale_range, 1 + lobe_scale_range, 3)),
            left_scale=_floats(rng.uniform(1 - lobe_scale_range, 1 + lobe_scale_range, 3)),
            right_centre_mm=_floats(lobe_centres_mm[1]),
            left_centre_mm=_floats(lobe_centres_mm[2]),
            warp_amplitude_mm=tuple(_floats(a) for a in amplitudes),
            warp_wavevector_per_mm=tuple(_floats(w) for w in wavevectors),
            warp_phase=_floats(rng.uniform(0, 2 * np.pi, 3)),
        )

    @classmethod
    def from_dict(cls, data: dict) -> PatientDeformation:
        return cls(**{k: _tuples(v) for k, v in data.items()})

    def as_dict(self) -> dict:
        return asdict(self)

    def _rotation(self) -> np.ndarray:
        z, x = np.radians(self.rotation_z_deg), np.radians(self.rotation_x_deg)
        rz = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
        return rz @ rx

    def to_atlas(self, points_mm: np.ndarray) -> np.ndarray:
        """Map patient points (mm), shape (N, 3), to atlas space (mm), shape (N, 3)."""
        q = np.atleast_2d(points_mm) @ self._rotation() / self.global_scale
        left = 1.0 / (1.0 + np.exp(-q[:, :1] / _MIDLINE_BLEND_MM))
        for weight, scale, centre in ((1 - left, self.right_scale, self.right_centre_mm),
                                      (left, self.left_scale, self.left_centre_mm)):
            q = q + weight * (q - centre) * (1.0 / np.asarray(scale) - 1.0)
        phases = q @ np.asarray(self.warp_wavevector_per_mm).T + np.asarray(self.warp_phase)
        return q + np.sin(phases) @ np.asarray(self.warp_amplitude_mm)

    def to_patient(self, atlas_points_mm: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Inverse of :meth:`to_atlas` by fixed-point iteration (converges: the map is close to
        a similarity); accurate to well below 1e-6 mm."""
        target = np.atleast_2d(atlas_points_mm).astype(float)
        linear = self.global_scale * self._rotation()
        points = target @ linear.T
        for _ in range(iterations):
            residual = target - self.to_atlas(points)
            points = points + residual @ linear.T
            if np.max(np.abs(residual)) < 1e-9:
                break
        return points


def _floats(values) -> tuple[float, float, float]:
    # Every caller passes an xyz vector; the length is not checked (as ever).
    return cast("tuple[float, float, float]", tuple(float(v) for v in values))


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value
