"""Input/output helpers shared by every stage: atomic writes, NIfTI, JSON, errors.

Every file llnm3d writes goes through :func:`atomic_path`, so a killed run leaves either the old
file or the complete new one, never a truncated file.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from PIL import Image

from .nifti import NiftiHeader, nifti_image

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def file_stem(identifier: str) -> str:
    """The file name (without suffix) of the outputs of a case or nodule id.

    An id made only of letters, digits, '.', '_' and '-' (and not starting with '.') is its own
    name. Any other id has those characters replaced by '_' and ``~`` plus 10 hex digits of the
    SHA-256 of the raw id appended, so ids that clean to the same text (``a/b`` and ``a_b``,
    ``张三`` and ``李四``) never share a file: '~' cannot occur in an id kept as it is.
    """
    text = str(identifier)
    name = _UNSAFE.sub("_", text)
    name = "_" + name[1:] if name.startswith(".") else name
    if name == text:
        return name
    return f"{name}~{hashlib.sha256(text.encode('utf-8')).hexdigest()[:10]}"


def digest(data: Any) -> str:
    """SHA-256 (hex) of the JSON text of ``data`` with sorted keys: a fingerprint of inputs."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=_json_default)
                          .encode("utf-8")).hexdigest()


def file_digest(path: str | os.PathLike | None) -> str | None:
    """SHA-256 (hex) of a file's bytes (None for no path or a missing file)."""
    if path is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None
    # Several stages hash the same inputs in one run; a changed file has a new size or time.
    return _cached_digest(os.path.abspath(path), status.st_ino, status.st_size,
                          status.st_mtime_ns, status.st_ctime_ns)


@functools.lru_cache(maxsize=65536)
def _cached_digest(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


class InputError(ValueError):
    """Bad input from the user (a file, a parameter, a spec): reported as one line, exit code 2."""


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; finished outputs get the usual permissions.
_FILE_MODE = 0o666 & ~_current_umask()


class WriteError(InputError):
    """An output could not be written completely (full disk, read-only or failing file
    system): the previous file, if any, is left as it was."""


# errno values of a full or read-only disk: "cannot write", whatever the operation was.
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
# errno values that mean "this output cannot be written here", as opposed to a bug.
_WRITE_ERRNOS = DISK_ERRNOS | {errno.EIO, errno.EACCES, errno.EPERM}
TEMPORARY_MARK = ".tmp"


def _disk_text(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return f"the disk holding {folder}"
    return f"the disk holding {folder}, {free / 1e6:.1f} MB free"


def _verify_zip(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise ValueError(f"member {bad} is corrupt")


def _verify_nifti(path: Path) -> None:
    image = nib.load(path)
    # Reads and decompresses everything; gzip checks its CRC. (nib.load is typed as returning
    # any image; a NIfTI file's has voxel data, dataobj.)
    np.asarray(image.dataobj)  # type: ignore[attr-defined]


def _verify_png(path: Path) -> None:
    with Image.open(path) as image:
        image.load()


def _verify_glb(path: Path) -> None:
    header = path.read_bytes()[:12]
    if len(header) < 12 or header[:4] != b"glTF":
        raise ValueError("no GLB header")
    if int.from_bytes(header[8:12], "little") != path.stat().st_size:
        raise ValueError("GLB length field differs from the file size")


def _verify_safetensors(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(length))
    end = max((entry["data_offsets"][1] for key, entry in header.items()
               if key != "__metadata__"), default=0)
    if 8 + length + end != size:
        raise ValueError("size differs from what its header says")


# Written by libraries that may not report a short write (SimpleITK prints and returns): read
# back before the file replaces anything.
_VERIFIERS = {".nii.gz": _verify_nifti, ".nii": _verify_nifti, ".npz": _verify_zip,
              ".png": _verify_png, ".glb": _verify_glb, ".safetensors": _verify_safetensors}


def _verify(tmp: Path, suffix: str) -> None:
    if tmp.stat().st_size == 0:
        raise ValueError("nothing was written")
    for ending, verify in _VERIFIERS.items():
        if suffix.endswith(ending):
            verify(tmp)
            return


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, check the file,
    flush it to disk and rename it onto ``path``.

    The temporary name keeps the final suffixes (``.nii.gz``, ``.png``) so that libraries which
    pick a format from the file name still work; it starts with '.' and contains
    :data:`TEMPORARY_MARK`, so readers skip it (:func:`is_temporary`). The check reads back
    NIfTI, npz, PNG, GLB and safetensors files and refuses empty ones, so a writer that
    reports no error on a full disk cannot replace a good file with a truncated one.
    ``mode`` sets the finished file's permissions (e.g. 0o600 for a private key file, which
    then is never readable by others, not even for a moment); default 0666 less the umask.

    Raises
    ------
    WriteError
        If the file cannot be written completely (full disk, read-only or failing file
        system); ``path`` keeps its previous content.
    """
    with atomic_paths([path], mode) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike],
                 mode: int | None = None) -> Iterator[list[Path]]:
    """:func:`atomic_path` for files that belong together (the maps and tables of one
    result): none replaces its previous version until every one is written and checked, so a
    failure leaves the whole previous set, never a mix of old and new files."""
    targets = [Path(p) for p in paths]
    temporaries: list[Path] = []
    current = targets[0] if targets else Path(".")
    try:
        try:
            for current in targets:
                current.parent.mkdir(parents=True, exist_ok=True)
                fd, name = tempfile.mkstemp(prefix=f".{current.name}.",
                                            suffix=f"{TEMPORARY_MARK}{''.join(current.suffixes)}",
                                            dir=current.parent)
                os.close(fd)
                temporaries.append(Path(name))
            yield list(temporaries)
            for current, tmp in zip(targets, temporaries, strict=True):
                try:
                    _verify(tmp, "".join(current.suffixes))
                except OSError:
                    raise
                except Exception as exc:
                    raise WriteError(f"cannot write {current}: the file written is incomplete "
                                     f"({exc}); {_disk_text(current.parent)}") from None
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.chmod(tmp, _FILE_MODE if mode is None else mode)
            for current, tmp in zip(targets, temporaries, strict=True):
                os.replace(tmp, current)
            for folder in {p.parent for p in targets}:
                _fsync_dir(folder)
        except OSError as exc:
            if exc.errno not in _WRITE_ERRNOS:
                raise
            raise WriteError(f"cannot write {current}: {exc.strerror} "
                             f"({_disk_text(current.parent)})") from None
    finally:
        for tmp in temporaries:
            with contextlib.suppress(OSError):
                tmp.unlink()


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a temporary of :func:`atomic_path` (finished or left by a killed
    run); readers of output folders skip them."""
    name = Path(path).name
    return name.startswith(".") and TEMPORARY_MARK in name


def finished_files(folder: str | os.PathLike, pattern: str) -> list[Path]:
    """Files of ``folder`` matching ``pattern``, sorted, without temporaries."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(pattern) if not is_temporary(p) and p.is_file())


def remove_temporaries(folder: str | os.PathLike, older_than: float) -> int:
    """Delete the temporaries of ``folder`` (recursively) last modified before
    ``older_than`` (a ``time.time()``): leftovers of killed runs. Returns how many."""
    removed = 0
    for path in Path(folder).rglob(f".*{TEMPORARY_MARK}*"):
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_mtime < older_than:
                path.unlink()
                removed += 1
    return removed


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
    write_text(path, json_document(data))


def json_document(data: Any) -> str:
    """The text of a JSON file llnm3d writes: ``data`` indented, ending in a newline (for a
    path from :func:`atomic_path` or :func:`atomic_paths`)."""
    return to_json(data, indent=2) + "\n"


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
    header: NiftiHeader | None = None,
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
    header : NiftiHeader, optional
        What the values are (intent, description, display range; :mod:`llnm3d.nifti`).
    """
    with atomic_path(path) as tmp:
        write_nifti(tmp, array_zyx, origin_mm, spacing_mm, header)


def write_nifti(path: str | os.PathLike, array_zyx: np.ndarray, origin_mm: np.ndarray,
                spacing_mm: float, header: NiftiHeader | None = None) -> None:
    """Write a volume as :func:`write_volume` does, but in place (for a path from
    :func:`atomic_path` or :func:`atomic_paths`)."""
    # nibabel rather than SimpleITK: ITK's writer cannot set intent codes or cal_min/max.
    _write_nifti_file(nifti_image(array_zyx, origin_mm, spacing_mm, header), Path(path))


def _write_nifti_file(image: nib.Nifti1Image, path: Path) -> None:
    # Our own file handles, closed even when the disk fills (nib.save leaves its handle to the
    # garbage collector, which keeps a full file system busy); gzip without a name or a time
    # in its header, so the bytes depend on the volume alone.
    with open(path, "wb") as raw:
        if path.suffix != ".gz":
            image.to_file_map({"image": nib.FileHolder(fileobj=raw)})
            return
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6,
                           mtime=0) as stream:
            image.to_file_map({"image": nib.FileHolder(fileobj=stream)})


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
        # nib.load is typed as returning any image; a NIfTI file's has voxel data (dataobj).
        array = np.asarray(image.dataobj).transpose(2, 1, 0)  # type: ignore[attr-defined]
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
