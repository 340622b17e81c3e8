"""Training LLNM-Net on a cohort (``llnm3d train``), one view at a time.

Splits are by ``patient_id``: a patient is never on both sides. A manifest may carry its own
``split`` column (``train``/``val``); a split that puts a patient on both sides is refused.
Without one, patients are split at random (seeded).

Each epoch reports validation loss and AUC; the best epoch by validation loss is saved as
``model.safetensors`` + ``model.json``. After every epoch the full training state (weights,
optimiser, epoch, history, random state) is saved to ``checkpoint.safetensors`` +
``checkpoint.json``, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..checks import check_choice, check_number, check_optional_workers, check_seed
from ..io import InputError, atomic_path, ensure_writable_dir, read_json, write_json
from ..manifest import Manifest, as_manifest
from .cases import Cases, load_cases
from .inputs import (
    CHANNELS,
    NODULE,
    NODULE_PROXIMITY,
    THYROID_CHANNELS,
    set_nodule_mask,
)
from .model import CONFIGS, SEX_UNKNOWN, STEMS, LLNMNet, config_named, parameter_count, save_model

# Sane maxima: beyond them a value is a typo (the phantom model converges in 20 epochs).
MAX_EPOCHS = 10_000
MAX_BATCH_SIZE = 4096


@dataclass(frozen=True)
class TrainSettings:
    """Training hyper-parameters, checked on construction (InputError naming the field).

    Attributes
    ----------
    config : {"small", "full"}
    epochs : int
        1 to :data:`MAX_EPOCHS`.
    batch_size : int
        1 to :data:`MAX_BATCH_SIZE`.
    learning_rate : float
        Peak learning rate, in (0, 1].
    weight_decay : float
        In [0, 1).
    warmup_epochs : int
        0 to :data:`MAX_EPOCHS` (more than ``epochs`` ends the run still warming up).
    val_fraction : float
        Share of patients held out for validation, in (0, 1).
    seed : int
        0 to :data:`llnm3d.checks.MAX_SEED`.
    modality_dropout : float
        Per-case probability of hiding each optional input, in [0, 1) (1 would hide them
        always).
    channels : tuple of str
        Channels of the location feature map the model reads (:data:`llnm3d.models.inputs.CHANNELS`,
        in order).
    nodule_dropout : float
        Per-case probability of hiding the nodule-mask channels (mask and nodule proximity)
        during training, in [0, 1): the model must then find the nodule in the image.
    nodule_swap : float
        Per-case probability of showing the model another case's nodule mask during training,
        in [0, 1 - nodule_dropout]: the mask becomes a hint the image must confirm.
    stem : {"linear", "conv"}
        How image patches become tokens (:attr:`llnm3d.models.model.ModelConfig.stem`): one
        linear map per 16x16 patch, or a stack of small convolutions.
    nodule_loss_weight : float
        Weight, in [0, 100], of an auxiliary loss that teaches the model where the nodule is
        and how close it comes to the capsule: a head on the image tokens predicts, per 16x16
        patch, the share of it inside the nodule mask and its mean nodule proximity (binary
        cross-entropy; :func:`nodule_targets`). The mask is then a training target, not only
        an input. 0 builds no head.

    The input-design defaults (all channels, nodule dropout 0.25, swap 0.25, loss weight 5,
    the linear stem) are the ``mask_hint`` design of the bundled weights (model/MODEL_CARD.md).
    shuffle_labels : bool
        Train on the labels permuted among the cases (seeded): the model of the
        label-randomisation sanity check (:mod:`llnm3d.models.heatmap_checks`), never a model to
        use.
    """

    config: str = "small"
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    warmup_epochs: int = 2
    val_fraction: float = 0.2
    seed: int = 0
    modality_dropout: float = 0.15
    channels: tuple[str, ...] = CHANNELS
    nodule_dropout: float = 0.25
    nodule_swap: float = 0.25
    nodule_loss_weight: float = 5.0
    stem: str = "linear"
    shuffle_labels: bool = False

    def __post_init__(self) -> None:
        check_choice("config", self.config, CONFIGS)
        check_number("epochs", self.epochs, low=1, high=MAX_EPOCHS, integer=True)
        check_number("batch_size", self.batch_size, low=1, high=MAX_BATCH_SIZE, integer=True)
        check_number("learning_rate", self.learning_rate, low=0, high=1, low_inclusive=False)
        check_number("weight_decay", self.weight_decay, low=0, high=1, high_inclusive=False)
        check_number("warmup_epochs", self.warmup_epochs, low=0, high=MAX_EPOCHS, integer=True)
        check_number("val_fraction", self.val_fraction, low=0, high=1, low_inclusive=False,
                     high_inclusive=False)
        check_seed(self.seed)
        check_number("modality_dropout", self.modality_dropout, low=0, high=1,
                     high_inclusive=False)
        check_number("nodule_dropout", self.nodule_dropout, low=0, high=1,
                     high_inclusive=False)
        check_number("nodule_swap", self.nodule_swap, low=0, high=1 - self.nodule_dropout)
        check_number("nodule_loss_weight", self.nodule_loss_weight, low=0, high=100)
        check_choice("stem", self.stem, STEMS)
        object.__setattr__(self, "channels", tuple(self.channels))
        for name in self.channels:
            check_choice("channel", name, CHANNELS)


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes
    ----------
    out_dir : Path
        Holds ``model.*`` (the best epoch), ``checkpoint.*`` and ``history.csv``.
    best_epoch : int
        The epoch of lowest validation loss, the one saved as ``model.*``.
    val_loss, val_auc : float
        Its validation loss and AUC.
    parameters : int
        Trainable parameters.
    history : DataFrame
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_auc``.
    failures : list of (case_id, reason)
        Cases that could not be read.
    """

    out_dir: Path
    best_epoch: int
    val_loss: float
    val_auc: float
    parameters: int
    history: pd.DataFrame
    failures: list[tuple[str, str]] = field(default_factory=list)


def split_by_patient(table: pd.DataFrame, val_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, val) of a case table, splitting by ``patient_id``.

    Uses the table's ``split`` column (train/val) when it has one, after checking that no
    patient is on both sides; otherwise draws a seeded random split of the patients.
    """
    if "split" in table:
        split = table["split"].astype(str).str.strip().str.lower()
        unknown = set(split) - {"train", "val"}
        if unknown:
            raise InputError(f"split column has values {sorted(unknown)}; expected train/val")
        check_patient_split(table.loc[split == "train", "patient_id"],
                            table.loc[split == "val", "patient_id"])
        return np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    patients = np.array(sorted(table["patient_id"].unique()))
    rng = np.random.default_rng(seed)
    n_val = max(1, int(round(val_fraction * len(patients))))
    val_patients = set(rng.permutation(patients)[:n_val])
    is_val = table["patient_id"].isin(val_patients).to_numpy()
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def check_patient_split(train_patients, val_patients) -> None:
    """Raise InputError when a patient appears on both sides of a split."""
    leaked = sorted(set(train_patients) & set(val_patients))
    if leaked:
        shown = ", ".join(map(str, leaked[:5])) + (" ..." if len(leaked) > 5 else "")
        raise InputError(f"{len(leaked)} patient(s) on both sides of the train/val split "
                         f"({shown}); a patient's images must all be on one side")


def permuted_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    """``labels`` (0/1, -1 missing) permuted among the labelled cases, seeded; missing stay."""
    out = labels.copy()
    labelled = np.flatnonzero(labels >= 0)
    out[labelled] = np.random.default_rng([seed, 1]).permutation(labels[labelled])
    return out


def nodule_targets(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """What the nodule head learns, per patch, from location feature maps (B, 5, 224, 224):
    the share of the patch inside the nodule mask and the patch's mean nodule proximity (how
    close the nodule comes to the capsule there; 0 without a thyroid mask). Shape
    (B, 2, grid, grid), values in 0..1."""
    return F.avg_pool2d(image[:, [NODULE, NODULE_PROXIMITY]], patch_size)


def nodule_truth(batch: dict, inputs: dict) -> torch.Tensor:
    """Location feature maps to take the nodule head's targets from: the true nodule mask
    (whatever the model was shown of it), and the nodule proximity as the capsule proximity
    the model was shown (zero where training hid the thyroid mask) inside it."""
    image = inputs["image"].clone()
    set_nodule_mask(image, batch["image"][:, NODULE])
    return image


def _set_feature_scaling(model: LLNMNet, features: np.ndarray) -> None:
    mean = np.nan_to_num(np.nanmean(features, axis=0))
    std = np.nan_to_num(np.nanstd(features, axis=0), nan=1.0)
    model.feature_mean.copy_(torch.from_numpy(mean.astype(np.float32)))
    model.feature_std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))


def predict_proba(model: LLNMNet, cases: Cases, index: np.ndarray | None = None,
                  batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """LLNM probability per case, shape (N,)."""
    index = np.arange(len(cases)) if index is None else index
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            logits = model(**cases.batch(index[start:start + batch_size], device))
            out.append(torch.softmax(logits, dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _evaluate(model, cases, index, labels, device) -> tuple[float, float]:
    p = np.clip(predict_proba(model, cases, index, device=device), 1e-7, 1 - 1e-7)
    y = labels[index]
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    auc = float(roc_auc_score(y, p)) if len(set(y)) == 2 else float("nan")
    return loss, auc


def _drop_modalities(inputs: dict, rate: float, generator: torch.Generator,
                     nodule_rate: float = 0.0, swap_rate: float = 0.0) -> dict:
    """Hide inputs at random, per case, so the model learns to predict without them.

    Each case independently loses, with probability ``rate``: its thyroid mask (proximity
    channel and availability flag zeroed, as for images without one), its report (all
    padding), its age (NaN) and its sex (unknown). Without this a model trained on complete
    phantom cases would meet a missing thyroid mask or report for the first time on real data.
    With probability ``nodule_rate`` it also loses its nodule-mask channels (the mask and the
    nodule proximity), so the model learns to find the nodule in the image rather than copy
    the mask; otherwise, with probability ``swap_rate``, it is shown the nodule mask of the
    next case in the batch instead of its own (a wrong annotation), so the model learns that
    the mask is a hint the image must confirm.
    """
    image = inputs["image"]
    batch = image.shape[0]
    if rate > 0:
        draws = (torch.rand(4, batch, generator=generator) < rate).to(image.device)
        image = image.clone()
        for channel in THYROID_CHANNELS:
            image[draws[0], channel] = 0.0
        inputs = {**inputs, "image": image,
                  "report_tokens": inputs["report_tokens"].masked_fill(draws[1][:, None], 0),
                  "age": inputs["age"].masked_fill(draws[2], float("nan")),
                  "sex": inputs["sex"].masked_fill(draws[3], SEX_UNKNOWN)}
    if nodule_rate > 0 or swap_rate > 0:
        draw = torch.rand(batch, generator=generator).to(image.device)
        hidden, swapped = draw < nodule_rate, draw >= 1 - swap_rate
        changed = hidden | swapped
        shown = torch.where(swapped[:, None, None], image.roll(-1, dims=0)[:, NODULE],
                            image[:, NODULE]).masked_fill(hidden[:, None, None], 0.0)
        image = image.clone()
        rows = image[changed]  # a copy: written back below
        set_nodule_mask(rows, shown[changed])
        image[changed] = rows
        inputs = {**inputs, "image": image}
    return inputs


def _learning_rate(settings: TrainSettings, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    total = settings.epochs * steps_per_epoch
    warmup = settings.warmup_epochs * steps_per_epoch
    if step < warmup:
        return settings.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return settings.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def _data_digest(cases: Cases, train_index: np.ndarray, val_index: np.ndarray) -> str:
    """SHA-256 of what training reads: every model input, the labels and the split, so a
    checkpoint is never resumed on corrected labels or redrawn masks under the same manifest
    path."""
    hasher = hashlib.sha256()
    for array in (cases.maps, cases.tokens, cases.features, cases.labels(), train_index,
                  val_index):
        hasher.update(np.ascontiguousarray(array).tobytes())
    columns = [c for c in ("case_id", "age", "sex") if c in cases.table]
    hasher.update(cases.table[columns].astype(str).to_csv().encode())
    return hasher.hexdigest()


def _save_checkpoint(out_dir: Path, model, optimiser, state: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optimiser_state = optimiser.state_dict()
    for param_id, values in optimiser_state["state"].items():
        for name, value in values.items():
            tensors[f"optimiser.{param_id}.{name}"] = torch.as_tensor(value).cpu().contiguous()
    with atomic_path(out_dir / "checkpoint.safetensors") as tmp:
        save_file(tensors, str(tmp))
    write_json(out_dir / "checkpoint.json",
               {**state, "param_groups": optimiser_state["param_groups"]})


def _load_checkpoint(out_dir: Path, model, optimiser) -> dict:
    tensors = load_file(str(out_dir / "checkpoint.safetensors"))
    state = read_json(out_dir / "checkpoint.json")
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    optimiser_state: dict = {"state": {}, "param_groups": state.pop("param_groups")}
    for key, value in tensors.items():
        if key.startswith("optimiser."):
            _, param_id, name = key.split(".", 2)
            optimiser_state["state"].setdefault(int(param_id), {})[name] = value
    optimiser.load_state_dict(optimiser_state)
    return state


def train(manifest_path: str | Path | Manifest, view: str, out_dir: str | Path,
          settings: TrainSettings = TrainSettings(), *, device: str | None = None,
          workers: int | None = None, progress: bool = True) -> TrainResult:
    """Train LLNM-Net on one view of a cohort.

    Parameters
    ----------
    manifest_path : path or Manifest
        Cohort manifest; rows need a 0/1 ``label``.
    view : {"transverse", "longitudinal"}
    out_dir : path
        Receives ``model.*`` (best epoch), ``checkpoint.*`` (resume state), ``history.csv``.
    settings : TrainSettings
    device : str, optional
        ``cpu`` or ``cuda``; default CUDA when available.
    """
    check_choice("view", view, ("transverse", "longitudinal"))
    check_optional_workers(workers)
    out_dir = ensure_writable_dir(out_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(settings.seed)
    manifest = as_manifest(manifest_path)
    if "split" in manifest.table:  # the whole manifest, all views, before any image is read
        split_by_patient(manifest.table, settings.val_fraction, settings.seed)
    cases = load_cases(manifest, view=view, workers=workers, progress=progress)
    labelled = cases.labels() >= 0
    if labelled.sum() < 10:
        raise InputError(f"{manifest.source}: only {labelled.sum()} labelled {view} images")
    train_index, val_index = split_by_patient(cases.table, settings.val_fraction, settings.seed)
    train_index = train_index[labelled[train_index]]
    val_index = val_index[labelled[val_index]]
    if not len(train_index) or not len(val_index):
        raise InputError(f"the split leaves {len(train_index)} training and {len(val_index)} "
                         f"validation {view} images; both need some")
    labels = cases.labels()
    if settings.shuffle_labels:
        labels = permuted_labels(labels, settings.seed)

    model = LLNMNet(config_named(settings.config, channels=settings.channels,
                                 stem=settings.stem,
                                 nodule_head=settings.nodule_loss_weight > 0)).to(device)
    _set_feature_scaling(model, cases.features[train_index])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "position" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "position" in n]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=settings.learning_rate)
    run = {"manifest": str(manifest.source), "view": view,
           "settings": {**asdict(settings), "channels": list(settings.channels)},  # as JSON
           "n_train": int(len(train_index)), "n_val": int(len(val_index)),
           "data_sha256": _data_digest(cases, train_index, val_index)}
    state: dict[str, Any] = {"epoch": 0, "history": [], "best_val_loss": float("inf"),
                             "run": run}
    if (out_dir / "checkpoint.json").exists():
        saved = read_json(out_dir / "checkpoint.json")
        if saved.get("run") != run:
            changed = ", ".join(k for k in run if saved.get("run", {}).get(k) != run[k])
            raise InputError(f"{out_dir} holds a checkpoint of a different run ({changed} "
                             "differ; data_sha256 covers the images, masks, reports, labels "
                             "and split); use a new folder or delete it")
        state = _load_checkpoint(out_dir, model, optimiser)
        torch.set_rng_state(torch.tensor(state.pop("torch_rng"), dtype=torch.uint8))

    steps_per_epoch = math.ceil(len(train_index) / settings.batch_size)
    for epoch in range(state["epoch"] + 1, settings.epochs + 1):
        # Per-epoch streams, so a resumed run draws exactly what an uninterrupted one would.
        rng = np.random.default_rng([settings.seed, epoch])
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        model.train()
        order = rng.permutation(train_index)
        bar = tqdm(range(steps_per_epoch), desc=f"{view} epoch {epoch}/{settings.epochs}",
                   unit="batch", disable=not progress, leave=False)
        total = 0.0
        for step in bar:
            index = order[step * settings.batch_size:(step + 1) * settings.batch_size]
            for group in optimiser.param_groups:
                group["lr"] = _learning_rate(settings, (epoch - 1) * steps_per_epoch + step,
                                             steps_per_epoch)
            target = torch.from_numpy(labels[index]).to(device)
            batch = cases.batch(index, device)
            inputs = _drop_modalities(batch, settings.modality_dropout, generator,
                                      settings.nodule_dropout, settings.nodule_swap)
            if settings.nodule_loss_weight > 0:
                logits, nodule_logits = model(**inputs, return_nodule=True)
                loss = F.cross_entropy(logits, target) + settings.nodule_loss_weight * (
                    F.binary_cross_entropy_with_logits(
                        nodule_logits, nodule_targets(nodule_truth(batch, inputs),
                                                      model.config.patch_size)))
            else:
                loss = F.cross_entropy(model(**inputs), target)
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            total += loss.item() * len(index)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        val_loss, val_auc = _evaluate(model, cases, val_index, labels, device)
        record = {"epoch": epoch, "train_loss": total / len(train_index), "val_loss": val_loss,
                  "val_auc": val_auc}
        state["history"].append(record)
        if progress:
            tqdm.write(f"{view} epoch {epoch}: train loss {record['train_loss']:.4f}, "
                       f"val loss {val_loss:.4f}, val AUC {val_auc:.3f}")
        if val_loss < state["best_val_loss"]:
            state["best_val_loss"] = val_loss
            save_model(model, out_dir / "model", metadata={
                "view": view, "epoch": epoch, "val_loss": val_loss, "val_auc": val_auc,
                "training": run})
        state["epoch"] = epoch
        _save_checkpoint(out_dir, model, optimiser,
                         {**state, "torch_rng": torch.get_rng_state().tolist()})
    history = pd.DataFrame(state["history"])
    with atomic_path(out_dir / "history.csv") as tmp:
        history.to_csv(tmp, index=False)
    best = history.loc[history["val_loss"].idxmin()]
    return TrainResult(out_dir=out_dir, best_epoch=int(best["epoch"]),
                       val_loss=float(best["val_loss"]), val_auc=float(best["val_auc"]),
                       parameters=parameter_count(model), history=history,
                       failures=cases.failures)
