"""Nodule annotations given as bounding boxes instead of masks.

Real cohorts often outline a nodule with a box only. A manifest row gives it in the four columns
:data:`BOX_COLUMNS` (pixels of the image as stored, before ``flip_horizontal``; layout in
docs/conventions.md), and the nodule mask of such a row is the ellipse inscribed in the box
(:func:`ellipse_mask`). Every stage reads a row's nodule mask through :func:`read_nodule_mask`,
so a box is used wherever a mask would be, and a row with both uses its mask.
"""

from __future__ import annotations

import math
import os
from typing import cast

import numpy as np
from PIL import Image

from .io import read_mask

BOX_COLUMNS = ("nodule_box_x0", "nodule_box_y0", "nodule_box_x1", "nodule_box_y1")
# Registration QC flags nodules whose mask was made from a box, so users can filter them.
BOX_NOTE = "nodule mask from a box (ellipse)"


def _cells(row) -> list[str]:
    values = [row.get(column) for column in BOX_COLUMNS]
    return ["" if value is None or (isinstance(value, float) and math.isnan(value))
            else str(value).strip() for value in values]


def nodule_box(row) -> tuple[float, float, float, float] | None:
    """The nodule box of a manifest row, or None when its box cells are empty.

    Parameters
    ----------
    row : pandas.Series or dict
        A row of a manifest validated by :func:`llnm3d.manifest.read_manifest` (which
        reports bad boxes with :func:`box_problem`).

    Returns
    -------
    tuple of float or None
        ``(x0, y0, x1, y1)`` in pixels: x along columns, y along rows, pixel edges at whole
        numbers (pixel ``(row r, column c)`` covers ``c <= x < c + 1``, ``r <= y < r + 1``).
    """
    cells = _cells(row)
    if not any(cells):
        return None
    x0, y0, x1, y1 = (float(cell) for cell in cells)
    return x0, y0, x1, y1


def box_problem(row, image_path: str | os.PathLike) -> str | None:
    """Why a row's nodule box is unusable, or None for a usable or absent one.

    A box needs all four cells, finite numbers, ``x1 > x0`` and ``y1 > y0``, and must lie
    within the image (``0 <= x0``, ``x1 <= width``, likewise in y; only the image's header is
    read).
    """
    cells = _cells(row)
    if not any(cells):
        return None
    missing = [column for column, cell in zip(BOX_COLUMNS, cells, strict=True) if not cell]
    if missing:
        return f"nodule box incomplete ({', '.join(missing)} empty)"
    for column, cell in zip(BOX_COLUMNS, cells, strict=True):
        try:
            number = float(cell)
        except ValueError:
            return f"{column} {cell!r} is not a number"
        if not math.isfinite(number):
            return f"{column} {cell!r} is not a finite number"
    x0, y0, x1, y1 = (float(cell) for cell in cells)
    box = f"nodule box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) px"
    if x1 <= x0 or y1 <= y0:
        return f"{box} is empty (x1 must exceed x0 and y1 exceed y0)"
    try:
        with Image.open(image_path) as image:
            width, height = image.width, image.height
    except (OSError, SyntaxError) as exc:
        return f"cannot read the image to check the nodule box ({exc})"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return f"{box} lies outside the {width}x{height} image"
    return None


def ellipse_mask(box_px: tuple[float, float, float, float], shape: tuple[int, int]
                 ) -> np.ndarray:
    """The ellipse inscribed in a box, as a mask: the pixels whose centre lies inside it.

    Parameters
    ----------
    box_px : tuple of float
        ``(x0, y0, x1, y1)`` in pixels (convention of :func:`nodule_box`).
    shape : tuple of int
        ``(rows, cols)`` of the image.

    Returns
    -------
    ndarray of bool, shape ``shape``
        Centred in the box, with pi/4 of its area up to the rounding to whole pixels (a box
        too thin to hold a pixel centre gives an empty mask, which the stages report).
    """
    x0, y0, x1, y1 = box_px
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    semi_x, semi_y = (x1 - x0) / 2, (y1 - y0) / 2
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    return ((cols + 0.5 - centre_x) / semi_x) ** 2 + ((rows + 0.5 - centre_y) / semi_y) ** 2 <= 1


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """The tight bounding box of a non-empty mask, ``(x0, y0, x1, y1)`` in pixels (convention
    of :func:`nodule_box`): what a box annotation of that nodule would be."""
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def read_nodule_mask(mask_path: str | os.PathLike | None,
                     box_px: tuple[float, float, float, float] | None,
                     shape: tuple[int, int], resize: bool = False) -> np.ndarray | None:
    """A row's nodule mask: its mask file if given, else the ellipse inscribed in its box.

    Parameters
    ----------
    mask_path : path or None
        The row's ``nodule_mask`` file.
    box_px : tuple of float or None
        The row's box (:func:`nodule_box`), used only without a mask file.
    shape : tuple of int
        ``(rows, cols)`` of the row's image.
    resize : bool
        Resize a mask file of another size to ``shape`` (see :func:`llnm3d.io.read_mask`);
        a box is always in the image's pixels.

    Returns
    -------
    ndarray of bool or None
        None when the row has neither.
    """
    # tuple() of an image's 2D shape (callers may pass a list) keeps its two items.
    if mask_path is not None:
        return read_mask(mask_path, cast("tuple[int, int]", tuple(shape)) if resize else None)
    if box_px is not None:
        return ellipse_mask(box_px, cast("tuple[int, int]", tuple(shape)))
    return None
