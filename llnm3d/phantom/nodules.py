"""Phantom nodules: attributes, 3D shape in the patient, placement inside a lobe, report text.

Attribute distributions (independent of position, so spatial effects in a risk spec are not
confounded by morphology):

=====================  ===============================================================
attribute              distribution
=====================  ===============================================================
longest diameter       log-normal, median 6 mm (LLNM-Net cohort: 6.3 mm), sigma 0.45,
                       clipped to 3-20 mm; shrunk (by 15 % steps, down to 3 mm) when a
                       nodule does not fit; a further nodule that never fits is dropped
echogenicity           hyperechoic 10 %, isoechoic 25 %, hypoechoic 50 %, very hypoechoic 15 %
margin                 smooth 55 %, lobulated 25 %, irregular 20 %
taller than wide       25 % (antero-posterior axis 1.05-1.4 x the transverse axis)
microcalcification     30 % (2-12 punctate echogenic foci, about one per mm of diameter)
=====================  ===============================================================

A nodule is an ellipsoid in the patient's body (semi-axes along x, y, z, then turned about z by
up to 20 degrees) whose radius is modulated by direction for lobulated (few, broad lobes) and
irregular (many fine spikes) margins. It is placed uniformly at random in a lobe, in atlas space,
and kept only if it lies wholly inside the patient's gland and clear of the patient's other
nodules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..atlas import PART_NAMES, THIRD_NAMES, Atlas
from .deform import PatientDeformation

ECHOGENICITY = {"hyperechoic": 0.10, "isoechoic": 0.25, "hypoechoic": 0.50, "very_hypoechoic": 0.15}
MARGIN = {"smooth": 0.55, "lobulated": 0.25, "irregular": 0.20}
TALLER_THAN_WIDE_RATE = 0.25
MICROCALCIFICATION_RATE = 0.30
_MARGIN_WAVES = {"smooth": (0, 0.0, 0.0), "lobulated": (3, 2.5, 0.10), "irregular": (9, 7.0, 0.05)}


@dataclass
class Nodule:
    """One phantom nodule. Positions in mm: ``centre_mm`` in the patient, ``atlas_centre_mm`` in
    the atlas; ``semi_axes_mm`` along the nodule's own axes (x, y, z before the z rotation)."""

    nodule_id: int
    side: str
    centre_mm: np.ndarray
    atlas_centre_mm: np.ndarray
    semi_axes_mm: np.ndarray
    rotation_z_deg: float
    echogenicity: str
    margin: str
    taller_than_wide: bool
    microcalcification: bool
    margin_waves: dict = field(default_factory=dict)
    calcifications_mm: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    capsule_distance_mm: float = 0.0
    centre_capsule_distance_mm: float = 0.0
    region: int = 0

    @property
    def diameter_mm(self) -> float:
        return float(2 * self.semi_axes_mm.max())

    def _rotation(self) -> np.ndarray:
        a = np.radians(self.rotation_z_deg)
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])

    def radius_scale(self, directions: np.ndarray) -> np.ndarray:
        """Radius multiplier (1 for a smooth ellipsoid) for unit directions, shape (N, 3)."""
        scale = np.ones(len(directions))
        for axis, freq, amp, phase in zip(self.margin_waves.get("axes", []),
                                          self.margin_waves.get("frequencies", []),
                                          self.margin_waves.get("amplitudes", []),
                                          self.margin_waves.get("phases", []), strict=True):
            scale += amp * np.cos(freq * directions @ np.asarray(axis) + phase)
        return scale

    def bounding_radius_mm(self) -> float:
        """Radius of a sphere about the centre that holds the whole nodule."""
        return float(self.semi_axes_mm.max() * (1 + sum(self.margin_waves.get("amplitudes", []))))

    def contains(self, points_mm: np.ndarray) -> np.ndarray:
        """Whether patient points (mm), shape (N, 3), lie inside the nodule."""
        local = (np.atleast_2d(points_mm) - self.centre_mm) @ self._rotation() / self.semi_axes_mm
        radius = np.linalg.norm(local, axis=1)
        directions = local / np.maximum(radius, 1e-9)[:, None]
        return radius <= self.radius_scale(directions)

    def surface_points(self, n: int = 400) -> np.ndarray:
        """Points on the nodule's surface in the patient (mm), shape (n, 3) (Fibonacci sphere)."""
        i = np.arange(n) + 0.5
        polar = np.arccos(1 - 2 * i / n)
        azimuth = np.pi * (1 + 5**0.5) * i
        directions = np.stack([np.cos(azimuth) * np.sin(polar), np.sin(azimuth) * np.sin(polar),
                               np.cos(polar)], axis=1)
        local = directions * self.radius_scale(directions)[:, None] * self.semi_axes_mm
        return local @ self._rotation().T + self.centre_mm

    def third_name(self) -> str:
        return THIRD_NAMES.get(self.region % 10, "isthmus")


def _choice(rng: np.random.Generator, table: dict[str, float]) -> str:
    return str(rng.choice(list(table), p=list(table.values())))


def sample_nodules(rng: np.random.Generator, atlas: Atlas, deformation: PatientDeformation,
                   lobe_points: dict[str, np.ndarray], max_nodules: int = 3) -> list[Nodule]:
    """Draw one to ``max_nodules`` nodules for a patient (1 + Poisson(0.4), capped).

    ``lobe_points`` maps "R" and "L" to atlas voxel centres (mm) of each lobe, from which centres
    are drawn uniformly.
    """
    count = min(1 + rng.poisson(0.4), max_nodules)
    nodules: list[Nodule] = []
    for nodule_id in range(1, count + 1):
        nodule = _sample_one(rng, atlas, deformation, lobe_points, nodule_id, nodules)
        if nodule is None:
            if not nodules:
                raise RuntimeError("could not place a nodule in either lobe")
            break  # the lobes are full: this patient keeps the nodules placed so far
        nodules.append(nodule)
    return nodules


def _sample_one(rng, atlas, deformation, lobe_points, nodule_id, others) -> Nodule | None:
    """One nodule placed wholly inside the gland and clear of ``others``; None if none fits
    after shrinking it down to 3 mm."""
    side = "R" if rng.random() < 0.5 else "L"
    diameter = float(np.clip(6.0 * np.exp(0.45 * rng.normal()), 3.0, 20.0))
    taller = bool(rng.random() < TALLER_THAN_WIDE_RATE)
    ap_ratio = rng.uniform(1.05, 1.4) if taller else rng.uniform(0.6, 0.95)
    cc_ratio = rng.uniform(0.9, 1.5)
    margin = _choice(rng, MARGIN)
    n_waves, freq, amp = _MARGIN_WAVES[margin]
    axes = rng.normal(size=(n_waves, 3))
    waves = {
        "axes": (axes / np.linalg.norm(axes, axis=1, keepdims=True)).tolist(),
        "frequencies": rng.uniform(0.7 * freq, 1.3 * freq, n_waves).tolist(),
        "amplitudes": rng.uniform(0.5 * amp, amp, n_waves).tolist(),
        "phases": rng.uniform(0, 2 * np.pi, n_waves).tolist(),
    }
    nodule = Nodule(
        nodule_id=nodule_id, side=side, centre_mm=np.zeros(3), atlas_centre_mm=np.zeros(3),
        semi_axes_mm=np.zeros(3), rotation_z_deg=float(rng.uniform(-20, 20)),
        echogenicity=_choice(rng, ECHOGENICITY), margin=margin, taller_than_wide=taller,
        microcalcification=bool(rng.random() < MICROCALCIFICATION_RATE), margin_waves=waves,
    )
    points = lobe_points[side]
    for attempt in range(400):
        if attempt and attempt % 25 == 0:
            diameter = max(3.0, diameter * 0.85)
        # diameter is the longest axis: scale the three semi-axes so their maximum is d/2.
        ratios = np.array([1.0, ap_ratio, cc_ratio])
        nodule.semi_axes_mm = ratios / ratios.max() * diameter / 2
        nodule.atlas_centre_mm = points[rng.integers(len(points))] + rng.uniform(
            -atlas.spacing_mm / 2, atlas.spacing_mm / 2, 3)
        nodule.centre_mm = deformation.to_patient(nodule.atlas_centre_mm)[0]
        if any(np.linalg.norm(nodule.centre_mm - o.centre_mm) < (nodule.diameter_mm + o.diameter_mm)
               / 2 + 1.0 for o in others):
            continue
        surface_distance = atlas.capsule_distance_mm(
            deformation.to_atlas(nodule.surface_points()))
        if np.all(surface_distance < -0.25):
            nodule.capsule_distance_mm = float(-surface_distance.max())
            nodule.centre_capsule_distance_mm = float(
                -atlas.capsule_distance_mm(nodule.atlas_centre_mm[None])[0])
            nodule.region = int(atlas.region_of(nodule.atlas_centre_mm[None])[0])
            if nodule.microcalcification:
                # about one focus per mm of diameter: a few in a small nodule, up to 12
                count = int(np.clip(round(diameter * rng.uniform(0.4, 1.0)), 2, 12))
                local = rng.uniform(-0.7, 0.7, (count, 3)) * nodule.semi_axes_mm
                nodule.calcifications_mm = local @ nodule._rotation().T + nodule.centre_mm
            return nodule
    return None


def tirads_points(nodule: Nodule) -> int:
    """ACR TI-RADS points (composition solid = 2 for every phantom nodule)."""
    echo = {"hyperechoic": 1, "isoechoic": 1, "hypoechoic": 2, "very_hypoechoic": 3}
    margin = {"smooth": 0, "lobulated": 2, "irregular": 2}
    return (2 + echo[nodule.echogenicity] + 3 * nodule.taller_than_wide + margin[nodule.margin]
            + 3 * nodule.microcalcification)


def tirads_level(points: int) -> int:
    """ACR TI-RADS category TR1-TR5 from points."""
    return 1 if points == 0 else 2 if points <= 2 else 3 if points == 3 else 4 if points <= 6 else 5


def report_text(nodule: Nodule) -> str:
    """Radiology-style sentence for a nodule, in TI-RADS vocabulary."""
    side = PART_NAMES[1 if nodule.side == "R" else 2]
    margin = {"smooth": "smooth", "lobulated": "lobulated", "irregular": "ill-defined irregular"}
    parts = [f"{side.capitalize()} lobe, {nodule.third_name()} third: "
             f"{nodule.diameter_mm:.0f} mm solid {nodule.echogenicity.replace('_', ' ')} nodule "
             f"with {margin[nodule.margin]} margins"]
    if nodule.taller_than_wide:
        parts.append("taller than wide")
    parts.append("punctate echogenic foci (microcalcifications)" if nodule.microcalcification
                 else "no echogenic foci")
    points = tirads_points(nodule)
    return ", ".join(parts) + f". ACR TI-RADS TR{tirads_level(points)} ({points} points)."
