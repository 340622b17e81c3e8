"""Evaluate the bundled LLNM-Net on a held-out phantom cohort and time GradCAM++.

Usage::

    python benchmarks/eval_model.py --cohort DIR [--model-dir model] [--max-images 400]

``--cohort`` is a phantom folder (with truth.csv) never used in training, e.g. from
``llnm3d phantom --patients 600 --seed 200 --out DIR``. Prints Markdown tables:

- discrimination: AUC per view and per nodule (mean of the two views' probabilities) next to the
  Bayes-optimal AUC of the planted risk model on the same cases (the true risk as the score),
  and per view with the thyroid mask withheld (as for images that have none);
- heatmaps: fraction of heatmap mass inside the thyroid mask, and how often the heatmap's peak
  lies in the nodule or within 5 mm of it;
- faithfulness: the drop of the LLNM logit when the 10 % most salient pixels are deleted versus
  10 % random pixels; deleting sets the B-mode channel to the image's mean grey (black would
  read as hypoechoic, itself a risk sign) and the proximity and nodule channels to 0;
- speed: heatmaps per second at batch sizes 1, 8 and 32, and GradCAM++ time over a plain
  forward pass on the same batch.
"""

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from llnm3d.io import read_mask
from llnm3d.manifest import read_manifest
from llnm3d.models.cases import load_cases
from llnm3d.models.heatmap import MODEL_DIR, gradcam_batch, load_view_model
from llnm3d.models.inputs import THYROID_CHANNELS, to_image_space
from llnm3d.models.train import predict_proba

VIEWS = ("transverse", "longitudinal")


def heatmap_quality(cases, index, maps, manifest) -> tuple[np.ndarray, np.ndarray]:
    """Per image: heatmap mass fraction inside the thyroid, peak distance to the nodule (mm)."""
    mass, distance = [], []
    for position, cam in zip(index, maps, strict=True):
        row = cases.table.iloc[position]
        heat = to_image_space(cam, cases.geometries[position])
        thyroid = read_mask(manifest.path(row, "thyroid_mask"))
        nodule = read_mask(manifest.path(row, "nodule_mask"))
        mass.append(heat[thyroid].sum() / max(heat.sum(), 1e-9))
        peak = np.unravel_index(np.argmax(heat), heat.shape)
        to_nodule = ndimage.distance_transform_edt(~nodule)
        distance.append(to_nodule[peak] * float(row["pixel_spacing_mm"]))
    return np.array(mass), np.array(distance)


def without_thyroid_mask(cases):
    """The same cases as if no thyroid mask had been given."""
    maps = cases.maps.copy()
    maps[:, THYROID_CHANNELS] = 0
    return replace(cases, maps=maps)


def llnm_logit(model, inputs) -> np.ndarray:
    with torch.no_grad():
        logits = model(**inputs)
    return (logits[:, 1] - logits[:, 0]).numpy()


def faithfulness(model, cases, index, maps, rng, fraction=0.1) -> tuple[float, float, float]:
    """Mean logit drop deleting the most salient vs random pixels, and how often salient wins."""
    inputs = cases.batch(index)
    base = llnm_logit(model, inputs)
    n_delete = int(fraction * 224 * 224)
    salient, random = inputs["image"].clone(), inputs["image"].clone()
    for b, cam in enumerate(maps):
        top = np.argsort(cam.ravel())[-n_delete:]
        other = rng.choice(224 * 224, n_delete, replace=False)
        for image, pixels in ((salient, top), (random, other)):
            rows, cols = np.unravel_index(pixels, (224, 224))
            image[b, 0, rows, cols] = inputs["image"][b, 0].mean()
            image[b, 1:3, rows, cols] = 0.0
    drop_salient = base - llnm_logit(model, {**inputs, "image": salient})
    drop_random = base - llnm_logit(model, {**inputs, "image": random})
    return float(drop_salient.mean()), float(drop_random.mean()), float(
        np.mean(drop_salient > drop_random))


def timing(model, cases) -> list[tuple[int, float, float]]:
    rows = []
    for batch in (1, 8, 32):
        index = np.arange(batch)
        inputs = cases.batch(index)
        gradcam_batch(model, inputs)  # warm-up
        start = time.perf_counter()
        repeats = max(1, 32 // batch)
        for _ in range(repeats):
            gradcam_batch(model, inputs)
        t_cam = (time.perf_counter() - start) / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            with torch.no_grad():
                model(**inputs)
        t_forward = (time.perf_counter() - start) / repeats
        rows.append((batch, batch / t_cam, t_cam / t_forward))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--max-images", type=int, default=400,
                        help="images per view for the heatmap and faithfulness checks")
    args = parser.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    manifest = read_manifest(args.cohort / "manifest.csv")
    truth = pd.read_csv(args.cohort / "truth.csv", dtype={"patient_id": str, "nodule_id": str})
    key = ["patient_id", "nodule_id"]

    probabilities, quality, faithful, speed = [], {}, {}, {}
    for view in VIEWS:
        model, _ = load_view_model(view, args.model_dir)
        cases = load_cases(manifest, view=view, progress=False)
        table = cases.table[key].copy()
        table["p_" + view] = predict_proba(model, cases)
        table["p_" + view + "_no_thyroid"] = predict_proba(model, without_thyroid_mask(cases))
        probabilities.append(table)
        index = np.arange(min(args.max_images, len(cases)))
        for layer_name in model.gradcam_layers():
            masses, distances, drops = [], [], []
            for start in range(0, len(index), 32):
                chunk = index[start:start + 32]
                maps, _ = gradcam_batch(model, cases.batch(chunk), layer_name)
                mass, distance = heatmap_quality(cases, chunk, maps, manifest)
                masses.append(mass)
                distances.append(distance)
                drops.append(faithfulness(model, cases, chunk, maps, rng))
            quality[view, layer_name] = (np.concatenate(masses), np.concatenate(distances))
            faithful[view, layer_name] = np.mean(np.array(drops), axis=0)
        speed[view] = timing(model, cases)

    merged = truth[key + ["risk", "label"]]
    for table in probabilities:
        merged = merged.merge(table, on=key, how="inner")
    merged["p_nodule"] = merged[["p_transverse", "p_longitudinal"]].mean(axis=1)
    bayes = roc_auc_score(merged["label"], merged["risk"])
    print(f"held-out cohort: {args.cohort} ({len(merged)} nodules, prevalence "
          f"{merged['label'].mean():.1%})\n")
    print("| score | AUC | Bayes-optimal AUC | gap |")
    print("|---|---|---|---|")
    for name, column in (("transverse view", "p_transverse"),
                         ("longitudinal view", "p_longitudinal"),
                         ("nodule (mean of both views)", "p_nodule"),
                         ("transverse view, thyroid mask withheld", "p_transverse_no_thyroid"),
                         ("longitudinal view, thyroid mask withheld",
                          "p_longitudinal_no_thyroid")):
        auc = roc_auc_score(merged["label"], merged[column])
        print(f"| {name} | {auc:.3f} | {bayes:.3f} | {bayes - auc:+.3f} |")
    print("\n| view | GradCAM++ layer | images | heatmap mass in thyroid (mean, median) | "
          "peak in nodule or <= 5 mm | faithfulness: logit drop salient vs random "
          "(salient larger) |")
    print("|---|---|---|---|---|---|")
    for (view, layer_name), (mass, distance) in quality.items():
        s, r, win = faithful[view, layer_name]
        print(f"| {view} | {layer_name} | {len(mass)} | {mass.mean():.1%}, "
              f"{np.median(mass):.1%} | {np.mean(distance <= 5.0):.1%} | {s:.2f} vs {r:.2f} "
              f"({win:.0%} of images) |")
    print("\n| view | batch | heatmaps/s | GradCAM++ / forward time |")
    print("|---|---|---|---|")
    for view in VIEWS:
        for batch, rate, ratio in speed[view]:
            print(f"| {view} | {batch} | {rate:.1f} | {ratio:.1f} |")


if __name__ == "__main__":
    main()
