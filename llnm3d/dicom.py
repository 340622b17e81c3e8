"""DICOM import: a folder of ultrasound DICOM files becomes a de-identified cohort folder.

Each file gives one 8-bit grayscale PNG of its B-mode (tissue) region, calibrated by the
file's Sequence of Ultrasound Regions (0018,6011), and one row of ``manifest.csv`` in the
format of docs/conventions.md. Nothing outside the B-mode region (depth scales, burned-in
text) and no DICOM attribute reaches the cohort folder: patients, studies and images get
opaque ids (HMAC-SHA256 with a random secret), and the secret with the mapping back to the
original ids is written to a private key file outside the cohort folder, which no later stage
reads. Each broken file fails by its path while the rest of the folder is imported; a re-run
into the same folder imports only new or changed files. See docs/dicom.md.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ._version import __version__
from .checks import check_number
from .io import (
    InputError,
    atomic_path,
    file_digest,
    file_stem,
    is_temporary,
    json_document,
    read_json,
    remove_temporaries,
    write_json,
    write_text,
)
from .manifest import NUMERIC_RANGES

MANIFEST_COLUMNS = ("case_id", "patient_id", "nodule_id", "side", "view", "image",
                    "thyroid_mask", "nodule_mask", "pixel_spacing_mm", "label", "age", "sex",
                    "report", "study_id", "frame", "frames")
# Columns the import derives from the DICOM file: an annotations CSV cannot set them.
DERIVED_COLUMNS = ("case_id", "patient_id", "image", "pixel_spacing_mm", "study_id", "frame",
                   "frames")
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                         "PALETTE COLOR")
REGION_TISSUE = 1  # RegionDataType of a B-mode (tissue) region
REGION_2D = 1  # RegionSpatialFormat of a 2D (B-mode) region
UNITS_CM = 3  # PhysicalUnitsX/YDirection of centimetres
UNIT_NAMES = {0: "none", 1: "percent", 2: "dB", 3: "cm", 4: "seconds", 5: "hertz",
              6: "dB/seconds", 7: "cm/sec", 8: "cm2", 9: "cm2/sec", 10: "cm3", 11: "cm3/sec",
              12: "degrees"}
# Pixels must be square: llnm3d measures in mm with one spacing per image. 0.1 % leaves room
# for rounding in the stored deltas (0.5 pixel over a 500-pixel image).
SPACING_RTOL = 1e-3
# Ages above 89 are written as 90, as the HIPAA Safe Harbor rule asks.
MAX_AGE_YEARS = 90
KEY_FORMAT = "llnm3d DICOM key 1"
PARAMETERS_FILE = "dicom-import.json"
SAVE_EVERY = 100  # imported files between saves of the manifest and key (a killed run resumes)


class DicomCaseError(InputError):
    """One file cannot be imported: reported with its path while the others import."""


@dataclass
class UltrasoundImage:
    """What the import keeps of one DICOM file.

    Attributes
    ----------
    pixels : ndarray of uint8, shape (rows, cols)
        Grayscale B-mode region, nothing outside it.
    spacing_mm : float
        Isotropic pixel size in mm.
    frame, frames : int
        The frame taken (0-based) and how many the file has.
    side : str
        ``L``, ``R`` or "" (from ImageLaterality or Laterality).
    view : str
        ``transverse``, ``longitudinal`` or "" (from ViewCodeSequence).
    age : float or None
        Years (PatientAge), at most :data:`MAX_AGE_YEARS`.
    sex : str
        ``F``, ``M`` or "".
    identity : dict
        Identifying attributes (PatientID, PatientName, StudyInstanceUID, SOPInstanceUID):
        written to the key file only.
    """

    pixels: np.ndarray
    spacing_mm: float
    frame: int
    frames: int
    side: str = ""
    view: str = ""
    age: float | None = None
    sex: str = ""
    identity: dict = field(default_factory=dict)


@dataclass
class DicomImport:
    """The outcome of :func:`import_dicom`.

    Attributes
    ----------
    manifest : DataFrame
        Every row of the cohort's ``manifest.csv`` (earlier imports included).
    imported, reused : int
        Files imported by this run, and files skipped because they were imported before.
    failures : list of (file, reason)
        Files not imported, by path relative to the source folder.
    notes : list of str
        What the user must fill in, and other remarks.
    key_path : Path
        The private key file.
    """

    manifest: pd.DataFrame
    imported: int
    reused: int
    failures: list[tuple[str, str]]
    notes: list[str]
    key_path: Path


def default_key_path(out_dir: str | os.PathLike) -> Path:
    """The key file of a cohort folder when none is given: ``<OUT>.dicom-key.json`` beside it
    (outside it, so sharing the cohort folder never shares the key)."""
    out_dir = Path(out_dir).resolve()
    return out_dir.parent / f"{out_dir.name}.dicom-key.json"


def import_dicom(source_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 key_path: str | os.PathLike | None = None, frame: int | None = None,
                 annotations: str | os.PathLike | None = None,
                 progress: bool = True) -> DicomImport:
    """Import every DICOM file under ``source_dir`` into the cohort folder ``out_dir``.

    Writes ``out_dir/images/<case_id>.png`` (the B-mode region, 8-bit grayscale),
    ``out_dir/manifest.csv`` and ``out_dir/dicom-import.json`` (the parameters), and the key
    file. Rows already in ``manifest.csv`` are kept as they are (values filled in by hand
    survive a re-run, and a changed file that is imported again keeps them), except that
    ``annotations`` values replace theirs.

    Parameters
    ----------
    source_dir : path
        Folder searched recursively; hidden files and DICOMDIR indexes are skipped, every
        other file must be a DICOM ultrasound image.
    out_dir : path
        Cohort folder (created if needed; a re-run resumes it).
    key_path : path, optional
        Private key file: the HMAC secret and the mapping from opaque ids to the original
        patient, study and image ids. Default :func:`default_key_path`. Must lie outside
        ``out_dir``; reused by later imports into the same cohort so ids stay the same.
    frame : int, optional
        Frame of multi-frame files (0-based); default the middle one (``frames // 2``).
        Single-frame files use their only frame.
    annotations : path, optional
        CSV with a ``file`` column (path relative to ``source_dir``) and any manifest columns
        the files cannot tell (``nodule_id``, ``view``, ``side``, ``label``, ``age``, ``sex``,
        ``report``, ...): its values go into the manifest.
    progress : bool
        Show a progress bar.

    Raises
    ------
    InputError
        A missing source folder, a key file inside the cohort folder or unreadable, a cohort
        imported with another ``frame``, or an unusable annotations CSV.
    """
    started = time.time()
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    if not source_dir.is_dir():
        raise InputError(f"{source_dir}: DICOM folder not found")
    if frame is not None:
        check_number("frame", frame, low=0, integer=True)
    if out_dir.resolve().is_relative_to(source_dir.resolve()):
        raise InputError(f"{out_dir}: the cohort folder must lie outside the DICOM folder "
                         f"{source_dir}")
    key_path = Path(key_path) if key_path is not None else default_key_path(out_dir)
    if key_path.resolve().is_relative_to(out_dir.resolve()):
        raise InputError(f"{key_path}: the key file identifies patients and must lie outside "
                         f"the cohort folder {out_dir}")
    extra = _read_annotations(annotations) if annotations is not None else {}
    _check_parameters(out_dir, {"frame": "middle" if frame is None else frame})
    remove_temporaries(out_dir, started)
    key = _load_key(key_path)
    rows = _read_rows(out_dir)
    done = {entry["sha256"]: case_id for case_id, entry in key["cases"].items()}
    secret = bytes.fromhex(key["secret"])

    failures: list[tuple[str, str]] = []
    sources: dict[str, str] = {}  # case_id -> file of this run
    imported = reused = 0
    files = [p for p in _dicom_candidates(source_dir) if p.resolve() != key_path.resolve()]
    for path in tqdm(files, desc="import-dicom", unit="file", disable=not progress):
        name = path.relative_to(source_dir).as_posix()
        # A WriteError (full disk) is no problem of the file: it stops the run (exit 2), while
        # a DicomCaseError fails the file only.
        try:
            case_id = done.get(file_digest(path))
            finished = case_id in rows and (out_dir / rows[case_id]["image"]).is_file()
            if not finished:
                image = read_ultrasound(path, frame)
                case_id = _opaque_id(secret, "C", image.identity["SOPInstanceUID"])
            # A finished case's id is a key of rows; any other got its id just above.
            assert case_id is not None
            if case_id in sources:
                raise DicomCaseError(f"the same image (SOP Instance UID) as {sources[case_id]}")
        except DicomCaseError as exc:
            failures.append((name, str(exc)))
            continue
        except OSError as exc:  # unreadable (permissions, a failing disk)
            failures.append((name, f"cannot read the file ({exc.strerror or exc})"))
            continue
        sources[case_id] = name
        if finished:
            rows[case_id] = _merge(rows[case_id], extra.pop(name, {}))
            reused += 1
            continue
        row = _case_row(image, case_id, secret)
        _write_png(out_dir / row["image"], image.pixels)
        # A changed file keeps the cells filled in by hand in its earlier row.
        earlier = {column: value for column, value in rows.get(case_id, {}).items()
                   if column not in DERIVED_COLUMNS}
        rows[case_id] = _merge(_merge(row, earlier), extra.pop(name, {}))
        key["cases"][case_id] = {"file": name, "sha256": file_digest(path),
                                 "patient_id": row["patient_id"], **image.identity}
        imported += 1
        if imported % SAVE_EVERY == 0:
            _save(out_dir, key_path, key, rows)
    _save(out_dir, key_path, key, rows)
    manifest = pd.DataFrame(list(rows.values()), columns=_columns(rows)).fillna("")
    return DicomImport(manifest, imported, reused, failures,
                       _notes(manifest, sorted(extra), key_path), key_path)


def read_ultrasound(path: str | os.PathLike, frame: int | None = None) -> UltrasoundImage:
    """Read one ultrasound DICOM file: the chosen frame's B-mode region as 8-bit grayscale,
    its pixel size and the attributes the manifest can use.

    Raises
    ------
    DicomCaseError
        Not a DICOM file; no (single) B-mode region; spacing not in cm, not positive or not
        isotropic; a photometric interpretation not in :data:`SUPPORTED_PHOTOMETRIC`; a
        compressed transfer syntax without an installed decoder; no such frame.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except InvalidDicomError:
        raise DicomCaseError("not a DICOM file (no 'DICM' file header)") from None
    except (EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise DicomCaseError(f"not a readable DICOM file ({_first_line(exc)})") from None
    try:
        return _ultrasound_image(path, header, frame)
    except DicomCaseError:  # a ValueError too (InputError), but already said well
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        # A value of the wrong type or form (pydicom converts values when they are used).
        raise DicomCaseError(f"malformed DICOM attributes ({type(exc).__name__}: "
                             f"{_first_line(exc)})") from None


def _ultrasound_image(path: str | os.PathLike, header, frame: int | None) -> UltrasoundImage:
    """:func:`read_ultrasound` once the header is read."""
    rows_slice, cols_slice, spacing_mm = bmode_region(header)
    photometric = str(header.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise DicomCaseError(f"unsupported photometric interpretation {photometric!r} "
                             f"(supported: {', '.join(SUPPORTED_PHOTOMETRIC)})")
    frames = int(header.get("NumberOfFrames", 1) or 1)
    index = _frame_index(frames, frame)
    pixels = _decode(path, header, index if frames > 1 else None)
    if pixels.shape[0] < rows_slice.stop or pixels.shape[1] < cols_slice.stop:
        raise DicomCaseError(f"the B-mode region (rows {rows_slice.start}-{rows_slice.stop - 1}, "
                             f"columns {cols_slice.start}-{cols_slice.stop - 1}) extends beyond "
                             f"the {pixels.shape[0]}x{pixels.shape[1]} image")
    return UltrasoundImage(to_grayscale(pixels[rows_slice, cols_slice], header), spacing_mm,
                           index, frames, side=_side(header), view=_view(header),
                           age=_age_years(header), sex=_sex(header),
                           identity=_identity(header))


def bmode_region(header) -> tuple[slice, slice, float]:
    """The B-mode (tissue) region of an ultrasound dataset and its pixel size.

    Returns
    -------
    rows, cols : slice
        The region's rows and columns in the image.
    spacing_mm : float
        Isotropic pixel size in mm (PhysicalDeltaX/Y are in cm).

    Raises
    ------
    DicomCaseError
        No Sequence of Ultrasound Regions, not exactly one 2D tissue region, units other than
        cm, a spacing that is not positive or not isotropic, or outside the manifest's range.
    """
    regions = header.get("SequenceOfUltrasoundRegions")
    if not regions:
        raise DicomCaseError("no Sequence of Ultrasound Regions (0018,6011): the pixel size "
                             "and the B-mode region are unknown")
    tissue = [r for r in regions if r.get("RegionDataType") == REGION_TISSUE
              and r.get("RegionSpatialFormat", REGION_2D) == REGION_2D]
    if not tissue:
        raise DicomCaseError("no B-mode region (RegionDataType 1, 2D) in the Sequence of "
                             "Ultrasound Regions")
    if len(tissue) > 1:
        raise DicomCaseError(f"{len(tissue)} B-mode regions (a split screen); the import "
                             "takes images with one")
    region = tissue[0]
    deltas_mm = []
    for axis in ("X", "Y"):
        unit = region.get(f"PhysicalUnits{axis}Direction")
        if unit != UNITS_CM:
            raise DicomCaseError(f"PhysicalUnits{axis}Direction of the B-mode region is "
                                 f"{unit} ({UNIT_NAMES.get(unit, 'unknown')}), not 3 (cm)")
        delta = region.get(f"PhysicalDelta{axis}")
        if delta is None or not np.isfinite(float(delta)) or float(delta) <= 0:
            raise DicomCaseError(f"PhysicalDelta{axis} of the B-mode region is {delta} cm: "
                                 "a pixel size must be positive")
        deltas_mm.append(float(delta) * 10.0)
    if not np.isclose(deltas_mm[0], deltas_mm[1], rtol=SPACING_RTOL, atol=0):
        raise DicomCaseError(f"pixels are not square ({deltas_mm[0]:.5g} mm wide, "
                             f"{deltas_mm[1]:.5g} mm high): llnm3d needs isotropic pixels")
    spacing_mm = float(np.mean(deltas_mm))
    low, high, _ = NUMERIC_RANGES["pixel_spacing_mm"]
    if not low <= spacing_mm <= high:
        raise DicomCaseError(f"pixel size {spacing_mm:.5g} mm is outside the physical range "
                             f"{low:g}-{high:g} mm")
    bounds = [region.get(f"RegionLocation{name}") for name in ("MinX0", "MinY0", "MaxX1",
                                                                 "MaxY1")]
    if None in bounds or bounds[2] < bounds[0] or bounds[3] < bounds[1]:
        raise DicomCaseError(f"the B-mode region's location {bounds} (RegionLocationMinX0, "
                             "MinY0, MaxX1, MaxY1) is not a rectangle")
    min_x, min_y, max_x, max_y = (int(b) for b in bounds)
    # The region's corners are inclusive pixel coordinates.
    return slice(min_y, max_y + 1), slice(min_x, max_x + 1), spacing_mm


def to_grayscale(pixels: np.ndarray, header) -> np.ndarray:
    """One decoded frame as 8-bit grayscale.

    Parameters
    ----------
    pixels : ndarray, shape (rows, cols) or (rows, cols, 3)
        As pydicom decodes it without colour conversion: monochrome values, palette indices,
        RGB, or YBR (YBR_FULL, YBR_FULL_422 upsampled).
    header : pydicom Dataset
        For the photometric interpretation, bits stored and palette.

    Returns
    -------
    ndarray of uint8, shape (rows, cols)
        Monochrome scaled from the stored bit range (MONOCHROME1 inverted, so bright is
        echogenic); colour as ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B, as PIL's "L"),
        which for YBR_FULL is its Y channel.
    """
    from pydicom.pixels import apply_color_lut

    photometric = str(header.PhotometricInterpretation).strip()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, header)
        bits = int(header.RedPaletteColorLookupTableDescriptor[2])
        signed = False
    else:
        bits = int(header.get("BitsStored", 8))
        signed = int(header.get("PixelRepresentation", 0)) == 1
    if photometric.startswith("YBR_FULL"):
        pixels = pixels[..., 0]  # full-range Y is the BT.601 luma: no conversion to RGB
    values = pixels.astype(np.float64)
    if signed:
        values += 2.0 ** (bits - 1)
    values *= 255.0 / (2.0 ** bits - 1)
    if values.ndim == 3:
        values = values @ np.array([0.299, 0.587, 0.114])
    if photometric == "MONOCHROME1":
        values = 255.0 - values
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _decode(path: str | os.PathLike, header, index: int | None) -> np.ndarray:
    """Decode one frame (``index``; None for a single-frame file) of the file's pixel data."""
    from pydicom.pixels import get_decoder, pixel_array

    syntax = header.file_meta.get("TransferSyntaxUID")
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise DicomCaseError(f"transfer syntax {syntax.name} ({syntax}) is not supported "
                                 "by pydicom") from None
        if not decoder.is_available:
            raise DicomCaseError(f"pixel data compressed as {syntax.name} ({syntax}) and no "
                                 "decoder for it is installed (install one of: "
                                 f"{'; '.join(decoder.missing_dependencies)})")
    try:
        return pixel_array(str(path), index=index, as_rgb=False)
    except Exception as exc:  # pydicom raises many kinds for broken pixel data
        raise DicomCaseError(f"cannot decode the pixel data ({_first_line(exc)})") from None


def _frame_index(frames: int, frame: int | None) -> int:
    """The 0-based frame to take: ``frame`` for multi-frame files (default the middle one),
    0 for single-frame files."""
    if frames <= 1:
        return 0
    if frame is None:
        return frames // 2
    if frame >= frames:
        raise DicomCaseError(f"has {frames} frames (0-{frames - 1}); --frame {frame} is not "
                             "one of them")
    return frame


def _side(header) -> str:
    for name in ("ImageLaterality", "Laterality"):
        value = str(header.get(name, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
    return ""


def _view(header) -> str:
    """``transverse`` or ``longitudinal`` from the View Code Sequence's meaning, else ""."""
    for item in header.get("ViewCodeSequence", []) or []:
        meaning = str(item.get("CodeMeaning", "")).lower()
        if "transverse" in meaning or "axial" in meaning:
            return "transverse"
        if "longitudinal" in meaning or "sagittal" in meaning:
            return "longitudinal"
    return ""


def _age_years(header) -> float | None:
    """PatientAge (``nnnD``, ``nnnW``, ``nnnM`` or ``nnnY``) in years, capped at
    :data:`MAX_AGE_YEARS`; None when absent or malformed."""
    text = str(header.get("PatientAge", "") or "").strip().upper()
    days_per_unit = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}
    if len(text) != 4 or not text[:3].isdigit() or text[3] not in days_per_unit:
        return None
    years = int(text[:3]) * days_per_unit[text[3]] / 365.25
    return float(min(round(years, 1), MAX_AGE_YEARS))


def _sex(header) -> str:
    value = str(header.get("PatientSex", "") or "").strip().upper()
    return value if value in ("F", "M") else ""


def _identity(header) -> dict:
    """The identifying attributes the key file maps opaque ids back to."""
    def text(name: str) -> str:
        return str(header.get(name, "") or "").strip()

    identity = {name: text(name) for name in ("PatientID", "IssuerOfPatientID", "PatientName",
                                              "StudyInstanceUID", "SOPInstanceUID")}
    if not identity["SOPInstanceUID"]:
        raise DicomCaseError("no SOP Instance UID (0008,0018): the image cannot be identified")
    return identity


def _case_row(image: UltrasoundImage, case_id: str, secret: bytes) -> dict:
    """The manifest row of an imported image (opaque ids only)."""
    identity = image.identity
    # Without a PatientID the study stands for the patient (one patient per study).
    patient = (f"{identity['IssuerOfPatientID']}\x00{identity['PatientID']}"
               if identity["PatientID"] else f"study\x00{identity['StudyInstanceUID']}")
    return {"case_id": case_id, "patient_id": _opaque_id(secret, "P", patient),
            "nodule_id": "", "side": image.side, "view": image.view,
            "image": f"images/{file_stem(case_id)}.png", "thyroid_mask": "", "nodule_mask": "",
            "pixel_spacing_mm": f"{image.spacing_mm:.6g}", "label": "",
            "age": "" if image.age is None else f"{image.age:g}", "sex": image.sex,
            "report": "", "study_id": _opaque_id(secret, "S", identity["StudyInstanceUID"]),
            "frame": str(image.frame), "frames": str(image.frames)}


def _opaque_id(secret: bytes, prefix: str, value: str) -> str:
    """``prefix`` and 16 hex digits of HMAC-SHA256(secret, prefix:value): the same value gives
    the same id under one key; without the key the value cannot be recovered or tested."""
    mac = hmac.new(secret, f"{prefix}:{value}".encode(), hashlib.sha256)
    return f"{prefix}{mac.hexdigest()[:16]}"


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """Write an 8-bit grayscale PNG atomically (no text chunks: nothing but pixels)."""
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def _dicom_candidates(source_dir: Path) -> list[Path]:
    """Every non-hidden file under ``source_dir`` except DICOMDIR indexes, sorted."""
    files = []
    for path in sorted(source_dir.rglob("*")):
        parts = path.relative_to(source_dir).parts
        if any(part.startswith(".") for part in parts) or not path.is_file():
            continue
        if path.name.upper() == "DICOMDIR" or is_temporary(path):
            continue
        files.append(path)
    return files


def _read_annotations(path: str | os.PathLike) -> dict[str, dict]:
    """An annotations CSV as {file relative to the source folder: {column: value}}."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: annotations file not found")
    try:
        table = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False,
                            encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot parse annotations ({_first_line(exc)})") from None
    table.columns = [c.strip() for c in table.columns]
    if "file" not in table.columns:
        raise InputError(f"{path}: annotations need a 'file' column (paths relative to the "
                         "DICOM folder)")
    derived = sorted(set(table.columns) & set(DERIVED_COLUMNS))
    if derived:
        raise InputError(f"{path}: column(s) {', '.join(derived)} are set by the import and "
                         "cannot be given")
    if table["file"].duplicated().any():
        raise InputError(f"{path}: file {table['file'][table['file'].duplicated()].iloc[0]!r} "
                         "appears twice")
    return {Path(row.pop("file").strip()).as_posix(): {k: v.strip() for k, v in row.items()}
            for row in table.to_dict("records")}


def _merge(row: dict, values: dict) -> dict:
    """``row`` with the non-empty values of ``values`` (an annotation, an earlier row)."""
    return row | {column: value for column, value in values.items() if value != ""}


def _load_key(path: Path) -> dict:
    """The key file, or a new key (random 256-bit secret) written at once, so that images
    written before a killed run ends keep their ids."""
    if path.exists():
        key = read_json(path)
        if not isinstance(key, dict) or key.get("format") != KEY_FORMAT:
            raise InputError(f"{path}: not an llnm3d DICOM key file")
        return key
    key = {"format": KEY_FORMAT,
           "warning": "This file maps the cohort's opaque ids back to patients: keep it "
                      "private and never share it with the cohort.",
           "secret": secrets.token_hex(32), "cases": {}}
    _write_key(path, key)
    return key


def _write_key(path: Path, key: dict) -> None:

    with atomic_path(path, mode=0o600) as tmp:
        tmp.write_text(json_document(key), encoding="utf-8")


def _check_parameters(out_dir: Path, parameters: dict) -> None:
    """Record the import's parameters in the cohort, refusing one imported with others."""
    path = out_dir / PARAMETERS_FILE
    if path.exists():
        recorded = read_json(path).get("parameters", {})
        if recorded != parameters:
            raise InputError(f"{out_dir} was imported with {recorded}, not {parameters}; "
                             "import into another folder")
        return
    write_json(path, {"parameters": parameters, "llnm3d": __version__})


def _read_rows(out_dir: Path) -> dict[str, dict]:
    """The rows of an earlier import's manifest by case_id ({} for a new cohort)."""
    path = out_dir / "manifest.csv"
    if not path.exists():
        return {}
    try:
        # Sniffed: a manifest edited in a spreadsheet may come back semicolon separated.
        table = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False,
                            encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot parse the cohort's manifest ({_first_line(exc)})") \
            from None
    if "case_id" not in table.columns or "image" not in table.columns:
        raise InputError(f"{path}: not a manifest of an import (no case_id or image column)")
    return {row["case_id"]: row for row in table.to_dict("records")}


def _columns(rows: dict[str, dict]) -> list[str]:
    """The manifest's columns first, then any others the rows hold, in order of appearance."""
    extra = dict.fromkeys(c for row in rows.values() for c in row if c not in MANIFEST_COLUMNS)
    return [*MANIFEST_COLUMNS, *extra]


def _save(out_dir: Path, key_path: Path, key: dict, rows: dict[str, dict]) -> None:
    """Write the key, then the manifest: every row in the manifest has its key entry."""
    _write_key(key_path, key)
    table = pd.DataFrame(list(rows.values()), columns=_columns(rows)).fillna("")
    write_text(out_dir / "manifest.csv", table.to_csv(index=False, lineterminator="\n"))


def _notes(manifest: pd.DataFrame, unmatched: list[str], key_path: Path) -> list[str]:
    """What the user must fill in before the cohort can be used, and where the key is."""
    notes = []
    for column, what in (("view", "view (transverse or longitudinal)"),
                         ("nodule_id", "nodule_id (the views of one nodule share it)"),
                         ("side", "side (L or R; the lobe of the nodule)")):
        empty = int((manifest[column].astype(str).str.strip() == "").sum()) if len(manifest) \
            else 0
        if empty:
            notes.append(f"{empty} of {len(manifest)} images have no {what}: fill it in "
                         "manifest.csv or pass --annotations")
    if len(manifest):
        notes.append("DICOM holds no masks: thyroid_mask and nodule_mask are empty (draw them "
                     "on images/*.png and add their paths)")
    if unmatched:
        notes.append(f"{len(unmatched)} annotation row(s) match no imported file, e.g. "
                     f"{unmatched[0]!r}")
    notes.append(f"the key {key_path} maps opaque ids back to patients: keep it private")
    return notes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
