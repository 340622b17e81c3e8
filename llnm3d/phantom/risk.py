"""Planted risk model of a phantom cohort, given as data (a JSON "risk spec").

Schema (``"format": "llnm3d-risk-spec/1"``)::

    {
      "format": "llnm3d-risk-spec/1",
      "description": "free text",
      "intercept": -1.0,
      "terms": [ <term>, ... ]
    }

The LLNM probability of a nodule is ``sigmoid(intercept + sum of term contributions)``.
Each term has a ``"type"``:

``linear``
    ``{"type": "linear", "covariate": C, "coefficient": b, "centre": c}``: ``b * (C - c)``
    (``centre`` defaults to 0). For numeric covariates.
``step``
    ``{"type": "step", "covariate": C, "thresholds": [t1, ..., tk],
    "coefficients": [b0, ..., bk]}``: ``b_i`` where ``i`` is the number of thresholds ``<= C``
    (so ``b0`` below ``t1``). Thresholds strictly increasing; one more coefficient than
    thresholds.
``categorical``
    ``{"type": "categorical", "covariate": C, "coefficients": {"level": b, ...}}``: ``b`` of the
    nodule's level; levels not listed contribute 0.
``gaussian``
    ``{"type": "gaussian", "centre_mm": [x, y, z], "sigma_mm": s, "coefficient": b,
    "mirror_x": true}``: ``b * exp(-|p - centre|^2 / (2 s^2))`` at the nodule's atlas centre
    ``p``; with ``mirror_x`` the spot is also placed at ``(-x, y, z)`` (the other lobe) and the
    larger of the two counts. Any spatial pattern (a posterior-lower hot spot, say) is a sum of
    such spots.

Covariates (see :data:`COVARIATES`): numeric ``capsule_distance_mm`` (nodule edge to capsule,
atlas mm, 0 when touching), ``centre_capsule_distance_mm``, ``diameter_mm`` (longest),
``x_mm``, ``y_mm``, ``z_mm`` (atlas centre), ``abs_x_mm``, ``taller_than_wide`` and
``microcalcification`` (0/1), ``age_years``; categorical ``lobe`` (right, left), ``lobe_third``
(upper, middle, lower), ``echogenicity`` (hyperechoic, isoechoic, hypoechoic, very_hypoechoic),
``margin`` (smooth, lobulated, irregular), ``sex`` (F, M).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd

from ..checks import check_choice
from ..io import InputError, read_json

FORMAT = "llnm3d-risk-spec/1"
TERM_TYPES = ("linear", "step", "categorical", "gaussian")

NUMERIC = ("capsule_distance_mm", "centre_capsule_distance_mm", "diameter_mm", "x_mm", "y_mm",
           "z_mm", "abs_x_mm", "taller_than_wide", "microcalcification", "age_years")
CATEGORICAL = {
    "lobe": ("right", "left"),
    "lobe_third": ("upper", "middle", "lower"),
    "echogenicity": ("hyperechoic", "isoechoic", "hypoechoic", "very_hypoechoic"),
    "margin": ("smooth", "lobulated", "irregular"),
    "sex": ("F", "M"),
}
COVARIATES = NUMERIC + tuple(CATEGORICAL)


@dataclass(frozen=True)
class RiskSpec:
    """A validated risk spec; ``data`` is the JSON object it came from."""

    data: dict
    source: str = "<dict>"

    @classmethod
    def default(cls) -> RiskSpec:
        """The bundled spec: risk sharply higher within 2.5 mm of the capsule, upper and middle
        thirds above the lower third, plus size, morphology, age and sex effects; prevalence
        near 50 % on phantom cohorts."""
        text = resources.files("llnm3d.data").joinpath("risk_spec_default.json").read_text()
        return cls.from_dict(json.loads(text), source="default risk spec")

    @classmethod
    def load(cls, path: str | Path) -> RiskSpec:
        """Read and validate a spec file; raises :class:`InputError` naming the problem."""
        return cls.from_dict(read_json(path), source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> RiskSpec:
        _validate(data, source)
        return cls(data=data, source=source)

    def logit(self, covariates: pd.DataFrame) -> np.ndarray:
        """Linear predictor per nodule, shape (N,), from a table with the covariate columns."""
        total = np.full(len(covariates), float(self.data["intercept"]))
        for term in self.data["terms"]:
            total += _term_value(term, covariates)
        return total

    def probability(self, covariates: pd.DataFrame) -> np.ndarray:
        """LLNM probability per nodule, shape (N,)."""
        return 1.0 / (1.0 + np.exp(-self.logit(covariates)))


def _term_value(term: dict, table: pd.DataFrame) -> np.ndarray:
    kind = term["type"]
    if kind == "linear":
        values = table[term["covariate"]].to_numpy(dtype=float)
        return term["coefficient"] * (values - term.get("centre", 0.0))
    if kind == "step":
        values = table[term["covariate"]].to_numpy(dtype=float)
        index = np.searchsorted(np.asarray(term["thresholds"], float), values, side="right")
        return np.asarray(term["coefficients"], float)[index]
    if kind == "categorical":
        levels = table[term["covariate"]].astype(str)
        return levels.map(term["coefficients"]).fillna(0.0).to_numpy(dtype=float)
    # gaussian
    points = table[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float)
    centre = np.asarray(term["centre_mm"], float)
    centres = [centre, centre * [-1, 1, 1]] if term.get("mirror_x") else [centre]
    sq = np.min([np.sum((points - c) ** 2, axis=1) for c in centres], axis=0)
    return term["coefficient"] * np.exp(-sq / (2 * term["sigma_mm"] ** 2))


def _validate(data: dict, source: str) -> None:
    def fail(where: str, problem: str) -> NoReturn:
        raise InputError(f"risk spec {source}: {where}: {problem}")

    if not isinstance(data, dict):
        fail("top level", "expected a JSON object")
    if data.get("format") != FORMAT:
        fail("format", f"expected {FORMAT!r}, got {data.get('format')!r}")
    if not _is_number(data.get("intercept")):
        fail("intercept", "expected a number")
    terms = data.get("terms")
    if not isinstance(terms, list):
        fail("terms", "expected a list")
    for n, term in enumerate(terms):
        where = f"terms[{n}]"
        if not isinstance(term, dict):
            fail(where, "expected an object")
        kind = term.get("type")
        try:
            check_choice("type", kind, TERM_TYPES)
        except InputError as exc:
            fail(where, str(exc))  # so the message still names the spec file and the term
        if kind == "gaussian":
            centre = term.get("centre_mm")
            if not (isinstance(centre, list) and len(centre) == 3 and all(map(_is_number, centre))):
                fail(where, "centre_mm must be a list of 3 numbers")
            if not (_is_number(term.get("sigma_mm")) and term["sigma_mm"] > 0):
                fail(where, "sigma_mm must be a positive number")
            if not _is_number(term.get("coefficient")):
                fail(where, "coefficient must be a number")
            continue
        covariate = term.get("covariate")
        if kind == "categorical":
            if covariate not in CATEGORICAL:
                fail(where, f"unknown categorical covariate {covariate!r} "
                            f"(known: {', '.join(CATEGORICAL)})")
            coefs = term.get("coefficients")
            if not isinstance(coefs, dict) or not all(map(_is_number, coefs.values())):
                fail(where, "coefficients must map levels to numbers")
            unknown = set(coefs) - set(CATEGORICAL[covariate])
            if unknown:
                fail(where, f"unknown {covariate} levels {sorted(unknown)} "
                            f"(known: {', '.join(CATEGORICAL[covariate])})")
            continue
        if covariate not in NUMERIC:
            fail(where, f"unknown numeric covariate {covariate!r} (known: {', '.join(NUMERIC)})")
        if kind == "linear":
            if not _is_number(term.get("coefficient")):
                fail(where, "coefficient must be a number")
            if not _is_number(term.get("centre", 0.0)):
                fail(where, "centre must be a number")
        else:
            thresholds, coefs = term.get("thresholds"), term.get("coefficients")
            if not (isinstance(thresholds, list) and thresholds
                    and all(map(_is_number, thresholds))):
                fail(where, "thresholds must be a non-empty list of numbers")
            if np.any(np.diff(thresholds) <= 0):
                fail(where, "thresholds must be strictly increasing")
            if not (isinstance(coefs, list) and all(map(_is_number, coefs))
                    and len(coefs) == len(thresholds) + 1):
                fail(where, f"coefficients must be {len(thresholds) + 1} numbers "
                            "(one more than thresholds)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
