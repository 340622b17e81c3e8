"""Per-region and per-capsule-distance risk tables of registered nodules.

A nodule counts in the region of its registered centre (QC ``region``) and in the
capsule-distance bin of its registered nodule edge (QC ``capsule_distance_mm``). Risk is the
proportion of nodules with LLNM, with a 95 % Jeffreys interval.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pandas as pd

from ..atlas import ISTHMUS, REGION_NAMES, Atlas
from ..io import InputError
from .inference import jeffreys_interval

DEFAULT_BINS_MM = (0.0, 1.0, 2.5, 5.0, 10.0, np.inf)
TABLE_COLUMNS = ["nodules", "events", "risk", "ci_low", "ci_high", "mean_model_probability"]


def _risk_row(group: pd.DataFrame) -> dict:
    n, events = len(group), int(group["label"].sum())
    low, high = jeffreys_interval(np.array(events), np.array(n))
    probability = group["probability"].mean() if group["probability"].notna().any() else np.nan
    return {"nodules": n, "events": events, "risk": events / n if n else np.nan,
            "ci_low": float(low) if n else np.nan, "ci_high": float(high) if n else np.nan,
            "mean_model_probability": probability}


def _front(nodules: pd.DataFrame, atlas: Atlas) -> pd.Series:
    """Whether each nodule's centre lies in the front half of its part (y below the part's
    centre; the isthmus splits at y = 0)."""
    centre_y = {1: atlas.lobe_axes[1]["centre_mm"][1], 2: atlas.lobe_axes[2]["centre_mm"][1],
                ISTHMUS: 0.0}
    split = (nodules["region"] // 10).map(centre_y)
    return nodules["centre_y_mm"] < split


def region_table(nodules: pd.DataFrame, atlas: Atlas) -> pd.DataFrame:
    """Risk per atlas region (lobe x third, isthmus), whole and by front/back half.

    ``nodules`` needs ``region``, ``centre_y_mm``, ``label`` and ``probability``.
    """
    front = _front(nodules, atlas)
    rows = []
    for label, name in REGION_NAMES.items():
        in_region = nodules["region"] == label
        for half, selection in (("whole", in_region), ("front", in_region & front),
                                ("back", in_region & ~front)):
            rows.append({"region": name, "label": label, "half": half,
                         **_risk_row(nodules[selection])})
    return pd.DataFrame(rows, columns=["region", "label", "half", *TABLE_COLUMNS])


def check_bin_edges(bins_mm) -> np.ndarray:
    """``bins_mm`` as an array of bin edges (mm) if they make bins: at least two, finite
    numbers strictly increasing, the last one possibly ``inf`` (an open last bin, as in
    :data:`DEFAULT_BINS_MM`); otherwise an InputError naming ``bins_mm``."""
    try:
        edges = np.asarray(bins_mm, float)
    except (TypeError, ValueError):
        edges = np.array([np.nan])
    # A NaN or -inf last edge fails the increase (a comparison with NaN is false).
    if edges.ndim != 1 or len(edges) < 2 or not np.isfinite(edges[:-1]).all() \
            or not (np.diff(edges) > 0).all():
        raise InputError(f"bins_mm must be at least two strictly increasing, finite edges (the "
                         f"last may be inf), got {bins_mm!r}")
    return edges


def capsule_distance_table(nodules: pd.DataFrame, bins_mm=DEFAULT_BINS_MM) -> pd.DataFrame:
    """Risk by the distance from the nodule's edge to the capsule (mm), in ``bins_mm``
    (left-closed intervals; see :func:`check_bin_edges`)."""
    edges = check_bin_edges(bins_mm)
    rows = []
    for low, high in pairwise(edges):
        inside = (nodules["capsule_distance_mm"] >= low) & (nodules["capsule_distance_mm"] < high)
        name = f">= {low:g} mm" if np.isinf(high) else f"{low:g}-{high:g} mm"
        rows.append({"bin": name, "low_mm": low, "high_mm": high,
                     **_risk_row(nodules[inside])})
    return pd.DataFrame(rows, columns=["bin", "low_mm", "high_mm", *TABLE_COLUMNS])
