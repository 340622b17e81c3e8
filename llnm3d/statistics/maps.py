"""``llnm3d aggregate``: registered nodules -> 3D risk maps, voxelwise tests and tables.

Output folder::

    <map>.nii.gz          volumes in atlas space (names and meaning in :data:`MAP_DESCRIPTIONS`;
                          NIfTI intent, description and display range in the header)
    <map>.json            its sidecar: name, description, units, intent, estimator, cohort
    regions.csv           risk per region (lobe x third, isthmus), whole and front/back halves
    capsule_distance.csv  risk per nodule-edge capsule-distance bin
    clusters.csv          clusters of the cluster-mass test (:mod:`.voxelwise`)
    nodule_model.csv      adjusted odds ratios of LLNM by capsule distance (:mod:`.nodule_model`)
    contrast_clusters.csv with ``contrast``: clusters of the interaction test (:mod:`.contrast`)
    summary.json          inputs, parameters, seed, counts, exclusions, software versions
    accumulators.npz      the voxelwise sums (resume, ``--update``)
    permutations/         maxima of permutation blocks, one array per statistic (resume);
                          the contrast's interaction test in permutations/contrast/

Probability at a voxel: with weights ``w`` (heatmap or nodule occupancy) of the nodules touching
it, the weighted proportion ``sum(w y) / sum(w)`` on Kish's effective number of nodules
``n_eff = sum(w)^2 / sum(w^2)`` is shrunk towards the cohort prevalence ``pi0`` by a Beta
prior worth ``prior_strength`` nodules: ``(n_eff * p + a * pi0) / (n_eff + a)``; the 95 %
interval is Jeffreys' on the effective counts. Voxels touched by fewer than ``min_cases``
nodules are masked (NaN) in every probability and test map.
"""

from __future__ import annotations

import platform
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._version import __version__
from ..atlas import REGION_NAMES, Atlas, as_atlas
from ..checks import check_choice, check_number, check_optional_workers, check_seed
from ..grid import Grid
from ..io import (
    InputError,
    atomic_paths,
    digest,
    ensure_writable_dir,
    file_digest,
    file_stem,
    json_document,
    read_json,
    read_volume,
    remove_temporaries,
    write_json,
    write_nifti,
)
from ..manifest import NUMERIC_RANGES
from ..parallel import Failure, dask_session, map_cases
from ..registration import Registered, load_registered
from ..resume import Resumed
from .accumulate import (
    Accumulator,
    NoduleInput,
    accumulate_block,
    analysis_domain,
    domain_lookup,
    patch_weights,
)
from .contrast import MAP_DESCRIPTIONS as CONTRAST_MAP_DESCRIPTIONS
from .contrast import contrast_groups, estimate_contrast, interaction_design, manifest_column
from .inference import OLSDesign, jeffreys_interval
from .kernel import fit_kernel
from .map_info import (
    INTERACTION_MAPS,
    INTERACTION_PREFIX,
    NEG_LOG10_MAPS,
    map_header,
    map_sidecar,
    neg_log10,
)
from .nodule_model import nodule_model_table
from .spatial import (
    SplineBasis,
    fit_spatial,
    mean_difference,
    risk_maps,
    simultaneous_critical,
)
from .tables import DEFAULT_BINS_MM, capsule_distance_table, check_bin_edges, region_table
from .voxelwise import (
    CLUSTER_COLUMNS,
    DEFAULT_CLUSTER_P,
    TestSettings,
    check_test_settings,
    cluster_table,
    permutation_test_names,
    permutation_tests,
    test_names,
    voxelwise_tests,
)

FORMAT = "llnm3d-stats/1"
BLOCK_SIZE = 256
COVARIATES = {"age": "age", "sex": "sex", "size": "diameter_mm", "extent": "footprint_voxels"}
# Values a numeric covariate may take (inclusive); others count as missing. Ages as in the
# manifest; a thyroid nodule's diameter in mm is below the length of a lobe (~50 mm) twice over.
COVARIATE_RANGES = {"age": NUMERIC_RANGES["age"][:2], "size": (0.0, 100.0)}
ESTIMATORS = ("spatial", "kernel", "weighted")
WEIGHTS = ("mask", "heatmap")
# Family-wise p of max-statistic permutations resolves 1 / (permutations + 1): 100,000 give
# 1e-5, beyond any threshold a voxelwise map is read at; more only cost time (a billion was
# estimated at 1,575 h).
MAX_PERMUTATIONS = 100_000
# Footprint extent "differs by outcome" when the median ratio between nodules with and without
# LLNM is beyond this and the rank test is significant at EXTENT_ALPHA.
EXTENT_RATIO = 1.25
EXTENT_ALPHA = 0.01
# Summary notes about the tables beside the maps start with their table's name.
NODULE_MODEL_NOTE = "nodule model: "
CONTRAST_NOTE = "contrast: "
MAP_DESCRIPTIONS = {
    "n_nodules": "nodules touching the voxel (weight > 0)",
    "sum_weight": "summed weight of those nodules",
    "effective_n": "Kish effective number of nodules, sum(w)^2 / sum(w^2)",
    "proportion": "weighted LLNM proportion sum(w y) / sum(w) (heatmap weights: where the model "
                  "looks, not where risk is)",
    "probability": "LLNM risk map of the chosen estimator (summary.json: estimator)",
    "probability_ci_low": "its pointwise 95 % interval, lower bound",
    "probability_ci_high": "its pointwise 95 % interval, upper bound",
    "log_odds": "spatial model: log-odds field f of the risk map",
    "log_odds_se": "spatial model: posterior standard error of f",
    "probability_above_rate": "spatial model: posterior probability that the risk exceeds the "
                              "cohort rate",
    "significance": "spatial model: +1 / -1 where the simultaneous 95 % band lies wholly above / "
                    "below the cohort rate (family-wise), 0 elsewhere",
    "mask_weighted_probability": "mask-weighted proportion shrunk towards the prevalence",
    "mask_weighted_probability_ci_low": "its 95 % Jeffreys interval, lower bound",
    "mask_weighted_probability_ci_high": "its 95 % Jeffreys interval, upper bound",
    "saliency_weighted_probability": "heatmap-weighted proportion shrunk towards the "
                                     "prevalence: where the model looks, not where risk is",
    "saliency_weighted_probability_ci_low": "its 95 % Jeffreys interval, lower bound",
    "saliency_weighted_probability_ci_high": "its 95 % Jeffreys interval, upper bound",
    "mean_model_probability": "weighted mean LLNM-Net probability",
    "mean_saliency": "mean fused heatmap value of the nodules touching the voxel",
    "chi2": "Pearson chi-square, touched/not x LLNM/not",
    "chi2_p": "its uncorrected p",
    "t": "OLS t of the outcome's effect on the weight (nilearn permuted_ols convention)",
    "t_p": "two-sided uncorrected p of t",
    "t_q_fdr": "Benjamini-Hochberg q of t_p",
    "t_p_fwer": "family-wise corrected p (max-|t| permutations)",
    "tfce": "threshold-free cluster enhancement of t (E = 0.5, H = 2, 100 steps; signed like t)",
    "tfce_p_fwer": "family-wise corrected p of TFCE (max-|TFCE| permutations)",
    "cluster_mass": "mass (sum of |t| above the cluster-forming threshold) of the voxel's "
                    "cluster, signed like t; 0 outside clusters",
    "cluster_mass_p_fwer": "family-wise corrected p of the voxel's cluster (max-mass "
                           "permutations); NaN outside clusters",
    "chi2_log10p": "-log10 of chi2_p (higher is stronger evidence; 2 is p = 0.01)",
    "t_log10p": "-log10 of t_p",
    "t_log10q_fdr": "-log10 of t_q_fdr",
    "t_log10p_fwer": "-log10 of t_p_fwer (1.3 is family-wise p = 0.05)",
    "tfce_log10p_fwer": "-log10 of tfce_p_fwer",
    "cluster_mass_log10p_fwer": "-log10 of cluster_mass_p_fwer",
}
MAP_DESCRIPTIONS |= (
    {INTERACTION_PREFIX + name: "group contrast, outcome x group interaction test: "
     + MAP_DESCRIPTIONS[name] for name in INTERACTION_MAPS}
    | {log: f"-log10 of {p}" for p, log in NEG_LOG10_MAPS.items()
       if p.startswith(INTERACTION_PREFIX)}
    | CONTRAST_MAP_DESCRIPTIONS)


@dataclass
class Stats:
    """The result of :func:`aggregate`: volumes, tables and metadata.

    Attributes
    ----------
    volumes : dict of str -> ndarray of float32, shape (nz, ny, nx)
        Maps of :data:`MAP_DESCRIPTIONS` on the atlas grid (NaN where masked or untested).
    origin_mm : ndarray, shape (3,)
    spacing_mm : float
    regions, capsule_distance : pandas.DataFrame
    summary : dict
    tables : dict of str -> pandas.DataFrame
        Further tables, saved as ``<name>.csv``: ``clusters`` (:mod:`.voxelwise`).
    resumed : Resumed
        What a run into an existing folder reused (``reused`` nodules) and redid
        (``changed``: nodules whose inputs changed since, so everything was accumulated again).
    """

    volumes: dict[str, np.ndarray]
    origin_mm: np.ndarray
    spacing_mm: float
    regions: pd.DataFrame
    capsule_distance: pd.DataFrame
    summary: dict = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    resumed: Resumed = field(default_factory=Resumed, repr=False)

    @property
    def grid(self) -> Grid:
        """The atlas grid every volume is on."""
        return Grid(next(iter(self.volumes.values())).shape, self.origin_mm, self.spacing_mm)

    def value_at(self, name: str, points_mm: np.ndarray) -> np.ndarray:
        """Value of map ``name`` at the voxel nearest each atlas point (mm), shape (N,); NaN
        off the grid."""
        return self.grid.sample(self.volumes[name], points_mm)

    def probability_at(self, points_mm: np.ndarray) -> pd.DataFrame:
        """LLNM probability with its 95 % interval and coverage at atlas points (mm)."""
        return pd.DataFrame({name: self.value_at(name, points_mm) for name in (
            "probability", "probability_ci_low", "probability_ci_high", "n_nodules")})

    def save(self, out_dir: str | Path) -> Path:
        """Write the volumes (NIfTI, with intent, description and display range in the
        header), one JSON sidecar per volume, the tables (CSV) and summary.json into
        ``out_dir`` (see :mod:`llnm3d.statistics.map_info`)."""
        out_dir = ensure_writable_dir(out_dir)
        tables = {"regions": self.regions, "capsule_distance": self.capsule_distance,
                  **self.tables}
        names = list(self.volumes)
        # One set: a failed write (a full disk) keeps the previous result whole.
        paths = ([out_dir / f"{name}.nii.gz" for name in names]
                 + [out_dir / f"{name}.json" for name in names]
                 + [out_dir / f"{name}.csv" for name in tables] + [out_dir / "summary.json"])
        with atomic_paths(paths) as temporaries:
            for index, (name, volume) in enumerate(self.volumes.items()):
                header = map_header(name, self.summary)
                write_nifti(temporaries[index], volume, self.origin_mm, self.spacing_mm, header)
                sidecar = map_sidecar(name, volume, header, self.summary,
                                      MAP_DESCRIPTIONS.get(name, ""))
                temporaries[len(names) + index].write_text(json_document(sidecar),
                                                           encoding="utf-8")
            for tmp, table in zip(temporaries[2 * len(names):-1], tables.values(), strict=True):
                table.to_csv(tmp, index=False)
            # The tables listed are the tables written, whatever the summary was built with.
            summary = {**self.summary, "tables": list(self.tables)}
            temporaries[-1].write_text(json_document(summary), encoding="utf-8")
        return out_dir


def load_stats(stats_dir: str | Path) -> Stats:
    """Read a folder written by :func:`aggregate` (or :meth:`Stats.save`)."""
    stats_dir = Path(stats_dir)
    if not (stats_dir / "summary.json").is_file():
        raise InputError(f"{stats_dir}: no summary.json; not an `llnm3d aggregate` folder")
    summary = read_json(stats_dir / "summary.json")
    if not summary.get("maps"):
        raise InputError(f"{stats_dir}: summary.json lists no maps; not an `llnm3d aggregate` "
                         "folder")
    volumes: dict[str, np.ndarray] = {}
    origin: np.ndarray | None = None
    spacing: float | None = None
    for name in summary["maps"]:
        path = stats_dir / f"{name}.nii.gz"
        if not path.is_file():
            raise InputError(f"{stats_dir}: map {name}.nii.gz is missing")
        volumes[name], origin, spacing = read_volume(path)
    assert spacing is not None  # summary.json lists at least one map (checked above)
    tables = {}
    for name in ("regions", "capsule_distance", *summary.get("tables", [])):
        path = stats_dir / f"{name}.csv"
        if not path.is_file():
            raise InputError(f"{stats_dir}: {name}.csv is missing")
        tables[name] = pd.read_csv(path)
    return Stats(volumes, np.asarray(origin), float(spacing), tables.pop("regions"),
                 tables.pop("capsule_distance"), summary, tables)


# -- the pipeline ------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _PatchReading:
    """What reading a patch onto the analysis domain needs (shared by every block).

    Attributes
    ----------
    weight : {"mask", "heatmap"}
    lookup : ndarray of int64, shape (atlas voxels,)
        Domain index of each atlas voxel, -1 outside (:func:`.accumulate.domain_lookup`).
    n_domain : int
        Voxels in the domain.
    position : ndarray of int64, shape (n_domain,), or None
        For :func:`weight_matrix`: the row of each domain voxel in the matrix, -1 where not
        tested.
    """

    weight: str
    lookup: np.ndarray
    n_domain: int
    position: np.ndarray | None = None


@dataclass(frozen=True)
class _AccumulateBlock:
    """One block of nodules to accumulate, numbered in the fixed block order."""

    index: int
    nodules: tuple[NoduleInput, ...]


def _block_job(reading: _PatchReading, block: _AccumulateBlock) -> Accumulator | Failure:
    try:
        return accumulate_block(list(block.nodules), reading.weight, reading.lookup,
                                reading.n_domain)
    except Exception as exc:  # reported with the block's first nodule; the run stops
        return Failure(f"block {block.index} ({block.nodules[0].key}...)",
                       f"{type(exc).__name__}: {exc}")


def _select_nodules(registered: list[Registered], weight: str, covariates: list[str],
                    atlas: Atlas) -> tuple[pd.DataFrame, dict]:
    """The QC rows of the nodules that enter the statistics, and the exclusion counts;
    ``source`` names each nodule's registration folder."""
    signature = atlas.grid.signature()
    tables = []
    for result in registered:
        if result.out_dir is None:
            raise InputError("aggregate needs registrations saved to a folder")
        record = read_json(result.out_dir / "register.json")
        grid = record.get("parameters", {}).get("atlas")
        if grid != signature:
            raise InputError(f"{result.out_dir}: registered on another atlas grid ({grid}) than "
                             f"the one given ({signature}); aggregate with that atlas")
        if weight == "heatmap" and not record["parameters"].get("heatmaps", False):
            raise InputError(f"{result.out_dir}: registered without heatmaps; use --weight mask "
                             "or register with --heatmaps")
        tables.append(result.qc.assign(patch_path=[
            result.out_dir / "patches" / f"{file_stem(key)}.npz" for key in result.qc["nodule"]],
            source=str(result.out_dir)))
    qc = pd.concat(tables, ignore_index=True)
    duplicated = qc["nodule"].duplicated(keep="last")
    excluded = {"registration failed": int((qc["status"] == "failed").sum()),
                "duplicate nodule (later registration kept)": int(duplicated.sum())}
    qc = qc[(qc["status"] != "failed") & ~duplicated]
    missing = qc["label"].isna()
    excluded["missing outcome"] = int(missing.sum())
    qc = qc[~missing]
    for name in covariates:
        if name == "extent":
            continue  # measured from the footprints, never missing
        gone = ~_usable_covariate(name, qc[COVARIATES[name]])
        excluded[f"missing covariate {name}"] = int(gone.sum())
        qc = qc[~gone]
    return qc.sort_values("nodule").reset_index(drop=True), excluded


def _usable_covariate(name: str, values: pd.Series) -> pd.Series:
    """Whether each value of covariate ``name`` can enter the model: sex F or M, a number
    within :data:`COVARIATE_RANGES` otherwise. Anything else (empty, inf, an age of 300 from
    a hand-edited qc.csv) counts as missing; one such value would dominate the fit."""
    if name == "sex":
        return values.isin(("F", "M"))
    low, high = COVARIATE_RANGES[name]
    numbers = pd.to_numeric(values.replace("", np.nan), errors="coerce").astype(float)
    return numbers.between(low, high)  # NaN and +-inf fall outside


def _covariate_matrix(nodules: pd.DataFrame, covariates: list[str]) -> np.ndarray | None:
    if not covariates:
        return None
    columns = []
    for name in covariates:
        values = nodules[COVARIATES[name]]
        if name == "extent":
            values = np.log(values.astype(float))  # the lesion-volume covariate, on a log scale
        columns.append((values == "M").astype(float) if name == "sex" else values.astype(float))
    return np.stack(columns, axis=1)


def _resume_state(out_dir: Path, params: dict, digests: dict[str, str]
                  ) -> tuple[Accumulator | None, bool, list[str]]:
    """The saved accumulator of ``out_dir``, whether that run finished, and the nodules it
    holds whose inputs changed since (or that are no longer given).

    A state holding any changed nodule is dropped (None, not finished): its sums are of other
    data, so everything is accumulated again. So is an unreadable one.
    """
    path = out_dir / "accumulators.npz"
    if not path.exists():
        return None, False, []
    try:
        state, saved = Accumulator.load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        warnings.warn(f"{path} cannot be read; accumulating again", stacklevel=3)
        return None, False, []
    if saved.get("parameters") != params:
        raise InputError(f"{out_dir} holds statistics made with other parameters (estimator, "
                         "weight, atlas, min-cases, permutations, covariates, seed, prior); use "
                         "a new folder")
    before = saved.get("digests", {})
    changed = sorted(key for key in state.seen if before.get(key) != digests.get(key))
    if changed:
        return None, False, changed
    return state, bool(saved.get("complete")), []


@dataclass(frozen=True)
class MapSettings:
    """How :func:`aggregate` builds the maps and tables (its arguments of the same names),
    checked on construction (InputError naming the argument)."""

    estimator: str = "spatial"
    weight: str = "mask"
    min_cases: int = 10
    covariates: tuple[str, ...] = ()
    prior_strength: float = 2.0
    bins_mm: tuple[float, ...] = tuple(DEFAULT_BINS_MM)
    adjust_extent: bool = True
    contrast: str | None = None

    def __post_init__(self) -> None:
        check_choice("estimator", self.estimator, ESTIMATORS)
        check_choice("weight", self.weight, WEIGHTS)
        for name in self.covariates:
            check_choice("covariate", name, COVARIATES)
        check_number("min_cases", self.min_cases, low=1, integer=True)
        # 0 is meaningful: no shrinkage, the plain weighted proportion (n_eff > 0 where shown).
        check_number("prior_strength", self.prior_strength, low=0)
        check_bin_edges(self.bins_mm)
        object.__setattr__(self, "bins_mm", tuple(self.bins_mm))  # frozen: set once, checked

    @property
    def test_covariates(self) -> list[str]:
        """The confounds of the voxelwise tests: :attr:`covariates`, plus ``extent`` with
        :attr:`adjust_extent`."""
        covariates = list(self.covariates)
        if self.adjust_extent and "extent" not in covariates:
            # Footprint extent can track the outcome (see footprint_extent): without the
            # lesion-volume covariate the t-test finds "effects" that are only spread.
            covariates.append("extent")
        return covariates


# Arrays and tables: compared by identity (eq=False), never by value.
@dataclass(frozen=True, eq=False)
class _Evidence:
    """The accumulated nodules the maps and tests of :func:`_statistics` are computed from.

    Attributes
    ----------
    included : DataFrame
        One row per included nodule, in the order of the footprint columns.
    footprints : sparse matrix, shape (n_domain, n_nodules)
        Each included nodule's footprint weight on the domain (:func:`weight_matrix`).
    state : Accumulator
        The voxelwise sums over the domain.
    domain : ndarray of int, shape (n_domain,)
        Flat atlas indices of the analysis domain.
    tested : ndarray of int
        Domain indices of the voxels touched by at least ``min_cases`` nodules.
    atlas : Atlas
    """

    included: pd.DataFrame
    footprints: sp.csr_matrix
    state: Accumulator
    domain: np.ndarray
    tested: np.ndarray
    atlas: Atlas


@dataclass(frozen=True)
class _Output:
    """Where a run of :func:`aggregate` keeps its permutation blocks and what it shows.

    Attributes
    ----------
    out_dir : Path or None
        The output folder (None: nothing saved, permutations drawn afresh).
    data_key : str
        Digest of the data accumulated (:func:`_data_key`); saved permutation blocks are
        reused only for the same key.
    progress : bool
        Show progress bars.
    """

    out_dir: Path | None
    data_key: str
    progress: bool


def aggregate(registered, atlas: Atlas | str | Path | None = None,
              out_dir: str | Path | None = None, estimator: str = "spatial",
              weight: str = "mask", min_cases: int = 10, permutations: int = 1000,
              covariates: list[str] | tuple[str, ...] = (), seed: int = 0,
              prior_strength: float = 2.0, bins_mm=DEFAULT_BINS_MM, update: bool = False,
              workers: int | None = None, scheduler: str | None = None,
              device: str | None = None, progress: bool = True, *, tfce: bool = True,
              cluster_p: float | None = DEFAULT_CLUSTER_P, connectivity: int = 6,
              adjust_extent: bool = True, contrast: str | None = None,
              contrast_manifest: str | Path | None = None) -> Stats:
    """Voxelwise LLNM statistics of registered nodules.

    Parameters
    ----------
    registered : path, Registered, or a list of them
        Output(s) of ``llnm3d register`` (several folders pool their nodules).
    atlas : Atlas or path, optional
        The atlas the nodules were registered on, or its folder (default:
        :meth:`Atlas.default`).
    out_dir : path, optional
        Output folder (layout in the module docstring); resumable. Required with ``update``.
    estimator : {"spatial", "kernel", "weighted"}
        The risk map written as ``probability``: the spatial risk model
        (:mod:`.spatial`, footprints normalised to unit mass, smoothness by LAML), a kernel
        smoother of the outcomes at the registered centres (:mod:`.kernel`, bandwidth by
        leave-one-patient-out CV) or the weighted proportion. The weighted maps are always
        written too, named by their weight.
    weight : {"mask", "heatmap"}
        A nodule's footprint: its fused nodule occupancy or its fused heatmap. Weights the
        weighted maps and the voxelwise tests; the spatial model normalises it to unit mass.
    min_cases : int
        Voxels touched by fewer nodules are masked and not tested (at least 1).
    permutations : int
        Max-statistic permutations for family-wise p (0: none), at most
        :data:`MAX_PERMUTATIONS` (100,000): the smallest p they resolve is
        ``1 / (permutations + 1)``, 1e-5 at the maximum, finer than any threshold a map is
        read at, while a billion would run for weeks.
    covariates : subset of {"age", "sex", "size", "extent"}
        Confounds of the OLS test (Freedman-Lane permutations) and adjusting covariates of
        the spatial model; ``extent`` is the log number of voxels of the footprint (the
        lesion-volume correction of lesion-symptom mapping).
    seed : int
        Seed of the permutations (recorded), 0 to :data:`llnm3d.checks.MAX_SEED`.
    prior_strength : float
        Strength, in nodules, of the Beta prior centred on the cohort prevalence (>= 0; 0
        leaves the weighted proportion unshrunk).
    bins_mm : sequence of float
        Capsule-distance bin edges (mm) of capsule_distance.csv (see
        :func:`.tables.check_bin_edges`).
    update : bool
        Add the registered nodules not yet in ``out_dir``'s result to it.
    workers, scheduler
        Parallelism of the accumulation (see :func:`llnm3d.parallel.map_cases`; workers at
        least 1); the result does not depend on them.
    device : str, optional
        torch device of the permutations (default: CUDA when available).
    tfce : bool
        Add threshold-free cluster enhancement of the t-map with family-wise p.
    cluster_p : float or None
        Cluster-forming threshold (two-sided parametric p of t) of the cluster-mass test; None
        for none. 0.001 by default, as SPM and FSL users set it.
    connectivity : {6, 26}
        Voxel neighbourhood of TFCE and clusters.
    adjust_extent : bool
        Adjust the t-test for footprint extent (log voxels of each nodule's footprint), the
        lesion-volume correction, even when ``covariates`` leaves it out: footprints that
        spread further with one outcome than the other make "effects" of spread alone.
    contrast : str, optional
        Compare two groups of nodules (:mod:`.contrast`): a column with two levels of the
        registrations' qc.csv (``sex``), ``source`` (the registration folder: two hospitals
        registered apart) or, with ``contrast_manifest``, of that manifest. Adds the
        ``contrast_*`` maps: each level's risk, the difference with its interval and
        simultaneous band, and the permutation test of the outcome x group interaction.
    contrast_manifest : path, optional
        Manifest (CSV) holding the ``contrast`` column, joined on the nodule key.
    """
    settings = MapSettings(estimator, weight, min_cases, tuple(covariates), prior_strength,
                           bins_mm, adjust_extent, contrast)
    tests = TestSettings(permutations, seed, tfce, cluster_p, connectivity, device)
    check_number("permutations", permutations, low=0, high=MAX_PERMUTATIONS, integer=True)
    check_seed(seed)
    check_optional_workers(workers)
    check_test_settings(tests)
    if update and out_dir is None:
        raise InputError("--update needs the output folder of an earlier aggregate")
    if contrast_manifest is not None and contrast is None:
        raise InputError("--contrast-manifest needs --contrast COLUMN")
    covariates = list(covariates)
    atlas = as_atlas(atlas) or Atlas.default()
    sources = registered if isinstance(registered, (list, tuple)) else [registered]
    sources = [r if isinstance(r, Registered) else load_registered(r) for r in sources]
    nodules, excluded = _select_nodules(sources, weight, covariates, atlas)

    params = {"estimator": estimator, "weight": weight, "atlas": atlas.grid.signature(),
              "min_cases": min_cases,
              "permutations": permutations, "covariates": covariates, "seed": seed,
              "prior_strength": prior_strength, "tfce": tfce, "cluster_p": cluster_p,
              "connectivity": connectivity, "adjust_extent": adjust_extent,
              "contrast": contrast}
    domain = analysis_domain(atlas)
    lookup = domain_lookup(atlas, domain)
    digests = nodule_digests(nodules)
    if contrast_manifest is not None:
        assert contrast is not None  # refused above without contrast
        nodules[contrast] = nodules["nodule"].map(
            manifest_column(contrast_manifest, contrast)).fillna("")
    if contrast is not None:
        contrast_groups(nodules, contrast)  # two usable levels, before any work
    state, complete, resumed = None, False, Resumed()
    if out_dir is not None:
        out_dir = ensure_writable_dir(out_dir)
        resumed.temporaries_removed = remove_temporaries(out_dir, time.time())
        state, complete, resumed.changed = _resume_state(out_dir, params, digests)
    state = state or Accumulator.zeros(len(domain))
    resumed.reused = len(state.seen)
    new = int((~nodules["nodule"].isin(state.seen)).sum())
    if complete and new and not update:
        raise InputError(f"{out_dir} holds a finished result without {new} of these nodules; "
                         "pass --update to add them, or use a new folder")
    with dask_session(scheduler, workers) as session:
        state = _accumulate(nodules, state, weight, lookup, len(domain), out_dir, params,
                            digests, workers, session, progress)
        output = _Output(out_dir, _data_key(state, digests), progress)
        if out_dir is not None and permutations:
            _claim_permutations(out_dir / "permutations", output.data_key)
        stats = _statistics(nodules, excluded, state, domain, lookup, atlas, params, sources,
                            settings, tests, output, workers, session)
    stats.resumed = resumed
    if out_dir is not None:
        stats.save(out_dir)
        state.save(out_dir / "accumulators.npz", _state_record(params, state, digests, True))
    return stats


def nodule_digests(nodules: pd.DataFrame) -> dict[str, str]:
    """Per nodule, the digest of what the statistics read of it: its QC row (outcome,
    probability, covariates) and the bytes of its patch file (not where it lies)."""
    columns = [c for c in nodules.columns if c not in ("patch_path", "source")]
    return {row["nodule"]: digest({"qc": {c: (None if pd.isna(row[c]) else str(row[c]))
                                          for c in columns},
                                   "patch": file_digest(row["patch_path"])})
            for _, row in nodules.iterrows()}


def _state_record(params: dict, state: Accumulator, digests: dict[str, str],
                  complete: bool) -> dict:
    return {"parameters": params, "complete": complete,
            "digests": {key: digests[key] for key in sorted(state.seen)}}


def _data_key(state: Accumulator, digests: dict[str, str]) -> str:
    """The digest of the data a state holds."""
    return digest({key: digests[key] for key in sorted(state.seen)})


def _claim_permutations(folder: Path, key: str) -> None:
    """Keep the saved permutation blocks only if they were drawn for the data of ``key``."""
    record = folder / "data.json"
    try:
        same = read_json(record).get("data") == key
    except InputError:
        same = False
    if not same:
        for path in folder.glob("block-*.np[yz]"):  # .npy: max |t| only (llnm3d 0.1)
            path.unlink()
        folder.mkdir(parents=True, exist_ok=True)
        write_json(record, {"data": key})


def _statistics(nodules, excluded, state, domain, lookup, atlas, params, sources,
                settings: MapSettings, tests: TestSettings, output: _Output, workers,
                scheduler) -> Stats:
    """Maps, tests and tables of an accumulated state."""
    estimator, weight, min_cases = settings.estimator, settings.weight, settings.min_cases
    covariates, bins_mm = list(settings.covariates), list(settings.bins_mm)
    excluded["empty patch"] = int(nodules["nodule"].isin(state.empty_nodules).sum())
    included = nodules.set_index("nodule").loc[state.nodules].reset_index()
    if len(included) == 0:
        raise InputError("no nodule left to aggregate (see the exclusions: "
                         f"{ {k: v for k, v in excluded.items() if v} })")

    volumes = _descriptive_maps(state, included, domain, atlas, min_cases,
                                settings.prior_strength)
    prefix = "saliency_weighted" if weight == "heatmap" else "mask_weighted"
    for suffix in ("", "_ci_low", "_ci_high"):
        volumes[f"{prefix}_probability{suffix}"] = volumes[f"probability{suffix}"]
    tested = np.flatnonzero(state.sums["n"] >= min_cases)
    footprints = weight_matrix(included, np.arange(len(domain)), lookup, len(domain), weight,
                               output.progress, workers, scheduler)
    included["footprint_voxels"] = footprints.getnnz(axis=0)
    extent, notes = footprint_extent(included, weight,
                                     settings.adjust_extent or "extent" in covariates)
    record = {"name": estimator, "footprint": weight}
    if estimator != "weighted" and included["label"].nunique() < 2:
        notes.append(f"every included nodule has outcome {int(included['label'].iloc[0])}: the "
                     f"{estimator} estimator needs both; the weighted map is shown")
        record["name"] = "weighted"
    elif estimator != "weighted" and not len(tested):
        notes.append(f"no voxel reaches min-cases {min_cases}: the {estimator} estimator is not "
                     "fitted")
        record["name"] = "weighted"
    elif estimator != "weighted":
        try:
            fitted, fit_record = estimate_risk(estimator, footprints, included, atlas, domain,
                                               tested, state.sums["n"] > 0, covariates)
        except ValueError as exc:  # too few outcomes: say so, show the weighted map
            notes.append(f"{exc}; the weighted map is shown")
            record["name"], fitted, fit_record = "weighted", {}, {"not_fitted": str(exc)}
        record.update(fit_record)
        shown = state.sums["n"] >= min_cases
        for name, values in fitted.items():
            volumes[name] = _to_volume(np.where(shown, values, np.nan), domain,
                                       atlas.labels.shape)
    evidence = _Evidence(included, footprints, state, domain, tested, atlas)
    test_covariates = settings.test_covariates
    test_notes, t_dof, clusters = _test_maps(volumes, evidence, test_covariates, tests, output)
    notes += test_notes
    tables = {"clusters": clusters}
    tables["nodule_model"], model_notes = nodule_model_table(included, bins_mm)
    notes += [NODULE_MODEL_NOTE + note for note in model_notes]
    contrast = None
    if settings.contrast is not None:
        contrast, tables["contrast_clusters"] = _contrast_statistics(volumes, evidence,
                                                                     settings, tests, output)
        notes += [CONTRAST_NOTE + note for note in contrast["notes"]]
    stats = Stats(volumes, atlas.origin_mm.copy(), atlas.spacing_mm,
                  region_table(included, atlas), capsule_distance_table(included, bins_mm),
                  tables=tables)
    stats.summary = _summary(stats, params, included, excluded, state, tested, notes, sources,
                             bins_mm)
    stats.summary["estimator"] = record
    stats.summary["footprint_extent"] = extent
    # The t map's Student-t degrees of freedom (its NIfTI intent parameter); None untested.
    stats.summary["t_degrees_of_freedom"] = t_dof
    stats.summary["tests"] = {**tests.record(t_dof), "covariates": test_covariates}
    stats.summary["contrast"] = contrast
    stats.summary["tables"] = list(stats.tables)
    return stats


def footprint_extent(nodules: pd.DataFrame, weight: str, adjusted: bool = True
                     ) -> tuple[dict, list[str]]:
    """Footprint size by outcome (``footprint_voxels``: voxels with weight > 0) and a note
    when it differs: then a weighted map or a voxelwise test of the raw weights measures how
    far footprints spread as well as where risk is (the lesion-volume confound); ``adjusted``:
    whether the t-test carries the extent covariate."""
    from scipy.stats import mannwhitneyu

    by = {int(k): v["footprint_voxels"].to_numpy(float) for k, v in nodules.groupby("label")}
    record: dict[str, Any] = {"weight": weight, "median_voxels": {
        str(k): float(np.median(v)) for k, v in by.items()}}
    if len(by) < 2 or min(len(v) for v in by.values()) < 5:
        return record, []
    ratio = float(np.median(by[1]) / np.median(by[0]))
    p = float(mannwhitneyu(by[1], by[0]).pvalue)
    differs = p < EXTENT_ALPHA and not 1 / EXTENT_RATIO < ratio < EXTENT_RATIO
    record.update(ratio_llnm_to_no_llnm=ratio, mann_whitney_p=p, differs=bool(differs))
    if not differs:
        return record, []
    return record, [
        f"footprint extent differs by outcome ({weight} footprints: median "
        f"{np.median(by[1]):.0f} voxels with LLNM vs {np.median(by[0]):.0f} without, "
        f"Mann-Whitney p = {p:.1e}): the weighted maps measure footprint spread as well as "
        "risk; the spatial estimator normalises each footprint to unit mass, and "
        + ("the t-test is adjusted for footprint extent" if adjusted else
           "the t-test is not adjusted for it (--no-adjust-extent): its maps measure spread "
           "too")]


def estimate_risk(estimator: str, footprints: sp.spmatrix, nodules: pd.DataFrame, atlas: Atlas,
                  domain: np.ndarray, tested: np.ndarray, covered: np.ndarray,
                  covariates=()) -> tuple[dict, dict]:
    """The risk map of the spatial or kernel estimator on the analysis domain.

    Parameters
    ----------
    estimator : {"spatial", "kernel"}
    footprints : sparse matrix, shape (n_domain, n_nodules)
        Each nodule's footprint on the domain (:func:`weight_matrix`).
    nodules : pandas.DataFrame
        One row per footprint column: ``label``, ``patient_id``, ``centre_{x,y,z}_mm`` and
        the covariates' columns.
    atlas : Atlas
    domain : ndarray of int
        Flat atlas indices of the domain voxels.
    tested : ndarray of int
        Domain positions shown (enough nodules); the simultaneous band spans them.
    covered : ndarray of bool, shape (n_domain,)
        Voxels touched by any footprint (the spline basis covers them).
    covariates : sequence of str
        Adjusting covariates of the spatial model (names of :data:`COVARIATES`).

    Returns
    -------
    maps : dict of str -> ndarray, shape (n_domain,)
    record : dict
        What summary.json records of the estimator (smoothness, its criterion, ...).
    """
    k, j, i = np.unravel_index(domain, atlas.labels.shape)
    points = atlas.voxel_to_world(np.stack([i, j, k], axis=1))
    y = nodules["label"].to_numpy(float)
    rate = float(y.mean())
    if estimator == "kernel":
        centres = nodules[["centre_x_mm", "centre_y_mm", "centre_z_mm"]].to_numpy(float)
        kernel_fit = fit_kernel(centres, y, nodules["patient_id"].to_numpy(), atlas.origin_mm,
                                atlas.spacing_mm, atlas.labels.shape)
        maps = {name: kernel_fit.maps[name].ravel()[domain] for name in (
            "probability", "probability_ci_low", "probability_ci_high")}
        return maps, {"name": "kernel", "centres": "registered", "bandwidth_mm":
                      kernel_fit.bandwidth_mm, "cv_log_loss": kernel_fit.cv_log_loss,
                      "cv": "leave one patient out",
                      "scores": {str(k): v for k, v in kernel_fit.scores.items()}}
    basis = SplineBasis.covering(points[covered])
    fit = fit_spatial(footprints.T, y, basis.matrix(points), basis,
                      _covariate_matrix(nodules, covariates))
    fit.simultaneous_z = simultaneous_critical(fit, points[tested])
    maps = risk_maps(fit, points, rate)
    lobes = _lobe_difference(fit, atlas, domain, tested)
    return maps, {
        "name": "spatial", "normalisation": "unit mass", "basis": "quadratic B-splines",
        "knot_spacing_mm": basis.knot_spacing_mm, "basis_functions": basis.size,
        "smoothness": "LAML (Laplace-approximate marginal likelihood)",
        "log_lambda": fit.log_lambda, "edf": fit.edf, "max_edf": fit.max_edf,
        "laml": fit.laml,
        "search": [[r, v] for r, v in fit.search], "simultaneous_z": fit.simultaneous_z,
        "covariates": {name: float(b)
                       for name, b in zip(covariates, fit.covariate_effects, strict=True)},
        "cohort_rate": rate, "left_minus_right_lobe": lobes}


def _lobe_difference(fit, atlas, domain, tested) -> dict | None:
    """Mean log-odds of the left lobe minus the right, over the shown right-lobe voxels whose
    mirror image (x -> -x) is a shown left-lobe voxel; None when there are none."""
    shown = np.zeros(atlas.labels.size, bool)
    shown[domain[tested]] = True
    shown = shown.reshape(atlas.labels.shape)
    right = shown & (atlas.labels // 10 == 1)
    # Mirror about x = 0: voxel i <-> the voxel at -x (the grid is symmetric when its
    # origin is; otherwise there is no mirror voxel and no test).
    nx = atlas.labels.shape[2]
    mirror_i = np.rint((-2 * atlas.origin_mm[0]) / atlas.spacing_mm).astype(int) - np.arange(nx)
    valid = (mirror_i >= 0) & (mirror_i < nx)
    left_of = np.zeros_like(right)
    left_of[:, :, valid] = (shown & (atlas.labels // 10 == 2))[:, :, mirror_i[valid]]
    k, j, i = np.nonzero(right & left_of)
    if len(i) < 10:
        return None
    points = atlas.voxel_to_world(np.stack([i, j, k], axis=1))
    return mean_difference(fit, points * [-1, 1, 1], points)


def _accumulate(nodules, state, weight, lookup, n_domain, out_dir, params, digests, workers,
                scheduler, progress) -> Accumulator:
    """Add the nodules not yet in ``state`` in fixed blocks (sorted keys), saving the state
    after each round of blocks so a killed run resumes."""
    todo = nodules[~nodules["nodule"].isin(state.seen)]
    inputs = [NoduleInput(row["nodule"], Path(row["patch_path"]), int(row["label"]),
                          None if pd.isna(row["probability"]) else float(row["probability"]))
              for _, row in todo.iterrows()]
    blocks = [inputs[start:start + BLOCK_SIZE] for start in range(0, len(inputs), BLOCK_SIZE)]
    per_round = max(8, 2 * (workers or 2))
    reading = _PatchReading(weight, lookup, n_domain)
    for start in range(0, len(blocks), per_round):
        jobs = [_AccumulateBlock(index, tuple(block))
                for index, block in enumerate(blocks[start:start + per_round], start=start)]
        results, failures = map_cases(_block_job, jobs, workers, progress and len(blocks) > 1,
                                      desc="aggregate", unit="block", context=reading,
                                      chunksize=1, scheduler=scheduler)
        if failures:
            raise InputError(f"cannot read the patches of {failures[0].id}: "
                             f"{failures[0].reason}")
        for block in results:
            state.merge(block)
        if out_dir is not None:
            state.save(out_dir / "accumulators.npz",
                       _state_record(params, state, digests, False))
    return state


def _to_volume(values: np.ndarray, domain: np.ndarray, shape) -> np.ndarray:
    volume = np.full(int(np.prod(shape)), np.nan, np.float32)
    volume[domain] = values
    return volume.reshape(shape)


def _descriptive_maps(state, included, domain, atlas, min_cases, prior_strength) -> dict:
    sums = state.sums
    shape = atlas.labels.shape
    enough = sums["n"] >= min_cases
    prevalence = float(included["label"].mean())
    with np.errstate(divide="ignore", invalid="ignore"):
        proportion = sums["sum_wy"] / sums["sum_w"]
        effective_n = sums["sum_w"] ** 2 / sums["sum_w2"]
        events = proportion * effective_n
        probability = (events + prior_strength * prevalence) / (effective_n + prior_strength)
        low, high = jeffreys_interval(np.nan_to_num(events), np.nan_to_num(effective_n))
        model = sums["sum_wp"] / sums["sum_w_p"]
        saliency = sums["sum_h"] / sums["n"]
    masked = {name: np.where(enough, values, np.nan) for name, values in (
        ("proportion", proportion), ("probability", probability), ("probability_ci_low", low),
        ("probability_ci_high", high), ("mean_model_probability", model),
        ("mean_saliency", saliency))}
    volumes = {"n_nodules": _to_volume(sums["n"], domain, shape),
               "sum_weight": _to_volume(sums["sum_w"], domain, shape),
               "effective_n": _to_volume(np.nan_to_num(effective_n), domain, shape)}
    volumes.update({name: _to_volume(values, domain, shape) for name, values in masked.items()})
    return volumes


@dataclass(frozen=True)
class _MatrixBlock:
    """One block of patch files, numbered in block order; ``first`` is the matrix column of
    its first patch."""

    index: int
    first: int
    paths: tuple[str, ...]


def _matrix_block_job(reading: _PatchReading, block: _MatrixBlock
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | Failure:
    """COO pieces (rows = tested voxels, columns = nodule positions) of a block of patches."""
    position = reading.position
    assert position is not None  # weight_matrix always sets it
    try:
        rows, cols, values = [], [], []
        for offset, path in enumerate(block.paths):
            columns, w, _, _ = patch_weights(Path(path), reading.weight, reading.lookup)
            keep = position[columns] >= 0
            rows.append(position[columns[keep]].astype(np.int32))
            cols.append(np.full(keep.sum(), block.first + offset, np.int32))
            # Weights are float16 values (or 0/1), so single precision holds them exactly and
            # halves what travels back from the workers.
            values.append(w[keep].astype(np.float32))
        return np.concatenate(rows), np.concatenate(cols), np.concatenate(values)
    except Exception as exc:  # reported with the block's first patch; the run stops
        return Failure(f"block {block.index} ({block.paths[0]}...)",
                       f"{type(exc).__name__}: {exc}")


def weight_matrix(included: pd.DataFrame, tested: np.ndarray, lookup: np.ndarray,
                  n_domain: int, weight: str, progress: bool = False,
                  workers: int | None = 1, scheduler: str | None = None) -> sp.csr_matrix:
    """Sparse (tested voxels x nodules) matrix of the nodules' weights, read in blocks of
    patches on ``workers`` processes (or a Dask ``scheduler``) and assembled in block order."""
    position = np.full(n_domain, -1, np.int64)
    position[tested] = np.arange(len(tested))
    paths = [str(p) for p in included["patch_path"]]
    jobs = [_MatrixBlock(index, start, tuple(paths[start:start + BLOCK_SIZE]))
            for index, start in enumerate(range(0, len(paths), BLOCK_SIZE))]
    pieces, failures = map_cases(_matrix_block_job, jobs, workers, progress and len(jobs) > 1,
                                 desc="weight matrix", unit="block",
                                 context=_PatchReading(weight, lookup, n_domain, position),
                                 chunksize=1, scheduler=scheduler)
    if failures:
        raise InputError(f"cannot read the patches of {failures[0].id}: "
                         f"{failures[0].reason}")
    rows, cols, values = (np.concatenate(parts) for parts in zip(*pieces, strict=True))
    matrix = sp.coo_matrix((values, (rows, cols)), shape=(len(tested), len(included)))
    return matrix.tocsr()


def _test_maps(volumes: dict[str, np.ndarray], evidence: _Evidence, covariates: list[str],
               tests: TestSettings, output: _Output
               ) -> tuple[list[str], int | None, pd.DataFrame]:
    """Add the test maps (:mod:`.voxelwise`) of the outcome, adjusted for ``covariates``,
    each p map followed by its -log10 map; return notes on what could not be tested, the
    t-test's degrees of freedom (None if untested) and the clusters table."""
    included, state, domain, tested = (evidence.included, evidence.state, evidence.domain,
                                       evidence.tested)
    atlas, out_dir = evidence.atlas, output.out_dir
    shape = atlas.labels.shape
    y = included["label"].to_numpy(float)
    names = test_names(tests)
    notes = []
    if y.min() == y.max():
        notes.append(f"every included nodule has outcome {int(y[0])}: no association test")
    if not len(tested):
        notes.append("no voxel reaches min-cases: no association test")
    if notes:
        _put_test_maps(volumes, {name: np.zeros(0) for name in names}, names, "",
                       np.zeros(0, int), domain, shape)
        return notes, None, pd.DataFrame(columns=CLUSTER_COLUMNS)
    ijk = _grid_indices(domain[tested], shape)
    maps, dof, cluster = voxelwise_tests(
        evidence.footprints[tested], y, _covariate_matrix(included, covariates),
        state.sums["n"][tested], state.sums["events"][tested], ijk, tests,
        None if out_dir is None else out_dir / "permutations", output.progress)
    _put_test_maps(volumes, maps, names, "", tested, domain, shape)
    return notes, dof, _cluster_table(maps, cluster, tests, atlas, domain[tested], ijk)


def _grid_indices(flat: np.ndarray, shape) -> np.ndarray:
    """(n, 3) grid indices (i, j, k) of flat atlas indices."""
    k, j, i = np.unravel_index(flat, shape)
    return np.stack([i, j, k], axis=1)


def _put_test_maps(volumes, maps, names, prefix, tested, domain, shape) -> None:
    """Add test maps (values at the tested voxels) as volumes named ``prefix + name``, each
    p map followed by its -log10 map."""
    for name in names:
        # -log10 from the double-precision p: single precision would round tiny p to 0.
        named = {prefix + name: maps[name]}
        if prefix + name in NEG_LOG10_MAPS:
            named[NEG_LOG10_MAPS[prefix + name]] = neg_log10(maps[name])
        for map_name, values in named.items():
            full = np.full(len(domain), np.nan)
            full[tested] = values
            volumes[map_name] = _to_volume(full, domain, shape)


def _cluster_table(maps, cluster, tests, atlas, flat, ijk) -> pd.DataFrame:
    if tests.cluster_p is None:
        return pd.DataFrame(columns=CLUSTER_COLUMNS)
    regions = np.array([REGION_NAMES.get(int(label), "outside")
                        for label in atlas.labels.ravel()[flat]])
    return cluster_table(maps, cluster, atlas.voxel_to_world(ijk), regions, atlas.spacing_mm)


def _contrast_statistics(volumes: dict[str, np.ndarray], evidence: _Evidence,
                         settings: MapSettings, tests: TestSettings, output: _Output
                         ) -> tuple[dict, pd.DataFrame]:
    """Add the group contrast's maps (:mod:`.contrast`) of ``settings.contrast``: each
    level's risk and their difference from the spatial model, and the outcome x group
    interaction test (maps ``contrast_t``..., family-wise by the same permutation scheme as
    the outcome's test). Returns the summary record and the interaction test's clusters
    table."""
    included, footprints, domain, tested = (evidence.included, evidence.footprints,
                                            evidence.domain, evidence.tested)
    atlas, out_dir, column = evidence.atlas, output.out_dir, settings.contrast
    assert column is not None  # called only for a contrast
    test_covariates = settings.test_covariates
    shape = atlas.labels.shape
    fitted, record = estimate_contrast(footprints, included, column, atlas, domain,
                                       evidence.state.sums["n"] > 0,
                                       _covariate_matrix(included, list(settings.covariates)),
                                       settings.min_cases)
    for name, values in fitted.items():
        volumes[name] = _to_volume(values, domain, shape)
    groups = contrast_groups(included, column)
    usable = np.flatnonzero(groups.usable)
    confounds = _covariate_matrix(included, test_covariates)
    tested_variate, confounds = interaction_design(
        included["label"].to_numpy(float)[usable], groups.g[usable],
        None if confounds is None else confounds[usable])
    names = permutation_test_names(tests)
    if not len(tested):
        _put_test_maps(volumes, {name: np.zeros(0) for name in names}, names,
                       INTERACTION_PREFIX, tested, domain, shape)
        return {**record, "interaction_test": None}, pd.DataFrame(columns=CLUSTER_COLUMNS)
    folder = None
    if out_dir is not None and tests.permutations:
        folder = out_dir / "permutations" / "contrast"
        # Blocks are reusable only for the same data and the same groups.
        _claim_permutations(folder, digest({"data": output.data_key, "column": column,
                                            "nodules": included["nodule"].iloc[usable].tolist(),
                                            "groups": groups.g[usable].tolist()}))
    design = OLSDesign(footprints[tested][:, usable], tested_variate, confounds)
    ijk = _grid_indices(domain[tested], shape)
    maps, cluster = permutation_tests(design, ijk, tests, folder, output.progress)
    _put_test_maps(volumes, maps, names, INTERACTION_PREFIX, tested, domain, shape)
    record["interaction_test"] = {
        "tested": "outcome x group (level B minus level A)", "nodules": int(len(usable)),
        "confounds": ["outcome", "group", *test_covariates]}
    record["t_degrees_of_freedom"] = int(design.dof) if design.testable else None
    return record, _cluster_table(maps, cluster, tests, atlas, domain[tested], ijk)


def _summary(stats, params, included, excluded, state, tested, notes, sources, bins_mm) -> dict:
    import scipy
    import SimpleITK
    import torch

    probability = stats.volumes["probability"]
    return {
        "format": FORMAT,
        "inputs": [str(s.out_dir) for s in sources],
        "parameters": {**params, "capsule_distance_bins_mm": [
            float(b) if np.isfinite(b) else "inf" for b in bins_mm]},
        "nodules": int(len(included)),
        "events": int(included["label"].sum()),
        "prevalence": float(included["label"].mean()),
        "excluded": excluded,
        "voxels": {"domain": int(len(state.sums["n"])), "tested": int(len(tested)),
                   "probability_range": [float(np.nanmin(probability)),
                                         float(np.nanmax(probability))]
                   if np.isfinite(probability).any() else None},
        "weight_outside_domain": state.outside_weight,
        "notes": notes,
        "maps": list(stats.volumes),
        "map_descriptions": {k: MAP_DESCRIPTIONS[k] for k in stats.volumes},
        "software": {"llnm3d": __version__, "python": platform.python_version(),
                     "numpy": np.__version__, "scipy": scipy.__version__,
                     "pandas": pd.__version__, "torch": torch.__version__,
                     "SimpleITK": SimpleITK.Version.VersionString()},
    }
