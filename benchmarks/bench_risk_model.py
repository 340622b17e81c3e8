"""Validation study of the risk map against end-to-end planted truth (issue: a risk map that
tells the truth).

For each seed, one rendered phantom of the largest size is made and registered (nodule masks,
as `llnm3d register` does for a user). The risk spec changes only the outcomes: the phantom
draws them last, from the same random numbers, so :func:`llnm3d.phantom.sample_truth` with a
spec gives exactly the outcomes a phantom made with that spec would have. Smaller cohorts are
the first N patients. Every estimate is compared with the truth map of
:func:`llnm3d.validation.truth_risk_map` (the spec evaluated for a nodule centred at each
voxel), which passes through neither registration nor any estimator.

Usage::

    python benchmarks/bench_risk_model.py --work /tmp/risk-study            # the full study
    python benchmarks/bench_risk_model.py --work /tmp/risk-study --sizes 500 --seeds 11
    python benchmarks/bench_risk_model.py --work /tmp/risk-study --speed     # fit time, memory
    python benchmarks/bench_risk_model.py --work /tmp/risk-study --summary   # tables only

Writes ``benchmarks/results/risk_model/``: ``study-seed<N>-<sizes>.csv`` (one row per seed,
spec, size and estimator), ``summary.{csv,md}`` (means and worst seeds) and ``speed.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats as scistats

from llnm3d.atlas import Atlas
from llnm3d.phantom import RiskSpec, sample_truth
from llnm3d.registration import load_registered
from llnm3d.statistics.accumulate import analysis_domain, domain_lookup
from llnm3d.statistics.maps import estimate_risk, weight_matrix
from llnm3d.validation import truth_risk_map

ROOT = Path(__file__).resolve().parent
SPECS = {
    "default": None,
    "posterior_lower": ROOT.parent / "examples" / "risk_spec_posterior_lower.json",
    "one_lobe_spot": ROOT / "specs" / "one_lobe_spot.json",
    "protective_spot": ROOT / "specs" / "protective_spot.json",
    "gradient_z": ROOT / "specs" / "gradient_z.json",
    "null": ROOT / "specs" / "null.json",
}
MIN_CASES = 10
TOP_SHARE = 0.01


def llnm3d(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "llnm3d", *args], check=True)


def cohort(work: Path, seed: int, patients: int) -> tuple[Path, int]:
    """A rendered phantom of ``patients`` registered with nodule masks (resumable; an existing
    phantom is used as it is), and its number of patients."""
    folder = work / f"c{seed}"
    if not (folder / "phantom" / "truth.csv").exists():
        llnm3d("phantom", "--out", str(folder / "phantom"), "--patients", str(patients),
               "--seed", str(seed), "--workers", "2")
    if not (folder / "registered" / "register.json").exists():
        subprocess.run([sys.executable, "-m", "llnm3d", "register", "--manifest",
                        str(folder / "phantom" / "manifest.csv"), "--out",
                        str(folder / "registered"), "--workers", "2"], check=False)
    return folder, json.loads((folder / "phantom" / "phantom.json").read_text())["n_patients"]


def footprints(folder: Path, atlas: Atlas, domain: np.ndarray
               ) -> tuple[pd.DataFrame, sp.csr_matrix]:
    """Registered nodules (QC rows) and their mask footprints on the domain, cached."""
    registered = load_registered(folder / "registered")
    qc = registered.qc[registered.qc["status"] != "failed"].sort_values("nodule")
    qc = qc.assign(patch_path=[folder / "registered" / "patches" / f"{k}.npz"
                               for k in qc["nodule"]]).reset_index(drop=True)
    cache = folder / "footprints.npz"
    if cache.exists():
        matrix = sp.load_npz(cache).tocsr()
    else:
        matrix = weight_matrix(qc, np.arange(len(domain)), domain_lookup(atlas, domain),
                               len(domain), "mask", progress=True, workers=2)
        sp.save_npz(cache, matrix)
    keep = np.asarray(matrix.sum(axis=0)).ravel() > 0
    return qc[keep].reset_index(drop=True), matrix[:, keep].tocsc()


def load_spec(name: str) -> RiskSpec:
    path = SPECS[name]
    return RiskSpec.default() if path is None else RiskSpec.load(path)


def planted_centres(spec: RiskSpec, truth_map: np.ndarray, atlas: Atlas, domain, shown
                    ) -> tuple[list[np.ndarray], int]:
    """Where the planted effect peaks, and its sign (+1 hot spot, -1 protective spot).

    Gaussian spots: their centres (both when mirrored). Other specs: the centroid of the top
    1 % of the truth map itself, per lobe."""
    spots = [t for t in spec.data["terms"] if t["type"] == "gaussian"]
    if spots:
        term = spots[0]
        centre = np.asarray(term["centre_mm"], float)
        sign = 1 if term["coefficient"] > 0 else -1
        return ([centre, centre * [-1, 1, 1]] if term.get("mirror_x") else [centre]), sign
    values = truth_map.ravel()[domain][shown]
    return _top_centroids(values, _points(atlas, domain)[shown], 1, 2), 1


def _points(atlas, domain):
    k, j, i = np.unravel_index(domain, atlas.labels.shape)
    return atlas.voxel_to_world(np.stack([i, j, k], axis=1))


def _top_centroids(values, points, sign, n_centres):
    """Centroids of the top (sign +1) or bottom (-1) 1 % voxels, split by lobe when asked."""
    order = np.argsort(-sign * values)
    top = points[order[:max(1, int(round(TOP_SHARE * len(values))))]]
    if n_centres == 1:
        return [top.mean(axis=0)]
    return [top[side].mean(axis=0) for side in (top[:, 0] < 0, top[:, 0] >= 0) if side.any()]


def hot_spot_error(values, points, centres, sign) -> float:
    """Mean distance (mm) from each planted centre to the centroid of the estimate's top 1 %
    voxels in that centre's lobe (or overall, for a single centre)."""
    if len(centres) == 1:
        return float(np.linalg.norm(_top_centroids(values, points, sign, 1)[0] - centres[0]))
    errors = []
    for centre in centres:
        same = np.sign(points[:, 0]) == np.sign(centre[0])
        found = _top_centroids(values[same], points[same], sign, 1)[0]
        errors.append(np.linalg.norm(found - centre))
    return float(np.mean(errors))


def weighted_maps(matrix: sp.csc_matrix, y: np.ndarray, prior: float = 2.0) -> dict:
    """The weighted estimator from footprints (mask weights: the shrunk proportion and its
    Jeffreys interval, as `aggregate --estimator weighted --weight mask`)."""
    from llnm3d.statistics.inference import jeffreys_interval

    n = np.asarray(matrix.sum(axis=1)).ravel()
    events = matrix @ y
    rate = y.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        probability = (events + prior * rate) / (n + prior)
    low, high = jeffreys_interval(events, n)
    return {"probability": probability, "probability_ci_low": low, "probability_ci_high": high}


def evaluate(name, maps, truth, points, shown, centres, sign, spatial_spec) -> dict:
    estimate = maps["probability"][shown]
    row = {"estimator": name, "voxels": int(shown.sum())}
    inside = (maps["probability_ci_low"][shown] <= truth) & (
        truth <= maps["probability_ci_high"][shown])
    row["coverage"] = float(inside.mean())
    if spatial_spec:
        row["pearson"] = float(np.corrcoef(estimate, truth)[0, 1])
        row["spearman"] = float(scistats.spearmanr(estimate, truth).statistic)
        row["hot_spot_error_mm"] = hot_spot_error(estimate, points[shown], centres, sign)
    if "significance" in maps:
        row["any_fwer_significant"] = bool(np.any(maps["significance"][shown] != 0))
    return row


def study(args) -> pd.DataFrame:
    atlas = Atlas.default()
    domain = analysis_domain(atlas)
    points = _points(atlas, domain)
    rows = []
    largest = max(args.sizes)
    for seed in args.seeds:
        folder, available = cohort(args.work, seed, largest)
        qc, matrix = footprints(folder, atlas, domain)
        patient_index = qc["patient_id"].str[1:].astype(int)
        for spec_name in args.specs:
            spec = load_spec(spec_name)
            truth_rows = sample_truth(available, seed=seed, risk_spec=spec, workers=2)
            truth_rows["nodule"] = (truth_rows["patient_id"] + "-N"
                                    + truth_rows["nodule_id"].astype(str))
            labels = truth_rows.set_index("nodule")["label"]
            spatial_spec = spec_name != "null"
            truth_volume = truth_risk_map(spec, truth_rows, atlas, voxels=domain, seed=seed)
            truth_all = truth_volume.ravel()[domain]
            for size in [s for s in args.sizes if s <= available]:
                subset = np.flatnonzero(patient_index <= size)
                nodules = qc.iloc[subset].assign(label=labels.loc[qc["nodule"].iloc[subset]]
                                                 .to_numpy()).reset_index(drop=True)
                sub = matrix[:, subset].tocsr()
                n_touch = np.diff((sub > 0).tocsr().indptr)
                shown = n_touch >= MIN_CASES
                tested = np.flatnonzero(shown)
                y = nodules["label"].to_numpy(float)
                truth = truth_all[shown]
                centres, sign = planted_centres(spec, truth_volume, atlas, domain, shown)
                base = {"spec": spec_name, "patients": size, "seed": seed,
                        "nodules": len(nodules), "prevalence": float(y.mean())}
                if spatial_spec:  # the same measure on the truth map itself: its floor
                    base["truth_hot_spot_error_mm"] = hot_spot_error(truth, points[shown],
                                                                     centres, sign)
                for name in args.estimators:
                    start = time.perf_counter()
                    if name == "weighted":
                        maps, record = weighted_maps(sub, y), {}
                    else:
                        maps, record = estimate_risk(name, sub, nodules, atlas, domain, tested,
                                                     n_touch > 0)
                    seconds = time.perf_counter() - start
                    row = {**base, **evaluate(name, maps, truth, points, shown, centres, sign,
                                              spatial_spec), "seconds": seconds}
                    row["smoothness"] = record.get("log_lambda", record.get("bandwidth_mm"))
                    row["edf"] = record.get("edf")
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return pd.DataFrame(rows)


def speed(args) -> dict:
    """Fit time and peak memory for 8,000 nodules on the 0.5 mm atlas (spatial with its
    smoothness search vs the weighted estimator, same footprints, same process)."""
    atlas = Atlas.default()
    domain = analysis_domain(atlas)
    folder, _ = cohort(args.work, args.seeds[0], max(args.sizes))
    qc, matrix = footprints(folder, atlas, domain)
    qc, matrix = qc.iloc[:8000].reset_index(drop=True), matrix[:, :8000].tocsr()
    n_touch = np.diff((matrix > 0).tocsr().indptr)
    y = qc["label"].to_numpy(float)
    start = time.perf_counter()
    weighted_maps(matrix, y)
    weighted = time.perf_counter() - start
    start = time.perf_counter()
    _, record = estimate_risk("spatial", matrix, qc, atlas, domain,
                              np.flatnonzero(n_touch >= MIN_CASES), n_touch > 0)
    spatial = time.perf_counter() - start
    return {"nodules": len(qc), "spatial_s": spatial, "weighted_s": weighted,
            "ratio": spatial / weighted, "basis_functions": record["basis_functions"],
            "log_lambda": record["log_lambda"], "edf": record["edf"],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2}


def markdown(table: pd.DataFrame) -> str:
    """A pipe table, numbers to 3 decimals (2 for mm and seconds)."""
    def cell(column, value):
        if isinstance(value, float):
            return "" if np.isnan(value) else (
                f"{value:.2f}" if column.endswith(("_mm", "seconds")) else f"{value:.3f}")
        return str(value)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(c, v) for c, v in row.items()) + " |"
              for _, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[500, 2000, 8000])
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=[11, 12, 13])
    parser.add_argument("--specs", type=lambda s: s.split(","), default=list(SPECS))
    parser.add_argument("--estimators", type=lambda s: s.split(","),
                        default=["spatial", "kernel", "weighted"])
    parser.add_argument("--speed", action="store_true", help="only the speed check")
    parser.add_argument("--summary", action="store_true",
                        help="only summarise the per-seed results already in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "risk_model")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speed:
        result = speed(args)
        print(json.dumps(result, indent=1))
        (args.out / "speed.json").write_text(json.dumps(result, indent=1))
        return
    for seed in [] if args.summary else args.seeds:  # one file per seed: seeds can run apart
        args_seed = argparse.Namespace(**{**vars(args), "seeds": [seed]})
        sizes = "-".join(str(size) for size in args.sizes)
        study(args_seed).to_csv(args.out / f"study-seed{seed}-{sizes}.csv", index=False)
    # "null" is a spec name here, not a missing value.
    table = pd.concat([pd.read_csv(path, keep_default_na=False, na_values=[""])
                       for path in sorted(args.out.glob("study-seed*.csv"))], ignore_index=True)
    summary = summarise(table)
    summary.to_csv(args.out / "summary.csv", index=False)
    (args.out / "summary.md").write_text(markdown(summary))
    print(summary.to_string())


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per spec, cohort size and estimator: means (and worst seeds) of every measure."""
    table = table.copy()
    if "any_fwer_significant" not in table:
        table["any_fwer_significant"] = np.nan
    table["any_fwer_significant"] = table["any_fwer_significant"].astype(float)
    return table.groupby(["spec", "patients", "estimator"], sort=False).agg(
        seeds=("seed", "nunique"), nodules=("nodules", "mean"), pearson=("pearson", "mean"),
        pearson_min=("pearson", "min"), spearman=("spearman", "mean"),
        spearman_min=("spearman", "min"), hot_spot_mm=("hot_spot_error_mm", "mean"),
        hot_spot_max_mm=("hot_spot_error_mm", "max"),
        truth_hot_spot_mm=("truth_hot_spot_error_mm", "mean"), coverage=("coverage", "mean"),
        coverage_min=("coverage", "min"), fwer_seeds=("any_fwer_significant", "mean"),
        seconds=("seconds", "mean")).reset_index()


if __name__ == "__main__":
    main()
