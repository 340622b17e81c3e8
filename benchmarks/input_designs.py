"""Compare input designs of LLNM-Net: train each, then measure its heatmaps and its AUC.

Usage::

    python benchmarks/input_designs.py --train-cohort DIR --checks-cohort DIR \
        --auc-cohort DIR --out DIR [--designs NAME ...] [--views transverse ...] [--epochs 12]

Every design (:data:`DESIGNS`) is trained with ``llnm3d train``'s defaults but for the input
settings it names (resumable: a design already trained in ``--out`` is not trained again),
then checked on cohorts never used in training:

- ``--checks-cohort``: :func:`llnm3d.models.heatmap_checks.check_heatmaps` (``--layer``,
  default ``fused``, the layer the designs table in BENCHMARKS.md was measured at), its summary
  per view and check;
- ``--auc-cohort``: AUC per view and per nodule (mean of the views' probabilities) against the
  labels and against the true planted risk (the Bayes-optimal AUC on the same nodules).

``--trained NAME=DIR`` adds models trained elsewhere (e.g. the weights bundled before issue
13, from git history), measured the same way. Writes ``<out>/<design>/{runs,models,checks}``
and ``<out>/summary.csv`` (one row per design and view: the targets of issue 13 side by side)
and prints it as a Markdown table.
"""

import argparse
import shutil
from dataclasses import replace
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from llnm3d.manifest import read_manifest
from llnm3d.models import GRADCAM_LAYERS
from llnm3d.models.cases import load_cases
from llnm3d.models.heatmap import load_view_model
from llnm3d.models.heatmap_checks import check_heatmaps
from llnm3d.models.inputs import CHANNELS
from llnm3d.models.train import TrainSettings, predict_proba, train

NO_NODULE_CHANNELS = tuple(c for c in CHANNELS if c not in ("nodule_mask", "nodule_proximity"))
DESIGNS = {
    # The design of the weights bundled before issue 13: the nodule mask is a channel.
    "mask_channel": {"channels": CHANNELS, "nodule_dropout": 0.0, "nodule_swap": 0.0,
                     "nodule_loss_weight": 0.0, "stem": "linear"},
    # The mask stays a channel, hidden from half the training cases.
    "mask_dropout": {"channels": CHANNELS, "nodule_dropout": 0.5, "nodule_swap": 0.0,
                     "nodule_loss_weight": 0.0, "stem": "linear"},
    # No nodule channel: the mask reaches the model only through the morphology features.
    "image_only": {"channels": NO_NODULE_CHANNELS, "nodule_dropout": 0.0, "nodule_swap": 0.0,
                   "nodule_loss_weight": 0.0, "stem": "linear"},
    # No nodule channel, and the mask is a training target: a head on the image tokens learns
    # where the nodule is in the image.
    "image_only_located": {"channels": NO_NODULE_CHANNELS, "nodule_dropout": 0.0,
                           "nodule_swap": 0.0, "nodule_loss_weight": 5.0, "stem": "linear"},
    # The mask is a channel but a hint: hidden from a quarter of the training cases, another
    # case's mask for another quarter, and the nodule head learns where the true nodule is.
    "mask_hint": {"channels": CHANNELS, "nodule_dropout": 0.25, "nodule_swap": 0.25,
                  "nodule_loss_weight": 5.0, "stem": "linear"},
    # mask_hint with a convolutional stem: can the image confirm the hint once the model can
    # see a nodule through the speckle?
    "conv_hint": {"channels": CHANNELS, "nodule_dropout": 0.25, "nodule_swap": 0.25,
                  "nodule_loss_weight": 5.0, "stem": "conv"},
    # No nodule channel, a convolutional stem, and the nodule head: the model must find the
    # nodule (and its closeness to the capsule) in the image.
    "conv_located": {"channels": NO_NODULE_CHANNELS, "nodule_dropout": 0.0,
                     "nodule_swap": 0.0, "nodule_loss_weight": 5.0, "stem": "conv"},
}
KEY = ["patient_id", "nodule_id"]


def train_design(design: str, views: list[str], cohort: Path, out: Path, epochs: int) -> Path:
    """Train ``design`` on each view (resuming) and gather the best models in one folder."""
    models = out / design / "models"
    models.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cohort / "manifest.csv")
    settings = TrainSettings(epochs=epochs, **DESIGNS[design])
    for view in views:
        run_dir = out / design / "runs" / view
        train(manifest, view, run_dir, settings, progress=True)
        for suffix in (".safetensors", ".json"):
            shutil.copyfile(run_dir / f"model{suffix}", models / f"{view}{suffix}")
    return models


def auc_rows(models: Path, views: list[str], cohort: Path) -> dict[str, tuple[float, float]]:
    """AUC and the Bayes-optimal AUC per view and for the nodule (mean over views)."""
    manifest = read_manifest(cohort / "manifest.csv")
    truth = pd.read_csv(cohort / "truth.csv", dtype={"patient_id": str, "nodule_id": str})
    merged = truth[KEY + ["risk", "label"]]
    for view in views:
        model, _ = load_view_model(view, models)
        cases = load_cases(manifest, view=view, progress=False)
        table = cases.table[KEY].copy()
        table[view] = predict_proba(model, cases)
        merged = merged.merge(table, on=KEY, how="inner")
    merged["nodule"] = merged[views].mean(axis=1)
    bayes = roc_auc_score(merged["label"], merged["risk"])
    return {name: (roc_auc_score(merged["label"], merged[name]), bayes)
            for name in [*views, "nodule"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-cohort", type=Path, required=True)
    parser.add_argument("--checks-cohort", type=Path, required=True)
    parser.add_argument("--auc-cohort", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--designs", nargs="*", default=list(DESIGNS), choices=list(DESIGNS))
    parser.add_argument("--views", nargs="+", default=["transverse", "longitudinal"])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--limit", type=int, default=None, help="images per view to check")
    parser.add_argument("--layer", default="fused", choices=GRADCAM_LAYERS,
                        help="GradCAM++ layer of the checks")
    parser.add_argument("--trained", nargs="*", default=[], metavar="NAME=DIR",
                        help="models already trained elsewhere, measured as they are (a folder "
                             "with <view>.safetensors/.json, e.g. earlier bundled weights)")
    args = parser.parse_args()
    trained = dict(item.split("=", 1) for item in args.trained)
    rows = []
    for design in [*trained, *args.designs]:
        models = (Path(trained[design]) if design in trained else
                  train_design(design, args.views, args.train_cohort, args.out, args.epochs))
        manifest = read_manifest(args.checks_cohort / "manifest.csv")
        manifest = replace(manifest, table=manifest.table[
            manifest.table["view"].isin(args.views)])
        summary = check_heatmaps(manifest, args.out / design / "checks", model_dir=models,
                                 limit=args.limit, layer=args.layer
                                 ).summary.set_index(["view", "check"])
        aucs = auc_rows(models, args.views, args.auc_cohort)
        for view in args.views:
            def cell(check, column, view=view, summary=summary):
                return summary.loc[(view, check), column]
            rows.append({
                "design": design, "view": view,
                "nodule_mass": cell("unaltered", "nodule_mass"),
                "kept_mirrored": cell("nodule_mirrored", "nodule_mass_kept"),
                "kept_removed": cell("nodule_removed", "nodule_mass_kept"),
                "kept_shifted": cell("nodule_shifted", "nodule_mass_kept"),
                "thyroid_mass": cell("unaltered", "thyroid_mass"),
                **{f"r_{stage}": cell(stage, "rank_correlation") for stage in
                   ("random_head", "random_blocks", "random_bidirectional", "random_all")},
                "auc_view": aucs[view][0], "auc_nodule": aucs["nodule"][0],
                "bayes_auc": aucs["nodule"][1]})
        table = pd.DataFrame(rows)
        table.to_csv(args.out / "summary.csv", index=False)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v)
                                for v in row) + " |")


if __name__ == "__main__":
    main()
