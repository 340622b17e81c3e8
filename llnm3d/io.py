"""Input/output helpers shared by every stage: atomic writes, NIfTI, JSON, errors.

Every file llnm3d writes goes through :func:`atomic_path`, so a killed run leaves either the old
file or the complete new one, never a truncated file.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from PIL import Image

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(identifier: str) -> str:
    """A file-name-safe form of a case id: characters other than letters, digits, '.', '_' and
    '-' become '_' (and a leading '.' too, so no hidden files)."""
    name = _UNSAFE.sub("_", str(identifier))
    return "_" + name[1:] if name.startswith(".") else name


class InputError(ValueError):
    """Bad input from the user (a file, a parameter, a spec): reported as one line, exit code 2."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; finished outputs get the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.png``) so that libraries which
    pick a format from the file name still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Write arrays as a compressed ``.npz`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON atomically."""
    write_text(path, to_json(data, indent=2) + "\n")


def to_json(data: Any, indent: int | None = None) -> str:
    """JSON text of ``data``; NumPy scalars and arrays and paths are converted."""
    return json.dumps(data, indent=indent, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, turning a parse failure into an :class:`InputError` naming the file."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


MAX_IMAGE_PIXELS = 8192 * 8192
MAX_GREY_FRACTION = 0.05


def read_grayscale(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as a 2D uint8 array, refusing decompression bombs (more than
    :data:`MAX_IMAGE_PIXELS`) before decoding."""
    with Image.open(path) as image:
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise InputError(f"{path}: image of {image.width}x{image.height} pixels is too large")
        return np.asarray(image.convert("L"))


def read_mask(path: str | os.PathLike | None,
              resize_to: tuple[int, int] | None = None) -> np.ndarray | None:
    """Read a mask file as bool (gray >= 128, so JPEG masks work); None for no path.

    More than :data:`MAX_GREY_FRACTION` of grey pixels (33-223) means the file is not a mask
    (e.g. an image or a probability map given by mistake): InputError.

    With ``resize_to`` (rows, cols), a mask of another size is resized to it (nearest
    neighbour): for cohorts whose masks were drawn on resized images, such as the LLNM-Net
    samples (256x256 masks on images of various sizes).
    """
    if path is None:
        return None
    mask = read_grayscale(path)
    # JPEG masks have grey edges; a grey image given as a mask has grey everywhere.
    grey = np.mean((mask > 32) & (mask < 224))
    if grey > MAX_GREY_FRACTION:
        raise InputError(f"{Path(path).name}: not a binary mask ({grey:.0%} of its pixels are "
                         "grey; expected black background and white foreground)")
    if resize_to is not None and mask.shape != tuple(resize_to):
        mask = np.asarray(Image.fromarray(mask).resize(resize_to[::-1], Image.Resampling.NEAREST))
    return mask >= 128


def write_volume(
    path: str | os.PathLike,
    array_zyx: np.ndarray,
    origin_mm: np.ndarray,
    spacing_mm: float,
) -> None:
    """Write a volume in atlas space (LPS, identity direction) as NIfTI, atomically.

    Parameters
    ----------
    array_zyx : ndarray, shape (nz, ny, nx)
        Voxel values, indexed ``[k, j, i]`` as SimpleITK arrays are.
    origin_mm : ndarray, shape (3,)
        Atlas (LPS) position of voxel (0, 0, 0), in mm.
    spacing_mm : float
        Isotropic voxel size in mm.
    """
    image = sitk.GetImageFromArray(array_zyx)
    image.SetOrigin(tuple(float(v) for v in origin_mm))
    image.SetSpacing((float(spacing_mm),) * 3)
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, float]:
    """Read a NIfTI volume written by :func:`write_volume`.

    Returns
    -------
    array_zyx : ndarray, shape (nz, ny, nx)
    origin_mm : ndarray, shape (3,)
    spacing_mm : float

    Raises
    ------
    InputError
        If the file is missing, or its grid is not isotropic and axis-aligned in LPS.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: not a readable volume ({str(exc).splitlines()[0]})") from None
    spacing = np.array(reader.GetSpacing())
    if not np.allclose(spacing, spacing[0], rtol=1e-5):
        raise InputError(f"{path}: voxel spacing {tuple(spacing)} is not isotropic")
    if not np.allclose(np.array(reader.GetDirection()), np.eye(3).ravel(), atol=1e-5):
        raise InputError(f"{path}: direction is not the identity (atlas volumes are LPS-aligned)")
    # ITK's NIfTI reader turns NaN (our "masked") into 0; nibabel keeps the stored values.
    try:
        image = nib.load(path)
        array = np.asarray(image.dataobj).transpose(2, 1, 0)
    except (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise InputError(f"{path}: cannot read the voxel data ({exc})") from None
    return np.ascontiguousarray(array), np.array(reader.GetOrigin()), float(spacing[0])


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written there.

    Raises
    ------
    InputError
        If the folder cannot be created or written to.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(f"{path}: output folder is not writable ({exc.strerror})") from None
    return path
