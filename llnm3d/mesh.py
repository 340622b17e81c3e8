"""Triangle surfaces from volumes: marching cubes, smoothing, orientation checks."""

from __future__ import annotations

import numpy as np
import trimesh
from scipy import ndimage
from skimage import measure


def surface_from_field(field_zyx: np.ndarray, origin_mm: np.ndarray, spacing_mm: float,
                       level: float = 0.0, smoothing_iterations: int = 10,
                       presmooth_voxels: float = 1.0) -> trimesh.Trimesh:
    """Closed surface of the region ``field < level`` of a volume, in mm.

    Parameters
    ----------
    field_zyx : ndarray, shape (nz, ny, nx)
        A smooth field, below ``level`` inside the object (e.g. a signed distance in mm).
    origin_mm : ndarray, shape (3,)
        Position (x, y, z) of voxel (0, 0, 0).
    spacing_mm : float
        Voxel size.
    level : float
        Iso-value of the surface.
    smoothing_iterations : int
        Taubin (volume-preserving) smoothing passes applied after marching cubes.
    presmooth_voxels : float
        Gaussian sigma (voxels) applied to the field first; removes the staircase of a field
        computed from a binary mask while moving a smooth surface by a small fraction of a voxel.

    Returns
    -------
    trimesh.Trimesh
        Watertight, consistently wound mesh with outward normals, vertices in (x, y, z) mm.
    """
    if presmooth_voxels:
        field_zyx = ndimage.gaussian_filter(field_zyx.astype(np.float32), presmooth_voxels)
    # Pad with an outside value so objects touching the grid border still close.
    padded = np.pad(field_zyx, 1, mode="constant", constant_values=max(field_zyx.max(), level + 1))
    verts_zyx, faces, _, _ = measure.marching_cubes(padded, level=level, spacing=(spacing_mm,) * 3)
    verts = verts_zyx[:, ::-1] - spacing_mm + np.asarray(origin_mm)
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    if smoothing_iterations:
        trimesh.smoothing.filter_taubin(mesh, iterations=smoothing_iterations)
    if mesh.volume < 0:
        mesh.invert()
    return mesh
