"""Generate a phantom cohort: manifest, PNG images and masks, and a separate ground truth.

Output folder layout::

    manifest.csv        one row per image (columns in docs/conventions.md); what the pipeline reads
    images/<case_id>.png
    masks/<case_id>_thyroid.png, masks/<case_id>_nodule.png     (0 / 255)
    truth.csv           one row per nodule: true centres (patient and atlas mm), shape,
                        attributes, capsule distances, region, true risk, outcome
    truth.json          seed, risk spec, per-patient deformation parameters and per-image
                        plane geometry (patient mm): everything needed to rebuild the truth
    phantom.json        the generation parameters (checked when a run resumes)

No pipeline stage reads ``truth.*``; only validation code compares against it.

Each patient draws from its own random stream (spawned from the seed), so the output does not
depend on the number of workers, and a killed run resumes: patients whose files all exist are
not rendered again, and the tables are rewritten at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from PIL import Image
from threadpoolctl import threadpool_limits

from .._version import __version__
from ..atlas import REGION_NAMES, Atlas, as_atlas
from ..checks import check_number, check_optional_workers, check_seed
from ..io import (
    InputError,
    atomic_path,
    ensure_writable_dir,
    read_json,
    remove_temporaries,
    write_json,
)
from ..manifest import NUMERIC_RANGES, VIEWS
from ..parallel import Failure, map_cases
from .deform import PatientDeformation
from .nodules import Nodule, report_text, sample_nodules, tirads_level, tirads_points
from .risk import RiskSpec
from .ultrasound import ViewPlane, render_view

MANIFEST_COLUMNS = ["case_id", "patient_id", "nodule_id", "side", "view", "image", "thyroid_mask",
                    "nodule_mask", "pixel_spacing_mm", "label", "age", "sex", "report"]
# The validation study's largest cohort has 8,000 patients; 100,000 are about 400,000 images
# (tens of GB, a day of rendering): more is a typo, not a study.
MAX_PATIENTS = 100_000
# Nodule counts are 1 + Poisson(0.4), capped at max_nodules: a cap above 10 never binds.
MAX_NODULES = 10


@dataclass
class Phantom:
    """A generated cohort: its folder, the manifest and truth tables, and any failures."""

    out_dir: Path
    manifest: pd.DataFrame
    truth: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Settings:
    image_size_px: int
    spacing_range_mm: tuple[float, float]
    max_nodules: int
    render: bool


@dataclass(frozen=True, eq=False)
class _Context:
    """What every patient's worker shares: the atlas, the risk spec, the settings, the output
    folder (None: truth only) and each lobe's voxel centres (atlas mm, shape (n, 3)), where
    nodules are drawn."""

    atlas: Atlas
    spec: RiskSpec
    settings: _Settings
    out_dir: Path | None
    lobe_points: dict[str, np.ndarray]


@dataclass(frozen=True)
class _PatientJob:
    """One patient to draw (and render): its id and its own random stream."""

    patient_id: str
    stream: np.random.SeedSequence


@dataclass
class _Patient:
    """Everything drawn for one patient before any image is rendered."""

    patient_id: str
    age: int
    sex: str
    deformation: PatientDeformation
    nodules: list[Nodule]
    covariates: list[dict]
    risk: np.ndarray
    labels: np.ndarray
    spacing_mm: float
    skin_y_mm: float
    planes: dict[str, ViewPlane]
    image_streams: list[np.random.SeedSequence]


def make_phantom(out_dir: str | Path, n_patients: int, seed: int = 0,
                 risk_spec: RiskSpec | None = None, atlas: Atlas | str | Path | None = None,
                 image_size_px: int = 256, spacing_range_mm: tuple[float, float] = (0.12, 0.18),
                 max_nodules: int = 3, workers: int | None = None, progress: bool = True
                 ) -> Phantom:
    """Generate a phantom cohort with planted truth.

    Parameters
    ----------
    out_dir : path
        Output folder (created). Re-running into the same folder with the same parameters
        resumes; different parameters raise :class:`~llnm3d.io.InputError`.
    n_patients : int
        Number of patients, 1 to :data:`MAX_PATIENTS`; each has 1 to ``max_nodules`` nodules
        and two images per nodule.
    seed : int
        Seed of all randomness (recorded in phantom.json and truth.json), 0 to
        :data:`llnm3d.checks.MAX_SEED`.
    risk_spec : RiskSpec, optional
        Planted risk model; :meth:`RiskSpec.default` if omitted.
    atlas : Atlas or path, optional
        Atlas (or its folder) the patients are deformed from; :meth:`Atlas.default` if
        omitted. It must carry landmarks (trachea, carotids) for the ultrasound simulation.
    image_size_px : int
        Images are square, this many pixels a side (64 to 2048).
    spacing_range_mm : (float, float)
        Pixel spacing is drawn per patient from this range (recorded per image), within the
        manifest's :data:`~llnm3d.manifest.NUMERIC_RANGES`.
    max_nodules : int
        At most this many nodules per patient (1 to :data:`MAX_NODULES`).
    workers : int, optional
        Worker processes (default: all cores); 1 runs in this process. The output does not
        depend on it.
    progress : bool
        Show a progress bar.
    """
    _check_cohort(n_patients, seed, max_nodules, workers)
    check_number("image_size_px", image_size_px, low=64, high=2048, integer=True)
    _check_spacing_range(spacing_range_mm)
    atlas = as_atlas(atlas) or Atlas.default()
    out_dir = ensure_writable_dir(out_dir)
    risk_spec = risk_spec or RiskSpec.default()
    if not {"trachea", "carotid_right", "carotid_left"} <= set(atlas.landmarks):
        raise InputError("atlas has no trachea/carotid landmarks; the phantom needs them")
    _check_resume(out_dir, {"format": "llnm3d-phantom/1", "n_patients": n_patients, "seed": seed,
                            "image_size_px": image_size_px,
                            "spacing_range_mm": list(spacing_range_mm),
                            "max_nodules": max_nodules, "risk_spec": risk_spec.data,
                            "atlas": atlas.metadata, "llnm3d_version": __version__})
    for sub in ("images", "masks"):
        (out_dir / sub).mkdir(exist_ok=True)
    # _check_spacing_range refused anything but a (low, high) pair.
    spacing_range = cast("tuple[float, float]", tuple(spacing_range_mm))
    settings = _Settings(image_size_px, spacing_range, max_nodules, render=True)
    results, failures = _run_patients(n_patients, seed, atlas, risk_spec, settings, out_dir,
                                      workers, progress)
    failed = [(failure.id, failure.reason) for failure in failures]
    manifest = pd.DataFrame([row for r in results for row in r["manifest"]],
                            columns=MANIFEST_COLUMNS)
    truth = pd.DataFrame([row for r in results for row in r["truth"]])
    _write_csv(out_dir / "manifest.csv", manifest)
    _write_csv(out_dir / "truth.csv", truth)
    write_json(out_dir / "truth.json", {
        "format": "llnm3d-phantom-truth/1",
        "seed": seed,
        "n_patients": n_patients,
        "llnm3d_version": __version__,
        "risk_spec": risk_spec.data,
        "prevalence": float(truth["label"].mean()) if len(truth) else None,
        "failed": [{"patient_id": p, "reason": r} for p, r in failed],
        "patients": {r["patient_id"]: r["patient"] for r in results},
    })
    return Phantom(out_dir, manifest, truth, failed)


def sample_truth(n_patients: int, seed: int = 0, risk_spec: RiskSpec | None = None,
                 atlas: Atlas | str | Path | None = None, max_nodules: int = 3,
                 workers: int | None = None, progress: bool = False) -> pd.DataFrame:
    """The truth table :func:`make_phantom` would write for these arguments, without images.

    Draws exactly the same patients, nodules and outcomes (same random streams), about ten
    times faster, for studies of the planted risk model over large cohorts.
    """
    _check_cohort(n_patients, seed, max_nodules, workers)
    settings = _Settings(256, (0.12, 0.18), max_nodules, render=False)
    results, _ = _run_patients(n_patients, seed, as_atlas(atlas) or Atlas.default(),
                               risk_spec or RiskSpec.default(), settings, None, workers, progress)
    return pd.DataFrame([row for r in results for row in r["truth"]])


def _run_patients(n_patients, seed, atlas, spec, settings, out_dir, workers, progress):
    """Run every patient (in worker processes unless ``workers == 1``), in patient order."""
    streams = np.random.SeedSequence(seed).spawn(n_patients)
    width = max(5, len(str(n_patients)))
    jobs = [_PatientJob(f"P{i + 1:0{width}d}", streams[i]) for i in range(n_patients)]
    lobe_points = {}
    for side in ("R", "L"):
        k, j, i = np.nonzero(atlas.lobe_mask(side))
        lobe_points[side] = atlas.voxel_to_world(np.stack([i, j, k], axis=1))
    return map_cases(_patient_job, jobs, workers, progress, desc="phantom", unit="patient",
                     context=_Context(atlas, spec, settings, out_dir, lobe_points),
                     setup=_one_thread)


def _check_cohort(n_patients: int, seed: int, max_nodules: int, workers: int | None) -> None:
    """Raise InputError, naming the parameter, for arguments no phantom can be made with."""
    check_number("n_patients", n_patients, low=1, high=MAX_PATIENTS, integer=True)
    check_seed(seed)
    check_number("max_nodules", max_nodules, low=1, high=MAX_NODULES, integer=True)
    check_optional_workers(workers)


def _check_spacing_range(spacing_range_mm) -> None:
    """Refuse a pixel spacing range that is not (low, high) within the manifest's physical
    range, so the phantom's manifest always passes its own check."""
    low, high, _ = NUMERIC_RANGES["pixel_spacing_mm"]
    try:
        first, last = spacing_range_mm
    except (TypeError, ValueError):
        raise InputError(f"spacing_range_mm must be a pair (low, high), got "
                         f"{spacing_range_mm!r}") from None
    check_number("spacing_range_mm low", first, low=low, high=high)
    check_number("spacing_range_mm high", last, low=first, high=high)


def _check_resume(out_dir: Path, params: dict) -> None:
    """Refuse a folder made with other parameters; remove temporaries of killed runs."""
    started = time.time()
    record = out_dir / "phantom.json"
    if record.exists() and read_json(record) != params:
        raise InputError(f"{out_dir} holds a phantom made with other parameters; "
                         "use a new folder or delete it")
    write_json(record, params)
    remove_temporaries(out_dir, started)


def _write_csv(path: Path, table: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _write_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=3)


def _one_thread() -> None:
    # Parallelism is across patients; threaded BLAS inside each worker only oversubscribes.
    threadpool_limits(1)


def _patient_job(context: _Context, job: _PatientJob) -> dict | Failure:
    patient_id = job.patient_id
    try:
        patient = _sample_patient(context, patient_id, job.stream)
        result: dict[str, Any] = {"patient_id": patient_id, "truth": _truth_rows(patient)}
        if context.settings.render:
            result["manifest"] = _render_patient(context, patient)
            result["patient"] = {
                "age": patient.age, "sex": patient.sex, "skin_y_mm": patient.skin_y_mm,
                "deformation": patient.deformation.as_dict(),
                "images": {case_id: plane.as_dict() for case_id, plane in patient.planes.items()},
            }
        return result
    except Exception as exc:  # one broken patient is reported and the cohort goes on
        return Failure(patient_id, f"{type(exc).__name__}: {exc}")


def _sample_patient(context: _Context, patient_id: str, stream: np.random.SeedSequence
                    ) -> _Patient:
    atlas, spec, settings = context.atlas, context.spec, context.settings
    anatomy_stream, image_stream = stream.spawn(2)
    rng = np.random.default_rng(anatomy_stream)
    centres = {lobe: np.asarray(atlas.lobe_axes[lobe]["centre_mm"]) for lobe in (1, 2)}
    deformation = PatientDeformation.random(rng, centres)
    age = int(np.clip(np.round(rng.normal(45, 13)), 18, 85))
    sex = "F" if rng.random() < 0.75 else "M"
    nodules = sample_nodules(rng, atlas, deformation, context.lobe_points,
                             settings.max_nodules)
    covariates = [_covariates(n, age, sex) for n in nodules]
    risk = spec.probability(pd.DataFrame(covariates))
    labels = (rng.random(len(nodules)) < risk).astype(int)
    spacing = float(np.round(rng.uniform(*settings.spacing_range_mm), 4))
    skin_y = float(deformation.to_patient(np.array([0.0, -2.0, 0.0]))[0, 1]
                   - rng.uniform(5.0, 9.0))
    planes = {}
    for nodule in nodules:
        for view in VIEWS:
            planes[_case_id(patient_id, nodule, view)] = ViewPlane.through(
                view, nodule.centre_mm, skin_y, spacing, (settings.image_size_px,) * 2,
                rng.uniform(-4.0, 4.0))
    return _Patient(patient_id, age, sex, deformation, nodules, covariates, risk, labels, spacing,
                    skin_y, planes, image_stream.spawn(len(planes)))


def _case_id(patient_id: str, nodule: Nodule, view: str) -> str:
    return f"{patient_id}-N{nodule.nodule_id}-{view[:5]}"


def _truth_rows(patient: _Patient) -> list[dict]:
    rows = []
    for nodule, cov, p, label in zip(patient.nodules, patient.covariates, patient.risk,
                                     patient.labels, strict=True):
        rows.append({
            "patient_id": patient.patient_id, "nodule_id": nodule.nodule_id, "side": nodule.side,
            **{f"centre_patient_{a}_mm": v for a, v in zip("xyz", nodule.centre_mm, strict=True)},
            **{f"centre_atlas_{a}_mm": v
               for a, v in zip("xyz", nodule.atlas_centre_mm, strict=True)},
            **{f"semi_axis_{a}_mm": v for a, v in zip("xyz", nodule.semi_axes_mm, strict=True)},
            "rotation_z_deg": nodule.rotation_z_deg,
            "region": nodule.region, "region_name": REGION_NAMES.get(nodule.region, "outside"),
            **cov,
            "tirads_points": tirads_points(nodule),
            "tirads_level": tirads_level(tirads_points(nodule)),
            "n_calcifications": len(nodule.calcifications_mm),
            "risk": float(p), "label": int(label),
        })
    return rows


def _render_patient(context: _Context, patient: _Patient) -> list[dict]:
    """Render (or, on resume, reuse) every image of a patient; return its manifest rows."""
    atlas, out_dir = context.atlas, context.out_dir
    assert out_dir is not None  # rendering writes images: make_phantom always has a folder
    streams = iter(patient.image_streams)
    rows = []
    for nodule, label in zip(patient.nodules, patient.labels, strict=True):
        report = report_text(nodule)
        for view in VIEWS:
            case_id = _case_id(patient.patient_id, nodule, view)
            files = {"image": f"images/{case_id}.png",
                     "thyroid_mask": f"masks/{case_id}_thyroid.png",
                     "nodule_mask": f"masks/{case_id}_nodule.png"}
            stream = next(streams)
            if not all((out_dir / f).exists() for f in files.values()):
                image, thyroid, nodule_mask = render_view(
                    patient.planes[case_id], atlas, patient.deformation, patient.nodules, nodule,
                    np.random.default_rng(stream))
                _write_png(out_dir / files["image"], image)
                _write_png(out_dir / files["thyroid_mask"], thyroid.astype(np.uint8) * 255)
                _write_png(out_dir / files["nodule_mask"], nodule_mask.astype(np.uint8) * 255)
            rows.append({"case_id": case_id, "patient_id": patient.patient_id,
                         "nodule_id": nodule.nodule_id, "side": nodule.side, "view": view,
                         **files, "pixel_spacing_mm": patient.spacing_mm, "label": int(label),
                         "age": patient.age, "sex": patient.sex, "report": report})
    return rows


def _covariates(nodule: Nodule, age: int, sex: str) -> dict:
    """The risk-spec covariates of one nodule (see :mod:`llnm3d.phantom.risk`)."""
    x, y, z = nodule.atlas_centre_mm
    return {
        "capsule_distance_mm": nodule.capsule_distance_mm,
        "centre_capsule_distance_mm": nodule.centre_capsule_distance_mm,
        "diameter_mm": nodule.diameter_mm,
        "x_mm": x, "y_mm": y, "z_mm": z, "abs_x_mm": abs(x),
        "taller_than_wide": int(nodule.taller_than_wide),
        "microcalcification": int(nodule.microcalcification),
        "age_years": age,
        "lobe": "right" if nodule.side == "R" else "left",
        "lobe_third": nodule.third_name(),
        "echogenicity": nodule.echogenicity,
        "margin": nodule.margin,
        "sex": sex,
    }
