"""What the NIfTI header of an llnm3d volume says about its values.

Viewers and analysis tools (3D Slicer, ITK-SNAP, FSL, nibabel) read a map's meaning from its
header without llnm3d: ``intent_code`` with its parameters (a t map's degrees of freedom, a
chi-square map's), ``intent_name`` (16 characters), ``descrip`` (80 characters: the map's
name) and ``cal_min``/``cal_max`` (the display range). The geometry is written as ITK writes it:
the LPS atlas grid as NIfTI's RAS affine (x and y negated), qform and sform code 1, millimetres,
so SimpleITK and nibabel read the same grid (docs/conventions.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

# NIfTI's "scanner-based anatomical coordinates": the atlas frame itself.
XFORM_SCANNER = 1
DESCRIP_CHARS, INTENT_NAME_CHARS = 80, 16


@dataclass(frozen=True)
class NiftiHeader:
    """The header fields that describe a volume's values.

    Attributes
    ----------
    intent : str
        A nibabel intent name (``nibabel.nifti1.intent_codes``): ``"estimate"`` (default),
        ``"label"``, ``"t test"``, ``"chi2"``, ``"p value"``, ...
    intent_params : tuple of float
        The intent's parameters, e.g. ``(degrees_of_freedom,)`` of a t or chi-square map;
        empty for none (or when unknown).
    intent_name : str
        Short name of the quantity, at most 16 characters (e.g. ``"-log10(p)"``).
    description : str
        ``descrip``, at most 80 ASCII characters.
    display_range : tuple of float, optional
        ``(cal_min, cal_max)``; default the range of the finite voxel values.
    """

    intent: str = "estimate"
    intent_params: tuple[float, ...] = ()
    intent_name: str = ""
    description: str = ""
    display_range: tuple[float, float] | None = None


def lps_affine(origin_mm: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The 4x4 NIfTI (RAS) affine of an axis-aligned LPS grid: voxel ``(i, j, k)`` at
    ``origin_mm + spacing_mm * (i, j, k)`` in LPS mm, with x and y negated for RAS."""
    affine = np.diag([-spacing_mm, -spacing_mm, spacing_mm, 1.0])
    affine[:3, 3] = np.asarray(origin_mm, float) * [-1.0, -1.0, 1.0]
    return affine


def display_range(array: np.ndarray, header: NiftiHeader) -> tuple[float, float]:
    """``(cal_min, cal_max)``: the header's range, else the finite values' (0, 0 if none)."""
    if header.display_range is not None:
        low, high = header.display_range
        return float(low), float(high)
    finite = np.asarray(array)[np.isfinite(array)]
    if not finite.size:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def nifti_image(array_zyx: np.ndarray, origin_mm: np.ndarray, spacing_mm: float,
                header: NiftiHeader | None = None) -> nib.Nifti1Image:
    """A NIfTI-1 image of an atlas-space volume with the header fields of ``header``.

    Parameters
    ----------
    array_zyx : ndarray, shape (nz, ny, nx)
        Voxel values indexed ``[k, j, i]``; stored as they are (NaN kept, no scaling).
    origin_mm : ndarray, shape (3,)
        Atlas (LPS) position of voxel (0, 0, 0), in mm.
    spacing_mm : float
        Isotropic voxel size in mm.
    header : NiftiHeader, optional
        Intent, names and display range (default: an estimate with no name).
    """
    header = header or NiftiHeader()
    affine = lps_affine(origin_mm, float(spacing_mm))
    image = nib.Nifti1Image(np.asarray(array_zyx).transpose(2, 1, 0), affine)
    image.set_qform(affine, code=XFORM_SCANNER)
    image.set_sform(affine, code=XFORM_SCANNER)
    fields = image.header
    fields.set_xyzt_units("mm", "sec")
    fields.set_intent(header.intent, tuple(float(p) for p in header.intent_params),
                      name=header.intent_name[:INTENT_NAME_CHARS])
    fields["descrip"] = header.description.encode("ascii", "replace")[:DESCRIP_CHARS]
    fields["cal_min"], fields["cal_max"] = display_range(array_zyx, header)
    return image
