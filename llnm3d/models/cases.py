"""Model-ready inputs for the cases of a manifest: location maps, report tokens, features.

:func:`load_cases` reads every image of a manifest (in worker processes), builds its location
feature map (:mod:`llnm3d.models.inputs`), morphology features (:mod:`llnm3d.models.features`)
and report tokens (:mod:`llnm3d.models.text`), and reports each case that cannot be read by its id
while the rest load.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..annotations import nodule_box, read_nodule_mask
from ..io import InputError, read_grayscale, read_mask
from ..manifest import Manifest
from ..parallel import Failure, map_cases
from .features import MODEL_FEATURES, nodule_features
from .inputs import CHANNELS, Geometry, location_feature_map
from .model import sex_codes
from .text import encode


@dataclass
class Cases:
    """Inputs of the readable cases of a manifest, row-aligned with ``table``.

    Attributes
    ----------
    table : DataFrame
        The manifest rows that loaded.
    maps : ndarray of uint8, shape (N, 5, 224, 224)
        Location feature maps quantised to 0..255 (see :meth:`batch`).
    geometries : list of Geometry
        Per case, how the image was padded and resized.
    tokens : ndarray of int64, shape (N, L)
    features : ndarray of float32, shape (N, n_features)
        Raw features in :data:`~llnm3d.models.features.MODEL_FEATURES` order (NaN where
        unavailable).
    failures : list of (case_id, reason)
    """

    table: pd.DataFrame
    maps: np.ndarray
    geometries: list[Geometry]
    tokens: np.ndarray
    features: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.table)

    def batch(self, index: np.ndarray, device: str | torch.device = "cpu") -> dict:
        """Model keyword arguments for the cases at ``index``."""
        rows = self.table.iloc[index]
        age = pd.to_numeric(rows.get("age", pd.Series(np.nan, index=rows.index)),
                            errors="coerce").to_numpy(np.float32)
        sex = sex_codes(rows.get("sex", pd.Series("", index=rows.index)))
        return {
            "image": torch.from_numpy(self.maps[index].astype(np.float32) / 255).to(device),
            "report_tokens": torch.from_numpy(self.tokens[index]).to(device),
            "features": torch.from_numpy(self.features[index]).to(device),
            "sex": torch.from_numpy(sex).to(device),
            "age": torch.from_numpy(age).to(device),
        }

    def labels(self) -> np.ndarray:
        """Outcome per case (0/1; -1 where missing)."""
        if "label" not in self.table:
            return np.full(len(self.table), -1)
        return self.table["label"].fillna(-1).to_numpy(int)


@dataclass(frozen=True)
class _Loading:
    """How every case is loaded: report tokens per case, and whether masks of another size
    are resized to their image."""

    max_length: int
    resize_masks: bool


@dataclass(frozen=True)
class _CaseFiles:
    """One manifest row to load: its files, nodule box, pixel spacing and report."""

    case_id: str
    image: Path
    nodule_mask: Path | None
    nodule_box: tuple[float, float, float, float] | None
    thyroid_mask: Path | None
    spacing_mm: float | None
    report: str


def _load_one(loading: _Loading, case: _CaseFiles) -> tuple | Failure:
    case_id, resize = case.case_id, loading.resize_masks
    try:
        image = read_grayscale(case.image)
        nodule = read_nodule_mask(case.nodule_mask, case.nodule_box, image.shape, resize)
        if nodule is None:
            return Failure(case_id, "no nodule mask")
        thyroid = read_mask(case.thyroid_mask, image.shape if resize else None)
        spacing = case.spacing_mm
        spacing = None if spacing is None or not np.isfinite(spacing) else float(spacing)
        values = nodule_features(image, nodule, spacing_mm=spacing, thyroid_mask=thyroid)
        channels, geometry = location_feature_map(image, nodule, thyroid, spacing)
        maps = np.round(channels * 255).astype(np.uint8)
        features = np.array([values[name] for name in MODEL_FEATURES], np.float32)
        return case_id, maps, geometry, encode(case.report, loading.max_length), features
    except InputError as exc:
        return Failure(case_id, str(exc))
    except Exception as exc:  # one unreadable case is reported; the others load
        return Failure(case_id, f"{type(exc).__name__}: {exc}")


def load_cases(manifest: Manifest, view: str | None = None, max_length: int = 48,
               workers: int | None = None, progress: bool = True,
               resize_masks: bool = False) -> Cases:
    """Load the cases of a manifest (optionally one view only) as model inputs.

    ``resize_masks`` resizes masks of another size than their image to it (see
    :func:`llnm3d.io.read_mask`); by default a size mismatch fails the case.
    """
    table = manifest.table
    if view is not None:
        table = table[table["view"] == view]
    tasks = []
    for _, row in table.iterrows():
        spacing = row.get("pixel_spacing_mm")
        report = row.get("report")
        image = manifest.path(row, "image")
        assert image is not None  # a manifest rejects rows without an image
        tasks.append(_CaseFiles(row["case_id"], image,
                                manifest.path(row, "nodule_mask"), nodule_box(row),
                                manifest.path(row, "thyroid_mask"),
                                None if pd.isna(spacing) else float(spacing),
                                "" if pd.isna(report) else str(report)))
    outcomes, failures = map_cases(_load_one, tasks, workers, progress, desc="loading cases",
                                   unit="image", context=_Loading(max_length, resize_masks),
                                   chunksize=16)
    results = {case_id: loaded for case_id, *loaded in outcomes}
    keep = table[table["case_id"].isin(results)].reset_index(drop=True)
    loaded = [results[c] for c in keep["case_id"]]
    n_features = len(MODEL_FEATURES)
    return Cases(
        table=keep,
        maps=(np.stack([r[0] for r in loaded]) if loaded
              else np.zeros((0, len(CHANNELS), 224, 224), np.uint8)),
        geometries=[r[1] for r in loaded],
        tokens=np.stack([r[2] for r in loaded]) if loaded else np.zeros((0, max_length), int),
        features=np.stack([r[3] for r in loaded]) if loaded else np.zeros((0, n_features),
                                                                           np.float32),
        failures=[(failure.id, failure.reason) for failure in failures],
    )
