"""Registration: accuracy against the phantom's truth, and speed on local processes and Dask.

Usage::

    python benchmarks/bench_registration.py --work DIR [--patients 800 --seed 200]
        [--figure docs/registration_centres.png] [--boxes]

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

With ``--boxes`` it also writes ``DIR/manifest_boxes.csv``, a copy of the cohort's manifest with
each nodule mask replaced by its tight bounding box (``nodule_box_*`` columns, no
``nodule_mask``), so every stage uses the box's inscribed ellipse; it runs the bundled model on
it (``DIR/heatmaps-boxes``) and registers it with two processes (``DIR/reg-boxes``), then prints
the accuracy measures for masks and boxes side by side and what the boxes changed in the
heatmap stage: LLNM-Net probability per image, AUC, and the heatmaps' correlation.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.metrics import roc_auc_score

from llnm3d import Atlas, register
from llnm3d.annotations import BOX_COLUMNS, mask_box
from llnm3d.io import file_stem
from llnm3d.models.heatmap import compute_heatmaps
from llnm3d.phantom import make_phantom
from llnm3d.validation import registration_errors


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
    for ax, (title, silhouette, a, b, extent) in zip(axes, views, strict=True):
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


def _accuracy(result, phantom_dir: Path, atlas: Atlas) -> tuple[pd.DataFrame, dict]:
    """Per-nodule errors against the truth (with the registered centres) and the measures
    the tables report, each a Series over the registered nodules."""
    qc = result.qc
    errors = registration_errors(qc, phantom_dir, atlas, patches=result.patch)
    errors = errors.merge(qc[["nodule", "centre_x_mm", "centre_y_mm", "centre_z_mm"]],
                          on="nodule")
    registered = qc[qc["status"] != "failed"]
    measures = {
        "centre error, Euclidean": errors["error_mm"],
        "centre error, x (left-right)": errors["error_x_mm"].abs(),
        "centre error, y (front-back)": errors["error_y_mm"].abs(),
        "centre error, z (up-down)": errors["error_z_mm"].abs(),
        "capsule distance error (nodule edge)": (errors["capsule_distance_mm"]
                                                 - errors["capsule_distance_true_mm"]).abs(),
        "diameter error (patient mm)": (errors["diameter_mm"] - errors["diameter_true_mm"]).abs(),
        "thyroid Dice, transverse (unitless)": registered["transverse_dice"],
        "thyroid Dice, longitudinal (unitless)": registered["longitudinal_dice"],
        "fused nodule Dice vs true nodule (unitless)": errors["nodule_dice"],
    }
    return errors, measures


def _status_text(qc: pd.DataFrame) -> str:
    counts = qc["status"].value_counts()
    return (f"{counts.get('ok', 0)} ok, {counts.get('warning', 0)} warning, "
            f"{counts.get('failed', 0)} failed")


def _region_text(errors: pd.DataFrame) -> str:
    agree = (errors["region"] == errors["region_true"]).mean()
    side_ok = ((errors["region"] // 10 == 1) == (errors["side"] == "R")).mean()
    return (f"region (lobe x third) agrees with the truth for {agree:.1%} of nodules; "
            f"the lobe for {side_ok:.1%}.")


def _write_box_manifest(manifest: Path, out: Path) -> Path:
    """A copy of ``manifest`` at ``out`` with each nodule mask replaced by its tight bounding
    box; paths are rewritten relative to ``out``'s folder."""
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    boxes = [mask_box(np.asarray(Image.open(manifest.parent / path).convert("L")) >= 128)
             for path in table["nodule_mask"]]
    for index, column in enumerate(BOX_COLUMNS):
        table[column] = [str(box[index]) for box in boxes]
    prefix = manifest.parent.resolve().relative_to(out.parent.resolve())
    for column in ("image", "thyroid_mask"):
        table[column] = [str(prefix / path) for path in table[column]]
    table["nodule_mask"] = ""
    table.to_csv(out, index=False)
    return out


def _heatmap_change(mask_dir: Path, box_dir: Path, manifest: Path) -> None:
    """Print what boxes changed in the heatmap stage: probability per image, AUC per view and
    per nodule (mean of its views), and the per-image correlation of the heatmaps."""
    labels = pd.read_csv(manifest, dtype={"patient_id": str, "nodule_id": str})
    labels = labels[["case_id", "label"]]
    both = (pd.read_csv(mask_dir / "predictions.csv", dtype={"patient_id": str,
                                                              "nodule_id": str})
            .merge(pd.read_csv(box_dir / "predictions.csv")[["case_id", "probability"]],
                   on="case_id", suffixes=("_masks", "_boxes"))
            .merge(labels, on="case_id"))
    change = (both["probability_boxes"] - both["probability_masks"]).abs()
    correlation = []
    for case_id in both["case_id"]:
        name = f"{file_stem(case_id)}.npz"
        with np.load(mask_dir / "heatmaps" / name) as a, np.load(box_dir / "heatmaps" / name) as b:
            x, y = a["heatmap"].ravel(), b["heatmap"].ravel()
        correlation.append(np.corrcoef(x, y)[0, 1] if x.std() and y.std() else np.nan)
    correlation = pd.Series(correlation)
    print(f"\nHeatmap stage, {len(both)} images: |probability change| median "
          f"{change.median():.3f}, 95th pct {change.quantile(0.95):.3f}, max {change.max():.3f}; "
          f"heatmap correlation masks vs boxes median {correlation.median():.2f}, 5th pct "
          f"{correlation.quantile(0.05):.2f} ({correlation.isna().sum()} images with an empty "
          "heatmap in either)\n")
    print("| score | AUC, masks | AUC, boxes |")
    print("|---|---|---|")
    for view in ("transverse", "longitudinal"):
        rows = both[both["view"] == view]
        print(f"| {view} view | {roc_auc_score(rows['label'], rows['probability_masks']):.3f} | "
              f"{roc_auc_score(rows['label'], rows['probability_boxes']):.3f} |")
    nodules = both.groupby(["patient_id", "nodule_id"])[
        ["label", "probability_masks", "probability_boxes"]].mean()
    print(f"| nodule (mean of its views) | "
          f"{roc_auc_score(nodules['label'], nodules['probability_masks']):.3f} | "
          f"{roc_auc_score(nodules['label'], nodules['probability_boxes']):.3f} |")


def _compare_boxes(work: Path, manifest: Path, heatmap_dir: Path, masks, mask_measures: dict,
                   mask_errors: pd.DataFrame, atlas: Atlas) -> None:
    """Run the heatmap and registration stages from boxes and print them against masks."""
    box_manifest = _write_box_manifest(manifest, work / "manifest_boxes.csv")
    box_heatmaps = work / "heatmaps-boxes"
    compute_heatmaps(box_manifest, box_heatmaps, progress=False)
    _, seconds, boxes = _timed_register("boxes, 2 local processes", box_manifest, box_heatmaps,
                                        work / "reg-boxes", atlas=atlas, workers=2)
    box_errors, box_measures = _accuracy(boxes, manifest.parent, atlas)
    flagged = boxes.qc["reason"].str.contains("nodule mask from a box").sum()
    print(f"\nBoxes instead of masks ({work / 'manifest_boxes.csv'}): registered in "
          f"{seconds:.1f} s; status masks: {_status_text(masks.qc)}; boxes: "
          f"{_status_text(boxes.qc)} ({flagged} flagged as from a box)\n")
    print("| measure (atlas mm unless stated) | masks median | masks 95th pct | boxes median | "
          "boxes 95th pct | boxes mean - masks mean |")
    print("|---|---|---|---|---|---|")
    for name, values in mask_measures.items():
        other = box_measures[name]
        print(f"| {name} | {values.median():.2f} | {values.quantile(0.95):.2f} | "
              f"{other.median():.2f} | {other.quantile(0.95):.2f} | "
              f"{other.mean() - values.mean():+.2f} |")
    print(f"\nmasks: {_region_text(mask_errors)}\nboxes: {_region_text(box_errors)}")
    _heatmap_change(heatmap_dir, box_heatmaps, manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=800)
    parser.add_argument("--seed", type=int, default=200)
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--boxes", action="store_true",
                        help="also run from each nodule mask's bounding box and compare")
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
    errors, measures = _accuracy(result, phantom_dir, atlas)
    print(f"\nstatus: {_status_text(result.qc)}\n")
    print("| measure (atlas mm unless stated) | median | 90th pct | 95th pct | mean |")
    print("|---|---|---|---|---|")
    for name, values in measures.items():
        print(f"| {name} | {values.median():.2f} | {values.quantile(0.9):.2f} | "
              f"{values.quantile(0.95):.2f} | {values.mean():.2f} |")
    print(f"\n{_region_text(errors)}")
    if args.figure:
        _figure(errors, atlas, args.figure)
        print(f"figure: {args.figure}")
    if args.boxes:
        _compare_boxes(args.work, manifest, heatmap_dir, result, measures, errors, atlas)


if __name__ == "__main__":
    main()
