"""Registering one ultrasound view onto an atlas cross-section (SimpleITK).

A transverse image is an axial plane of the patient (``z = level``), a longitudinal image a
sagittal plane (``x = level``); both are laid out as in docs/conventions.md, which is also the
layout of :class:`~llnm3d.atlas.Section`, so the map from image to section is close to a
similarity: the patient's gland size, a small tilt and the unknown position of the probe.

Method, per view:

1. Both masks become smooth representations: signed distance maps in mm, clipped at
   +-``SDF_CLIP_MM`` so the far field does not dominate. The image is resampled to the atlas
   spacing; the section covers the whole gland at that level on the atlas grid, padded, so an
   image that shows part of the isthmus or the other lobe still matches.
2. Initialisation: an exhaustive search of translations (FFT cross-correlation of the two masks,
   scored over the image's field of view only) at a few scales, restricted to placements that
   put the nodule in the lobe of the manifest's side. Moments cannot do this job: the field of
   view crops the gland, so the image's mask moments are not the section's.
3. Refinement: a similarity transform (optionally then an affine one) optimised by
   SimpleITK's regular-step gradient descent on the mean squared difference of the distance
   maps, two resolution levels. The metric is evaluated over the image domain, so cropping by
   the field of view does not bias it.

The result maps image millimetres ``(u, v) = (col, row) * spacing`` to section millimetres
``(h, w)`` (along the section's columns and rows from its origin):
``(h, w) = matrix @ (u, v) + offset``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TypeVar, cast

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, signal

from ..atlas import Atlas, Section, part_name
from ..checks import check_choice
from ..grid import grid_step

# Final transforms register_view fits; "affine" adds an affine stage after the similarity one.
TRANSFORMS = ("similarity", "affine")
SDF_CLIP_MM = 5.0
# Linear probes show about 4 cm; used only when a manifest gives no pixel spacing.
ASSUMED_FIELD_OF_VIEW_MM = 40.0
_SCALES = (0.85, 1.0, 1.15)
_SCALES_UNKNOWN_SPACING = (0.6, 0.7, 0.8, 0.9, 1.0, 1.12, 1.25, 1.4, 1.6)
_SIDE_SIGN = {1: -1.0, 2: 1.0}  # right lobe at x < 0, left at x > 0 (LPS)
# _optimise returns the transform it was given (optimised in place), of the same class.
_T = TypeVar("_T", bound=sitk.Transform)


class RegistrationError(RuntimeError):
    """A view could not be registered (the message says why)."""


@dataclass(frozen=True)
class ViewImage:
    """One ultrasound image of a nodule, in the layout of docs/conventions.md (already un-flipped).

    Attributes
    ----------
    case_id : str
    view : {"transverse", "longitudinal"}
    thyroid_mask : ndarray of bool, shape (H, W)
    nodule_mask : ndarray of bool, shape (H, W)
    heatmap : ndarray of float32, shape (H, W), optional
        GradCAM++ saliency, 0..1.
    spacing_mm : float, optional
        Pixel size; None when unknown (then :data:`ASSUMED_FIELD_OF_VIEW_MM` over the image
        width is assumed and the registration's scale absorbs the error).
    """

    case_id: str
    view: str
    thyroid_mask: np.ndarray
    nodule_mask: np.ndarray
    heatmap: np.ndarray | None = None
    spacing_mm: float | None = None

    @property
    def pixel_mm(self) -> float:
        """The pixel size used: the given spacing, or the assumed one."""
        if self.spacing_mm is not None:
            return float(self.spacing_mm)
        return ASSUMED_FIELD_OF_VIEW_MM / self.thyroid_mask.shape[1]

    @functools.cached_property
    def thyroid_distance_mm(self) -> np.ndarray:
        """Clipped signed distance map of the thyroid mask on the image grid (mm); computed
        once, since the alternation between views registers an image several times."""
        return signed_distance_mm(self.thyroid_mask, self.pixel_mm)

    def nodule_centroid_mm(self) -> np.ndarray:
        """Image millimetres ``(u, v)`` of the nodule mask's centroid."""
        rows, cols = np.nonzero(self.nodule_mask)
        return np.array([cols.mean(), rows.mean()]) * self.pixel_mm


@dataclass(frozen=True)
class ViewRegistration:
    """The registration of one view: image mm -> section mm on an atlas plane.

    Attributes
    ----------
    view : str
    level_mm : float
        z (transverse) or x (longitudinal) of the atlas plane, mm.
    matrix : ndarray, shape (2, 2)
    offset : ndarray, shape (2,)
        ``(h, w) = matrix @ (u, v) + offset`` with ``(u, v)`` image mm (columns, rows).
    origin_mm, row_dir, col_dir : ndarray, shape (3,)
        The atlas plane: section mm ``(h, w)`` is ``origin_mm + h * col_dir + w * row_dir``.
    pixel_mm : float
        Image pixel size used.
    metric : float
        Final mean squared distance-map difference, mm^2.
    dice : float
        Overlap of the registered thyroid mask with the atlas section, over the field of view.
    iterations : int
        Optimiser iterations of the last stage.
    """

    view: str
    level_mm: float
    matrix: np.ndarray
    offset: np.ndarray
    origin_mm: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    pixel_mm: float
    metric: float
    dice: float
    iterations: int

    @property
    def scale(self) -> float:
        """Isotropic scale (image mm -> atlas mm) of the transform."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))

    @property
    def rotation_deg(self) -> float:
        return float(np.degrees(np.arctan2(self.matrix[1, 0], self.matrix[0, 0])))

    def image_to_atlas(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Atlas mm, shape (N, 3), of (fractional) image pixel indices."""
        uv = np.stack([np.ravel(cols), np.ravel(rows)], axis=1) * self.pixel_mm
        hw = uv @ self.matrix.T + self.offset
        return self.origin_mm + hw[:, :1] * self.col_dir + hw[:, 1:] * self.row_dir

    def atlas_to_image(self, points_mm: np.ndarray) -> np.ndarray:
        """Fractional image (row, col), shape (N, 2), of atlas points projected on the plane
        (the coordinate along the plane normal is ignored: this is the back-projection)."""
        rel = np.atleast_2d(points_mm) - self.origin_mm
        hw = np.stack([rel @ self.col_dir, rel @ self.row_dir], axis=1)
        uv = (hw - self.offset) @ np.linalg.inv(self.matrix).T
        return uv[:, ::-1] / self.pixel_mm


def atlas_plane(atlas: Atlas, view: str, level_mm: float) -> Section:
    """The whole gland's cross-section at ``level_mm`` over the full atlas grid.

    Unlike :meth:`Atlas.section` (one lobe), this keeps every part, because an image's thyroid
    mask shows whatever gland lies in its field of view. Planes between voxel layers
    interpolate the capsule distance linearly.

    """
    distance = atlas.capsule_distance
    spacing = atlas.spacing_mm
    axis = {"transverse": 2, "longitudinal": 0}.get(view)
    if axis is None:
        raise ValueError(f"unknown view {view!r}")
    position = (level_mm - atlas.origin_mm[axis]) / spacing
    size = distance.shape[2 - axis]
    lower = int(np.clip(np.floor(position), 0, size - 2))
    frac = float(np.clip(position - lower, 0.0, 1.0))
    if position < -0.5 or position > size - 0.5:
        layer = np.full(_plane_shape(distance.shape, view), SDF_CLIP_MM, np.float32)
    elif view == "transverse":
        layer = (1 - frac) * distance[lower] + frac * distance[lower + 1]
    else:
        # (z, y) -> rows y, columns running down z (cranial on the image left).
        layer = ((1 - frac) * distance[:, :, lower] + frac * distance[:, :, lower + 1]).T[:, ::-1]
    lo = atlas.origin_mm
    top = lo[2] + spacing * (distance.shape[0] - 1)
    if view == "transverse":
        origin = np.array([lo[0], lo[1], level_mm])
        col_dir = np.array([1.0, 0.0, 0.0])
    else:
        origin = np.array([level_mm, lo[1], top])
        col_dir = np.array([0.0, 0.0, -1.0])
    return Section(np.ascontiguousarray(layer < 0), origin, np.array([0.0, 1.0, 0.0]), col_dir,
                   spacing, view, float(level_mm))


def _plane_shape(shape_zyx, view):
    return (shape_zyx[1], shape_zyx[2]) if view == "transverse" else (shape_zyx[1], shape_zyx[0])


def signed_distance_mm(mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """2D signed distance to the mask's boundary in mm (negative inside), clipped at
    +-:data:`SDF_CLIP_MM`.

    The boundary is taken half a pixel outside the mask's edge pixels (where a pixel-sampled
    shape's true edge lies on average); ITK's Maurer map puts it on the edge pixels' centres,
    which would shrink coarse masks against fine ones by a measurable 2 % on a lobe.
    """
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((spacing_mm, spacing_mm))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return np.clip(sitk.GetArrayViewFromImage(distance) - 0.5 * spacing_mm, -SDF_CLIP_MM,
                   SDF_CLIP_MM).astype(np.float32)


def _sitk_image(array: np.ndarray, spacing: float, origin=(0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing((spacing, spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    return image


def _resample_to_grid(sdf_image: np.ndarray, pixel_mm: float, step_mm: float) -> np.ndarray:
    """Resample an image-grid array so that output pixel (r, c) sits at image mm
    (c * step_mm, r * step_mm)."""
    height, width = sdf_image.shape
    n_rows = int(np.floor((height - 1) * pixel_mm / step_mm)) + 1
    n_cols = int(np.floor((width - 1) * pixel_mm / step_mm)) + 1
    rows = np.arange(n_rows) * (step_mm / pixel_mm)
    cols = np.arange(n_cols) * (step_mm / pixel_mm)
    return ndimage.map_coordinates(sdf_image, np.meshgrid(rows, cols, indexing="ij"), order=1,
                                   mode="nearest").astype(np.float32)


def _initial_transform(image_sdf: np.ndarray, image: ViewImage, section: Section,
                       section_sdf: np.ndarray, step: float, side: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Best similarity (no rotation) by exhaustive translation search at a few scales, with
    ``section_sdf`` sampled every ``step`` mm from the section's origin.

    Returns (matrix, offset) of image mm -> section mm.
    """
    inside = section_sdf < 0
    allowed = inside.copy()
    if section.view == "transverse":
        # The nodule must land in the lobe of its side: x of each column against the midline.
        x_mm = section.origin_mm[0] + step * np.arange(inside.shape[1])
        allowed &= (np.sign(x_mm) == _SIDE_SIGN[side])[None, :]
    allowed = ndimage.binary_dilation(allowed, iterations=grid_step(2.0, step))
    centroid_mm = image.nodule_centroid_mm()
    scales = _SCALES if image.spacing_mm is not None else _SCALES_UNKNOWN_SPACING
    best: tuple[float, np.ndarray | None, np.ndarray | None] = (-np.inf, None, None)
    for scale in scales:
        # Resampled so one pixel spans one section pixel once scaled: u = c * step / scale.
        template = _resample_to_grid(image_sdf, image.pixel_mm, step / scale) < 0
        pad_r, pad_c = template.shape
        padded = np.pad(np.where(inside, 1.0, -1.0), ((pad_r, pad_r), (pad_c, pad_c)),
                        constant_values=-1.0)
        score = signal.fftconvolve(padded, np.where(template, 1.0, -1.0)[::-1, ::-1],
                                   mode="valid") / template.size
        # Placement (dr, dc): template pixel (r, c) lies on padded pixel (r + dr, c + dc).
        nr, nc = (centroid_mm[::-1] * scale / step).round().astype(int)
        ok = np.pad(allowed, ((pad_r, pad_r + 1), (pad_c, pad_c + 1)))[
            nr:nr + score.shape[0], nc:nc + score.shape[1]]
        if not ok.any():
            continue
        score = np.where(ok, score, -np.inf)
        dr, dc = np.unravel_index(np.argmax(score), score.shape)
        if score[dr, dc] > best[0]:
            offset = np.array([(dc - pad_c) * step, (dr - pad_r) * step])
            best = (score[dr, dc], np.eye(2) * scale, offset)
    if best[1] is None:
        raise RegistrationError(f"{image.case_id}: no placement puts the nodule inside the "
                                f"atlas's {'right' if side == 1 else 'left'} lobe")
    assert best[2] is not None  # set together with best[1]
    return best[1], best[2]


def _method() -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMeanSquares()
    method.SetInterpolator(sitk.sitkLinear)
    return method


def _metric_value(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> float:
    method = _method()
    method.SetInitialTransform(transform, inPlace=False)
    return float(method.MetricEvaluate(fixed, moving))


def _optimise(fixed: sitk.Image, moving: sitk.Image, transform: _T,
              shrink: list[int], iterations: int, rate_mm: float) -> tuple[_T, float, int]:
    method = _method()
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=rate_mm, minStep=0.005, numberOfIterations=iterations, relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([0.5 * (s - 1) for s in shrink])
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed, moving)
    return transform, float(method.GetMetricValue()), int(method.GetOptimizerIteration())


def _affine_parts(transform: sitk.Similarity2DTransform | sitk.AffineTransform
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) of a centred 2D transform: T(p) = M (p - c) + c + t."""
    matrix = np.asarray(transform.GetMatrix()).reshape(2, 2)
    centre = np.asarray(transform.GetCenter())
    translation = np.asarray(transform.GetTranslation())
    return matrix, centre + translation - matrix @ centre


def register_view(image: ViewImage, atlas: Atlas, level_mm: float, side: int | str,
                  initial: ViewRegistration | None = None, transform: str = "similarity",
                  step_mm: float | None = None, iterations: int = 100) -> ViewRegistration:
    """Register one view's thyroid mask to the atlas plane at ``level_mm``.

    Parameters
    ----------
    image : ViewImage
    atlas : Atlas
    level_mm : float
        z of the axial plane (transverse) or x of the sagittal plane (longitudinal), atlas mm.
    side : {"R", "L"} or 1, 2
        Lobe of the nodule; a transverse placement must put the nodule on that side.
    initial : ViewRegistration, optional
        Start from this transform (e.g. the same view at a nearby level) instead of the
        exhaustive search.
    transform : {"similarity", "affine"}
        Final transform; ``affine`` adds an affine stage after the similarity one.
    step_mm : float, optional
        Working resolution of both distance maps (default: the atlas spacing). Coarser is
        faster; :func:`~llnm3d.registration.fusion.register_nodule` works at 1.5 mm.
    iterations : int
        Optimiser iterations per resolution level.

    Raises
    ------
    InputError
        When ``transform`` is not one of :data:`TRANSFORMS`.
    RegistrationError
        When the plane holds no gland, or no placement puts the nodule in its lobe.
    """
    check_choice("transform", transform, TRANSFORMS)
    side = part_name(side)
    section = atlas_plane(atlas, image.view, level_mm)
    if not section.mask.any():
        raise RegistrationError(f"{image.case_id}: the atlas has no gland at "
                                f"{'z' if image.view == 'transverse' else 'x'} = "
                                f"{level_mm:.1f} mm")
    step = float(step_mm or section.spacing_mm)
    image_sdf_full = image.thyroid_distance_mm
    fixed_array = _resample_to_grid(image_sdf_full, image.pixel_mm, step)
    section_sdf = _resample_to_grid(signed_distance_mm(section.mask, section.spacing_mm),
                                    section.spacing_mm, step)
    pad = max(fixed_array.shape)
    moving_array = np.pad(section_sdf, pad, constant_values=SDF_CLIP_MM)
    fixed = _sitk_image(fixed_array, step)
    moving = _sitk_image(moving_array, step, origin=(-pad * step, -pad * step))

    if initial is None:
        matrix, offset = _initial_transform(image_sdf_full, image, section, section_sdf, step,
                                            side)
    else:
        matrix, offset = initial.matrix, initial.offset
    centre = image.nodule_centroid_mm()
    similarity = sitk.Similarity2DTransform()
    similarity.SetCenter(centre.tolist())
    scale = float(np.sqrt(abs(np.linalg.det(matrix))))
    similarity.SetScale(scale)
    similarity.SetAngle(float(np.arctan2(matrix[1, 0], matrix[0, 0])))
    # Same map as (matrix, offset) at the centre: T(c) = M c + offset.
    similarity.SetTranslation((matrix @ centre + offset - centre).tolist())
    # A coarser first level helps from the exhaustive search's start, but not below about 2 mm
    # per pixel: a lobe then spans a handful of pixels and the optimiser can collapse the scale.
    shrink = [2, 1] if initial is None and step <= 1.0 else [1]
    # A warm start is already close: smaller first steps save iterations.
    rate = 1.0 if initial is None else 0.3
    start_metric = _metric_value(fixed, moving, similarity)
    result: sitk.Similarity2DTransform | sitk.AffineTransform  # affine after the loop
    for attempt_rate in (rate, rate / 4):
        result, metric, n_iter = _optimise(fixed, moving, sitk.Similarity2DTransform(similarity),
                                           shrink, iterations, attempt_rate)
        # A step too far can shrink the image onto a point of the section; such a result is
        # worse than where it started, or far from the start's scale. (The cast: mypy types
        # result as declared, not as the similarity _optimise returns here.)
        if metric <= start_metric and (
                2 / 3 < cast(sitk.Similarity2DTransform, result).GetScale() / scale < 3 / 2):
            break
    else:
        result, metric, n_iter = similarity, start_metric, 0
    if transform == "affine":
        affine = sitk.AffineTransform(2)
        affine.SetCenter(centre.tolist())
        affine.SetMatrix(result.GetMatrix())
        affine.SetTranslation(result.GetTranslation())
        result, metric, n_iter = _optimise(fixed, moving, affine, [1], iterations, 0.3)
    matrix, offset = _affine_parts(result)
    dice = _overlap(fixed_array, moving_array, matrix, offset, step, pad)
    return ViewRegistration(image.view, float(level_mm), matrix, offset, section.origin_mm,
                            section.row_dir, section.col_dir, image.pixel_mm, metric, dice,
                            n_iter)


def _overlap(fixed_sdf: np.ndarray, moving_sdf: np.ndarray, matrix: np.ndarray,
             offset: np.ndarray, step: float, pad: int) -> float:
    """Dice of the image's thyroid (on its working grid) and the section mapped onto it."""
    rows, cols = np.indices(fixed_sdf.shape).reshape(2, -1)
    hw = np.stack([cols, rows], axis=1) * step @ matrix.T + offset
    sampled = ndimage.map_coordinates(moving_sdf, [hw[:, 1] / step + pad, hw[:, 0] / step + pad],
                                      order=1, mode="constant", cval=SDF_CLIP_MM)
    image_inside = fixed_sdf.ravel() < 0
    atlas_inside = sampled < 0
    total = image_inside.sum() + atlas_inside.sum()
    return float(2 * (image_inside & atlas_inside).sum() / total) if total else 0.0
