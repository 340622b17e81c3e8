"""How much of the planted risk can one image view recover, at best?

Usage::

    python benchmarks/view_ceiling.py --cohort DIR

The planted risk of a phantom nodule depends on the 3D distance from its edge to the capsule. An
image shows only the in-plane distance. This script fits a logistic model (5-fold
cross-validated) on the true non-spatial covariates plus the capsule distance as seen in each
view (from the masks) and reports its AUC next to the Bayes-optimal AUC (the true risk): the
best any model of that view can do, and so the yardstick for the bundled LLNM-Net.
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from llnm3d.io import read_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True)
    args = parser.parse_args()
    ids = {"patient_id": str, "nodule_id": str}
    manifest = pd.read_csv(args.cohort / "manifest.csv", dtype=ids)
    truth = pd.read_csv(args.cohort / "truth.csv", dtype=ids)
    seen = {}
    for _, row in manifest.iterrows():
        thyroid = read_mask(args.cohort / row["thyroid_mask"])
        nodule = read_mask(args.cohort / row["nodule_mask"])
        depth = ndimage.distance_transform_edt(thyroid)
        seen[row["patient_id"], row["nodule_id"], row["view"]] = max(
            depth[nodule].min() - 1, 0) * row["pixel_spacing_mm"]
    for view in ("transverse", "longitudinal"):
        truth[view] = [seen[p, n, view] for p, n in zip(truth["patient_id"], truth["nodule_id"],
                                                         strict=True)]
    truth["both views (minimum)"] = truth[["transverse", "longitudinal"]].min(axis=1)
    base = pd.get_dummies(truth[["lobe_third", "echogenicity", "margin", "sex"]]).astype(float)
    for column in ("diameter_mm", "taller_than_wide", "microcalcification", "age_years"):
        base[column] = truth[column]
    print(f"cohort {args.cohort}: {len(truth)} nodules\n")
    print("| capsule distance known as | cross-validated AUC | Bayes-optimal AUC |")
    print("|---|---|---|")
    bayes = roc_auc_score(truth["label"], truth["risk"])
    for name in ("capsule_distance_mm", "transverse", "longitudinal", "both views (minimum)"):
        features = base.copy()
        for threshold in (1.0, 2.5):
            features[f"below_{threshold}"] = (truth[name] < threshold).astype(float)
        p = cross_val_predict(LogisticRegression(max_iter=2000), features, truth["label"], cv=5,
                              method="predict_proba")[:, 1]
        label = "true 3D edge distance" if name == "capsule_distance_mm" else f"{name} image"
        print(f"| {label} | {roc_auc_score(truth['label'], p):.3f} | {bayes:.3f} |")


if __name__ == "__main__":
    np.random.seed(0)
    main()
