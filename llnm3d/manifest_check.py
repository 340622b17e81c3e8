"""What a manifest is ready for (``llnm3d check-manifest``).

:func:`check_manifest` reads a manifest with :func:`~llnm3d.manifest.read_manifest`, then opens
the header of every image and mask (format and size, without decoding pixel data) and checks,
stage by stage, what each later stage needs of the rows and nodules (as the stages see them: a
nodule box stands for a nodule mask, and empty sides are filled from the reports):

- ``heatmap``: a nodule mask on every image, of the image's size (or ``--resize-masks``);
- ``register``: per nodule, side L/R on every row, one image per view, no conflicting labels,
  and a thyroid and nodule mask of the image's size on every view, or a coarse location
  (``lobe_third`` + ``front_back``, with ``--allow-coarse-location``);
- ``aggregate``: a label (0/1) on every nodule, and a manifest ready for ``register``;
- ``train``: at least :data:`MIN_TRAIN_IMAGES` labelled images with usable nodule masks per
  view, and a valid ``split`` column when there is one.

A file whose header cannot be read is a problem of its row (reported by ``case_id``, as
:func:`read_manifest` reports its problems); what a stage lacks is reported per stage.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image

from .annotations import BOX_COLUMNS
from .atlas import THIRD_NAMES
from .io import MAX_IMAGE_PIXELS
from .manifest import PATH_COLUMNS, Manifest, read_manifest
from .registration.cohort import _DEPTH as COARSE_DEPTHS  # the front_back words register takes

STAGES = ("heatmap", "register", "aggregate", "train")
# `llnm3d train` refuses fewer labelled images of a view (llnm3d.models.train.train).
MIN_TRAIN_IMAGES = 10
# Case ids shown per reason; the count says how many there are.
SHOWN_IDS = 3
MASK_COLUMNS = ("thyroid_mask", "nodule_mask")
ROW_PROBLEM = "have a row with a problem (listed above)"
COARSE = "lack a thyroid or nodule mask: placed by lobe_third and front_back"
NO_LOCATION = ("lack a thyroid or nodule mask and a coarse location (lobe_third "
               "upper/middle/lower and front_back front/back)")
RESIZED = "have masks of another size than the image (register does not resize)"


@dataclass
class StageReadiness:
    """Whether one stage can use every row (or nodule) of a manifest.

    Attributes
    ----------
    stage : str
        One of :data:`STAGES`.
    ready : bool
        True when the stage can use every row as it is (with ``option``, if one is named).
    option : str or None
        The command-line option the stage needs to use every row (``--resize-masks``,
        ``--allow-coarse-location``), or None.
    reasons : list of str
        Why it is not ready, or why it needs ``option``; each names its first case ids.
    """

    stage: str
    ready: bool
    option: str | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``ready``, ``ready with OPTION`` or ``not ready``."""
        if not self.ready:
            return "not ready"
        return f"ready with {self.option}" if self.option else "ready"

    def lines(self) -> list[str]:
        """One line per reason (``register: not ready: 10 nodules lack side ...``)."""
        return [f"{self.stage}: {self.status}: {reason}" for reason in self.reasons] or [
            f"{self.stage}: {self.status}"]


@dataclass
class ManifestCheck:
    """The result of :func:`check_manifest`.

    Attributes
    ----------
    manifest : Manifest
        The manifest as the stages read it, less the rows whose files' headers are unreadable
        (those are in ``manifest.rejected`` and ``manifest.problems`` too).
    stages : list of StageReadiness
        One per :data:`STAGES`, in that order.
    """

    manifest: Manifest
    stages: list[StageReadiness]

    @property
    def problems(self) -> list[tuple[str, str]]:
        """Rows left out and why: ``(case_id, message)``."""
        return self.manifest.problems

    def stage(self, name: str) -> StageReadiness:
        """The readiness of stage ``name``."""
        return next(s for s in self.stages if s.stage == name)

    def column_lines(self) -> list[str]:
        """A ``warning:`` line per extra column that looks like a misspelt known column, and
        a ``note:`` line per other extra column."""
        lines = []
        for column, suggestion in self.manifest.extra_columns:
            if suggestion:
                lines.append(f"warning: column {column!r} is not a known column; did you mean "
                             f"{suggestion!r}? (kept as an extra column, read by no stage)")
            else:
                lines.append(f"note: extra column {column!r} kept (read by no stage)")
        return lines

    def summary_lines(self) -> list[str]:
        """The counts, the stages it is ready for and the reasons of the others."""
        table = self.manifest.table
        nodules = table.groupby(["patient_id", "nodule_id"]).ngroups if len(table) else 0
        ready = [s.stage + (f" (with {s.option})" if s.option else "")
                 for s in self.stages if s.ready]
        not_ready = [s.stage for s in self.stages if not s.ready]
        lines = [f"{len(table)} valid images, {table['patient_id'].nunique()} patients, "
                 f"{nodules} nodules, {len(self.problems)} problem(s)",
                 f"ready for: {', '.join(ready) or 'no stage'}"]
        if not_ready:
            lines.append(f"not ready for: {', '.join(not_ready)}")
        for readiness in self.stages:
            if readiness.reasons:
                lines.extend(readiness.lines())
        return lines


def check_manifest(path: str | Path, allow_outside: bool = False) -> ManifestCheck:
    """Read a manifest, open its files' headers and say what each stage can do with it.

    Parameters
    ----------
    path : path
        The manifest file.
    allow_outside : bool
        Allow file paths that lead outside the manifest's folder (as the stages take it).

    Raises
    ------
    InputError
        When the file itself is unusable (as :func:`read_manifest`).
    """
    manifest = read_manifest(path, allow_outside=allow_outside)
    sizes, header_problems = read_headers(manifest)
    manifest = _without_rows(manifest, header_problems)
    return ManifestCheck(manifest, stage_readiness(manifest, sizes))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of an image file, from its header (pixel data is not
    decoded).

    Raises
    ------
    ValueError
        Naming why the file cannot be read as an image, or is too large to read.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own limit; io.MAX_IMAGE_PIXELS (smaller) decides here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise ValueError("is too large to read") from None
    except Image.UnidentifiedImageError:
        raise ValueError("is not an image format Pillow can read") from None
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or exc})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"is too large ({width}x{height} pixels)")
    return width, height


def read_headers(manifest: Manifest) -> tuple[dict[str, dict[str, tuple[int, int]]],
                                             list[tuple[str, str]]]:
    """The size of every image and mask of the valid rows, from the file headers.

    Returns
    -------
    sizes : dict
        ``{case_id: {column: (width, height)}}`` for the files that have a path.
    problems : list of (case_id, message)
        Rows with a file that cannot be read as an image.
    """
    sizes, problems = {}, []
    for _, row in manifest.table.iterrows():
        case_sizes = {}
        for column in PATH_COLUMNS:
            path = manifest.path(row, column)
            if path is None:
                continue
            try:
                case_sizes[column] = image_size(path)
            except ValueError as exc:
                problems.append((row["case_id"], f"{column} {row[column]!r} {exc}"))
                break
        else:
            sizes[row["case_id"]] = case_sizes
    return sizes, problems


def stage_readiness(manifest: Manifest, sizes: dict[str, dict[str, tuple[int, int]]]
                    ) -> list[StageReadiness]:
    """What each of :data:`STAGES` lacks in ``manifest``, given the file ``sizes`` of
    :func:`read_headers`."""
    table = manifest.table
    mismatched = {case for case, found in sizes.items()
                  if any(found.get(c, found["image"]) != found["image"] for c in MASK_COLUMNS)}
    register = _register(manifest, mismatched)
    return [_heatmap(table, mismatched), register, _aggregate(table, register),
            _train(table, mismatched)]


def _heatmap(table: pd.DataFrame, mismatched: set[str]) -> StageReadiness:
    if table.empty:
        return StageReadiness("heatmap", False, reasons=["no valid rows"])
    no_mask = table.loc[~_has_nodule_mask(table), "case_id"].tolist()
    resized = [case for case in table["case_id"] if case in mismatched]
    reasons = [_reason(no_mask, "image", "lack a nodule mask")] if no_mask else []
    if resized:
        reasons.append(_reason(resized, "image", "have masks of another size than the image "
                                                 "(resized with --resize-masks)"))
    return StageReadiness("heatmap", not no_mask, "--resize-masks" if resized else None,
                          reasons)


def _register(manifest: Manifest, mismatched: set[str]) -> StageReadiness:
    table = manifest.table
    if table.empty:
        return StageReadiness("register", False, reasons=["no valid rows"])
    keys = ["patient_id", "nodule_id"]
    nodule = table.groupby(keys, sort=False)
    rejected = manifest.rejected.drop_duplicates(keys).set_index(keys)["case_id"]
    no_mask = _empty(table, "thyroid_mask") | ~_has_nodule_mask(table)
    # register places a nodule without masks by the coarse location of its first row
    placeable = _in_nodule(table, ~table.duplicated(keys)
                           & _text(table, "lobe_third").isin(THIRD_NAMES.values())
                           & _text(table, "front_back").isin(COARSE_DEPTHS))
    labels = (nodule["label"].transform("nunique") if "label" in table
              else pd.Series(0, index=table.index))
    in_rejected = pd.Series([key in rejected.index
                             for key in zip(*map(table.get, keys), strict=True)],
                            index=table.index)
    resized = table["case_id"].isin(mismatched)
    # register's checks of a nodule in its order (the first one failed is the nodule's
    # problem): problem, its nodules' rows, the rows it names (None: all of the nodule's)
    checks = [
        (ROW_PROBLEM, in_rejected, in_rejected),
        ("lack side (L/R)", _in_nodule(table, table["side"] == ""), table["side"] == ""),
        ("have views that disagree on the side", nodule["side"].transform("nunique") > 1, None),
        ("have more than one image per view",
         _in_nodule(table, table.duplicated([*keys, "view"], keep=False)), None),
        ("have views that disagree on the label", labels > 1, None),
        (COARSE, _in_nodule(table, no_mask) & placeable, no_mask),
        (NO_LOCATION, _in_nodule(table, no_mask), no_mask),
        (RESIZED, _in_nodule(table, resized), resized),
    ]
    found, decided = {}, pd.Series(False, index=table.index)
    for problem, fails, named in checks:
        hit = fails & ~decided
        decided |= hit
        if hit.any():
            rows = table[hit & (True if named is None else named)]
            keys_seen = dict.fromkeys(zip(*map(rows.get, keys), strict=True))
            ids = (rejected.loc[list(keys_seen)].tolist()
                   if problem == ROW_PROBLEM else rows["case_id"].tolist())
            found[problem] = (table[hit].groupby(keys).ngroups, ids)
    # nodules none of whose rows is valid fail with the problem of their rows
    lost = rejected[~rejected.index.isin(list(nodule.groups))]
    if len(lost):
        count, ids = found.get(ROW_PROBLEM, (0, []))
        found[ROW_PROBLEM] = (count + len(lost), ids + lost.tolist())
    coarse = found.pop(COARSE, None)
    reasons = [_reason(ids, "nodule", problem, count) for problem, (count, ids) in found.items()]
    if coarse:
        reasons.append(_reason(coarse[1], "nodule", COARSE, coarse[0]))
    return StageReadiness("register", not found, "--allow-coarse-location" if coarse else None,
                          reasons)


def _aggregate(table: pd.DataFrame, register: StageReadiness) -> StageReadiness:
    reasons = [] if register.ready else ["needs register, which is not ready"]
    if "label" not in table:
        reasons.append("the manifest has no label column")
    elif not table.empty:
        nodule = table.groupby(["patient_id", "nodule_id"], sort=False)
        unlabelled = nodule["label"].transform("count") == 0
        if unlabelled.any():
            reasons.append(_reason(table.loc[unlabelled, "case_id"].tolist(), "nodule",
                                   "lack a label (0/1)",
                                   table[unlabelled].groupby(["patient_id", "nodule_id"]).ngroups))
    return StageReadiness("aggregate", not reasons, reasons=reasons)


def _train(table: pd.DataFrame, mismatched: set[str]) -> StageReadiness:
    reasons = []
    if "split" in table:
        split = table["split"].astype(str).str.strip().str.lower()
        unknown = sorted(set(split) - {"train", "val"})
        if unknown:
            reasons.append(f"split has values {unknown} (expected train or val)")
        leaked = set(table.loc[split == "train", "patient_id"]) & set(
            table.loc[split == "val", "patient_id"])
        if leaked:
            cases = table.loc[table["patient_id"].isin(leaked), "case_id"].tolist()
            reasons.append(_reason(cases, "patient", "are on both sides of the split",
                                   count=len(leaked)))
    labelled = (table["label"].notna() if "label" in table
                else pd.Series(False, index=table.index))
    usable = labelled & _has_nodule_mask(table) & ~table["case_id"].isin(mismatched)
    for view in sorted(set(table["view"])) or ["transverse"]:
        count = int((usable & (table["view"] == view)).sum())
        if count < MIN_TRAIN_IMAGES:
            reasons.append(f"{count} labelled {view} images with a nodule mask of the image's "
                           f"size (train needs {MIN_TRAIN_IMAGES} per view)")
    if reasons:
        for cases, what in ((table.loc[~labelled, "case_id"], "lack a label (0/1)"),
                            (table.loc[~_has_nodule_mask(table), "case_id"],
                             "lack a nodule mask"),
                            ([c for c in table["case_id"] if c in mismatched],
                             "have masks of another size than the image (train does not "
                             "resize)")):
            if len(cases):
                reasons.append(_reason(list(cases), "image", what))
    return StageReadiness("train", not reasons, reasons=reasons)


def _without_rows(manifest: Manifest, problems: list[tuple[str, str]]) -> Manifest:
    """``manifest`` less the rows of ``problems``, which join its problems and rejected rows."""
    if not problems:
        return manifest
    bad = dict(problems)
    table = manifest.table
    dropped = table["case_id"].isin(bad)
    rejected = table.loc[dropped, ["case_id", "patient_id", "nodule_id"]].copy()
    rejected["problem"] = rejected["case_id"].map(bad)
    return Manifest(table[~dropped].reset_index(drop=True), manifest.root, manifest.source,
                    [*manifest.problems, *problems],
                    pd.concat([manifest.rejected, rejected], ignore_index=True),
                    manifest.extra_columns)


def _empty(table: pd.DataFrame, column: str) -> pd.Series:
    """Whether each row's cell of ``column`` is empty (all rows when there is no column)."""
    if column not in table:
        return pd.Series(True, index=table.index)
    return table[column].fillna("").astype(str).str.strip() == ""


def _has_nodule_mask(table: pd.DataFrame) -> pd.Series:
    """Whether each row has a nodule mask: a mask file, or a box (:mod:`llnm3d.annotations`,
    whose ellipse every stage uses instead)."""
    box = pd.concat([~_empty(table, column) for column in BOX_COLUMNS], axis=1).all(axis=1)
    return ~_empty(table, "nodule_mask") | box


def _text(table: pd.DataFrame, column: str) -> pd.Series:
    """``column`` as register reads it: stripped, lower case ("" where absent)."""
    if column not in table:
        return pd.Series("", index=table.index)
    return table[column].fillna("").astype(str).str.strip().str.lower()


def _in_nodule(table: pd.DataFrame, flags: pd.Series) -> pd.Series:
    """Per row, whether any row of its nodule has ``flags``."""
    return flags.groupby([table["patient_id"], table["nodule_id"]]).transform("any")


def _reason(cases: list[str], unit: str, what: str, count: int | None = None) -> str:
    """``3 nodules lack side (L/R) (a, b, c)``: a count, what, and the first case ids."""
    count = len(cases) if count is None else count
    shown = ", ".join(cases[:SHOWN_IDS]) + (", ..." if len(cases) > SHOWN_IDS else "")
    verb = what if count != 1 else _singular(what)
    return f"{count} {unit}{'s' if count != 1 else ''} {verb} ({shown})"


def _singular(what: str) -> str:
    """The verb of ``what`` for one subject (``lack`` -> ``lacks``, ``have`` -> ``has``)."""
    verb, _, rest = what.partition(" ")
    verb = {"have": "has", "are": "is", "lack": "lacks"}.get(verb, verb)
    return f"{verb} {rest}"
