"""GradCAM++ heatmaps and LLNM predictions per image (``llnm3d heatmap``).

GradCAM++ (the ``grad-cam`` package) runs on the image tokens of a late layer of LLNM-Net
(:meth:`LLNMNet.gradcam_layers`; by default :data:`llnm3d.models.DEFAULT_LAYER`, the first
block over the fused image and text streams), reshaped from patch tokens to a 14x14 map
(:meth:`LLNMNet.patch_map`), with the LLNM class as target. The map is upsampled to
224x224, scaled to 0..1 per image, and mapped back onto the original image's pixel grid.

Output folder::

    heatmaps/<case_id>.npz    heatmap (float32, image shape, 0..1), probability, view, model
    overlays/<case_id>.png    the image with the heatmap blended on top, for people
    predictions.csv           case_id, patient_id, nodule_id, view, probability,
                              heatmap_empty, model_version

Output files are named by :func:`llnm3d.io.file_stem` of the case id. ``heatmap.json`` records
the parameters (layer, mask resizing, the SHA-256 of the model weights); a folder made with
others is refused. Resumable by content (:mod:`llnm3d.resume`): a case whose ``.npz`` holds the
digest of its current inputs (manifest fields the model reads, the bytes of the image and
masks, the llnm3d version) is not computed again; a changed or unreadable one is redone.
predictions.csv is rebuilt from the ``.npz`` files at the end. A case that cannot be read is
reported by its id; the others complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pytorch_grad_cam import GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from tqdm.auto import tqdm

from .._version import __version__
from ..checks import check_choice, check_number, check_optional_workers
from ..io import (
    InputError,
    atomic_path,
    ensure_writable_dir,
    file_digest,
    file_stem,
    finished_files,
    read_grayscale,
    read_json,
    write_json,
    write_npz,
)
from ..manifest import VIEWS, Manifest, as_manifest
from ..resume import Resumed, claim_folder, finished_cases
from . import DEFAULT_LAYER, GRADCAM_LAYERS, MODEL_DIR
from .cases import Cases, load_cases
from .inputs import to_image_space
from .model import LLNMNet, load_model
from .train import MAX_BATCH_SIZE

LLNM_CLASS = 1
FORMAT = "llnm3d-heatmaps/1"


class _BoundInputs(nn.Module):
    """LLNM-Net with its non-image inputs fixed, so the CAM library can call ``model(image)``."""

    def __init__(self, model: LLNMNet, inputs: dict):
        super().__init__()
        self.model = model
        self.inputs = inputs

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image, **self.inputs)


def load_view_model(view: str, model_dir: str | Path | None = None,
                    device: str | torch.device = "cpu") -> tuple[LLNMNet, dict]:
    """The model for one view: ``<model_dir>/<view>.safetensors`` (bundled weights by default)."""
    model_dir = Path(model_dir) if model_dir else MODEL_DIR
    path = model_dir / view
    if not path.with_suffix(".safetensors").exists():
        raise InputError(f"no {view} model in {model_dir} ({path.name}.safetensors); "
                         "train one with `llnm3d train` or pass --model-dir")
    return load_model(path, device)


def gradcam_batch(model: LLNMNet, inputs: dict, layer: str = DEFAULT_LAYER
                  ) -> tuple[np.ndarray, np.ndarray]:
    """GradCAM++ maps (B, 224, 224) scaled 0..1 per image, and LLNM probabilities (B,).

    ``layer`` names one of :meth:`LLNMNet.gradcam_layers`. A map is all zeros where the layer
    holds no positive evidence for LLNM (GradCAM++ keeps only the positive part).
    """
    layers = model.gradcam_layers()
    check_choice("GradCAM++ layer", layer, layers)
    target = layers[layer]
    # GradCAM++ needs the gradient at the target layer only. With every weight frozen and the
    # layer's output cut from the graph below it, the backward pass runs through the layers
    # above it and computes no weight gradients: the same maps at about half the cost.
    cut = target.register_forward_hook(lambda _, __, output: output.detach().requires_grad_(),
                                       prepend=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        cam = GradCAMPlusPlus(model=_BoundInputs(model, {k: v for k, v in inputs.items()
                                                         if k != "image"}),
                              target_layers=[target], reshape_transform=model.patch_map)
        image = inputs["image"]
        maps = cam(input_tensor=image,
                   targets=[ClassifierOutputTarget(LLNM_CLASS)] * len(image))
        probability = torch.softmax(cam.outputs.detach(), dim=1)[:, LLNM_CLASS].cpu().numpy()
        cam.activations_and_grads.release()
    finally:
        cut.remove()
        for parameter in trainable:
            parameter.requires_grad_(True)
    return np.nan_to_num(maps.astype(np.float32)), probability


# Perceptually ordered dark-to-bright colour ramp (inferno-like) for overlays.
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]],
                 dtype=float)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """RGB uint8 image (H, W, 3): the grayscale ``image`` with ``heatmap`` (0..1) blended on."""
    position = np.clip(heatmap, 0, 1) * (len(_RAMP) - 1)
    lower = np.minimum(position.astype(int), len(_RAMP) - 2)
    frac = (position - lower)[..., None]
    colour = _RAMP[lower] * (1 - frac) + _RAMP[lower + 1] * frac
    weight = alpha * np.clip(heatmap, 0, 1)[..., None]
    gray = np.repeat(image[..., None].astype(float), 3, axis=2)
    return np.round(gray * (1 - weight) + colour * weight).astype(np.uint8)


@dataclass
class HeatmapResult:
    """Predictions of every finished case, the cases that failed, and what a resumed run
    found in its folder."""

    predictions: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)
    resumed: Resumed = field(default_factory=Resumed)


def _model_digests(model_dir: str | Path | None) -> dict[str, str | None]:
    folder = Path(model_dir) if model_dir else MODEL_DIR
    return {view: file_digest(folder / f"{view}.safetensors") for view in VIEWS}


def _write_case(out_dir: Path, cases: Cases, position: int | np.integer, cam_map: np.ndarray,
                probability: float, version: str, image_path: Path, input_digest: str) -> None:
    row = cases.table.iloc[position]
    heatmap = to_image_space(cam_map, cases.geometries[position]).clip(0, 1).astype(np.float32)
    name = file_stem(row["case_id"])
    with atomic_path(out_dir / "overlays" / f"{name}.png") as tmp:
        Image.fromarray(overlay(read_grayscale(image_path), heatmap)).save(tmp, format="PNG")
    # The .npz goes last: its presence (with the inputs' digest) marks the case as finished.
    write_npz(out_dir / "heatmaps" / f"{name}.npz", heatmap=heatmap,
              probability=np.float32(probability), case_id=str(row["case_id"]),
              view=str(row["view"]), model_version=version, input_digest=input_digest)


def compute_heatmaps(manifest_path: str | Path | Manifest, out_dir: str | Path, *,
                     model_dir: str | Path | None = None, batch_size: int = 16,
                     device: str | None = None, workers: int | None = None,
                     progress: bool = True, resize_masks: bool = False,
                     layer: str = DEFAULT_LAYER) -> HeatmapResult:
    """Predict LLNM and compute a GradCAM++ heatmap for every image of a manifest.

    Parameters
    ----------
    manifest_path : path or Manifest
        Cohort manifest (columns in docs/conventions.md); each image needs a nodule mask.
    out_dir : path
        Output folder (layout in the module docstring).
    model_dir : path, optional
        Folder with ``transverse.*`` and ``longitudinal.*`` models; default the bundled ones.
    batch_size : int
        Images per GradCAM++ pass, 1 to :data:`llnm3d.models.train.MAX_BATCH_SIZE`.
    device : str, optional
        ``cpu`` or ``cuda``; default CUDA when available.
    resize_masks : bool
        Resize masks of another size than their image to it (see :func:`llnm3d.io.read_mask`).
    layer : str
        GradCAM++ layer (:meth:`LLNMNet.gradcam_layers`): ``fused`` (the default,
        :data:`llnm3d.models.DEFAULT_LAYER`), ``last`` or ``bidirectional``.
    """
    check_number("batch_size", batch_size, low=1, high=MAX_BATCH_SIZE, integer=True)
    check_optional_workers(workers)
    check_choice("GradCAM++ layer", layer, GRADCAM_LAYERS)
    out_dir = ensure_writable_dir(out_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    removed = claim_folder(out_dir, "heatmap.json", FORMAT,
                           {"layer": layer, "resize_masks": bool(resize_masks),
                            "model_sha256": _model_digests(model_dir)}, "heatmap")
    manifest = as_manifest(manifest_path)
    failures = list(manifest.problems)
    all_cases = manifest.table
    digests = {row["case_id"]: manifest.model_input_digest(row)
               for _, row in all_cases.iterrows()}
    paths = {case_id: out_dir / "heatmaps" / f"{file_stem(case_id)}.npz" for case_id in digests}
    done, resumed = finished_cases(paths, digests)
    resumed.temporaries_removed = removed
    manifest.table = all_cases[~all_cases["case_id"].isin(done)]
    for view in VIEWS:
        if not (manifest.table["view"] == view).any():
            continue
        model, record = load_view_model(view, model_dir, device)
        version = f"{record.get('llnm3d_version', '?')}/{view}/epoch{record.get('epoch', '?')}"
        cases = load_cases(manifest, view=view, max_length=model.config.report_length,
                           workers=workers, progress=progress, resize_masks=resize_masks)
        failures.extend(cases.failures)
        bar = tqdm(total=len(cases), desc=f"heatmaps ({view})", unit="image",
                   disable=not progress)
        for start in range(0, len(cases), batch_size):
            index = np.arange(start, min(start + batch_size, len(cases)))
            maps, probability = gradcam_batch(model, cases.batch(index, device), layer)
            for offset, position in enumerate(index):
                row = cases.table.iloc[position]
                image_path = manifest.path(row, "image")
                assert image_path is not None  # read_manifest refuses rows without an image
                _write_case(out_dir, cases, position, maps[offset], float(probability[offset]),
                            version, image_path, digests[row["case_id"]])
            bar.update(len(index))
        bar.close()
    predictions = _collect_predictions(out_dir, all_cases, digests)
    with atomic_path(out_dir / "predictions.csv") as tmp:
        predictions.to_csv(tmp, index=False)
    write_json(out_dir / "heatmap.json", {**read_json(out_dir / "heatmap.json"),
                                          "complete": True, "llnm3d_version": __version__})
    return HeatmapResult(predictions, failures, resumed)


def _collect_predictions(out_dir: Path, table: pd.DataFrame, digests: dict[str, str]
                         ) -> pd.DataFrame:
    """Predictions of the cases of ``table`` whose heatmap is finished from their current
    inputs (files of other cohorts or of changed inputs in the folder are left out)."""
    rows = []
    for path in finished_files(out_dir / "heatmaps", "*.npz"):
        with np.load(path) as data:
            if str(data["case_id"]) not in digests or (
                    "input_digest" not in data.files
                    or str(data["input_digest"]) != digests[str(data["case_id"])]):
                continue
            rows.append({"case_id": str(data["case_id"]), "view": str(data["view"]),
                         "probability": float(data["probability"]),
                         "heatmap_empty": not data["heatmap"].any(),
                         "model_version": str(data["model_version"])})
    columns = ["case_id", "view", "probability", "heatmap_empty", "model_version"]
    predictions = pd.DataFrame(rows, columns=columns)
    ids = table[["case_id", "patient_id", "nodule_id"]]
    merged = ids.merge(predictions, on="case_id", how="inner")
    return merged[["case_id", "patient_id", "nodule_id", *columns[1:]]]


def load_heatmap(out_dir: str | Path, case_id: str) -> np.ndarray:
    """The heatmap (float32, image shape, 0..1) of one case from a heatmap folder."""
    path = Path(out_dir) / "heatmaps" / f"{file_stem(case_id)}.npz"
    if not path.exists():
        raise InputError(f"{path}: no heatmap for case {case_id!r}")
    with np.load(path) as data:
        return data["heatmap"]
