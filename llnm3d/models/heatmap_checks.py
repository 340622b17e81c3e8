"""Sanity checks of the GradCAM++ heatmaps (``llnm3d heatmap-check``).

A heatmap is evidence for *where* the image drives the prediction only if it changes when the
model or the evidence changes, and stays when only the hint changes. The checks, each run on
the same images as the unaltered heatmaps:

- **model-parameter randomisation** (Adebayo et al., "Sanity checks for saliency maps",
  NeurIPS 2018), cascading from the top: the classifier head and final norm re-initialised,
  then also the fused blocks, then the bidirectional blocks, then the embeddings (every
  weight). A heatmap that survives random weights shows the input, not what the model learnt;
- **input checks** of this model's input design (:mod:`llnm3d.models.inputs`): the nodule mask
  channel (and the nodule-proximity channel derived from it) mirrored left-right within the
  image, shifted by a quarter of the image width towards the image's centre line, dilated by
  :data:`DILATION_PX`, or removed; the thyroid mask removed (its channels zero and its flag 0,
  exactly as for an image without a thyroid mask). A heatmap that follows the mirrored mask
  shows the mask, not the image. Removing the nodule mask also removes what the model reads
  from it outside the image, the morphology features (all NaN, "missing"); mirroring, shifting
  and dilating keep the true nodule's features, so a model that reads no nodule channel
  (:attr:`llnm3d.models.model.ModelConfig.channels`) sees those three checks as the unaltered input.

- **label randomisation**, the other test of Adebayo et al.: the heatmaps of a model of the
  same design trained on permuted labels (``llnm3d train --shuffle-labels``), given as
  ``random_labels_model_dir``. A heatmap that a model which learnt nothing about the outcome
  reproduces shows the input and the architecture, not what predicts LLNM.

Per image and check (on the model's 224x224 grid):

- ``nodule_mass``: share of the heatmap's mass inside the true (unaltered) nodule mask;
- ``thyroid_mass``: share inside the true thyroid (NaN when the image has no thyroid mask);
- ``rank_correlation``: Spearman correlation with the unaltered heatmap (NaN when either map
  is constant, e.g. all zeros);
- ``probability``: the model's LLNM probability;
- ``empty``: the map is all zeros (GradCAM++ found no positive evidence for LLNM at the layer);
  its masses and correlation are NaN, and the summary counts such maps apart.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import ndimage, stats
from tqdm.auto import tqdm

from ..checks import check_choice, check_number, check_seed
from ..io import InputError, atomic_path, ensure_writable_dir, write_json
from ..manifest import VIEWS, Manifest, as_manifest
from . import DEFAULT_LAYER, GRADCAM_LAYERS
from .cases import Cases, load_cases
from .heatmap import gradcam_batch, load_view_model
from .inputs import CAPSULE, NODULE, SIZE_PX, THYROID_CHANNELS, THYROID_GIVEN, set_nodule_mask
from .model import LLNMNet
from .train import MAX_BATCH_SIZE

DILATION_PX = 8
INPUT_CHECKS = ("nodule_mirrored", "nodule_shifted", "nodule_dilated", "nodule_removed",
                "thyroid_removed")
# Cumulative: each stage re-initialises its layers and keeps the stages before it random.
RANDOM_STAGES = ("random_head", "random_blocks", "random_bidirectional", "random_all")
CHECKS = ("unaltered", *INPUT_CHECKS, *RANDOM_STAGES)
# Run when a model trained on permuted labels is given (it cannot be made from the model).
RANDOM_LABELS = "random_labels"
ALL_CHECKS = (*CHECKS, RANDOM_LABELS)
COLUMNS = ["case_id", "view", "check", "empty", "nodule_mass", "thyroid_mass",
           "rank_correlation", "probability"]


@dataclass
class CheckResult:
    """What :func:`check_heatmaps` measured.

    Attributes
    ----------
    per_image : DataFrame
        One row per image and check (:data:`COLUMNS`).
    summary : DataFrame
        Per view and check: images, empty maps, mean ``nodule_mass``, ``thyroid_mass`` and
        ``rank_correlation`` (over the images where each is defined), mean probability, and
        ``nodule_mass_kept`` (mean nodule mass over the unaltered one's).
    failures : list of (case_id, reason)
    """

    per_image: pd.DataFrame
    summary: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)


def alter_inputs(maps: np.ndarray, check: str, widths_px: np.ndarray) -> np.ndarray:
    """The model inputs of an input check.

    Parameters
    ----------
    maps : ndarray of float32, shape (B, 5, 224, 224)
        Location feature maps (:func:`llnm3d.models.inputs.location_feature_map`).
    check : str
        One of :data:`INPUT_CHECKS`.
    widths_px : ndarray of int, shape (B,)
        Width of each image's content on the 224 grid (images are padded on the right).

    Returns
    -------
    ndarray, shape (B, 5, 224, 224)
        A copy with the nodule or thyroid channels altered; the nodule-proximity channel is
        recomputed as capsule proximity times the (altered) nodule mask, as the input builds it.
    """
    check_choice("input check", check, INPUT_CHECKS)
    out = maps.copy()
    if check == "thyroid_removed":
        out[:, THYROID_CHANNELS] = 0.0
        return out
    for b, width in enumerate(widths_px):
        nodule = out[b, NODULE] > 0.5
        if check == "nodule_removed":
            nodule[:] = False
        elif check == "nodule_mirrored":
            nodule[:, :width] = nodule[:, :width][:, ::-1]
        elif check == "nodule_shifted":
            columns = np.flatnonzero(nodule.any(axis=0))
            centre = columns.mean() if len(columns) else width / 2
            shift = int(round(width / 4)) * (1 if centre < width / 2 else -1)
            nodule = np.roll(nodule, shift, axis=1)
            nodule[:, width:] = False
        else:  # nodule_dilated
            nodule = ndimage.binary_dilation(nodule, iterations=DILATION_PX)
            nodule[:, width:] = False
        set_nodule_mask(out[b], nodule)
    return out


def randomised_model(model: LLNMNet, stage: str, seed: int) -> LLNMNet:
    """A copy of ``model`` with the layers of ``stage`` and every stage above it re-initialised
    (:data:`RANDOM_STAGES`, top first), seeded."""
    check_choice("randomisation stage", stage, RANDOM_STAGES)
    model = copy.deepcopy(model)
    groups = [[model.head, model.norm], list(model.blocks), list(model.bidirectional)]
    depth = RANDOM_STAGES.index(stage)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if depth == len(groups):  # random_all: every weight
            parameters = list(model.parameters())
        else:
            parameters = [p for group in groups[:depth + 1] for module in group
                          for p in module.parameters()]
        for parameter in parameters:
            # Normal weights at each tensor's own scale (at least 0.02, the model's init):
            # random, yet of the size the following layers expect.
            scale = max(float(parameter.std()) if parameter.numel() > 1 else 0.0, 0.02)
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def heatmap_masses(maps: np.ndarray, nodule: np.ndarray, thyroid: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Share of each map's mass inside the nodule and inside the thyroid (NaN for an empty map
    or, for the thyroid, where ``thyroid`` is None or empty).

    ``maps``, ``nodule`` and ``thyroid`` have shape (B, H, W); the masks are boolean.
    """
    total = maps.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        inside_nodule = np.where(total > 0, (maps * nodule).sum(axis=(1, 2)) / total, np.nan)
        if thyroid is None:
            return inside_nodule, np.full(len(maps), np.nan)
        has_thyroid = thyroid.any(axis=(1, 2))
        inside_thyroid = np.where((total > 0) & has_thyroid,
                                  (maps * thyroid).sum(axis=(1, 2)) / total, np.nan)
    return inside_nodule, inside_thyroid


def rank_correlations(maps: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Spearman correlation of each map with its reference map (NaN if either is constant)."""
    out = np.full(len(maps), np.nan)
    for b in range(len(maps)):
        a, r = maps[b].ravel(), reference[b].ravel()
        if np.ptp(a) > 0 and np.ptp(r) > 0:
            out[b] = stats.spearmanr(a, r).statistic
    return out


def check_heatmaps(manifest: str | Path | Manifest, out_dir: str | Path | None = None, *,
                   model_dir: str | Path | None = None, layer: str = DEFAULT_LAYER,
                   checks: tuple[str, ...] = CHECKS, limit: int | None = None, seed: int = 0,
                   batch_size: int = 16, resize_masks: bool = False,
                   random_labels_model_dir: str | Path | None = None,
                   progress: bool = True) -> CheckResult:
    """Run the heatmap sanity checks on the images of a manifest.

    Parameters
    ----------
    manifest : path or Manifest
        Cohort manifest; each image needs a nodule mask.
    out_dir : path, optional
        Where to write ``checks.csv`` (per image), ``summary.csv`` and ``summary.json``.
    model_dir : path, optional
        Folder with ``transverse.*`` and ``longitudinal.*`` models; default the bundled ones.
    layer : str
        GradCAM++ layer (``fused``, ``last`` or ``bidirectional``).
    checks : tuple of str
        Checks to run (:data:`CHECKS`; ``unaltered`` is always run: the others compare with it).
    limit : int, optional
        At most this many images per view (the first in manifest order).
    seed : int
        Seed of the weight randomisation.
    batch_size : int
        Images per GradCAM++ pass.
    random_labels_model_dir : path, optional
        Folder with models of the same design trained on permuted labels; adds the
        ``random_labels`` check (which needs it).
    """
    for check in checks:
        check_choice("check", check, ALL_CHECKS)
    if random_labels_model_dir is not None:
        checks = (*checks, RANDOM_LABELS)
    elif RANDOM_LABELS in checks:
        raise InputError("the random_labels check needs models trained on permuted labels "
                         "(random_labels_model_dir; `llnm3d train --shuffle-labels`)")
    check_choice("GradCAM++ layer", layer, GRADCAM_LAYERS)
    check_seed(seed)
    check_number("batch_size", batch_size, low=1, high=MAX_BATCH_SIZE, integer=True)
    if limit is not None:
        check_number("limit", limit, low=1, integer=True)
    checks = ("unaltered", *[c for c in dict.fromkeys(checks) if c != "unaltered"])
    manifest = as_manifest(manifest)
    failures = list(manifest.problems)
    rows = []
    for view in VIEWS:
        rows_of_view = manifest.table[manifest.table["view"] == view]
        if rows_of_view.empty:
            continue
        model, _ = load_view_model(view, model_dir)
        # Only the images the checks will use are read.
        cases = load_cases(replace(manifest, table=rows_of_view.head(limit)), view=view,
                           max_length=model.config.report_length, progress=progress,
                           resize_masks=resize_masks)
        failures.extend(cases.failures)
        count = len(cases)
        models = {"unaltered": model} | {stage: randomised_model(model, stage, seed)
                                         for stage in RANDOM_STAGES if stage in checks}
        if RANDOM_LABELS in checks:
            models[RANDOM_LABELS], _ = load_view_model(view, random_labels_model_dir)
        bar = tqdm(total=count * len(checks), desc=f"heatmap checks ({view})", unit="map",
                   disable=not progress)
        for start in range(0, count, batch_size):
            index = np.arange(start, min(start + batch_size, count))
            rows += _check_batch(cases, index, view, checks, models, layer, bar)
        bar.close()
    per_image = pd.DataFrame(rows, columns=COLUMNS)
    result = CheckResult(per_image, summarise(per_image), failures)
    if out_dir is not None:
        _save(result, ensure_writable_dir(out_dir), {
            "layer": layer, "checks": list(checks), "limit": limit, "seed": seed,
            "dilation_px": DILATION_PX, "model_dir": str(model_dir) if model_dir else "bundled",
            "random_labels_model_dir": (str(random_labels_model_dir)
                                        if random_labels_model_dir else None)})
    return result


def _check_batch(cases: Cases, index: np.ndarray, view: str, checks: tuple[str, ...],
                 models: dict[str, LLNMNet], layer: str, bar) -> list[list]:
    """Every check's rows for the images at ``index``."""
    inputs = cases.batch(index)
    maps = inputs["image"].numpy()
    nodule = maps[:, NODULE] > 0.5
    given = maps[:, THYROID_GIVEN, 0, 0] > 0.5
    thyroid = (maps[:, CAPSULE] > 0) & given[:, None, None]
    widths = np.array([int(round(SIZE_PX * g.shape[1] / g.side)) for g in
                       (cases.geometries[i] for i in index)])
    reference = None
    rows = []
    for check in checks:
        model = models.get(check, models["unaltered"])
        altered = inputs
        if check in INPUT_CHECKS:
            altered = {**inputs, "image": torch.from_numpy(alter_inputs(maps, check, widths))}
        if check == "nodule_removed":
            altered = {**altered, "features": torch.full_like(inputs["features"], float("nan"))}
        heat, probability = gradcam_batch(model, altered, layer)
        if reference is None:
            reference = heat
        nodule_mass, thyroid_mass = heatmap_masses(heat, nodule, thyroid)
        correlation = rank_correlations(heat, reference)
        for offset, position in enumerate(index):
            rows.append([cases.table.iloc[position]["case_id"], view, check,
                         not heat[offset].any(), nodule_mass[offset], thyroid_mass[offset],
                         correlation[offset], float(probability[offset])])
        bar.update(len(index))
    return rows


def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per view and check: images and means (see :class:`CheckResult`), in :data:`CHECKS`
    order."""
    if per_image.empty:
        return pd.DataFrame(columns=["view", "check", "images", "empty_maps", "nodule_mass",
                                     "thyroid_mass", "rank_correlation", "probability",
                                     "nodule_mass_kept"])
    summary = (per_image.groupby(["view", "check"], sort=False)
               .agg(images=("case_id", "size"), empty_maps=("empty", "sum"),
                    nodule_mass=("nodule_mass", "mean"),
                    thyroid_mass=("thyroid_mass", "mean"),
                    rank_correlation=("rank_correlation", "mean"),
                    probability=("probability", "mean"))
               .reset_index())
    unaltered = summary[summary["check"] == "unaltered"].set_index("view")["nodule_mass"]
    summary["nodule_mass_kept"] = summary["nodule_mass"] / summary["view"].map(unaltered)
    order = {check: i for i, check in enumerate(ALL_CHECKS)}
    return summary.sort_values(["view", "check"], key=lambda s: s.map(order)
                               if s.name == "check" else s).reset_index(drop=True)


def _save(result: CheckResult, out_dir: Path, settings: dict) -> None:
    with atomic_path(out_dir / "checks.csv") as tmp:
        result.per_image.to_csv(tmp, index=False)
    with atomic_path(out_dir / "summary.csv") as tmp:
        result.summary.to_csv(tmp, index=False)
    write_json(out_dir / "summary.json", {
        "settings": settings,
        "summary": result.summary.replace({np.nan: None}).to_dict(orient="records"),
        "failures": [{"case_id": case_id, "reason": reason}
                     for case_id, reason in result.failures]})
