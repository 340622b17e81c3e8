"""A regular isotropic voxel grid in atlas space: where its voxels are, and back.

Volumes are arrays indexed ``[k, j, i]`` (z, y, x); voxel coordinates ``(i, j, k)`` follow x,
y, z, and voxel ``(i, j, k)`` sits at ``origin_mm + spacing_mm * (i, j, k)`` (atlas mm, LPS).
The atlas, the statistics' maps, the registered patches and the exported fields all share this
convention through :class:`Grid`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def grid_step(spacing_mm: float, base_mm: float) -> int:
    """How many voxels of ``base_mm`` make about ``spacing_mm``: at least 1.

    Parameters
    ----------
    spacing_mm : float
        The length wanted (mm), e.g. the spacing of a coarser grid.
    base_mm : float
        The voxel size it is counted in (mm).

    Returns
    -------
    int
        ``max(1, round(spacing_mm / base_mm))``: keeping every that many voxels of a grid of
        ``base_mm`` gives a grid of about ``spacing_mm``, never finer than the grid itself.
    """
    return max(1, int(round(spacing_mm / base_mm)))


@dataclass(frozen=True, init=False)
class Grid:
    """A regular isotropic voxel grid.

    Attributes
    ----------
    shape : tuple of int, (nz, ny, nx)
        Array shape of a volume on the grid.
    origin_mm : tuple of float, (x, y, z)
        Atlas position (mm) of voxel (0, 0, 0).
    spacing_mm : float
        Voxel size (mm), the same along every axis.
    """

    shape: tuple[int, ...]
    origin_mm: tuple[float, ...]
    spacing_mm: float

    def __init__(self, shape: Iterable[int], origin_mm: npt.ArrayLike, spacing_mm: float):
        # Stored as plain Python numbers, so a grid compares, hashes and signs the same whatever
        # arrays or NumPy scalars it was made from (conversion to float is exact).
        shape = tuple(int(n) for n in shape)
        origin = tuple(float(o) for o in np.asarray(origin_mm).ravel())
        if len(shape) != 3 or len(origin) != 3:
            raise ValueError(f"a grid is 3D: shape {shape}, origin {origin}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "origin_mm", origin)
        object.__setattr__(self, "spacing_mm", float(spacing_mm))

    @classmethod
    def from_signature(cls, signature: dict) -> Grid:
        """The grid of a :meth:`signature` (as stored in patches and records)."""
        return cls(signature["shape_zyx"], signature["origin_mm"], signature["spacing_mm"])

    def signature(self) -> dict:
        """What identifies the grid in files and records: ``shape_zyx`` (list of int),
        ``origin_mm`` (list of float) and ``spacing_mm`` (float), JSON-ready."""
        return {"shape_zyx": list(self.shape), "origin_mm": list(self.origin_mm),
                "spacing_mm": self.spacing_mm}

    def voxel_coordinates(self, points_mm: npt.ArrayLike) -> np.ndarray:
        """Fractional voxel coordinates of atlas points.

        Parameters
        ----------
        points_mm : array_like, shape (N, 3) or (3,)
            Atlas positions (x, y, z) in mm.

        Returns
        -------
        ndarray of float64, shape (N, 3)
            ``(i, j, k)``; whole numbers at voxel centres.
        """
        points = np.atleast_2d(np.asarray(points_mm, dtype=float))
        return (points - np.asarray(self.origin_mm)) / self.spacing_mm

    def to_voxel(self, points_mm: npt.ArrayLike) -> np.ndarray:
        """Index of the voxel nearest each atlas point.

        Parameters
        ----------
        points_mm : array_like, shape (N, 3) or (3,)
            Atlas positions (x, y, z) in mm.

        Returns
        -------
        ndarray of int, shape (N, 3)
            ``(i, j, k)`` rounded half to even (``numpy.rint``); possibly off the grid (see
            :meth:`contains`).
        """
        return np.rint(self.voxel_coordinates(points_mm)).astype(int)

    def to_world(self, ijk: npt.ArrayLike) -> np.ndarray:
        """Atlas positions of voxel coordinates.

        Parameters
        ----------
        ijk : array_like, shape (N, 3) or (3,)
            Voxel coordinates ``(i, j, k)``, whole or fractional.

        Returns
        -------
        ndarray of float64, shape (N, 3)
            Atlas positions (x, y, z) in mm.
        """
        return np.asarray(self.origin_mm) + self.spacing_mm * np.atleast_2d(
            np.asarray(ijk, dtype=float))

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Atlas positions (mm) of the voxel centres along x, y and z: arrays of lengths
        nx, ny and nz."""
        nz, ny, nx = self.shape
        x, y, z = (self.origin_mm[d] + self.spacing_mm * np.arange(n)
                   for d, n in enumerate((nx, ny, nz)))
        return x, y, z

    def contains(self, points_mm: npt.ArrayLike) -> np.ndarray:
        """Whether the voxel nearest each atlas point is on the grid.

        Parameters
        ----------
        points_mm : array_like, shape (N, 3) or (3,)
            Atlas positions (x, y, z) in mm.

        Returns
        -------
        ndarray of bool, shape (N,)
            True where :meth:`to_voxel` gives a voxel of the grid (so points up to half a
            voxel beyond the outermost voxel centres count as on it).
        """
        return self._on_grid(self.to_voxel(points_mm))

    def sample(self, volume: np.ndarray, points_mm: npt.ArrayLike, fill: float = np.nan,
               dtype: npt.DTypeLike = np.float64) -> np.ndarray:
        """Value of a volume at the voxel nearest each atlas point (no interpolation).

        Parameters
        ----------
        volume : ndarray, shape :attr:`shape` (nz, ny, nx)
            A volume on this grid.
        points_mm : array_like, shape (N, 3) or (3,)
            Atlas positions (x, y, z) in mm.
        fill : float
            Value at points off the grid (NaN by default).
        dtype : dtype
            Type of the result (float64 by default, so NaN can mark points off the grid).

        Returns
        -------
        ndarray of ``dtype``, shape (N,)
        """
        ijk = self.to_voxel(points_mm)
        inside = self._on_grid(ijk)
        out = np.full(len(ijk), fill, dtype=dtype)
        i, j, k = ijk[inside].T
        out[inside] = volume[k, j, i]
        return out

    def subsampled(self, step: int) -> Grid:
        """The grid of every ``step``-th voxel along each axis, starting at voxel 0: the grid
        of ``volume[::step, ::step, ::step]`` (spacing ``step * spacing_mm``, same origin)."""
        if step < 1:
            raise ValueError(f"step must be at least 1, got {step}")
        shape = tuple(len(range(0, n, step)) for n in self.shape)
        return Grid(shape, self.origin_mm, self.spacing_mm * step)

    def _on_grid(self, ijk: np.ndarray) -> np.ndarray:
        return np.all((ijk >= 0) & (ijk < np.array(self.shape[::-1])), axis=1)
