"""Registration: accuracy against the phantom's truth, and speed on local processes and Dask.

Usage::

    python benchmarks/bench_registration.py --work DIR [--patients 800 --seed 200]
        [--figure docs/registration_centres.png]

Makes (or reuses) a phantom cohort in ``DIR/phantom`` and its heatmaps with the bundled model in
``DIR/heatmaps``, then registers it three ways into separate folders, in one run on one machine:
one process (the baseline), two local worker processes, and a Dask LocalCluster of two
single-threaded workers. It checks that the three give byte-identical patches and equal QC
tables, and prints Markdown tables:

- speed: nodules per second (pool or cluster start-up included) and the ratio to the baseline;
- accuracy: nodule-centre error in atlas mm (registered vs the truth, which only this script
  reads), Euclidean and per axis, median, 90th and 95th percentiles; thyroid Dice per view;
  fused-nodule Dice against the true nodule mapped into the atlas; region agreement; capsule
  distance and diameter errors.

The figure shows true and recovered centres on the atlas, front and side views.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from llnm3d import Atlas, register
from llnm3d.heatmap import compute_heatmaps
from llnm3d.phantom import make_phantom
from llnm3d.phantom.truth import registration_errors


def _timed_register(label, manifest, heatmaps, out, **kwargs):
    start = time.perf_counter()
    result = register(manifest, heatmaps=heatmaps, out_dir=out, progress=False, **kwargs)
    seconds = time.perf_counter() - start
    return label, seconds, result


def _same(a, b) -> bool:
    if not a.qc.equals(b.qc):
        return False
    return all(path.read_bytes() == (b.out_dir / "patches" / path.name).read_bytes()
               for path in (a.out_dir / "patches").glob("*.npz"))


def _figure(errors: pd.DataFrame, atlas: Atlas, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    inside = atlas.labels > 0
    extent_x = atlas.origin_mm[0] + atlas.spacing_mm * np.array([0, inside.shape[2] - 1])
    extent_y = atlas.origin_mm[1] + atlas.spacing_mm * np.array([0, inside.shape[1] - 1])
    extent_z = atlas.origin_mm[2] + atlas.spacing_mm * np.array([0, inside.shape[0] - 1])
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), constrained_layout=True)
    views = [("anterior view (x, z)", inside.any(axis=1), "x", "z", (*extent_x, *extent_z)),
             ("view from the patient's right (y, z)", inside.any(axis=2), "y", "z",
              (*extent_y, *extent_z))]
    for ax, (title, silhouette, a, b, extent) in zip(axes, views):
        ax.imshow(silhouette, origin="lower", extent=extent, cmap="Greys", alpha=0.25)
        for _, row in errors.iterrows():
            ax.plot([row[f"true_{a}_mm"], row[f"centre_{a}_mm"]],
                    [row[f"true_{b}_mm"], row[f"centre_{b}_mm"]], color="0.35", lw=0.5)
        ax.scatter(errors[f"true_{a}_mm"], errors[f"true_{b}_mm"], s=6, c="#0072B2",
                   label="true centre")
        ax.scatter(errors[f"centre_{a}_mm"], errors[f"centre_{b}_mm"], s=6, c="#D55E00",
                   label="registered centre")
        ax.set_xlabel(f"{a} (mm)")
        ax.set_ylabel(f"{b} (mm)")
        ax.set_title(title)
        ax.set_aspect("equal")
    # Seen from the front, the patient's right (x < 0) is on the viewer's left; seen from the
    # patient's right, the front (y < 0) is on the viewer's right.
    axes[1].invert_xaxis()
    axes[0].legend(loc="lower left", fontsize=8)
    median = errors["error_mm"].median()
    fig.suptitle(f"{len(errors)} phantom nodules: true vs registered centres in atlas space "
                 f"(median error {median:.2f} mm)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=800)
    parser.add_argument("--seed", type=int, default=200)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    atlas = Atlas.default()
    phantom_dir, heatmap_dir = args.work / "phantom", args.work / "heatmaps"
    make_phantom(phantom_dir, args.patients, seed=args.seed, atlas=atlas, progress=False)
    manifest = phantom_dir / "manifest.csv"
    compute_heatmaps(manifest, heatmap_dir, progress=False)

    runs = [_timed_register("1 process (baseline)", manifest, heatmap_dir,
                            args.work / "reg-1", atlas=atlas, workers=1),
            _timed_register("2 local processes", manifest, heatmap_dir, args.work / "reg-2",
                            atlas=atlas, workers=2),
            _timed_register("Dask LocalCluster, 2 workers", manifest, heatmap_dir,
                            args.work / "reg-dask", atlas=atlas, workers=2, scheduler="local")]
    base = runs[0][1]
    n = len(runs[0][2].qc)
    print(f"\n{n} nodules, {args.patients} patients (seed {args.seed})\n")
    print("| run | time | nodules/s | time ratio to baseline | identical to baseline |")
    print("|---|---|---|---|---|")
    for label, seconds, result in runs:
        print(f"| {label} | {seconds:.1f} s | {n / seconds:.1f} | {seconds / base:.2f} | "
              f"{'yes' if _same(runs[0][2], result) else 'NO'} |")

    result = runs[0][2]
    qc = result.qc
    errors = registration_errors(qc, phantom_dir, atlas, patches=result.patch)
    errors = errors.merge(qc[["nodule", "centre_x_mm", "centre_y_mm", "centre_z_mm"]],
                          on="nodule")
    counts = qc["status"].value_counts()
    print(f"\nstatus: {counts.get('ok', 0)} ok, {counts.get('warning', 0)} warning, "
          f"{counts.get('failed', 0)} failed\n")
    print("| measure (atlas mm unless stated) | median | 90th pct | 95th pct | mean |")
    print("|---|---|---|---|---|")
    measures = {
        "centre error, Euclidean": errors["error_mm"],
        "centre error, x (left-right)": errors["error_x_mm"].abs(),
        "centre error, y (front-back)": errors["error_y_mm"].abs(),
        "centre error, z (up-down)": errors["error_z_mm"].abs(),
        "capsule distance error (nodule edge)": (errors["capsule_distance_mm"]
                                                 - errors["capsule_distance_true_mm"]).abs(),
        "diameter error (patient mm)": (errors["diameter_mm"] - errors["diameter_true_mm"]).abs(),
        "thyroid Dice, transverse (unitless)": qc["transverse_dice"],
        "thyroid Dice, longitudinal (unitless)": qc["longitudinal_dice"],
        "fused nodule Dice vs true nodule (unitless)": errors["nodule_dice"],
    }
    for name, values in measures.items():
        print(f"| {name} | {values.median():.2f} | {values.quantile(0.9):.2f} | "
              f"{values.quantile(0.95):.2f} | {values.mean():.2f} |")
    agree = (errors["region"] == errors["region_true"]).mean()
    side_ok = ((errors["region"] // 10 == 1) == (errors["side"] == "R")).mean()
    print(f"\nregion (lobe x third) agrees with the truth for {agree:.1%} of nodules; "
          f"the lobe for {side_ok:.1%}.")
    if args.figure:
        _figure(errors, atlas, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
