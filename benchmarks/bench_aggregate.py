"""Aggregation: recovery of planted risk, permutation speed against nilearn, throughput.

Usage::

    python benchmarks/bench_aggregate.py --default DIR --other DIR [--extra DIR ...]

Each ``DIR`` holds ``phantom/`` and ``registered/`` (``llnm3d phantom``, ``heatmap``,
``register``); ``--default`` is a cohort of the default risk spec, ``--other`` one of another
spec (e.g. ``examples/risk_spec_posterior_lower.json``); ``--extra`` cohorts only add nodules to
the permutation benchmark. Prints Markdown tables, in one run on one machine:

- recovery: Pearson correlation over voxels meeting min-cases between the recovered
  probability map and the planted expected-risk map (the same weighted mean of the nodules' true
  risks, :func:`llnm3d.phantom.truth.planted_risk_map`), per cohort and weight; and per
  capsule-distance bin, whether the planted risk (mean true risk of the bin's nodules) lies
  inside the recovered 95 % interval;
- permutations: our max-statistic OLS permutations vs nilearn's ``permuted_ols`` on the same
  4,000 nodules x 50,000 voxels (real patches, heatmap weights), 1,000 permutations each, each
  in its own process: time, ratio, peak memory (max RSS);
- throughput: accumulation in nodules per second on 1 and 2 local processes and on a Dask
  LocalCluster of 1 and 2 workers, with the check that all give the same maps.
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from llnm3d import Atlas, aggregate, load_registered
from llnm3d.io import file_stem
from llnm3d.phantom.truth import planted_risk_map, read_truth
from llnm3d.statistics.accumulate import analysis_domain, domain_lookup
from llnm3d.statistics.inference import OLSDesign
from llnm3d.statistics.maps import weight_matrix


def _child(method: str, path: str, n_perm: int) -> None:
    """Run one permutation method on a saved problem; print seconds and peak RSS (MB)."""
    data = np.load(path)
    matrix = sp.csr_matrix((data["data"], data["indices"], data["indptr"]),
                           shape=tuple(data["shape"]))
    y = data["y"]
    start = time.perf_counter()
    if method == "llnm3d":
        design = OLSDesign(matrix, y)
        design.t_scores()
        design.permutation_maxima(n_perm, seed=0, device="cpu")
    else:
        from nilearn.mass_univariate import permuted_ols

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            permuted_ols(y[:, None], matrix.T.toarray(), n_perm=n_perm, random_state=0,
                         n_jobs=2)
    seconds = time.perf_counter() - start
    print(f"{seconds} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}")


def _recovery(name, folder, atlas):
    registered = load_registered(folder / "registered")
    truth, _ = read_truth(folder / "phantom")
    rows = []
    for weight in ("heatmap", "mask"):
        stats = aggregate(registered, atlas=atlas, weight=weight, permutations=0,
                          progress=False)
        planted = planted_risk_map(stats, registered, folder / "phantom", atlas)
        ok = np.isfinite(planted) & np.isfinite(stats.volumes["probability"])
        r = np.corrcoef(planted[ok], stats.volumes["probability"][ok])[0, 1]
        rows.append(f"| {name} | {weight} | {stats.summary['nodules']} | {ok.sum()} | {r:.3f} |")
    table = stats.capsule_distance
    qc = registered.qc.merge(truth[["nodule", "risk"]], on="nodule")
    bins = []
    for _, row in table.iterrows():
        inside = (qc["capsule_distance_mm"] >= row["low_mm"]) & (
            qc["capsule_distance_mm"] < row["high_mm"])
        if not inside.any():
            continue
        planted_risk = qc.loc[inside, "risk"].mean()
        covered = row["ci_low"] <= planted_risk <= row["ci_high"]
        bins.append(f"| {name} | {row['bin']} | {row['nodules']} | {row['risk']:.3f} "
                    f"[{row['ci_low']:.3f}, {row['ci_high']:.3f}] | {planted_risk:.3f} | "
                    f"{'yes' if covered else 'no'} |")
    return rows, bins


def _permutation_problem(folders, atlas, n_nodules, n_voxels, path):
    """4,000 real nodules' heatmap weights on 50,000 voxels that meet min-cases."""
    registered = [load_registered(f / "registered") for f in folders]
    stats = aggregate(registered, atlas=atlas, permutations=0, progress=False)
    domain = analysis_domain(atlas)
    lookup = domain_lookup(atlas, domain)
    n = stats.volumes["n_nodules"].ravel()[domain]
    rng = np.random.default_rng(0)
    tested = np.sort(rng.choice(np.flatnonzero(n >= 10), n_voxels, replace=False))
    pooled = []
    for result in registered:
        ok = result.qc[result.qc["status"] != "failed"]
        pooled.append(ok.assign(patch_path=[result.out_dir / "patches" / f"{file_stem(k)}.npz"
                                            for k in ok["nodule"]]))
    nodules = pd.concat(pooled).sort_values("nodule").head(n_nodules)
    matrix = weight_matrix(nodules, tested, lookup, len(domain), "heatmap")
    np.savez(path, data=matrix.data, indices=matrix.indices, indptr=matrix.indptr,
             shape=np.array(matrix.shape), y=nodules["label"].to_numpy(float))
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default", type=Path)
    parser.add_argument("--other", type=Path)
    parser.add_argument("--extra", type=Path, nargs="*", default=[])
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--parts", default="recovery,permutations,throughput",
                        help="comma-separated subset of the three parts to run")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.permutations)
        return
    atlas = Atlas.default()
    parts = set(args.parts.split(","))
    if "recovery" in parts:
        _print_recovery(args, atlas)
    if "permutations" in parts:
        _print_permutations(args, atlas)
    if "throughput" in parts:
        _print_throughput(args, atlas)


def _print_recovery(args, atlas) -> None:
    print("\n| cohort | weight | nodules | voxels >= min-cases | Pearson r, recovered vs "
          "planted |\n|---|---|---|---|---|")
    bins_rows = []
    for name, folder in (("default spec", args.default), ("posterior-lower spec", args.other)):
        rows, bins = _recovery(name, folder, atlas)
        print("\n".join(rows))
        bins_rows += bins
    print("\n| cohort | capsule distance | nodules | recovered risk [95 % CI] | planted risk | "
          "planted inside CI |\n|---|---|---|---|---|---|")
    print("\n".join(bins_rows))


def _print_permutations(args, atlas) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/problem.npz"
        matrix = _permutation_problem([args.default, args.other, *args.extra], atlas, 4000,
                                      50000, path)
        density = matrix.nnz / (matrix.shape[0] * matrix.shape[1])
        results = {}
        for method in ("nilearn", "llnm3d"):
            out = subprocess.run([sys.executable, __file__, "--child", method, path,
                                  "--permutations", str(args.permutations)],
                                 capture_output=True, text=True, check=True).stdout.split()
            results[method] = (float(out[0]), float(out[1]))
    base = results["nilearn"][0]
    print(f"\n{matrix.shape[1]} nodules x {matrix.shape[0]} voxels (density {density:.1%}), "
          f"{args.permutations} permutations, observed t-map included\n")
    print("| method | time | speed-up over permuted_ols | peak memory (max RSS) |")
    print("|---|---|---|---|")
    for method, label in (("nilearn", "nilearn permuted_ols, n_jobs=2 (baseline)"),
                          ("llnm3d", "llnm3d OLSDesign, torch CPU, float32")):
        seconds, rss = results[method]
        print(f"| {label} | {seconds:.1f} s | {base / seconds:.1f}x | {rss / 1024:.2f} GB |")


def _print_throughput(args, atlas) -> None:
    registered = load_registered(args.default / "registered")
    n = int((registered.qc["status"] != "failed").sum())
    runs = []
    for label, workers, scheduler in (("1 process (baseline)", 1, None),
                                      ("2 local processes", 2, None),
                                      ("Dask LocalCluster, 1 worker", 1, "local"),
                                      ("Dask LocalCluster, 2 workers", 2, "local")):
        start = time.perf_counter()
        stats = aggregate(registered, atlas=atlas, permutations=0, workers=workers,
                          scheduler=scheduler, progress=False)
        runs.append((label, time.perf_counter() - start, stats))
    print(f"\naccumulation of {n} nodules (heatmap weights, no permutations)\n")
    print("| run | time | nodules/s | ratio to baseline | same maps |\n|---|---|---|---|---|")
    for label, seconds, stats in runs:
        same = all(np.array_equal(stats.volumes[k], runs[0][2].volumes[k], equal_nan=True)
                   for k in stats.volumes)
        print(f"| {label} | {seconds:.1f} s | {n / seconds:.0f} | {seconds / runs[0][1]:.2f} | "
              f"{'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
