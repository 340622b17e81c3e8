"""A spatial analysis with the Python API: register a cohort, aggregate, query, plot.

Usage::

    python examples/spatial_analysis.py OUT_DIR [--patients 300]

Makes a phantom cohort (a stand-in for your own manifest), registers its nodules onto the
atlas without heatmaps (each nodule then weighs by its fused occupancy), aggregates them, and
shows what a study would report: the risk at a point, the region table, the capsule-distance
curve with 95 % intervals, and orthogonal slices of the probability map over the atlas. The
figures land in OUT_DIR as capsule_distance.png and probability_slices.png.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import llnm3d  # noqa: E402
from llnm3d.phantom import make_phantom  # noqa: E402


def capsule_distance_figure(stats: llnm3d.Stats, path: Path) -> None:
    table = stats.capsule_distance[stats.capsule_distance["nodules"] > 0]
    centres = [(low + min(high, low + 5)) / 2 for low, high in zip(table["low_mm"],
                                                                       table["high_mm"],
                                                                       strict=True)]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), constrained_layout=True)
    ax.errorbar(centres, table["risk"], yerr=[table["risk"] - table["ci_low"],
                                              table["ci_high"] - table["risk"]],
                fmt="o-", color="#D55E00", capsize=4)
    for x, (_, row) in zip(centres, table.iterrows(), strict=True):
        ax.annotate(f"n={row['nodules']}", (x, row["ci_high"]), textcoords="offset points",
                    xytext=(0, 4), ha="center", fontsize=8)
    ax.set_xlabel("distance from the nodule's edge to the capsule (mm)")
    ax.set_ylabel("LLNM risk (95 % CI)")
    ax.set_ylim(0, 1)
    fig.savefig(path, dpi=110)


def slice_figure(stats: llnm3d.Stats, atlas: llnm3d.Atlas, centre_mm, path: Path) -> None:
    i, j, k = np.rint(atlas.world_to_voxel([centre_mm])[0]).astype(int)
    probability = stats.volumes["probability"]
    gland = atlas.labels > 0
    lo = atlas.origin_mm
    hi = lo + atlas.spacing_mm * (np.array(atlas.labels.shape[::-1]) - 1)
    cuts = [("axial, z = {:.0f} mm", probability[k], gland[k], (lo[0], hi[0], hi[1], lo[1]),
             "x (mm)", "y (mm)"),
            ("coronal, y = {:.0f} mm", probability[:, j], gland[:, j], (lo[0], hi[0], lo[2], hi[2]),
             "x (mm)", "z (mm)"),
            ("sagittal, x = {:.0f} mm", probability[:, :, i], gland[:, :, i],
             (lo[1], hi[1], lo[2], hi[2]), "y (mm)", "z (mm)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    for ax, (title, values, inside, extent, xlabel, ylabel), level in zip(
            axes, cuts, (centre_mm[2], centre_mm[1], centre_mm[0]), strict=True):
        origin = "upper" if title.startswith("axial") else "lower"
        ax.imshow(inside, cmap="Greys", alpha=0.3, extent=extent, origin=origin)
        image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1,
                          extent=extent, origin=origin)
        ax.set_title(title.format(level))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=axes, label="LLNM probability", shrink=0.8)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--patients", type=int, default=300)
    args = parser.parse_args()
    atlas = llnm3d.Atlas.default()

    cohort = make_phantom(args.out_dir / "cohort", args.patients, seed=5, atlas=atlas,
                          progress=False)
    registered = llnm3d.register(cohort.out_dir / "manifest.csv", atlas=atlas,
                                 out_dir=args.out_dir / "registered", progress=False)
    print(registered.qc["status"].value_counts().to_string())

    stats = llnm3d.aggregate(registered, atlas=atlas, out_dir=args.out_dir / "stats",
                             weight="mask", min_cases=5, permutations=200, progress=False)
    stats = llnm3d.load_stats(args.out_dir / "stats")  # what a later session would do

    best = stats.regions.query("half == 'whole' and nodules >= 10").sort_values(
        "risk", ascending=False).iloc[0]
    print(f"highest-risk region: {best['region']} ({best['events']}/{best['nodules']} "
          f"nodules, risk {best['risk']:.2f} [{best['ci_low']:.2f}, {best['ci_high']:.2f}])")
    centre = atlas.lobe_axes[1]["centre_mm"]
    print("at the right lobe's centre:")
    print(stats.probability_at([centre]).round(3).to_string(index=False))
    print(stats.capsule_distance[["bin", "nodules", "risk", "ci_low", "ci_high"]]
          .round(3).to_string(index=False))
    estimator = stats.summary["estimator"]
    print(f"risk map: {estimator['name']} estimator")
    if estimator["name"] == "spatial":  # the default, when the cohort supports it
        above = np.nansum(stats.volumes["significance"] > 0)
        below = np.nansum(stats.volumes["significance"] < 0)
        lobes = estimator["left_minus_right_lobe"]
        print(f"voxels whose simultaneous 95 % band lies above / below the cohort rate: "
              f"{above} / {below}")
        if lobes:
            print(f"left minus right lobe: {lobes['log_odds']:+.2f} log-odds "
                  f"(SE {lobes['se']:.2f}, p = {lobes['p']:.2f})")
    significant = np.nansum(stats.volumes["t_p_fwer"] < 0.05)
    print(f"voxels with family-wise p < 0.05 (t-test of footprints): {significant}")

    capsule_distance_figure(stats, args.out_dir / "capsule_distance.png")
    slice_figure(stats, atlas, centre, args.out_dir / "probability_slices.png")
    print(f"figures in {args.out_dir}")


if __name__ == "__main__":
    main()
