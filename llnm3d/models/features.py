"""Morphology features of a thyroid nodule from one ultrasound image and its nodule mask.

The features are TI-RADS-like descriptors of size, shape, margin, echogenicity, texture and
echogenic foci, computed on the largest connected component of the nodule mask. Images have
depth running down the rows, so "height" is antero-posterior and "width" is along the columns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage.feature import graycomatrix
from skimage.measure import label, perimeter, regionprops
from tqdm.auto import tqdm

from ..annotations import nodule_box, read_nodule_mask
from ..io import InputError, atomic_path, read_grayscale, read_mask
from ..manifest import Manifest, as_manifest

FEATURE_NAMES = ("area_mm2", "diameter_mm", "aspect_ratio", "taller_than_wide", "echo_contrast",
                 "solidity", "convexity", "circularity", "nodule_mean", "nodule_std",
                 "texture_entropy", "glcm_contrast", "glcm_homogeneity", "bright_foci_fraction",
                 "capsule_distance_mm")

# The model's feature tokens leave out the capsule distance on purpose: location reaches the
# model through the image (the capsule-proximity channel of the location feature map), so the
# image carries the location evidence and GradCAM++ heatmaps can show where it lies. Given the
# distance as a number, the model stops looking at the image for it.
MODEL_FEATURES = tuple(name for name in FEATURE_NAMES if name != "capsule_distance_mm")

GRAY_LEVELS = 32
MIN_RING_WIDTH_MM = 1.0
RING_WIDTH_PER_DIAMETER = 0.25
MIN_RING_PIXELS = 10
FOCI_RING_STDS = 3.0
_EPS = 1e-6


def nodule_features(
    image: np.ndarray,
    nodule_mask: np.ndarray,
    spacing_mm: float | None = None,
    thyroid_mask: np.ndarray | None = None,
) -> dict[str, float]:
    """Morphology features of the largest connected component of a nodule mask.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Grayscale B-mode image, depth down the rows. Integer images are scaled by their dtype's
        maximum (uint8 by 255); float images are taken as already in 0..1 (values outside are
        clipped).
    nodule_mask : ndarray of bool, shape (H, W)
        The nodule; only its largest 8-connected component is measured.
    spacing_mm : float or None
        Isotropic pixel size in mm. When None the pixel size is taken as 1, so ``area_mm2`` is
        in pixels, ``diameter_mm`` in pixels, and the peri-nodular ring is at least 1 pixel wide.
    thyroid_mask : ndarray of bool, shape (H, W), optional
        The gland; restricts the peri-nodular ring to thyroid tissue.

    Returns
    -------
    dict of str to float
        Every name of :data:`FEATURE_NAMES`, in that order:

        - ``area_mm2``: area in mm^2.
        - ``diameter_mm``: longest (maximum Feret) diameter in mm.
        - ``aspect_ratio``: height / width, as ``sqrt(var_rows / var_cols)`` of the nodule's pixel
          coordinates, each pixel counted as a unit square (variance + 1/12) so that a one-pixel
          wide mask stays finite. Exactly 1 for a disc and the axis ratio for an axis-aligned
          ellipse; robust to ragged mask edges, unlike bounding-box extents.
        - ``taller_than_wide``: 1.0 if ``aspect_ratio > 1`` else 0.0.
        - ``echo_contrast``: ``(ring_mean - nodule_mean) / (ring_mean + nodule_mean + eps)``;
          positive for a hypoechoic (darker) nodule. The ring is the tissue outside the nodule
          within ``max(1 mm, 0.25 * diameter)`` of it, kept inside the thyroid mask when one is
          given unless that leaves fewer than 10 pixels.
        - ``solidity``: area / convex hull area.
        - ``convexity``: convex hull perimeter / perimeter (about 1 for a smooth convex margin,
          lower for a lobulated or irregular one).
        - ``circularity``: ``4 pi area / perimeter^2`` (unitless; about 1 for a disc).
        - ``nodule_mean``, ``nodule_std``: intensity inside the nodule, image scaled to 0..1.
        - ``texture_entropy``: Shannon entropy in bits of the 32-bin intensity histogram inside
          the nodule.
        - ``glcm_contrast``, ``glcm_homogeneity``: gray-level co-occurrence contrast and
          homogeneity at 32 levels, distance 1 pixel, angles 0 and pi/2, symmetric, averaged over
          the angles; only pairs with both pixels inside the nodule count.
        - ``bright_foci_fraction``: fraction of nodule pixels brighter than
          ``ring_mean + 3 ring_std`` (a proxy for punctate echogenic foci).
        - ``capsule_distance_mm``: in-plane distance from the nodule's edge to the capsule
          (the thyroid mask's edge), in mm: the smallest depth below the capsule of any nodule
          pixel; 0 when the nodule touches or crosses the capsule; NaN without a thyroid mask.

        Perimeter-based features are NaN for a one-pixel nodule, ring-based features when no
        pixel surrounds the nodule, and GLCM features when no two nodule pixels are adjacent.

    Raises
    ------
    InputError
        If the image is not 2D, a mask's shape differs from the image's, the nodule mask is
        empty, or ``spacing_mm`` is not positive.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"image must be 2D (grayscale), got shape {image.shape}")
    nodule_mask = np.asarray(nodule_mask, dtype=bool)
    if nodule_mask.shape != image.shape:
        raise InputError(f"nodule mask shape {nodule_mask.shape} differs from image shape "
                         f"{image.shape}")
    if thyroid_mask is not None:
        thyroid_mask = np.asarray(thyroid_mask, dtype=bool)
        if thyroid_mask.shape != image.shape:
            raise InputError(f"thyroid mask shape {thyroid_mask.shape} differs from image shape "
                             f"{image.shape}")
    if not nodule_mask.any():
        raise InputError("nodule mask is empty")
    if spacing_mm is not None and not spacing_mm > 0:
        raise InputError(f"spacing_mm must be positive, got {spacing_mm}")
    pixel_mm = 1.0 if spacing_mm is None else float(spacing_mm)

    intensity = _unit_intensity(image)
    nodule = _largest_component(nodule_mask)
    props = regionprops(nodule.astype(np.uint8))[0]
    area_px = float(props.area)
    diameter_mm = float(props.feret_diameter_max) * pixel_mm

    rows, cols = np.nonzero(nodule)
    # A pixel is a unit square: its own variance 1/12 keeps one-pixel-wide masks finite.
    aspect_ratio = float(np.sqrt((rows.var() + 1 / 12) / (cols.var() + 1 / 12)))

    perimeter_px = perimeter(nodule)
    if perimeter_px > 0:
        convexity = perimeter(props.image_convex) / perimeter_px
        circularity = 4 * np.pi * area_px / perimeter_px**2
    else:
        convexity = circularity = np.nan

    values = intensity[nodule]
    nodule_mean = float(values.mean())
    ring_width_px = max(MIN_RING_WIDTH_MM, RING_WIDTH_PER_DIAMETER * diameter_mm) / pixel_mm
    ring = _ring(nodule, nodule_mask, ring_width_px, thyroid_mask)
    ring_values = intensity[ring]
    if ring_values.size:
        ring_mean, ring_std = float(ring_values.mean()), float(ring_values.std())
    else:
        ring_mean = ring_std = np.nan

    if thyroid_mask is None:
        capsule_distance_mm = np.nan
    else:
        # distance_transform_edt gives 1 on the mask's edge pixels: those touch the capsule.
        depth_px = ndimage.distance_transform_edt(thyroid_mask)
        capsule_distance_mm = max(float(depth_px[nodule].min()) - 1.0, 0.0) * pixel_mm

    counts, _ = np.histogram(values, bins=GRAY_LEVELS, range=(0.0, 1.0))
    p = counts[counts > 0] / values.size
    glcm_contrast, glcm_homogeneity = _glcm_features(intensity, nodule, props.bbox)

    features = {
        "area_mm2": area_px * pixel_mm**2,
        "diameter_mm": diameter_mm,
        "aspect_ratio": aspect_ratio,
        "taller_than_wide": float(aspect_ratio > 1),
        "echo_contrast": (ring_mean - nodule_mean) / (ring_mean + nodule_mean + _EPS),
        "solidity": float(props.solidity),
        "convexity": float(convexity),
        "circularity": float(circularity),
        "nodule_mean": nodule_mean,
        "nodule_std": float(values.std()),
        "texture_entropy": float((p * np.log2(1 / p)).sum()),
        "glcm_contrast": glcm_contrast,
        "glcm_homogeneity": glcm_homogeneity,
        "bright_foci_fraction": (float(np.mean(values > ring_mean + FOCI_RING_STDS * ring_std))
                                 if ring_values.size else np.nan),
        "capsule_distance_mm": capsule_distance_mm,
    }
    return {name: float(features[name]) for name in FEATURE_NAMES}


def _unit_intensity(image: np.ndarray) -> np.ndarray:
    """The image as float64 in 0..1."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float64) / np.iinfo(image.dtype).max
    return np.clip(image.astype(np.float64), 0.0, 1.0)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a non-empty boolean mask."""
    labels = label(mask, connectivity=2)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == np.argmax(sizes)


def _ring(nodule: np.ndarray, nodule_mask: np.ndarray, width_px: float,
          thyroid_mask: np.ndarray | None) -> np.ndarray:
    """Peri-nodular ring: pixels outside the whole nodule mask within ``width_px`` of ``nodule``.

    Kept inside ``thyroid_mask`` when given, unless that leaves fewer than MIN_RING_PIXELS, as
    when a mask is misaligned or the nodule bulges out of the gland.
    """
    ring = (ndimage.distance_transform_edt(~nodule) <= width_px) & ~nodule_mask
    if thyroid_mask is not None:
        inside = ring & thyroid_mask
        if inside.sum() >= MIN_RING_PIXELS:
            return inside
    return ring


def _glcm_features(intensity: np.ndarray, nodule: np.ndarray, bbox: tuple[int, ...]
                   ) -> tuple[float, float]:
    """GLCM contrast and homogeneity over pixel pairs that both lie inside the nodule.

    Pixels outside the nodule get a reserved level 0 and nodule pixels levels 1..GRAY_LEVELS;
    dropping row and column 0 of the co-occurrence matrix then drops every pair that touches
    the outside.
    """
    r0, c0, r1, c1 = bbox
    window = intensity[r0:r1, c0:c1]
    levels = np.minimum((window * GRAY_LEVELS).astype(np.int64), GRAY_LEVELS - 1) + 1
    levels = np.where(nodule[r0:r1, c0:c1], levels, 0).astype(np.uint8)
    glcm = graycomatrix(levels, distances=[1], angles=[0.0, np.pi / 2],
                        levels=GRAY_LEVELS + 1, symmetric=True, normed=False)
    counts = glcm[1:, 1:, 0, :].astype(np.float64)  # (levels, levels, angles)
    totals = counts.sum(axis=(0, 1))
    if not totals.any():
        return np.nan, np.nan
    # Average over the angles that have pairs (a one-pixel-wide nodule has none along its width).
    p = counts[:, :, totals > 0] / totals[totals > 0]
    i, j = np.ogrid[:GRAY_LEVELS, :GRAY_LEVELS]
    squared_difference = ((i - j) ** 2)[..., None]
    contrast = (p * squared_difference).sum(axis=(0, 1)).mean()
    homogeneity = (p / (1.0 + squared_difference)).sum(axis=(0, 1)).mean()
    return float(contrast), float(homogeneity)


def features_table(manifest: Manifest, progress: bool = True, resize_masks: bool = False
                   ) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Nodule features of every row of a manifest.

    Images are read as 8-bit grayscale and masks as ``gray >= 128``; a missing pixel spacing
    gives lengths in pixels (see :func:`nodule_features`).

    Parameters
    ----------
    manifest : Manifest
        A validated manifest.
    progress : bool
        Show a progress bar.
    resize_masks : bool
        Resize masks of another size than their image to it (see :func:`llnm3d.io.read_mask`);
        by default a size mismatch fails the case.

    Returns
    -------
    table : pandas.DataFrame
        One row per case that succeeded, columns ``case_id`` then :data:`FEATURE_NAMES`.
    failures : list of (case_id, reason)
        Cases left out (no nodule mask, an unreadable file, a bad or empty mask) and why.
    """
    records = []
    failures: list[tuple[str, str]] = []
    rows = manifest.table.iterrows()
    for _, row in tqdm(rows, total=len(manifest.table), desc="features", unit="image",
                       disable=not progress):
        case_id = row["case_id"]
        nodule_path, box_px = manifest.path(row, "nodule_mask"), nodule_box(row)
        if nodule_path is None and box_px is None:
            failures.append((case_id, "no nodule mask"))
            continue
        thyroid_path = manifest.path(row, "thyroid_mask")
        spacing = row.get("pixel_spacing_mm")
        try:
            image_path = manifest.path(row, "image")
            assert image_path is not None  # read_manifest refuses rows without an image
            image = read_grayscale(image_path)
            size = image.shape if resize_masks else None
            nodule = read_nodule_mask(nodule_path, box_px, image.shape, resize_masks)
            assert nodule is not None  # a mask file or a box: rows with neither skipped above
            features = nodule_features(
                image, nodule,
                spacing_mm=None if pd.isna(spacing) else float(spacing),
                thyroid_mask=read_mask(thyroid_path, size),
            )
        except (OSError, InputError) as exc:
            failures.append((case_id, str(exc)))
            continue
        records.append({"case_id": case_id, **features})
    return pd.DataFrame(records, columns=["case_id", *FEATURE_NAMES]), failures


def write_features(manifest_path: str | Path | Manifest, out_csv: str | Path,
                   progress: bool = True,
                   resize_masks: bool = False) -> list[tuple[str, str]]:
    """Compute the features of a manifest's cohort and write them as CSV, atomically.

    Returns
    -------
    list of (case_id, reason)
        Rows the manifest rejected, then cases whose features failed.

    Raises
    ------
    InputError
        If the manifest itself cannot be read.
    """
    manifest = as_manifest(manifest_path)
    table, failures = features_table(manifest, progress=progress, resize_masks=resize_masks)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return manifest.problems + failures
