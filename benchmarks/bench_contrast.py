"""Group contrasts end to end: a registered phantom split into two groups whose outcomes come
from a risk spec with a Gaussian spot (level B) and the same spec without it (level A).

One rendered phantom is made and registered (as in ``bench_risk_model.py``, whose cohort and
footprint helpers this reuses); its patients are split by the parity of their number (odd:
level A, even: level B). The risk spec changes only the outcomes, so
:func:`llnm3d.phantom.sample_truth` gives each group exactly the outcomes a phantom made with
its spec would have. :func:`llnm3d.statistics.contrast.estimate_contrast` gives the
difference map and its simultaneous band; the outcome x group interaction t-test
(:func:`llnm3d.statistics.contrast.interaction_design`, max-|t| permutations) tests it
family-wise. A null contrast (both groups without the spot) runs on the same footprints.

Usage::

    python benchmarks/bench_contrast.py --work /tmp/contrast --patients 1000 --seed 11

Writes ``benchmarks/results/contrast/contrast-seed<N>-<patients>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from bench_risk_model import ROOT, _points, cohort, footprints, load_spec

from llnm3d.atlas import Atlas
from llnm3d.phantom import RiskSpec, sample_truth
from llnm3d.statistics.accumulate import analysis_domain
from llnm3d.statistics.contrast import estimate_contrast, interaction_design
from llnm3d.statistics.inference import OLSDesign, fwer_p_values
from llnm3d.validation import truth_risk_map

MIN_CASES = 10
SPOT_RADIUS_MM = 4.0
FAR_MM = 15.0


def without_spots(spec: RiskSpec) -> RiskSpec:
    """The spec with its Gaussian terms removed."""
    data = dict(spec.data)
    data["terms"] = [t for t in data["terms"] if t["type"] != "gaussian"]
    return RiskSpec.from_dict(data)


def run(args) -> dict:
    atlas = Atlas.default()
    domain = analysis_domain(atlas)
    points = _points(atlas, domain)
    folder, available = cohort(args.work, args.seed, args.patients)
    qc, matrix = footprints(folder, atlas, domain)
    spot_spec = load_spec(args.spec)
    flat_spec = without_spots(spot_spec)
    centre = np.asarray(next(t for t in spot_spec.data["terms"]
                             if t["type"] == "gaussian")["centre_mm"], float)
    labels, truth = {}, {}
    for name, spec in (("spot", spot_spec), ("flat", flat_spec)):
        rows = sample_truth(available, seed=args.seed, risk_spec=spec, workers=2)
        rows["nodule"] = rows["patient_id"] + "-N" + rows["nodule_id"].astype(str)
        labels[name] = rows.set_index("nodule")["label"]
        truth[name] = truth_risk_map(spec, rows, atlas, voxels=domain,
                                     seed=args.seed).ravel()[domain]
    level_b = (qc["patient_id"].str[1:].astype(int) % 2 == 0).to_numpy()
    distance = np.linalg.norm(points - centre, axis=1)
    result = {"patients": available, "seed": args.seed, "spec": args.spec,
              "nodules": len(qc), "permutations": args.permutations, "contrasts": {}}
    for contrast, spec_b in (("spot_in_b", "spot"), ("null", "flat")):
        y = np.where(level_b, labels[spec_b].loc[qc["nodule"]].to_numpy(),
                     labels["flat"].loc[qc["nodule"]].to_numpy()).astype(float)
        nodules = qc.assign(label=y, group=np.where(level_b, "B", "A"))
        n_touch = np.diff((matrix > 0).tocsr().indptr)
        start = time.perf_counter()
        maps, record = estimate_contrast(matrix, nodules, "group", atlas, domain, n_touch > 0)
        fit_s = time.perf_counter() - start
        shown = ((maps["contrast_n_nodules_a"] >= MIN_CASES)
                 & (maps["contrast_n_nodules_b"] >= MIN_CASES))
        low, high = maps["contrast_difference_ci_low"], maps["contrast_difference_ci_high"]
        true_difference = truth[spec_b] - truth["flat"]
        at_spot, far = shown & (distance < SPOT_RADIUS_MM), shown & (distance > FAR_MM)
        start = time.perf_counter()
        tested, confounds = interaction_design(y, level_b.astype(float))
        design = OLSDesign(matrix.tocsr()[np.flatnonzero(shown)], tested, confounds)
        t = design.t_scores()
        p = fwer_p_values(t, design.permutation_maxima(args.permutations, args.seed)["t"])
        test_s = time.perf_counter() - start
        significant = p <= 0.05
        entry = {
            "groups": record["groups"], "notes": record["notes"],
            "shown_voxels": int(shown.sum()), "spot_voxels": int(at_spot.sum()),
            "coverage_of_true_difference": float(np.mean(
                (low[shown] <= true_difference[shown])
                & (true_difference[shown] <= high[shown]))),
            "true_difference_at_spot_mean": float(np.mean(true_difference[at_spot])),
            "difference_at_spot_mean": float(np.nanmean(maps["contrast_difference"][at_spot])),
            "ci_low_above_0_at_spot": float(np.mean(low[at_spot] > 0)),
            "ci_excludes_0_far": float(np.mean((low[far] > 0) | (high[far] < 0))),
            "simultaneous_z": record["simultaneous_z"],
            "band_significant_at_spot": float(np.mean(
                maps["contrast_significance"][at_spot] == 1)),
            "band_significant_voxels": int(np.nansum(np.abs(maps["contrast_significance"]))),
            "band_significant_far_voxels": int(np.nansum(
                np.abs(maps["contrast_significance"][far]))),
            "fwer_min_p_near_spot": float(np.nanmin(p[distance[shown] < SPOT_RADIUS_MM]))
            if at_spot.any() else None,
            "fwer_significant_voxels": int(np.sum(significant)),
            "fwer_significant_far_voxels": int(np.sum(significant & (distance[shown] > FAR_MM))),
            "fit_and_interval_s": fit_s, "interaction_test_s": test_s}
        result["contrasts"][contrast] = entry
        print(contrast, json.dumps(entry, indent=1), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--spec", default="one_lobe_spot")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "contrast")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    (args.out / f"contrast-seed{args.seed}-{args.patients}.json").write_text(
        json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
