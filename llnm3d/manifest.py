"""The cohort manifest: one CSV row per image (columns in docs/conventions.md), read and validated.

Problems are reported per row, by ``case_id``, so one broken case never stops a cohort: the
valid rows are returned alongside the list of problems. Problems with the file itself (missing,
unreadable, required columns absent) raise :class:`~llnm3d.io.InputError`.
"""

from __future__ import annotations

import csv
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ._version import __version__
from .annotations import BOX_COLUMNS, box_problem, nodule_box
from .io import InputError, digest, file_digest, file_stem
from .report_location import PROVENANCE_COLUMNS, fill_location_from_reports

REQUIRED_COLUMNS = ("case_id", "patient_id", "nodule_id", "side", "view", "image")
OPTIONAL_COLUMNS = ("thyroid_mask", "nodule_mask", "pixel_spacing_mm", "label", "age", "sex",
                    "report", "flip_horizontal")
SIDES = ("L", "R")
VIEWS = ("transverse", "longitudinal")
PATH_COLUMNS = ("image", "thyroid_mask", "nodule_mask")
# Extra columns that stages read besides the optional ones (register's coarse location, train's
# split, nodule boxes, where a location came from): check-manifest does not flag them.
STAGE_COLUMNS = ("lobe_third", "front_back", "split", *BOX_COLUMNS, "nodule_box",
                 "location_source", *PROVENANCE_COLUMNS)
KNOWN_COLUMNS = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *STAGE_COLUMNS)
# How close (difflib ratio) an unknown column must be to a known one to be called a misspelling
# of it: 0.7 catches "lable", "thyroid_msk", "veiw", "Sex", but not "hospital" for "split".
MISSPELLING_CUTOFF = 0.7
DICOM_SUFFIXES = (".dcm", ".dicom")
# What LLNM-Net reads of a row besides its files: a change in any makes its heatmap stale.
MODEL_FIELDS = ("case_id", "view", "pixel_spacing_mm", "report", "age", "sex")
# Physical ranges of the numeric columns (inclusive): (low, high, unit). Thyroid ultrasound
# pixels are 0.05-0.3 mm; 0.01-2 mm leaves room for any probe or resampling while refusing
# what is no pixel size at all (a unit slip such as micrometres or metres, a broken export),
# which would scale every registered nodule by the same error. Ages are whole human lifespans.
NUMERIC_RANGES = {"pixel_spacing_mm": (0.01, 2.0, "mm"), "age": (0.0, 120.0, "years")}


@dataclass
class Manifest:
    """A validated manifest.

    Attributes
    ----------
    table : pandas.DataFrame
        Valid rows, with normalised ``side`` (L/R, or "" when unknown), ``view``, numeric
        ``pixel_spacing_mm``, ``label`` (0/1 or missing), ``age`` and ``sex``; extra columns
        kept as they were.
    root : Path
        Folder of the manifest; paths in the table are relative to it.
    source : Path or None
        The manifest file it was read from.
    problems : list of (case_id, message)
        Rows left out and why.
    rejected : pandas.DataFrame
        The rows left out (raw ``case_id``, ``patient_id``, ``nodule_id``) with their
        ``problem``, so per-nodule stages can fail the nodule they belong to.
    extra_columns : list of (column, suggestion)
        The columns that no stage reads (not in :data:`KNOWN_COLUMNS`), each with the known
        column it is likely a misspelling of (:func:`extra_columns`), or None.
    """

    table: pd.DataFrame
    root: Path
    source: Path | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)
    rejected: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(
        columns=["case_id", "patient_id", "nodule_id", "problem"]))
    extra_columns: list[tuple[str, str | None]] = field(default_factory=list)

    def path(self, row: pd.Series, column: str) -> Path | None:
        """Absolute path of a file column of a row (None where the cell is empty)."""
        value = row.get(column)
        return None if pd.isna(value) or value == "" else self.root / str(value)

    def model_input_digest(self, row: pd.Series) -> str:
        """Digest of what a row's heatmap is computed from: the :data:`MODEL_FIELDS`, the
        bytes of its image and masks, and the llnm3d version (stored with each heatmap, so a
        resumed ``heatmap`` and ``register`` notice a corrected row or a redrawn mask)."""
        fields: dict[str, Any] = {name: (None if pd.isna(row.get(name)) else str(row.get(name)))
                                  for name in MODEL_FIELDS}
        files = {column: file_digest(self.path(row, column)) for column in PATH_COLUMNS}
        box = nodule_box(row)
        # Only a box that makes the mask is an input (a row's mask file wins); digests of
        # rows without one stay as they were.
        if box is not None and self.path(row, "nodule_mask") is None:
            fields["nodule_box"] = list(box)
        return digest({"fields": fields, "files": files, "llnm3d": __version__})


def as_manifest(source: str | Path | Manifest) -> Manifest:
    """``source`` itself if already read, else :func:`read_manifest` of it (paths inside the
    manifest's folder only; read it yourself with ``allow_outside=True`` to allow others)."""
    return source if isinstance(source, Manifest) else read_manifest(source)


def read_manifest(path: str | Path, allow_outside: bool = False) -> Manifest:
    """Read and validate a manifest CSV (comma or semicolon separated, with or without a BOM).

    Parameters
    ----------
    path : path
        The manifest file.
    allow_outside : bool
        Allow file paths that lead outside the manifest's folder (refused by default).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path}: manifest is not UTF-8 text") from None
    header = text.splitlines()[0] if text else ""
    delimiter = ";" if header.count(";") > header.count(",") else ","
    try:
        table = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False,
                            encoding="utf-8-sig", quoting=csv.QUOTE_MINIMAL)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: cannot parse manifest ({exc})") from None
    table.columns = [c.strip() for c in table.columns]
    extra = extra_columns(table.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        hints = "".join(f" (column {column!r}: did you mean {suggestion!r}?)"
                        for column, suggestion in extra if suggestion in missing)
        raise InputError(f"{path}: manifest lacks required column(s) {', '.join(missing)}"
                         f"{hints}")
    root = path.parent.resolve()
    problems: list[tuple[str, str]] = []
    keep, left_out = [], []
    seen: set[str] = set()
    file_names: dict[str, str] = {}
    for index, row in table.iterrows():
        case_id = row["case_id"].strip() or f"row {index + 2}"
        problem = _row_problem(row, root, allow_outside)
        if problem is None and case_id in seen:
            problem = "duplicate case_id"
        # Outputs are named by the id: ids differing only in letter case would share files on
        # case-insensitive disks (macOS, Windows).
        folded = file_stem(case_id).casefold()
        if problem is None and file_names.get(folded, case_id) != case_id:
            problem = (f"case_id differs from {file_names[folded]!r} only in letter case; "
                       "their output files would collide on case-insensitive disks")
        if problem:
            problems.append((case_id, problem))
            left_out.append(index)
        else:
            keep.append(index)
            file_names.setdefault(folded, case_id)
        seen.add(case_id)
    valid = _normalise(table.loc[keep].copy())
    rejected = table.loc[left_out, ["case_id", "patient_id", "nodule_id"]].apply(
        lambda column: column.str.strip())
    rejected["problem"] = [problem for _, problem in problems]
    return Manifest(valid.reset_index(drop=True), root, path, problems,
                    rejected.reset_index(drop=True), extra)


def extra_columns(columns) -> list[tuple[str, str | None]]:
    """The columns that are not in :data:`KNOWN_COLUMNS` (kept, read by no stage), each with
    the known column it most resembles among those the manifest lacks (ignoring letter case,
    :data:`MISSPELLING_CUTOFF`), or None: ``lable`` gives ``label``, ``scanner`` None."""
    present = set(columns)
    absent = {known.casefold(): known for known in KNOWN_COLUMNS if known not in present}
    found = []
    for column in columns:
        if column in KNOWN_COLUMNS:
            continue
        close = difflib.get_close_matches(column.casefold(), list(absent), n=1,
                                          cutoff=MISSPELLING_CUTOFF)
        found.append((column, absent[close[0]] if close else None))
    return found


def _row_problem(row: pd.Series, root: Path, allow_outside: bool) -> str | None:
    """The first problem of a row, or None."""
    if not row["case_id"].strip():
        return "empty case_id"
    if row["side"].strip().upper() not in (*SIDES, ""):
        return f"unknown side {row['side']!r} (expected L, R, or empty when unknown)"
    if row["view"].strip().lower() not in VIEWS:
        return f"unknown view {row['view']!r} (expected transverse or longitudinal)"
    for column in NUMERIC_RANGES:
        problem = _number_problem(column, row.get(column, "").strip())
        if problem:
            return problem
    if row.get("label", "").strip() not in ("", "0", "1"):
        return f"label {row['label']!r} must be 0, 1 or empty"
    if row.get("sex", "").strip().upper() not in ("", "F", "M"):
        return f"sex {row['sex']!r} must be F, M or empty"
    for column in PATH_COLUMNS:
        value = row.get(column, "").strip()
        if not value:
            if column == "image":
                return "no image path"
            continue
        target = (root / value).resolve()
        if not allow_outside and not target.is_relative_to(root):
            return _outside_problem(column, value, root, target)
        if not target.is_file():
            return f"{column} file {value!r} not found"
        if _is_dicom(target):
            return f"{column} {value!r} is DICOM: convert with `llnm3d import-dicom`"
    return box_problem(row, root / row["image"].strip())


def _outside_problem(column: str, value: str, root: Path, target: Path) -> str:
    """Why a file path leading outside the cohort folder (to ``target``) is refused, naming
    the option that allows it."""
    # A path whose text stays inside the folder leaves it through a symlink: say where to.
    through = Path(os.path.normpath(root / value)).is_relative_to(root)
    via = f" (through a symlink, to {target})" if through else ""
    return (f"{column} path {value!r} leads outside the cohort folder{via}; use "
            "--allow-outside to allow it")


def _is_dicom(path: Path) -> bool:
    """Whether a file is DICOM, which no stage reads: by its suffix, or by the ``DICM`` mark
    at byte 128 of a DICOM file whatever its name (one 132-byte read)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _number_problem(column: str, value: str) -> str | None:
    """Why a numeric cell is unusable (not a finite number, outside
    :data:`NUMERIC_RANGES`), or None for a usable or empty one."""
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return f"{column} {value!r} is not a number"
    low, high, unit = NUMERIC_RANGES[column]
    if not math.isfinite(number):
        return f"{column} {value!r} is not a finite number"
    if not number > 0 and not (column == "age" and number == 0):
        return f"{column} {value!r} must be positive"
    if not low <= number <= high:
        return f"{column} {value!r} is outside the physical range {low:g}-{high:g} {unit}"
    return None


def _normalise(table: pd.DataFrame) -> pd.DataFrame:
    table["case_id"] = table["case_id"].str.strip()
    table["side"] = table["side"].str.strip().str.upper()
    table["view"] = table["view"].str.strip().str.lower()
    for column in ("pixel_spacing_mm", "age"):
        if column in table:
            table[column] = pd.to_numeric(table[column].str.strip().replace("", None))
    if "label" in table:
        table["label"] = pd.to_numeric(table["label"].str.strip().replace("", None)).astype("Int64")
    if "sex" in table:
        table["sex"] = table["sex"].str.strip().str.upper()
    # Empty side, lobe_third and front_back are read from the report, and recorded as such.
    return fill_location_from_reports(table)
