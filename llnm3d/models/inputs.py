"""The model's image input: a five-channel "location feature map" at 224x224.

The LLNM-Net study's best input was a "location feature map" (CPDT) it never defined. Ours:

====  =====================  ========================================================
ch    name                   content
====  =====================  ========================================================
0     B-mode                 image intensity scaled to 0..1
1     capsule proximity      inside the thyroid mask ``exp(-d / 2 mm)``, ``d`` the
                             distance to the mask's edge (the capsule) in mm; 1 at the
                             capsule, 0.08 at 5 mm deep; 0 outside the gland
2     nodule mask            1 inside the nodule
3     nodule proximity       channel 1 inside the nodule, 0 elsewhere: how close each
                             part of the nodule comes to the capsule
4     thyroid-mask flag      1 everywhere when a thyroid mask was given, 0 when not
====  =====================  ========================================================

Channel 3 is channel 1 times channel 2. A linear patch embedding cannot multiply its inputs, and
the nodule's closeness to the capsule is the location evidence that matters most, so it is
given to the network directly, where it lies in the image (which is also where GradCAM++ can
then show it).

A model reads the channels its config names (:attr:`llnm3d.models.model.ModelConfig.channels`;
all five for the bundled weights). Training treats the nodule channels as a hint, not an answer:
it hides them from some cases and shows others another case's mask
(:class:`llnm3d.models.train.TrainSettings`), so that the heatmaps depend less on the mask
(``llnm3d heatmap-check``).

A missing thyroid mask (as in the LLNM-Net sample images) is handled explicitly: channels 1 and
3 are all zeros and channel 4 tells the network that those zeros mean "unknown", not "far from
the capsule". A missing pixel spacing falls back to :data:`DEFAULT_SPACING_MM` for the distance.

Images of any size are padded to a square (zeros at the bottom and right, so pixel (0, 0) stays
put) and resized to 224x224; :func:`to_image_space` maps a 224x224 map back onto the original
pixel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

SIZE_PX = 224
PROXIMITY_SCALE_MM = 2.0
DEFAULT_SPACING_MM = 0.15
CHANNELS = ("bmode", "capsule_proximity", "nodule_mask", "nodule_proximity",
            "thyroid_mask_given")
BMODE, CAPSULE, NODULE, NODULE_PROXIMITY, THYROID_GIVEN = range(len(CHANNELS))
# The channels that are zero in the map of an image without a thyroid mask.
THYROID_CHANNELS = [CAPSULE, NODULE_PROXIMITY, THYROID_GIVEN]


@dataclass(frozen=True)
class Geometry:
    """How an image of ``shape`` (rows, cols) was padded to ``side`` and resized."""

    shape: tuple[int, int]
    side: int


def _resize(array: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize a float 2D array to ``size`` (rows, cols) with PIL (bilinear or nearest)."""
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    resized = Image.fromarray(array.astype(np.float32), mode="F").resize(size[::-1], method)
    return np.asarray(resized)


def _pad_square(array: np.ndarray) -> np.ndarray:
    side = max(array.shape)
    return np.pad(array, ((0, side - array.shape[0]), (0, side - array.shape[1])))


def capsule_proximity(thyroid_mask: np.ndarray, spacing_mm: float) -> np.ndarray:
    """``exp(-d / 2 mm)`` inside the mask, ``d`` the distance to its edge in mm; 0 outside."""
    depth_mm = ndimage.distance_transform_edt(thyroid_mask) * spacing_mm
    return np.where(thyroid_mask, np.exp(-depth_mm / PROXIMITY_SCALE_MM), 0.0)


def location_feature_map(image: np.ndarray, nodule_mask: np.ndarray,
                         thyroid_mask: np.ndarray | None = None,
                         spacing_mm: float | None = None) -> tuple[np.ndarray, Geometry]:
    """Build the model input for one image.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Grayscale B-mode image, uint8 (0..255) or float (0..1).
    nodule_mask, thyroid_mask : ndarray of bool, shape (H, W)
        Masks; ``thyroid_mask`` may be None.
    spacing_mm : float, optional
        Pixel size in mm (None or NaN: :data:`DEFAULT_SPACING_MM`).

    Returns
    -------
    channels : ndarray of float32, shape (5, 224, 224)
    geometry : Geometry
        For :func:`to_image_space`.
    """
    intensity = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    if spacing_mm is None or not np.isfinite(spacing_mm):
        spacing_mm = DEFAULT_SPACING_MM
    if thyroid_mask is None:
        proximity, flag = np.zeros_like(intensity), 0.0
    else:
        proximity, flag = capsule_proximity(thyroid_mask, spacing_mm), 1.0
    size = (SIZE_PX, SIZE_PX)
    proximity_224 = _resize(_pad_square(proximity), size)
    nodule_224 = _resize(_pad_square(nodule_mask.astype(np.float32)), size, nearest=True)
    channels = np.stack([
        _resize(_pad_square(intensity), size),
        proximity_224,
        nodule_224,
        proximity_224 * nodule_224,
        np.full(size, flag, np.float32),
    ])
    return channels.astype(np.float32), Geometry(tuple(image.shape), max(image.shape))


def set_nodule_mask(maps, mask) -> None:
    """Write ``mask`` as the nodule channel of location feature maps, in place, with the nodule
    proximity that goes with it (the capsule proximity inside the mask).

    ``maps`` has shape (..., 5, H, W) and ``mask`` (..., H, W), 0/1 or bool; NumPy arrays or
    torch tensors.
    """
    maps[..., NODULE, :, :] = mask
    maps[..., NODULE_PROXIMITY, :, :] = maps[..., CAPSULE, :, :] * mask


def to_image_space(map_224: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Map a (224, 224) map back to the original image's pixel grid, shape ``geometry.shape``."""
    padded = _resize(map_224, (geometry.side, geometry.side))
    return padded[:geometry.shape[0], :geometry.shape[1]]
