"""Quality-control pictures of a cohort: a contact sheet of images with mask outlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..annotations import nodule_box, read_nodule_mask
from ..checks import check_number
from ..io import atomic_path, read_grayscale, read_mask
from ..manifest import Manifest

THYROID_COLOUR = (255, 215, 0)
NODULE_COLOUR = (255, 40, 40)
# A contact sheet is for looking at: 256 tiles are already 64 rows of 4.
MAX_SHEET_IMAGES = 256


def outline(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner boundary of a boolean mask."""
    return mask & ~ndimage.binary_erosion(mask)


def overlay(image: np.ndarray, masks: list[tuple[np.ndarray | None, tuple[int, int, int]]]
            ) -> np.ndarray:
    """RGB copy of a grayscale ``image`` (H, W) with each mask's outline drawn in its colour."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.uint8)
    for mask, colour in masks:
        if mask is not None and mask.shape == image.shape:
            rgb[outline(mask)] = colour
    return rgb


def contact_sheet(manifest: Manifest, out_path: str | Path, n: int = 8, columns: int = 4,
                  tile_px: int = 256) -> Path:
    """Write a PNG grid of the first ``n`` images of a manifest with mask outlines.

    Thyroid masks are outlined in yellow, nodule masks (or the ellipse of a nodule box) in
    red; each tile is captioned with its case id and side. ``n`` is 1 to
    :data:`MAX_SHEET_IMAGES`, ``columns`` 1 to 16 and ``tile_px`` 32 to 1024 (a sheet to look
    at, not an archive).
    """
    check_number("n", n, low=1, high=MAX_SHEET_IMAGES, integer=True)
    check_number("columns", columns, low=1, high=16, integer=True)
    check_number("tile_px", tile_px, low=32, high=1024, integer=True)
    rows = manifest.table.head(n)
    n_rows = max(1, -(-len(rows) // columns))
    caption_px, gutter_px = 16, 4
    cell_w, cell_h = tile_px + gutter_px, tile_px + caption_px + gutter_px
    sheet = Image.new("RGB", (columns * cell_w, n_rows * cell_h), "black")
    draw = ImageDraw.Draw(sheet)
    for index, (_, row) in enumerate(rows.iterrows()):
        image_path = manifest.path(row, "image")
        assert image_path is not None  # read_manifest refuses rows without an image
        image = read_grayscale(image_path)
        nodule = read_nodule_mask(manifest.path(row, "nodule_mask"), nodule_box(row),
                                  image.shape)
        rgb = overlay(image, [(read_mask(manifest.path(row, "thyroid_mask")), THYROID_COLOUR),
                              (nodule, NODULE_COLOUR)])
        tile = Image.fromarray(rgb).resize((tile_px, tile_px), Image.Resampling.NEAREST)
        x, y = (index % columns) * cell_w, (index // columns) * cell_h
        sheet.paste(tile, (x, y + caption_px))
        draw.text((x + 4, y + 2), f"{row['case_id']} ({row['side']})", fill="white")
    with atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(out_path)
