"""Aggregation: recovery of planted risk, throughput.

Usage::

    python benchmarks/bench_aggregate.py --default DIR --other DIR [--extra DIR ...]

Each ``DIR`` holds ``phantom/`` and ``registered/`` (``llnm3d phantom``, ``heatmap``,
``register``); ``--default`` is a cohort of the default risk spec, ``--other`` one of another
spec (e.g. ``examples/risk_spec_posterior_lower.json``). Prints Markdown tables, in one run on
one machine:

- recovery: Pearson correlation over voxels meeting min-cases between the recovered
  probability map and the planted expected-risk map (the same weighted mean of the nodules' true
  risks, :func:`llnm3d.validation.planted_risk_map`), per cohort and weight; and per
  capsule-distance bin, whether the planted risk (mean true risk of the bin's nodules) lies
  inside the recovered 95 % interval;
- throughput: accumulation in nodules per second on 1 and 2 local processes and on a Dask
  LocalCluster of 1 and 2 workers, with the check that all give the same maps.

The permutation tests against nilearn: ``bench_permutations.py``.
"""

import argparse
import time
from pathlib import Path

import numpy as np

from llnm3d import Atlas, aggregate, load_registered
from llnm3d.validation import planted_risk_map, read_truth


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default", type=Path)
    parser.add_argument("--other", type=Path)
    parser.add_argument("--parts", default="recovery,throughput",
                        help="comma-separated subset of the two parts to run")
    args = parser.parse_args()
    atlas = Atlas.default()
    parts = set(args.parts.split(","))
    if "recovery" in parts:
        _print_recovery(args, atlas)
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
