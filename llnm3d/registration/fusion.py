"""One nodule: its two views registered consistently, then fused into a 3D patch in atlas space.

Which sections? The longitudinal view says how far up the lobe the nodule sits (the z of the
axial plane the transverse view cut); the transverse view says how far medial or lateral (the
x of the sagittal plane the longitudinal view cut). :func:`register_nodule` starts both at the
lobe's centre, registers the longitudinal view, moves the transverse plane to the nodule's z,
registers it, moves the longitudinal plane to the nodule's x, and so on until both levels move
less than ``tolerance_mm`` (at most ``max_rounds`` rounds).

Fusion rule (:func:`fuse_views`). Each view is back-projected along its missing axis: the
transverse view gives a value for every (x, y), the same for all z; the longitudinal view one
for every (z, y), the same for all x. The fused heatmap is their geometric mean restricted to the
gland, ``sqrt(H_t(x, y) * H_l(z, y))`` where the capsule distance is negative, so a voxel is
salient only when both views agree. The fused nodule is the intersection of the two
back-projected nodule masks (the nodule's visual hull from two orthogonal views). Both views see
the nodule's depth (y); before fusing, each view's back-projection is moved along y by half
their disagreement so that both put the nodule at the fused centre's depth (the disagreement is
reported in the QC table). Values below ``min_weight`` are dropped so patches stay sparse.

With one view the missing axis is spread by a prior: a Gaussian centred on the lobe's centre
along that axis with a standard deviation of a quarter of the lobe's extent (over the gland
only) for the heatmap, and the nodule's in-plane equivalent diameter for the mask. Such
nodules are flagged in the QC table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from ..atlas import Atlas, part_name
from ..checks import check_number
from ..grid import Grid
from .views import RegistrationError, ViewImage, ViewRegistration, register_view

_AXIS = {"transverse": 2, "longitudinal": 0}  # atlas axis (x, y, z order) a view's level fixes
PRIOR_SIGMA_FRACTION = 0.25
# Working resolution of the registrations (never finer than the atlas). Measured on 300
# phantom nodules: registering at 1.5 mm, or refining at 1.0, 0.75 or 0.5 mm afterwards, gives
# the same centre errors within 0.02 mm (the deformation a similarity cannot follow dominates);
# refining at 0.5 mm costs 1.7x the time.
WORKING_STEP_MM = 1.5
# A view moved to a section further than this from the last one is registered afresh.
WARM_START_MM = 3.0


@dataclass
class Patch:
    """A nodule's evidence in atlas space on a box of the atlas grid.

    Attributes
    ----------
    start_zyx : ndarray of int, shape (3,)
        Atlas voxel index (k, j, i) of the box's first voxel.
    mask : ndarray of bool, shape (nz, ny, nx)
        Fused nodule occupancy.
    heatmap : ndarray of float16, shape (nz, ny, nx), or None
        Fused saliency 0..1 (None when registered without heatmaps). Half precision (3
        significant digits) is ample for a weight and halves the size of a patch on disk.
    grid : Grid
        The atlas grid the box indexes.
    """

    start_zyx: np.ndarray
    mask: np.ndarray
    heatmap: np.ndarray | None
    grid: Grid

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index of the box in an atlas-shaped array."""
        # A patch is 3D: start_zyx and the mask's shape have three items.
        return cast("tuple[slice, slice, slice]",
                    tuple(slice(int(s), int(s) + n)
                          for s, n in zip(self.start_zyx, self.mask.shape, strict=True)))

    def to_dense(self, which: str = "mask") -> np.ndarray:
        """The patch pasted into a zero atlas-shaped volume (float32)."""
        volume = np.zeros(self.grid.shape, np.float32)
        volume[self.slices] = self.mask if which == "mask" else self.heatmap
        return volume


@dataclass
class NoduleRegistration:
    """Both views' registrations and the nodule's estimated centre.

    Attributes
    ----------
    views : dict of str -> ViewRegistration
    centre_mm : ndarray, shape (3,)
        Estimated nodule centre in atlas mm.
    rounds : int
        Alternations between the views.
    converged : bool
        Both levels moved less than the tolerance in the last round.
    prior_axis : str or None
        The axis spread by the prior when a view is missing ("z" or "x").
    depth_mm : dict of str -> float
        Each view's own estimate of the nodule centre's y (front-back); both views see it, and
        the fused centre takes their mean.
    """

    views: dict[str, ViewRegistration]
    centre_mm: np.ndarray
    rounds: int
    converged: bool
    prior_axis: str | None = None
    depth_mm: dict[str, float] = field(default_factory=dict)

    @property
    def depth_gap_mm(self) -> float:
        """How far apart the two views put the nodule front-to-back (0 with one view)."""
        values = list(self.depth_mm.values())
        return float(max(values) - min(values)) if values else 0.0


def _centre_in_view(image: ViewImage, registration: ViewRegistration) -> np.ndarray:
    u, v = image.nodule_centroid_mm()
    return registration.image_to_atlas(v / image.pixel_mm, u / image.pixel_mm)[0]


def register_nodule(images: dict[str, ViewImage], atlas: Atlas, side: int | str,
                    transform: str = "similarity", max_rounds: int = 4,
                    tolerance_mm: float = 0.25, step_mm: float | None = None
                    ) -> NoduleRegistration:
    """Register a nodule's views (``{"transverse": ..., "longitudinal": ...}``, one or both)
    consistently and estimate its centre in atlas mm (see the module docstring)."""
    check_number("max_rounds", max_rounds, low=1, integer=True)
    check_number("tolerance_mm", tolerance_mm, low=0, low_inclusive=False)
    part = part_name(side)
    lobe_centre = np.asarray(atlas.lobe_axes[part]["centre_mm"], dtype=float)
    transverse, longitudinal = images.get("transverse"), images.get("longitudinal")
    if transverse is None and longitudinal is None:
        raise RegistrationError("no view to register")
    if transverse is None or longitudinal is None:
        image = transverse or longitudinal
        assert image is not None  # not both None (refused above)
        level = lobe_centre[_AXIS[image.view]]
        registration = register_view(image, atlas, level, part, transform=transform,
                                     step_mm=max(step_mm or WORKING_STEP_MM, atlas.spacing_mm))
        centre = _centre_in_view(image, registration)
        centre[_AXIS[image.view]] = level
        return NoduleRegistration({image.view: registration}, centre, 1, True,
                                  prior_axis="z" if image.view == "transverse" else "x",
                                  depth_mm={image.view: float(centre[1])})

    step = max(step_mm or WORKING_STEP_MM, atlas.spacing_mm)
    x_level, z_level = lobe_centre[0], lobe_centre[2]
    reg_l = reg_t = None
    converged = False
    rounds = 0
    while rounds < max_rounds and not converged:
        rounds += 1
        reg_l = _register_near(longitudinal, atlas, x_level, part, reg_l, transform, step)
        centre_l = _centre_in_view(longitudinal, reg_l)
        reg_t = _register_near(transverse, atlas, centre_l[2], part, reg_t, transform, step)
        centre_t = _centre_in_view(transverse, reg_t)
        converged = (rounds > 1 and abs(centre_l[2] - z_level) < tolerance_mm
                     and abs(centre_t[0] - x_level) < tolerance_mm)
        x_level, z_level = centre_t[0], centre_l[2]
    centre = np.array([centre_t[0], (centre_t[1] + centre_l[1]) / 2, centre_l[2]])
    # The loop ran at least once (max_rounds >= 1), so both views are registered.
    assert reg_t is not None and reg_l is not None
    return NoduleRegistration({"transverse": reg_t, "longitudinal": reg_l}, centre, rounds,
                              converged, depth_mm={"transverse": float(centre_t[1]),
                                                   "longitudinal": float(centre_l[1])})


def _register_near(image: ViewImage, atlas: Atlas, level_mm: float, part: int,
                   previous: ViewRegistration | None, transform: str, step_mm: float
                   ) -> ViewRegistration:
    """Register a view at ``level_mm``, from its registration at the previous level when
    that is near, and from a fresh exhaustive search otherwise (a section far away can differ
    in shape enough to mislead a warm start)."""
    near = previous is not None and abs(previous.level_mm - level_mm) <= WARM_START_MM
    return register_view(image, atlas, level_mm, part, initial=previous if near else None,
                         transform=transform, step_mm=step_mm)


def _back_project(image: ViewImage, registration: ViewRegistration, axes: tuple[np.ndarray, ...],
                  values: np.ndarray, shift_y_mm: float = 0.0) -> np.ndarray:
    """Sample an image-grid array at every (x, y) (transverse) or (z, y) (longitudinal) of the
    atlas grid: shape (ny, nx) or (nz, ny); zero outside the field of view. The view's map is
    moved ``shift_y_mm`` along y."""
    x, y, z = axes
    y = y - shift_y_mm
    if image.view == "transverse":
        a, b = np.meshgrid(y, x, indexing="ij")
        points = np.stack([b.ravel(), a.ravel(), np.full(a.size, registration.level_mm)], 1)
    else:
        a, b = np.meshgrid(z, y, indexing="ij")
        points = np.stack([np.full(a.size, registration.level_mm), b.ravel(), a.ravel()], 1)
    rows_cols = registration.atlas_to_image(points)
    sampled = ndimage.map_coordinates(values.astype(np.float32), rows_cols.T, order=1,
                                      mode="constant", cval=0.0)
    return sampled.reshape(a.shape)


def _prior_profile(atlas: Atlas, part: int, axis: int, axes: tuple[np.ndarray, ...]
                   ) -> np.ndarray:
    """Gaussian prior along atlas ``axis`` (0 x, 2 z) centred on the lobe, sigma a quarter of
    the lobe's extent."""
    bounds = atlas.lobe_bounds_mm(part)
    centre = np.asarray(atlas.lobe_axes[part]["centre_mm"])[axis]
    sigma = PRIOR_SIGMA_FRACTION * (bounds[1, axis] - bounds[0, axis])
    return np.exp(-0.5 * ((axes[axis] - centre) / sigma) ** 2)


def fuse_views(images: dict[str, ViewImage], nodule: NoduleRegistration, atlas: Atlas,
               side: int | str, min_weight: float = 0.05) -> Patch:
    """Fuse the registered views of a nodule into one :class:`Patch` (rule in the module
    docstring).

    Each view's back-projection is a 2D map (transverse over (y, x), longitudinal over
    (z, y)); the 3D product is only formed on the box where both maps and the gland's
    shadows can be non-zero, so a nodule costs a few milliseconds, not a pass over the atlas.
    """
    axes = atlas.grid.axes_mm()
    masks, heats = {}, {}
    for view, registration in nodule.views.items():
        image = images[view]
        # Both views are moved to the fused centre's depth, so their nodules meet.
        shift = nodule.centre_mm[1] - nodule.depth_mm.get(view, nodule.centre_mm[1])
        masks[view] = _back_project(image, registration, axes, image.nodule_mask, shift) >= 0.5
        if image.heatmap is not None:
            heats[view] = _back_project(image, registration, axes, image.heatmap, shift)
    if nodule.prior_axis is not None:
        _add_prior(images, nodule, atlas, side, axes, masks, heats)
    gland = atlas.capsule_distance < 0
    shadow = {"longitudinal": gland.any(axis=2), "transverse": gland.any(axis=0)}
    support = {view: (masks[view] | (heats[view] > 0 if heats else False)) & shadow[view]
               for view in masks}
    z_range = _extent(support["longitudinal"].any(axis=1))
    x_range = _extent(support["transverse"].any(axis=0))
    y_range = _extent(support["longitudinal"].any(axis=0) & support["transverse"].any(axis=1))
    box = (z_range, y_range, x_range)
    long_mask, trans_mask = masks["longitudinal"][box[:2]], masks["transverse"][box[1:]]
    mask = long_mask[:, :, None] & trans_mask[None, :, :]
    keep = mask
    heatmap = None
    if heats:
        product = heats["longitudinal"][box[:2]][:, :, None] * heats["transverse"][box[1:]][None]
        fused = np.where(gland[box], np.sqrt(np.maximum(product, 0.0)), 0.0)
        fused[fused < min_weight] = 0.0
        heatmap = fused.astype(np.float16)
        keep = mask | (heatmap > 0)
    crop = _bounding_box(keep)
    start = np.array([b.start + c.start for b, c in zip(box, crop, strict=True)], dtype=np.int64)
    return Patch(start, np.ascontiguousarray(mask[crop]),
                 None if heatmap is None else np.ascontiguousarray(heatmap[crop]),
                 atlas.grid)


def _add_prior(images, nodule, atlas, side, axes, masks, heats) -> None:
    """The missing view's maps from the prior (module docstring), in that view's layout."""
    (view,) = nodule.views
    image = images[view]
    missing = "longitudinal" if view == "transverse" else "transverse"
    axis = 2 if missing == "longitudinal" else 0
    profile = _prior_profile(atlas, part_name(side), axis, axes)
    diameter = 2 * np.sqrt(image.nodule_mask.sum() / np.pi) * image.pixel_mm
    extent = np.abs(axes[axis] - nodule.centre_mm[axis]) <= diameter / 2
    n_y = len(axes[1])
    if missing == "longitudinal":  # (z, y), constant along y
        masks[missing] = np.repeat(extent[:, None], n_y, axis=1)
        prior = np.repeat(profile[:, None], n_y, axis=1)
    else:  # (y, x), constant along y
        masks[missing] = np.repeat(extent[None, :], n_y, axis=0)
        prior = np.repeat(profile[None, :], n_y, axis=0)
    if heats:
        heats[missing] = prior


def _extent(present: npt.ArrayLike) -> slice:
    """Slice from the first to the last True of a 1D array (empty if none)."""
    index = np.flatnonzero(present)
    return slice(int(index[0]), int(index[-1]) + 1) if index.size else slice(0, 0)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    return tuple(_extent(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
                 for axis in range(mask.ndim))


