"""Validation against a phantom's planted truth (truth.csv, truth.json).

Only validation code (tests, benchmarks, the demo's report) uses this module; no pipeline stage
reads the truth. It sits above the phantom, registration and statistics, whose outputs it
compares with the truth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .atlas import Atlas
from .io import InputError, read_json
from .phantom.deform import PatientDeformation
from .phantom.risk import _term_value
from .statistics.accumulate import (
    NoduleInput,
    accumulate_block,
    analysis_domain,
    domain_lookup,
)


def read_truth(phantom_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """The truth table (one row per nodule, with a ``nodule`` key as in registration QC) and
    truth.json of a phantom folder."""
    phantom_dir = Path(phantom_dir)
    if not (phantom_dir / "truth.csv").is_file():
        raise InputError(f"{phantom_dir}: no truth.csv (not a phantom folder)")
    truth = pd.read_csv(phantom_dir / "truth.csv", dtype={"patient_id": str})
    truth["nodule"] = truth["patient_id"] + "-N" + truth["nodule_id"].astype(str)
    return truth, read_json(phantom_dir / "truth.json")


def true_nodule_mask(row: pd.Series, deformation: PatientDeformation, atlas: Atlas,
                     slices: tuple[slice, slice, slice]) -> np.ndarray:
    """Occupancy of a true nodule on a box of the atlas grid, shape of the box (z, y, x).

    The nodule is its ellipsoid (semi-axes and z rotation from truth.csv; the lobulated or
    irregular margin waves are not in the truth tables) in the patient, mapped to the atlas
    through the patient's deformation.
    """
    k, j, i = np.meshgrid(*[np.arange(s.start, s.stop) for s in slices], indexing="ij")
    points = atlas.voxel_to_world(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    patient = deformation.to_patient(points)
    centre = np.array([row[f"centre_patient_{a}_mm"] for a in "xyz"])
    semi_axes = np.array([row[f"semi_axis_{a}_mm"] for a in "xyz"])
    angle = np.radians(row["rotation_z_deg"])
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    local = (patient - centre) @ rotation / semi_axes
    return (np.einsum("ij,ij->i", local, local) <= 1.0).reshape(k.shape)


def registration_errors(qc: pd.DataFrame, phantom_dir: str | Path, atlas: Atlas,
                        patches=None) -> pd.DataFrame:
    """Per registered nodule: centre error in atlas mm (per axis and Euclidean), region
    agreement, capsule-distance error, and (with ``patches``, a callable nodule -> Patch) the
    Dice of the fused nodule with the true nodule."""
    truth, record = read_truth(phantom_dir)
    merged = qc[qc["status"] != "failed"].merge(truth, on="nodule", suffixes=("", "_true"))
    rows = []
    for _, row in merged.iterrows():
        true_centre = np.array([row[f"centre_atlas_{a}_mm"] for a in "xyz"])
        estimate = np.array([row[f"centre_{a}_mm"] for a in "xyz"])
        error = estimate - true_centre
        result = {"nodule": row["nodule"], "status": row["status"],
                  "error_x_mm": error[0], "error_y_mm": error[1], "error_z_mm": error[2],
                  "error_mm": float(np.linalg.norm(error)),
                  "region_true": int(row["region_true"]), "region": int(row["region"]),
                  "capsule_distance_true_mm": row["capsule_distance_mm_true"],
                  "capsule_distance_mm": row["capsule_distance_mm"],
                  "diameter_true_mm": row["diameter_mm_true"], "diameter_mm": row["diameter_mm"],
                  "side": row["side"]}
        for axis, value in zip("xyz", true_centre, strict=True):
            result[f"true_{axis}_mm"] = value
        if patches is not None:
            patch = patches(row["nodule"])
            deformation = PatientDeformation.from_dict(
                record["patients"][row["patient_id"]]["deformation"])
            margin = int(np.ceil(2.0 / atlas.spacing_mm))
            box = _union_box(patch, true_centre, row, atlas, margin)
            truth_mask = true_nodule_mask(row, deformation, atlas, box)
            fused = np.zeros(truth_mask.shape, bool)
            offset = [p.start - b.start for p, b in zip(patch.slices, box, strict=True)]
            inside = tuple(slice(o, o + n)
                           for o, n in zip(offset, patch.mask.shape, strict=True))
            fused[inside] = patch.mask
            total = fused.sum() + truth_mask.sum()
            result["nodule_dice"] = 2 * (fused & truth_mask).sum() / total if total else np.nan
        rows.append(result)
    return pd.DataFrame(rows)


def _union_box(patch, centre_mm, row, atlas, margin):
    """Atlas-grid box holding the patch and the true nodule's bounding sphere."""
    reach = max(row[f"semi_axis_{a}_mm"] for a in "xyz") * 1.5 / atlas.spacing_mm + margin
    centre = atlas.world_to_voxel(centre_mm)[0][::-1]
    lo = [min(p.start, int(np.floor(c - reach))) for p, c in zip(patch.slices, centre, strict=True)]
    hi = [max(p.stop, int(np.ceil(c + reach)) + 1)
          for p, c in zip(patch.slices, centre, strict=True)]
    return tuple(slice(max(a, 0), min(b, n))
                 for a, b, n in zip(lo, hi, atlas.labels.shape, strict=True))


def planted_risk_map(stats, registered, phantom_dir: str | Path, atlas: Atlas) -> np.ndarray:
    """The planted expected-risk map matching a statistics result, shape of the atlas.

    At each voxel, the mean of the true risks (truth.csv ``risk``, the planted probability of
    LLNM of each nodule) of the nodules that entered ``stats``, with the same weights: what
    the recovered probability map estimates from the nodules' binary outcomes. NaN where
    ``stats`` masked the probability.
    """
    truth, _ = read_truth(phantom_dir)
    risk = truth.set_index("nodule")["risk"]
    qc = registered.qc.set_index("nodule")
    keys = [k for k in qc.index if k in risk.index and qc.loc[k, "status"] != "failed"]
    inputs = [NoduleInput(k, registered.out_dir / "patches" / f"{k}.npz", float(risk[k]), None)
              for k in keys]
    domain = analysis_domain(atlas)
    sums = accumulate_block(inputs, stats.summary["parameters"]["weight"],
                            domain_lookup(atlas, domain), len(domain)).sums
    with np.errstate(divide="ignore", invalid="ignore"):
        planted = sums["sum_wy"] / sums["sum_w"]
    volume: np.ndarray = np.full(atlas.labels.size, np.nan)
    volume[domain] = planted
    volume = volume.reshape(atlas.labels.shape)
    return np.where(np.isfinite(stats.volumes["probability"]), volume, np.nan)


# Spec covariates that describe where a nodule is; every other covariate is the nodule's own.
_SPATIAL = {"x_mm", "y_mm", "z_mm", "abs_x_mm", "lobe", "lobe_third", "capsule_distance_mm",
            "centre_capsule_distance_mm"}


def truth_risk_map(spec, rows: pd.DataFrame, atlas: Atlas, max_rows: int = 400,
                   seed: int = 0, voxels: np.ndarray | None = None) -> np.ndarray:
    """End-to-end truth: the planted LLNM risk of a nodule centred at each atlas voxel.

    Computed from the risk spec alone, without registration, the model or any estimate: at a
    voxel ``v`` each nodule ``r`` of ``rows`` (a truth table) is moved so that its centre lies
    at ``v``, keeping its own non-spatial covariates (size, morphology, age, sex) and its own
    centre-to-edge depth, and the spec's risks are averaged over the nodules (Monte Carlo over
    at most ``max_rows`` rows, drawn with ``seed``). The spatial covariates at ``v`` are its
    atlas position, its lobe (by the sign of x) and third (nearest region label), its depth
    below the capsule (``centre_capsule_distance_mm``) and the moved nodule's edge depth
    ``max(depth - (centre depth - edge depth of r), 0)``. For a spec with spatial terms only,
    every row gives the same value and the map is the spec evaluated directly.

    Parameters
    ----------
    spec : RiskSpec
    rows : pandas.DataFrame
        Nodules with the spec's covariate columns and ``capsule_distance_mm``,
        ``centre_capsule_distance_mm`` (truth.csv or :func:`~llnm3d.phantom.sample_truth`).
    atlas : Atlas
    voxels : ndarray of int, optional
        Flat atlas indices to evaluate (default: every voxel within 1.5 mm of the gland).

    Returns
    -------
    ndarray of float64, shape of the atlas
        Risk (0-1) at the evaluated voxels, NaN elsewhere.
    """
    if voxels is None:
        voxels = np.flatnonzero(atlas.capsule_distance < 1.5)
    used = {term.get("covariate", "x_mm") for term in spec.data["terms"]}
    if not used - _SPATIAL:
        rows = rows.iloc[:1]
    elif len(rows) > max_rows:
        rows = rows.sample(max_rows, random_state=seed)
    k, j, i = np.unravel_index(voxels, atlas.labels.shape)
    points = atlas.voxel_to_world(np.stack([i, j, k], axis=1))
    region = atlas.nearest_region_of(points).astype(int)
    depth = -atlas.capsule_distance.ravel()[voxels].astype(float)
    place = pd.DataFrame({
        "x_mm": points[:, 0], "y_mm": points[:, 1], "z_mm": points[:, 2],
        "abs_x_mm": np.abs(points[:, 0]),
        "lobe": np.where(points[:, 0] < 0, "right", "left"),
        "lobe_third": pd.Series(region % 10).map({1: "upper", 2: "middle", 3: "lower"})
        .fillna("isthmus").to_numpy(),
        "centre_capsule_distance_mm": depth,
    })
    offsets = (rows["centre_capsule_distance_mm"] - rows["capsule_distance_mm"]).to_numpy(float)
    # The logit splits into terms of the place, terms of the nodule's own covariates and
    # terms of its edge depth (place and nodule together); only the last need each pair.
    terms = spec.data["terms"]
    covariate = [term.get("covariate", "x_mm") for term in terms]  # gaussian: the position
    at_place = sum((_term_value(t, place) for t, c in zip(terms, covariate, strict=True)
                    if c in _SPATIAL and c != "capsule_distance_mm"), np.zeros(len(voxels)))
    own = sum((_term_value(t, rows) for t, c in zip(terms, covariate, strict=True)
               if c not in _SPATIAL),
              np.full(len(rows), float(spec.data["intercept"])))
    edge_terms = [t for t, c in zip(terms, covariate, strict=True) if c == "capsule_distance_mm"]
    total = np.zeros(len(voxels))
    for offset, own_logit in zip(offsets, own, strict=True):
        edge = pd.DataFrame({"capsule_distance_mm": np.maximum(depth - offset, 0.0)})
        logit = at_place + own_logit + sum((_term_value(t, edge) for t in edge_terms), 0.0)
        total += 1.0 / (1.0 + np.exp(-logit))
    volume = np.full(atlas.labels.size, np.nan)
    volume[voxels] = total / len(rows)
    return volume.reshape(atlas.labels.shape)
