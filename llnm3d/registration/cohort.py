"""Registering a cohort: manifest + heatmaps -> one sparse 3D patch per nodule and a QC table.

Output folder::

    patches/<nodule>.npz   the nodule's patch (see :func:`save_patch`) and its QC row
    qc.csv                 one row per nodule of the manifest (columns in :data:`QC_COLUMNS`)
    register.json          parameters, atlas grid, software version, counts

A nodule is ``(patient_id, nodule_id)``; its key is ``<patient_id>-N<nodule_id>``
(:func:`nodule_key`), its patch file is named by :func:`llnm3d.io.file_stem` of the key, and two
nodules whose keys or file names would coincide fail with a reason naming both. Resumable by
content (:mod:`llnm3d.resume`): a nodule whose patch holds the digest of its current inputs
(manifest fields, the bytes of its images, masks and heatmaps, the llnm3d version) is not
registered again, a changed or unreadable one is redone, failed nodules are retried, and a run
with other parameters into the same folder is refused. Parallel over nodules on local processes or a
Dask cluster (:func:`llnm3d.parallel.map_cases`); each nodule is computed single-threaded from
its own inputs, so the results do not depend on where or in which order they ran.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from PIL import Image
from skimage.measure import regionprops

from .._version import __version__
from ..annotations import BOX_NOTE, nodule_box, read_nodule_mask
from ..atlas import REGION_NAMES, THIRD_NAMES, Atlas, as_atlas, part_name
from ..checks import check_choice, check_number, check_optional_workers
from ..grid import Grid
from ..io import (
    InputError,
    atomic_path,
    digest,
    ensure_writable_dir,
    file_digest,
    file_stem,
    read_json,
    read_mask,
    to_json,
    write_json,
    write_npz,
)
from ..manifest import VIEWS, Manifest, as_manifest
from ..parallel import Failure, map_cases
from ..report_location import PROVENANCE_COLUMNS
from ..resume import Resumed, claim_folder, finished_cases
from .fusion import NoduleRegistration, Patch, fuse_views, register_nodule
from .views import TRANSFORMS, RegistrationError, ViewImage

FORMAT = "llnm3d-registered/1"
MIN_DICE_OK = 0.8
MIN_DICE = 0.5
MIN_NODULE_INSIDE = 0.5
MAX_DEPTH_GAP_MM = 3.0
VIEW_QC = ("case_id", "level_mm", "scale", "rotation_deg", "dice", "metric", "transform")
QC_COLUMNS = [
    "nodule", "patient_id", "nodule_id", "side", "status", "reason", "views", "label",
    "probability", "age", "sex", "diameter_mm", "centre_x_mm", "centre_y_mm", "centre_z_mm",
    "region", "region_name", "centre_capsule_distance_mm", "capsule_distance_mm",
    "atlas_diameter_mm",
    "patch_voxels", "rounds", "converged", "depth_gap_mm", "pixel_spacing_assumed",
    *[f"{view}_{item}" for view in VIEWS for item in VIEW_QC],
]
_TEXT_COLUMNS = {"nodule", "patient_id", "nodule_id", "side", "status", "reason", "views",
                 "sex", "region_name",
                 *[f"{view}_{item}" for view in VIEWS for item in ("case_id", "transform")]}
_TRUE = {"1", "true", "yes", "y"}
_DEPTH = {"front": "front", "anterior": "front", "back": "back", "posterior": "back"}


class CaseError(RuntimeError):
    """Bad input for one nodule: it fails with this message and the cohort goes on."""


@dataclass(frozen=True)
class Settings:
    """Registration parameters (recorded in register.json; a resumed run must match)."""

    transform: str = "similarity"
    min_weight: float = 0.05
    allow_coarse_location: bool = False
    heatmaps: bool = True


@dataclass(frozen=True, eq=False)
class _Context:
    """What every nodule's worker shares."""

    atlas: Atlas
    settings: Settings


@dataclass(frozen=True)
class _ViewFiles:
    """One manifest row of a nodule: its files and how to read them.

    ``nodule_box`` (pixels) stands in for a missing nodule mask; ``heatmap`` is the
    ``llnm3d heatmap`` file of the row (None when registering without heatmaps) and
    ``heatmap_digest`` the digest of the inputs it must have been computed from.
    """

    case_id: str
    view: str
    image: Path
    thyroid_mask: Path | None
    nodule_mask: Path | None
    nodule_box: tuple[float, float, float, float] | None
    spacing_mm: float | None
    flip: bool
    heatmap: Path | None
    heatmap_digest: str | None


@dataclass(frozen=True)
class _NoduleJob:
    """One nodule to register: its manifest fields, its views and where its patch goes.

    ``provenance`` holds the row's :data:`~llnm3d.report_location.PROVENANCE_COLUMNS`;
    ``digest`` is that of the job's inputs (:func:`_job_digest`), stored with the patch.
    """

    nodule: str
    patient_id: str
    nodule_id: str
    side: str
    label: int | None
    age: float | None
    sex: str | None
    lobe_third: str
    front_back: str
    provenance: dict[str, str]
    out_dir: Path | None
    views: tuple[_ViewFiles, ...]
    digest: str = ""

    def qc_fields(self) -> dict:
        """The job's values of QC columns."""
        return {"nodule": self.nodule, "patient_id": self.patient_id,
                "nodule_id": self.nodule_id, "side": self.side, "label": self.label,
                "age": self.age, "sex": self.sex}


@dataclass
class Registered:
    """A registered cohort: the QC table and each nodule's patch.

    Attributes
    ----------
    qc : pandas.DataFrame
        One row per nodule (:data:`QC_COLUMNS`); ``status`` is ok, warning or failed.
    out_dir : Path or None
        Folder the patches are in (None when registered in memory).
    failures : list of (nodule, reason)
    resumed : Resumed
        What a run into an existing folder reused and redid.
    """

    qc: pd.DataFrame
    out_dir: Path | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)
    _patches: dict[str, Patch] = field(default_factory=dict, repr=False)
    resumed: Resumed = field(default_factory=Resumed)

    def patch(self, nodule: str) -> Patch:
        """The patch of one nodule (read from disk when registered into a folder)."""
        if nodule not in self._patches:
            if self.out_dir is None:
                raise KeyError(f"no patch for nodule {nodule!r}")
            return load_patch(self.out_dir / "patches" / f"{file_stem(nodule)}.npz")
        return self._patches[nodule]

    def patches(self) -> Iterator[tuple[str, Patch]]:
        """(nodule, patch) of every registered (ok or warning) nodule, in QC order."""
        for nodule in self.qc.loc[self.qc["status"] != "failed", "nodule"]:
            yield nodule, self.patch(nodule)


def save_patch(path: Path, patch: Patch, qc_row: dict, input_digest: str = "") -> None:
    """Write a patch atomically as compressed ``.npz``: ``start_zyx``, ``mask``, ``heatmap``
    (if any), the atlas grid (``grid`` JSON), the QC row (``qc`` JSON) and the digest of the
    inputs it was computed from (``input_digest``, for resuming)."""
    arrays = {"start_zyx": patch.start_zyx, "mask": patch.mask,
              "grid": to_json(patch.grid.signature()), "qc": to_json(qc_row),
              "input_digest": input_digest}
    if patch.heatmap is not None:
        arrays["heatmap"] = patch.heatmap
    write_npz(path, **arrays)


def load_patch(path: str | Path) -> Patch:
    """Read a patch written by :func:`save_patch`."""
    with np.load(path) as data:
        return Patch(data["start_zyx"].astype(np.int64), data["mask"].astype(bool),
                     data["heatmap"] if "heatmap" in data.files else None,
                     Grid.from_signature(json.loads(str(data["grid"]))))


def _patch_qc(path: Path) -> dict:
    with np.load(path) as data:
        return json.loads(str(data["qc"]))


def load_registered(out_dir: str | Path) -> Registered:
    """Read a registration folder written by :func:`register`."""
    out_dir = Path(out_dir)
    if not (out_dir / "qc.csv").is_file() or not (out_dir / "register.json").is_file():
        raise InputError(f"{out_dir}: not a registration folder (no qc.csv/register.json); "
                         "run `llnm3d register` first")
    qc = pd.read_csv(out_dir / "qc.csv", dtype=str, keep_default_na=False)
    return Registered(_typed_qc(qc), out_dir, [])


def _typed_qc(qc: pd.DataFrame) -> pd.DataFrame:
    """The QC table with one set of dtypes, however it was built: text columns as strings
    ("" when empty), the others as floats (NaN when empty)."""
    qc = qc.reindex(columns=QC_COLUMNS)
    for column in QC_COLUMNS:
        if column in _TEXT_COLUMNS:
            qc[column] = qc[column].map(lambda v: "" if v is None or v != v else str(v))
        else:
            qc[column] = pd.to_numeric(qc[column].replace("", None), errors="coerce").astype(float)
    return qc


# -- per-nodule work ---------------------------------------------------------------------------

def _one_itk_thread() -> None:
    # Nodules run in parallel; one ITK thread each keeps results independent of the machine.
    sitk.ProcessObject_SetGlobalDefaultNumberOfThreads(1)


def _truthy(value) -> bool:
    return str(value).strip().lower() in _TRUE


def _read_view(view: _ViewFiles) -> ViewImage:
    """Load and check one view's masks (and heatmap), flipped into the layout of
    docs/conventions.md."""
    case_id, heatmap_path = view.case_id, view.heatmap
    try:
        with Image.open(view.image) as image:
            shape = (image.height, image.width)
    except (OSError, SyntaxError) as exc:
        raise CaseError(f"{case_id}: cannot read image ({exc})") from None
    masks: dict[str, np.ndarray] = {}
    for column in ("thyroid_mask", "nodule_mask"):
        try:
            mask = (read_mask(view.thyroid_mask) if column == "thyroid_mask"
                    else read_nodule_mask(view.nodule_mask, view.nodule_box, shape))
        except (OSError, SyntaxError) as exc:
            raise CaseError(f"{case_id}: cannot read {column} ({exc})") from None
        # _register_one reads views only with a thyroid mask and a nodule mask or box.
        assert mask is not None
        if mask.shape != shape:
            raise CaseError(f"{case_id}: {column} is {mask.shape[1]}x{mask.shape[0]} pixels "
                            f"but the image is {shape[1]}x{shape[0]}")
        if not mask.any():
            what = (column if getattr(view, column) is not None
                    else "the ellipse of its nodule box")
            raise CaseError(f"{case_id}: {what} is empty")
        masks[column] = mask
    thyroid, nodule = masks["thyroid_mask"], masks["nodule_mask"]
    inside = (nodule & thyroid).sum() / nodule.sum()
    if inside < MIN_NODULE_INSIDE:
        raise CaseError(f"{case_id}: the nodule mask lies outside the thyroid mask "
                        f"({inside:.0%} of it inside)")
    heatmap: np.ndarray | None = None
    if heatmap_path is not None:
        if not heatmap_path.is_file():
            raise CaseError(f"{case_id}: no heatmap ({heatmap_path.name}); run `llnm3d "
                            "heatmap` on this manifest first")
        with np.load(heatmap_path) as data:
            heatmap = data["heatmap"].astype(np.float32)
            stored = str(data["input_digest"]) if "input_digest" in data.files else None
        # Heatmaps from `llnm3d heatmap` record their inputs; others cannot be checked.
        if stored is not None and stored != view.heatmap_digest:
            raise CaseError(f"{case_id}: its heatmap is stale (the image, masks or model "
                            "fields of this row changed since `llnm3d heatmap`); run "
                            "`llnm3d heatmap` on this manifest again")
        if heatmap.shape != shape:
            raise CaseError(f"{case_id}: heatmap is {heatmap.shape[1]}x{heatmap.shape[0]} but "
                            f"the image is {shape[1]}x{shape[0]}")
        if not np.isfinite(heatmap).all():
            raise CaseError(f"{case_id}: heatmap has NaN or infinite values")
    if view.flip:
        thyroid, nodule = thyroid[:, ::-1], nodule[:, ::-1]
        heatmap = None if heatmap is None else heatmap[:, ::-1]
    return ViewImage(case_id, view.view, np.ascontiguousarray(thyroid),
                     np.ascontiguousarray(nodule),
                     None if heatmap is None else np.ascontiguousarray(heatmap),
                     view.spacing_mm)


def _nodule_job(context: _Context, job: _NoduleJob) -> dict | Failure:
    """Register one nodule; returns {"qc": row, "patch": Patch} (no patch when it was saved
    to the job's folder) or its Failure."""
    try:
        return _register_one(context, job)
    except (CaseError, RegistrationError) as exc:
        return Failure(job.nodule, str(exc))
    except Exception as exc:  # one broken nodule is reported and the cohort goes on
        return Failure(job.nodule, f"{type(exc).__name__}: {exc}")


def _register_one(context: _Context, job: _NoduleJob) -> dict:
    atlas, settings = context.atlas, context.settings
    out_dir = job.out_dir
    warnings = []
    missing_mask = [v.case_id for v in job.views if v.thyroid_mask is None]
    coarse = bool(missing_mask) or any(v.nodule_mask is None and v.nodule_box is None
                                       for v in job.views)
    if coarse:
        patch, row = _coarse_location(job, atlas, settings, missing_mask)
        warnings.append(row.pop("reason"))
    else:
        images = {v.view: _read_view(v) for v in job.views}
        nodule = register_nodule(images, atlas, job.side, transform=settings.transform)
        patch = fuse_views(images, nodule, atlas, job.side, settings.min_weight)
        row = _registration_qc(images, nodule, warnings)
        boxed = [v.case_id for v in job.views if v.nodule_mask is None]
        if boxed:
            warnings.append(f"{', '.join(boxed)}: {BOX_NOTE}")
    warnings.extend(_report_warnings(job, coarse))
    row.update(_location_qc(patch, row, atlas, warnings))
    row.update(job.qc_fields())
    row["probability"] = _mean_probability(job)
    row["status"] = "warning" if warnings else "ok"
    row["reason"] = "; ".join(warnings)
    row = {column: row.get(column) for column in QC_COLUMNS}
    if out_dir is not None:
        save_patch(out_dir / "patches" / f"{file_stem(job.nodule)}.npz", patch, row,
                   job.digest)
        return {"qc": row}
    return {"qc": row, "patch": patch}


def _registration_qc(images: dict[str, ViewImage], nodule: NoduleRegistration,
                     warnings: list[str]) -> dict:
    row = {"views": "+".join(v for v in VIEWS if v in images), "rounds": nodule.rounds,
           "converged": int(nodule.converged), "depth_gap_mm": nodule.depth_gap_mm,
           "pixel_spacing_assumed": int(any(i.spacing_mm is None for i in images.values()))}
    for view, registration in nodule.views.items():
        image = images[view]
        row.update({
            f"{view}_case_id": image.case_id, f"{view}_level_mm": registration.level_mm,
            f"{view}_scale": registration.scale, f"{view}_rotation_deg": registration.rotation_deg,
            f"{view}_dice": registration.dice, f"{view}_metric": registration.metric,
            f"{view}_transform": json.dumps(
                [*registration.matrix.ravel().round(6), *registration.offset.round(4)]),
        })
        if registration.dice < MIN_DICE:
            raise RegistrationError(f"{image.case_id}: registration failed (thyroid overlap with "
                                    f"the atlas section, Dice {registration.dice:.2f})")
        if registration.dice < MIN_DICE_OK:
            warnings.append(f"{image.case_id}: low thyroid overlap (Dice "
                            f"{registration.dice:.2f})")
    row["diameter_mm"] = max(
        regionprops(image.nodule_mask.astype(np.uint8))[0].feret_diameter_max * image.pixel_mm
        for image in images.values())
    if nodule.prior_axis:
        warnings.append(f"{row['views']} view only: {nodule.prior_axis} from the prior")
    if not nodule.converged:
        warnings.append(f"views did not agree within {nodule.rounds} rounds")
    if nodule.depth_gap_mm > MAX_DEPTH_GAP_MM:
        warnings.append(f"the views disagree on depth by {nodule.depth_gap_mm:.1f} mm")
    if row["pixel_spacing_assumed"]:
        warnings.append("pixel spacing missing: assumed, scale left to the registration")
    row["centre_mm"] = nodule.centre_mm
    return row


def _report_warnings(job: _NoduleJob, coarse: bool) -> list[str]:
    """What a nodule's location owes to its report (:mod:`llnm3d.report_location`): a side
    read from it, and a report that contradicts the manifest (whose value was kept). The lobe
    third and front/back matter, and are reported, only for a coarse location."""
    used = ("side", "lobe_third", "front_back") if coarse else ("side",)
    derived = [c for c in job.provenance["location_from_report"].split(",") if c in used]
    conflicts = [c for c in job.provenance["location_conflicts"].split(",") if c in used]
    evidence = job.provenance["location_evidence"]
    warnings = []
    if derived:
        values = ", ".join(f"{c} {getattr(job, c)}" for c in derived)
        warnings.append(f"location from the report ({values}: {evidence!r})")
    if conflicts:
        values = ", ".join(f"{c} {getattr(job, c)}" for c in conflicts)
        warnings.append(f"the report ({evidence!r}) contradicts the manifest's {values}, "
                        "which was kept")
    return warnings


def _location_qc(patch: Patch, row: dict, atlas: Atlas, warnings: list[str]) -> dict:
    """Centre, region and capsule distances of the registered nodule."""
    centre = np.asarray(row.pop("centre_mm"), dtype=float)
    centre_distance = float(atlas.capsule_distance_mm(centre[None])[0])
    if not np.isfinite(centre_distance):
        raise RegistrationError(f"nodule centre {np.round(centre, 1).tolist()} mm is outside "
                                "the atlas grid")
    region = int(atlas.nearest_region_of(centre[None])[0])
    if centre_distance > 1.0:
        warnings.append(f"centre {centre_distance:.1f} mm outside the gland")
    mask_distance = atlas.capsule_distance[patch.slices][patch.mask]
    edge = float(max(0.0, -mask_distance.max())) if mask_distance.size else np.nan
    volume_mm3 = float(patch.mask.sum()) * atlas.spacing_mm**3
    return {"centre_x_mm": centre[0], "centre_y_mm": centre[1], "centre_z_mm": centre[2],
            "region": region, "region_name": REGION_NAMES.get(region, "outside"),
            "centre_capsule_distance_mm": -centre_distance, "capsule_distance_mm": edge,
            "atlas_diameter_mm": (6 * volume_mm3 / np.pi) ** (1 / 3),
            "patch_voxels": int(patch.mask.size)}


def _coarse_location(job: _NoduleJob, atlas: Atlas, settings: Settings, missing: list[str]
                     ) -> tuple[Patch, dict]:
    """A nodule without masks, placed by its lobe third and front/back half (from the manifest
    or its report)."""
    cases = ", ".join(missing) or ", ".join(v.case_id for v in job.views)
    what = "thyroid mask" if missing else "nodule mask"
    third, depth = job.lobe_third, job.front_back
    if not settings.allow_coarse_location:
        raise CaseError(f"{cases}: no {what}, so the view cannot be registered (give lobe_third "
                        "and front_back in the manifest or its report, and allow a coarse "
                        "location)")
    thirds = {name: code for code, name in THIRD_NAMES.items()}
    if third not in thirds or depth not in _DEPTH:
        raise CaseError(f"{cases}: no {what}, and no usable coarse location (lobe_third "
                        f"{third!r} must be upper/middle/lower, front_back {depth!r} "
                        "front/back)")
    part = part_name(job.side)
    region = atlas.labels == 10 * part + thirds[third]
    y_mm = atlas.grid.axes_mm()[1]
    centre_y = atlas.lobe_axes[part]["centre_mm"][1]
    front = (y_mm < centre_y) if _DEPTH[depth] == "front" else (y_mm >= centre_y)
    region &= front[None, :, None]
    k, j, i = np.nonzero(region)
    box = (slice(k.min(), k.max() + 1), slice(j.min(), j.max() + 1), slice(i.min(), i.max() + 1))
    mask = np.ascontiguousarray(region[box])
    patch = Patch(np.array([k.min(), j.min(), i.min()], np.int64), mask,
                  mask.astype(np.float16) if settings.heatmaps else None,
                  atlas.grid)
    centre = atlas.voxel_to_world(np.stack([i, j, k], 1).mean(axis=0))[0]
    row = {"views": "coarse", "rounds": 0, "converged": 1, "depth_gap_mm": 0.0,
           "pixel_spacing_assumed": 0,
           "centre_mm": centre,
           "reason": f"no {what}: placed by its coarse location ({third} third, "
                     f"{_DEPTH[depth]})"}
    return patch, row


def _mean_probability(job: _NoduleJob) -> float | None:
    values = []
    for view in job.views:
        path = view.heatmap
        if path is not None and path.is_file():
            with np.load(path) as data:
                values.append(float(data["probability"]))
    return float(np.mean(values)) if values else None


# -- the cohort ----------------------------------------------------------------------------------

def _nodule_problem(rows: pd.DataFrame) -> str | None:
    """Why a nodule's manifest rows cannot be registered together, or None."""
    views = rows["view"].tolist()
    sides = set(rows["side"])
    unnamed = rows.loc[(rows["patient_id"].astype(str).str.strip() == "")
                       | (rows["nodule_id"].astype(str).str.strip() == ""), "case_id"]
    if len(unnamed):
        # An empty id would group every unnamed image of a patient into one nodule.
        return (f"patient_id or nodule_id is empty ({', '.join(unnamed)}); fill them in (an "
                "imported DICOM cohort leaves nodule_id for you to fill)")
    if len(set(views)) < len(views):
        return (f"more than one image per view ({', '.join(rows['case_id'])}); keep one "
                "transverse and one longitudinal image per nodule")
    if "" in sides:
        missing = rows.loc[rows["side"] == "", "case_id"]
        return f"side (L/R) is missing ({', '.join(missing)})"
    if len(sides) > 1:
        return f"its images disagree on the side ({', '.join(sorted(sides))})"
    if "label" in rows and rows["label"].dropna().nunique() > 1:
        return "its images disagree on the label"
    return None


def nodule_key(patient_id: str, nodule_id: str) -> str:
    """The key of a nodule in QC tables and statistics: ``<patient_id>-N<nodule_id>``."""
    return f"{patient_id}-N{nodule_id}"


def _job_digest(job: _NoduleJob) -> str:
    """Digest of what a nodule's patch is computed from: its manifest fields, the bytes of
    its images, masks and heatmaps, and the llnm3d version."""
    fields = {**{k: getattr(job, k) for k in ("patient_id", "nodule_id", "side", "label", "age",
                                              "sex", "lobe_third", "front_back")},
              **job.provenance}
    views = [{"case_id": v.case_id, "view": v.view, "spacing_mm": v.spacing_mm, "flip": v.flip,
              # Only where a box makes the mask: other nodules' digests stay as they were.
              **({"nodule_box": v.nodule_box} if v.nodule_box is not None else {}),
              **{column: file_digest(getattr(v, column))
                 for column in ("image", "thyroid_mask", "nodule_mask", "heatmap")}}
             for v in job.views]
    return digest({"fields": fields, "views": views, "llnm3d": __version__})


def _key_collisions(keys: list[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Why each ``(patient_id, nodule_id)`` whose key or patch file name coincides with
    another's (``X-N1``/``2`` and ``X``/``1-N2``; ``A``/``1`` and ``a``/``1`` on
    case-insensitive disks) cannot be registered."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for pair in dict.fromkeys(keys):
        groups.setdefault(file_stem(nodule_key(*pair)).casefold(), []).append(pair)
    problems = {}
    for pairs in groups.values():
        if len(pairs) > 1:
            listed = "; ".join(f"patient_id {p!r} nodule_id {n!r}" for p, n in pairs)
            for pair in pairs:
                problems[pair] = (f"nodule key {nodule_key(*pair)!r} is not unique ({listed} "
                                  "name the same files); rename one of them in the manifest")
    return problems


def _nodule_jobs(manifest: Manifest, heatmap_dir: Path | None, out_dir: Path | None
                 ) -> tuple[list[_NoduleJob], list[dict]]:
    """One job per nodule from the manifest rows, and the failed QC rows of nodules whose
    rows cannot be registered (a rejected row, rows that disagree, a key shared with another
    nodule)."""
    # A nodule with a rejected manifest row fails with that row's problem rather than
    # quietly losing a view.
    rejected: dict[tuple[str, str], str] = {}
    for _, row in manifest.rejected.iterrows():
        rejected.setdefault((row["patient_id"], row["nodule_id"]),
                            f"{row['case_id'] or 'a row'}: {row['problem']}")
    groups = manifest.table.groupby(["patient_id", "nodule_id"], sort=False)
    collisions = _key_collisions([*groups.groups, *rejected])
    jobs, failed = [], []
    for (patient_id, nodule_id), rows in groups:
        first = rows.iloc[0]
        label = rows["label"].dropna() if "label" in rows else pd.Series(dtype=float)
        views = []
        for _, row in rows.iterrows():
            image = manifest.path(row, "image")
            assert image is not None  # a manifest rejects rows without an image
            views.append(_ViewFiles(
                row["case_id"], row["view"], image, manifest.path(row, "thyroid_mask"),
                manifest.path(row, "nodule_mask"),
                # A row's mask file wins over its box.
                nodule_box(row) if manifest.path(row, "nodule_mask") is None else None,
                _number(row.get("pixel_spacing_mm")), _truthy(row.get("flip_horizontal", "")),
                (heatmap_dir / "heatmaps" / f"{file_stem(row['case_id'])}.npz"
                 if heatmap_dir is not None else None),
                manifest.model_input_digest(row) if heatmap_dir is not None else None))
        job = _NoduleJob(
            nodule_key(patient_id, nodule_id), str(patient_id), str(nodule_id), first["side"],
            int(label.iloc[0]) if len(label) else None, _number(first.get("age")),
            first.get("sex") or None, str(first.get("lobe_third", "")).strip().lower(),
            str(first.get("front_back", "")).strip().lower(),
            {k: first.get(k) if isinstance(first.get(k), str) else ""
             for k in PROVENANCE_COLUMNS},
            out_dir, tuple(views))
        problem = (collisions.get((patient_id, nodule_id))
                   or rejected.pop((patient_id, nodule_id), None) or _nodule_problem(rows))
        if problem:
            failed.append(_failed_row(job.qc_fields(), problem, _view_names(job)))
        else:
            jobs.append(replace(job, digest=_job_digest(job)))
    for (patient_id, nodule_id), problem in rejected.items():
        failed.append(_failed_row({"nodule": nodule_key(patient_id, nodule_id),
                                   "patient_id": patient_id, "nodule_id": nodule_id},
                                  collisions.get((patient_id, nodule_id), problem)))
    return jobs, failed


def _number(value) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def register(cases: str | Path | Manifest, heatmaps: str | Path | None = None,
             atlas: Atlas | str | Path | None = None, out_dir: str | Path | None = None,
             transform: str = "similarity", min_weight: float = 0.05,
             allow_coarse_location: bool = False, workers: int | None = None,
             scheduler: str | None = None, progress: bool = True) -> Registered:
    """Register every nodule of a cohort onto the atlas.

    Parameters
    ----------
    cases : path or Manifest
        The cohort manifest (columns in docs/conventions.md). Optional extra columns ``lobe_third``
        (upper/middle/lower) and ``front_back`` (front/back) place a nodule without masks
        when ``allow_coarse_location`` is set; the manifest reader fills empty ones, and an
        empty ``side``, from the report (:mod:`llnm3d.report_location`).
    heatmaps : path, optional
        Output folder of ``llnm3d heatmap`` for this manifest. Without it, patches carry the
        fused nodule mask only.
    atlas : Atlas or path, optional
        The atlas or its folder (from ``llnm3d atlas``); default: :meth:`Atlas.default`.
    out_dir : path, optional
        Output folder (layout in the module docstring); resumable. None keeps the patches in
        memory.
    transform : {"similarity", "affine"}
    min_weight : float
        Fused heatmap values below this are dropped (sparser patches).
    allow_coarse_location : bool
        Place nodules whose views lack masks by the manifest's coarse location (flagged as
        warnings) instead of failing them.
    workers : int, optional
        Local worker processes (default: all cores); with ``scheduler="local"`` the size of
        the local Dask cluster.
    scheduler : str, optional
        Dask scheduler address, or ``"local"`` (see :func:`llnm3d.parallel.map_cases`).

    Returns
    -------
    Registered
        The QC table (a row per nodule, failed ones included with their reason) and patches.
    """
    manifest = as_manifest(cases)
    atlas = as_atlas(atlas) or Atlas.default()
    check_choice("transform", transform, TRANSFORMS)
    check_number("min_weight", min_weight, low=0, high=1, high_inclusive=False)
    check_optional_workers(workers)
    heatmap_dir = None
    if heatmaps is not None:
        heatmap_dir = Path(heatmaps)
        if not (heatmap_dir / "heatmaps").is_dir():
            raise InputError(f"{heatmap_dir}: no heatmaps/ folder; run `llnm3d heatmap` first "
                             "or register without heatmaps")
    settings = Settings(transform, float(min_weight), allow_coarse_location,
                        heatmap_dir is not None)
    resumed = Resumed()
    if out_dir is not None:
        out_dir = ensure_writable_dir(out_dir)
        resumed.temporaries_removed = claim_folder(
            out_dir, "register.json", FORMAT,
            {**asdict(settings), "atlas": atlas.grid.signature(),
             "atlas_metadata": atlas.metadata}, "register")
    jobs, failed_rows = _nodule_jobs(manifest, heatmap_dir, out_dir)
    done: dict[str, dict] = {}
    if out_dir is not None:
        paths = {job.nodule: out_dir / "patches" / f"{file_stem(job.nodule)}.npz"
                 for job in jobs}
        finished, found = finished_cases(paths, {job.nodule: job.digest for job in jobs})
        found.temporaries_removed = resumed.temporaries_removed
        resumed = found
        done = {key: _patch_qc(paths[key]) for key in finished}
        # A stale patch must not outlive a redo that now fails.
        for key in resumed.changed + resumed.unreadable:
            paths[key].unlink(missing_ok=True)
    todo = [job for job in jobs if job.nodule not in done]
    results, run_failures = map_cases(_nodule_job, todo, workers, progress, desc="register",
                                      unit="nodule", context=_Context(atlas, settings),
                                      setup=_one_itk_thread, chunksize=4, scheduler=scheduler)
    outcomes = ({r["qc"]["nodule"]: r for r in results}
                | {failure.id: failure for failure in run_failures})
    rows, patches = [], {}
    for job in jobs:
        key = job.nodule
        if key in done:
            rows.append(done[key])
            continue
        outcome = outcomes[key]
        if isinstance(outcome, Failure):
            rows.append(_failed_row(job.qc_fields(), outcome.reason, _view_names(job)))
        else:
            rows.append(outcome["qc"])
            if "patch" in outcome:
                patches[key] = outcome["patch"]
    rows += failed_rows
    failures = [(row["nodule"], row["reason"]) for row in rows if row["status"] == "failed"]
    qc = _typed_qc(pd.DataFrame(rows, columns=QC_COLUMNS))
    if out_dir is not None:
        with atomic_path(out_dir / "qc.csv") as tmp:
            qc.to_csv(tmp, index=False)
        counts = qc["status"].value_counts().to_dict()
        write_json(out_dir / "register.json", {
            "format": FORMAT, "parameters": read_json(out_dir / "register.json")["parameters"],
            "complete": True, "llnm3d_version": __version__, "counts": counts,
            "failures": [{"id": key, "reason": reason} for key, reason in failures]})
    return Registered(qc, out_dir, failures, patches, resumed)


def _failed_row(fields: dict, reason: str, views: str = "") -> dict:
    """The QC row of a nodule that failed: its QC ``fields``, the reason and its ``views``."""
    row = {column: fields.get(column) for column in QC_COLUMNS}
    row.update(status="failed", reason=reason, views=views)
    return row


def _view_names(job: _NoduleJob) -> str:
    return "+".join(v.view for v in job.views)
