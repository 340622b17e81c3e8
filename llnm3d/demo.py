"""The whole chain on bundled defaults (``llnm3d demo``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from .atlas import Atlas
from .checks import check_number, check_seed
from .io import ensure_writable_dir, write_json
from .manifest import read_manifest
from .models.heatmap import compute_heatmaps
from .models.qc import contact_sheet
from .phantom import RiskSpec, make_phantom
from .phantom.cohort import MAX_PATIENTS
from .registration import register
from .site import build_site, site_size_bytes
from .statistics import aggregate
from .validation import planted_risk_map, registration_errors, truth_risk_map

STAGES = ("atlas", "phantom cohort", "heatmaps (bundled LLNM-Net)", "registration",
          "aggregation", "site")


def run_demo(out_dir: str | Path, n_patients: int = 200, seed: int = 0,
             progress: bool = True, stage=None) -> dict:
    """Run the whole chain under ``out_dir``; return (and save) a summary.

    Writes ``atlas/``, ``phantom/`` (with ``contact_sheet.png``), ``heatmaps/`` (bundled
    LLNM-Net predictions and GradCAM++ heatmaps), ``registered/`` (one 3D patch per nodule and
    the QC table), ``stats/`` (probability maps, tests, region and capsule-distance tables),
    ``site/`` (the static 3D viewer) and ``summary.json`` (with the registration error and the
    map's correlation with the planted risk, from the phantom's truth, which only this summary
    reads). Idempotent: a second run with the same arguments reuses what is complete.
    ``stage(index, name)``, if given, is called as each of :data:`STAGES` starts.
    ``n_patients`` and ``seed`` are checked as :func:`~llnm3d.phantom.make_phantom` checks
    them, before anything is written.
    """
    check_number("n_patients", n_patients, low=1, high=MAX_PATIENTS, integer=True)
    check_seed(seed)
    stage = stage or (lambda index, name: None)
    out_dir = ensure_writable_dir(out_dir)
    stage(0, STAGES[0])
    atlas = Atlas.default()
    atlas.save(out_dir / "atlas")
    stage(1, STAGES[1])
    cohort = make_phantom(out_dir / "phantom", n_patients, seed=seed, atlas=atlas,
                          progress=progress)
    manifest_path = cohort.out_dir / "manifest.csv"
    sheet = contact_sheet(read_manifest(manifest_path), cohort.out_dir / "contact_sheet.png")
    stage(2, STAGES[2])
    heatmaps = compute_heatmaps(manifest_path, out_dir / "heatmaps", progress=progress)
    scored = heatmaps.predictions.merge(cohort.manifest[["case_id", "label"]], on="case_id")
    per_view = {view: _auc(group["label"], group["probability"])
                for view, group in scored.groupby("view")}
    stage(3, STAGES[3])
    registered = register(manifest_path, heatmaps=out_dir / "heatmaps", atlas=atlas,
                          out_dir=out_dir / "registered", progress=progress)
    errors = registration_errors(registered.qc, cohort.out_dir, atlas)["error_mm"]
    stage(4, STAGES[4])
    stats = aggregate(registered, atlas=atlas, out_dir=out_dir / "stats", progress=progress)
    stage(5, STAGES[5])
    site = build_site(out_dir / "site", out_dir / "stats", atlas=atlas,
                      title="llnm3d demo: where LLNM risk concentrates in a phantom cohort")
    planted = planted_risk_map(stats, registered, cohort.out_dir, atlas)
    recovered = stats.volumes["probability"]
    both = np.isfinite(planted) & np.isfinite(recovered)
    shown = np.flatnonzero(np.isfinite(recovered).ravel())
    truth = truth_risk_map(RiskSpec.default(), cohort.truth, atlas, voxels=shown).ravel()[shown]
    regions = stats.regions.query("half == 'whole' and nodules >= 10").sort_values(
        "risk", ascending=False)
    per_nodule = scored.groupby(["patient_id", "nodule_id"]).agg(
        probability=("probability", "mean"), label=("label", "first"))
    summary = {
        "atlas": str(out_dir / "atlas"),
        "gland_volume_ml": round(atlas.surface.volume / 1000, 2),
        "cohort": str(cohort.out_dir),
        "patients": n_patients,
        "nodules": len(cohort.truth),
        "images": len(cohort.manifest),
        "llnm_prevalence": round(float(cohort.truth["label"].mean()), 3),
        "failed_patients": len(cohort.failures),
        "contact_sheet": str(sheet),
        "heatmaps": str(out_dir / "heatmaps"),
        "model_auc_per_view": per_view,
        "model_auc_per_nodule": _auc(per_nodule["label"], per_nodule["probability"]),
        "failed_images": len(heatmaps.failures),
        "registered": str(out_dir / "registered"),
        "registration_status": registered.qc["status"].value_counts().to_dict(),
        "registration_centre_error_mm": {"median": round(float(errors.median()), 2),
                                         "p95": round(float(errors.quantile(0.95)), 2)},
        "stats": str(out_dir / "stats"),
        "voxels_with_min_cases": stats.summary["voxels"]["tested"],
        "map_vs_truth": map_vs_truth(stats, truth, shown),
        "map_vs_same_patches_pearson_r_sampling_noise_only": (
            round(float(np.corrcoef(planted[both], recovered[both])[0, 1]), 3)
            if both.sum() > 2 else None),
        "top_regions": [{"region": row["region"], "nodules": int(row["nodules"]),
                         "risk": round(float(row["risk"]), 3)}
                        for _, row in regions.head(3).iterrows()],
        "site": str(site),
        "site_mb_without_three_js": round(site_size_bytes(site) / 1e6, 2),
        "seed": seed,
    }
    write_json(out_dir / "summary.json", summary)
    return summary


def map_vs_truth(stats, truth: np.ndarray, voxels: np.ndarray) -> dict:
    """Agreement of a result's risk map with the end-to-end truth map at ``voxels`` (flat
    atlas indices): Pearson, Spearman, and the share of voxels whose 95 % interval holds the
    truth."""
    from scipy.stats import spearmanr

    volumes = {name: stats.volumes[name].ravel()[voxels] for name in (
        "probability", "probability_ci_low", "probability_ci_high")}
    inside = (volumes["probability_ci_low"] <= truth) & (truth <= volumes["probability_ci_high"])
    enough = len(voxels) > 2 and np.ptp(truth) > 0
    return {"voxels": int(len(voxels)),
            "pearson": round(float(np.corrcoef(volumes["probability"], truth)[0, 1]), 3)
            if enough else None,
            "spearman": round(float(spearmanr(volumes["probability"], truth).statistic), 3)
            if enough else None,
            "coverage_95": round(float(inside.mean()), 3) if len(voxels) else None}


def _auc(labels, scores) -> float | None:
    """ROC AUC rounded to 3 decimals; None when only one outcome occurs (a tiny cohort)."""
    if len(set(labels)) < 2:
        return None
    return round(float(roc_auc_score(labels, scores)), 3)
