"""What each map of an aggregation is, for its NIfTI header and its JSON sidecar.

Every ``<map>.nii.gz`` of ``llnm3d aggregate`` says in its header what its values are
(:func:`map_header`: a t map is a NIfTI t-test map with its degrees of freedom, ``chi2`` a
chi-square map with 1 degree of freedom, p and q maps p-values, the rest estimates) and has a
``<map>.json`` sidecar beside it (:func:`map_sidecar`: name, description, units, intent,
estimator and cohort counts). -log10 maps sit beside the p maps (:data:`NEG_LOG10_MAPS`):
small p-values that single precision rounds to 0 keep their size there.
"""

from __future__ import annotations

from typing import cast

import nibabel as nib
import numpy as np

from .._version import __version__
from ..nifti import NiftiHeader, display_range
from .contrast import MAP_KINDS as CONTRAST_MAP_KINDS

# A group contrast's outcome x group interaction test writes the t-test's maps under this
# prefix (``contrast_t``, ``contrast_tfce_p_fwer``, ...).
INTERACTION_PREFIX = "contrast_"
INTERACTION_MAPS = ("t", "t_p", "t_q_fdr", "t_p_fwer", "tfce", "tfce_p_fwer", "cluster_mass",
                    "cluster_mass_p_fwer")
# p map -> its -log10 map.
_TEST_LOG10 = {"t_p": "t_log10p", "t_q_fdr": "t_log10q_fdr", "t_p_fwer": "t_log10p_fwer",
               "tfce_p_fwer": "tfce_log10p_fwer",
               "cluster_mass_p_fwer": "cluster_mass_log10p_fwer"}
NEG_LOG10_MAPS = {"chi2_p": "chi2_log10p", **_TEST_LOG10} | {
    INTERACTION_PREFIX + p: INTERACTION_PREFIX + log for p, log in _TEST_LOG10.items()}
# The largest -log10 p written: p is floored at the smallest normal double (p = 0 from an
# underflowing tail would give infinity).
_SMALLEST_P = np.finfo(np.float64).tiny
PROBABILITY_UNITS = "probability (0-1)"
# Map name -> (kind, units). Kinds set the NIfTI intent (see map_header).
MAP_KINDS = {
    "n_nodules": ("estimate", "nodules"),
    "sum_weight": ("estimate", "summed footprint weight (mask occupancy or heatmap, 0-1 per "
                               "nodule)"),
    "effective_n": ("estimate", "nodules (effective)"),
    "proportion": ("probability", "proportion (0-1)"),
    "probability": ("probability", PROBABILITY_UNITS),
    "probability_ci_low": ("probability", PROBABILITY_UNITS),
    "probability_ci_high": ("probability", PROBABILITY_UNITS),
    "log_odds": ("estimate", "log-odds"),
    "log_odds_se": ("estimate", "log-odds"),
    "probability_above_rate": ("probability", PROBABILITY_UNITS),
    "significance": ("estimate", "+1 above / -1 below the cohort rate, 0 neither"),
    "mask_weighted_probability": ("probability", PROBABILITY_UNITS),
    "mask_weighted_probability_ci_low": ("probability", PROBABILITY_UNITS),
    "mask_weighted_probability_ci_high": ("probability", PROBABILITY_UNITS),
    "saliency_weighted_probability": ("probability", PROBABILITY_UNITS),
    "saliency_weighted_probability_ci_low": ("probability", PROBABILITY_UNITS),
    "saliency_weighted_probability_ci_high": ("probability", PROBABILITY_UNITS),
    "mean_model_probability": ("probability", PROBABILITY_UNITS),
    "mean_saliency": ("estimate", "heatmap value (0-1)"),
    "chi2": ("chi2", "chi-square statistic (1 degree of freedom)"),
    "chi2_p": ("p", "p (0-1)"),
    "t": ("t", "t statistic"),
    "t_p": ("p", "p (0-1)"),
    "t_q_fdr": ("p", "q (0-1)"),
    "t_p_fwer": ("p", "p (0-1)"),
    "tfce": ("estimate", "TFCE score (sum over thresholds h of cluster voxels^0.5 * h^2)"),
    "tfce_p_fwer": ("p", "p (0-1)"),
    "cluster_mass": ("estimate", "cluster mass (sum of |t| above the cluster-forming "
                                 "threshold)"),
    "cluster_mass_p_fwer": ("p", "p (0-1)"),
}
MAP_KINDS |= ({INTERACTION_PREFIX + name: MAP_KINDS[name] for name in INTERACTION_MAPS}
              | CONTRAST_MAP_KINDS
              | {name: ("neglog10p", "-log10(p)") for name in NEG_LOG10_MAPS.values()})


def neg_log10(p: np.ndarray) -> np.ndarray:
    """``-log10(p)`` of p-values (NaN stays NaN; p = 0 gives 307.7, the floor's value)."""
    return -np.log10(np.maximum(np.asarray(p, np.float64), _SMALLEST_P))


def map_header(name: str, summary: dict) -> NiftiHeader:
    """The NIfTI header fields of map ``name`` of an aggregation with ``summary``.

    t: intent "t test" with the degrees of freedom of the OLS test (``summary``'s
    ``t_degrees_of_freedom``, or its contrast's for the interaction test; 0 when unknown);
    chi2: "chi2" with 1; p and q maps: "p value", displayed 0-1; -log10 maps: an estimate
    named "-log10(p)"; probabilities: an estimate displayed 0-1; other maps (and names this
    module does not know): an estimate.
    """
    kind, _ = MAP_KINDS.get(name, ("estimate", ""))
    description = f"llnm3d {name}"
    if kind == "t":
        dof = (summary.get("contrast") or {}).get("t_degrees_of_freedom") if name.startswith(
            INTERACTION_PREFIX) else summary.get("t_degrees_of_freedom")
        return NiftiHeader("t test", (float(dof),) if dof else (), "t", description)
    if kind == "chi2":
        return NiftiHeader("chi2", (1.0,), "chi2", description)
    if kind == "p":
        return NiftiHeader("p value", (), name.split("_", 1)[1][:16], description, (0.0, 1.0))
    if kind == "neglog10p":
        return NiftiHeader("estimate", (), "-log10(p)", description)
    if kind == "probability":
        return NiftiHeader("estimate", (), "probability", description, (0.0, 1.0))
    return NiftiHeader("estimate", (), name[:16], description)


def map_sidecar(name: str, volume: np.ndarray, header: NiftiHeader, summary: dict,
                description: str) -> dict:
    """The JSON sidecar of map ``name``: what it is, in what units, from which cohort."""
    parameters = summary.get("parameters", {})
    estimator = summary.get("estimator", {})
    return {
        "name": name,
        "file": f"{name}.nii.gz",
        "description": description,
        "units": MAP_KINDS.get(name, ("estimate", ""))[1],
        # nibabel types a Recoder's values as Hashable; intent codes are ints.
        "intent": {"code": int(cast(int, nib.nifti1.intent_codes.code[header.intent])),
                   "name": header.intent, "parameters": list(header.intent_params),
                   "intent_name": header.intent_name},
        "display_range": list(display_range(volume, header)),
        "estimator": estimator.get("name") if isinstance(estimator, dict) else estimator,
        "weight": parameters.get("weight"),
        "cohort": {"nodules": summary.get("nodules"), "events": summary.get("events"),
                   "prevalence": summary.get("prevalence"),
                   "min_cases": parameters.get("min_cases")},
        "missing_values": "NaN outside the analysis domain and, in probability and test "
                          "maps, where fewer than min_cases nodules touch the voxel",
        "space": "atlas mm, LPS (+x left, +y posterior, +z superior), origin at the isthmus "
                 "centre",
        "llnm3d_version": summary.get("software", {}).get("llnm3d", __version__),
    }
