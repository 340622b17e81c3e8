"""Family-wise error of the voxelwise tests under the null (issue: "under null specs the
family-wise false-positive rate within 5 % +/- 2 % over >= 200 seeds").

One rendered phantom is made and registered (mask footprints, as in ``bench_risk_model.py``,
whose cohort and footprint helpers this reuses). Its footprints stay fixed; only the outcomes
are redrawn. :func:`llnm3d.phantom.sample_truth` with the phantom's own seed and the null spec
(``benchmarks/specs/null.json``: no spatial term, but diameter, microcalcification, age and sex
move the risk) gives each registered nodule its true risk; replicate ``s`` draws every outcome
from it with its own seed. (``sample_truth`` with another seed would draw other patients, whose
nodules are not the ones registered.) Each replicate runs
:func:`llnm3d.statistics.voxelwise.voxelwise_tests` as ``aggregate`` does: the voxels touched by
at least 10 nodules, default :class:`~llnm3d.statistics.voxelwise.TestSettings` (TFCE,
cluster-forming p 0.001, 6-connectivity) with its own permutation seed. A family-wise false
positive of a statistic is any tested voxel with family-wise p <= 0.05.

Conditions:

- ``adjusted``: the footprint-extent covariate aggregate adds by default (log of each nodule's
  footprint voxel count);
- ``unadjusted``: without it (``--no-adjust-extent``): larger nodules have larger footprints and,
  under this spec, more LLNM, so the outcome tracks footprint size everywhere;
- ``exchangeable``: as ``adjusted`` with the replicate's outcomes shuffled over the nodules, so
  they are exchangeable by construction (no size effect).

Usage::

    python benchmarks/bench_fwer.py --work /tmp/fwer --seeds 200 --permutations 500
    python benchmarks/bench_fwer.py --work /tmp/fwer --seeds 1 --conditions adjusted  # timing
    python benchmarks/bench_fwer.py --work /tmp/fwer --summary      # tables from what is done

Resumable: each finished replicate is one line of ``seeds-<condition>.jsonl`` in ``--out``
(default ``benchmarks/results/fwer/``), and a rerun skips the replicates found there; conditions
run one after the other, replicates in sequence (the permutations use both cores). Writes
``fwer.json`` and ``fwer.md`` (family-wise error with 95 % Clopper-Pearson intervals).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from bench_risk_model import MIN_CASES, ROOT, cohort, footprints, load_spec
from scipy.stats import binomtest

from llnm3d.atlas import Atlas
from llnm3d.phantom import sample_truth
from llnm3d.statistics.accumulate import analysis_domain
from llnm3d.statistics.maps import _covariate_matrix, _grid_indices, footprint_extent
from llnm3d.statistics.voxelwise import TestSettings, voxelwise_tests

ALPHA = 0.05
STATISTICS = {"max_t": "t_p_fwer", "tfce": "tfce_p_fwer", "cluster_mass": "cluster_mass_p_fwer"}
CONDITIONS = {"adjusted": (True, False), "unadjusted": (False, False),
              "exchangeable": (True, True)}  # name -> (extent covariate, shuffled outcomes)
# Outcome draws use their own stream, apart from the permutations' SeedSequence(seed).
OUTCOME_STREAM = 7919
TARGET = (0.03, 0.07)


class Problem:
    """The fixed part of every replicate: footprints of the tested voxels and true risks.

    Attributes
    ----------
    weights : scipy.sparse.csr_matrix, shape (n_tested, n_nodules)
        Mask footprint weight (0..1) of each registered nodule at each tested voxel.
    n_touch : ndarray of float, shape (n_tested,)
        Nodules touching each tested voxel (>= ``MIN_CASES``).
    ijk : ndarray of int, shape (n_tested, 3)
        Atlas grid indices of the tested voxels.
    extent : ndarray of float, shape (n_nodules, 1)
        The lesion-volume covariate: log of each nodule's footprint voxel count on the domain.
    nodules : pandas.DataFrame, n_nodules rows
        Registered nodules (``nodule``, ``footprint_voxels``, ``risk``: the null spec's true
        LLNM probability).
    """

    def __init__(self, work: Path, phantom_seed: int, patients: int):
        atlas = Atlas.default()
        domain = analysis_domain(atlas)
        folder, available = cohort(work, phantom_seed, patients)
        qc, matrix = footprints(folder, atlas, domain)
        truth = sample_truth(available, seed=phantom_seed, risk_spec=load_spec("null"),
                             workers=2)
        truth["nodule"] = truth["patient_id"] + "-N" + truth["nodule_id"].astype(str)
        matrix = matrix.tocsr()
        n_touch = np.diff((matrix > 0).tocsr().indptr).astype(float)
        tested = np.flatnonzero(n_touch >= MIN_CASES)
        self.weights = matrix[tested]
        self.n_touch = n_touch[tested]
        self.ijk = _grid_indices(domain[tested], atlas.labels.shape)
        self.nodules = qc[["nodule"]].assign(
            footprint_voxels=matrix.getnnz(axis=0),
            risk=truth.set_index("nodule")["risk"].loc[qc["nodule"]].to_numpy())
        self.extent = _covariate_matrix(self.nodules, ["extent"])
        self.domain_voxels = len(domain)
        self.patients = available


def replicate(problem: Problem, condition: str, seed: int, permutations: int) -> dict:
    """One null replicate: outcomes drawn with ``seed``, the voxelwise tests, their minima."""
    adjust, shuffle = CONDITIONS[condition]
    rng = np.random.default_rng([OUTCOME_STREAM, seed])
    y = (rng.random(len(problem.nodules)) < problem.nodules["risk"].to_numpy()).astype(float)
    if shuffle:
        y = rng.permutation(y)
    events_touch = problem.weights.astype(bool).astype(float) @ y
    start = time.perf_counter()
    maps, dof, cluster = voxelwise_tests(
        problem.weights, y, problem.extent if adjust else None, problem.n_touch, events_touch,
        problem.ijk, TestSettings(permutations=permutations, seed=seed))
    seconds = time.perf_counter() - start
    extent, _ = footprint_extent(problem.nodules.assign(label=y), "mask", adjust)
    row = {"condition": condition, "seed": seed, "permutations": permutations,
           "events": int(y.sum()), "dof": dof, "max_abs_t": float(np.nanmax(np.abs(maps["t"]))),
           "clusters": int(cluster.max() + 1),
           "extent_ratio": extent.get("ratio_llnm_to_no_llnm"),
           "extent_mann_whitney_p": extent.get("mann_whitney_p"), "seconds": seconds}
    for name, key in STATISTICS.items():
        p = maps[key]
        # No cluster above the forming threshold: no voxel has a cluster-mass p (all NaN).
        row[f"min_p_{name}"] = float(np.nanmin(p)) if np.isfinite(p).any() else None
        row[f"significant_voxels_{name}"] = int(np.sum(p <= ALPHA))
    return row


def read_rows(path: Path) -> list[dict]:
    """The replicates recorded in a JSON-lines file (a line cut short by a kill is skipped)."""
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def run(args, problem: Problem) -> None:
    for condition in args.conditions:
        path = args.out / f"seeds-{condition}.jsonl"
        done = {row["seed"] for row in read_rows(path)
                if row["permutations"] == args.permutations}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if seed in done:
                continue
            row = replicate(problem, condition, seed, args.permutations)
            with path.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """Exact 95 % binomial interval of k successes in n trials."""
    interval = binomtest(k, n).proportion_ci(0.95, method="exact")
    return float(interval.low), float(interval.high)


def summarise(out: Path, setup: dict) -> dict:
    """Family-wise error per condition and statistic from every replicate in ``out``."""
    result = {**setup, "alpha": ALPHA, "target": list(TARGET), "conditions": {}}
    for condition in CONDITIONS:
        rows = pd.DataFrame(read_rows(out / f"seeds-{condition}.jsonl"))
        if rows.empty:
            continue
        entry = {"seeds": int(rows["seed"].nunique()),
                 "permutations": sorted(int(p) for p in rows["permutations"].unique()),
                 "prevalence_mean": float(rows["events"].mean() / setup["nodules"]),
                 "extent_ratio_median": float(rows["extent_ratio"].median()),
                 "extent_differs_share": float(np.mean(
                     rows["extent_mann_whitney_p"] < 0.05)),
                 "seconds_per_seed": float(rows["seconds"].mean()),
                 "seconds_total": float(rows["seconds"].sum()), "statistics": {}}
        for name in STATISTICS:
            min_p = rows[f"min_p_{name}"].astype(float)
            hits = int(np.sum(min_p <= ALPHA))  # NaN (no cluster) is no hit
            low, high = clopper_pearson(hits, len(rows))
            entry["statistics"][name] = {
                "false_positive_seeds": hits, "fwer": hits / len(rows), "ci95": [low, high],
                "within_target": bool(TARGET[0] <= hits / len(rows) <= TARGET[1]),
                "fwer_at_0.01": float(np.mean(min_p <= 0.01)),
                "fwer_at_0.10": float(np.mean(min_p <= 0.10))}
        result["conditions"][condition] = entry
    return result


def markdown(result: dict) -> str:
    """The pipe table of BENCHMARKS.md."""
    lines = ["| condition | statistic | seeds | permutations | false-positive seeds | FWER "
             "(95 % CI) | FWER at 0.01 / 0.10 | s per seed |",
             "|---|---|---|---|---|---|---|---|"]
    labels = {"max_t": "max-abs-t", "tfce": "TFCE", "cluster_mass": "cluster mass"}
    for condition, entry in result["conditions"].items():
        for name, stat in entry["statistics"].items():
            low, high = stat["ci95"]
            lines.append(
                f"| {condition} | {labels[name]} | {entry['seeds']} | "
                f"{'/'.join(map(str, entry['permutations']))} | "
                f"{stat['false_positive_seeds']} | {100 * stat['fwer']:.1f} % "
                f"({100 * low:.1f}-{100 * high:.1f}) | {100 * stat['fwer_at_0.01']:.1f} % / "
                f"{100 * stat['fwer_at_0.10']:.1f} % | {entry['seconds_per_seed']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True,
                        help="phantom and footprint cache (bench_risk_model.cohort)")
    parser.add_argument("--patients", type=int, default=400)
    parser.add_argument("--phantom-seed", type=int, default=11)
    parser.add_argument("--seeds", type=int, default=200, help="replicates per condition")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--permutations", type=int, default=500)
    parser.add_argument("--conditions", type=lambda s: s.split(","), default=list(CONDITIONS))
    parser.add_argument("--summary", action="store_true",
                        help="only summarise the replicates already in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fwer")
    args = parser.parse_args()
    unknown = set(args.conditions) - set(CONDITIONS)
    if unknown:
        parser.error(f"unknown conditions {sorted(unknown)}; choose from {list(CONDITIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    problem = Problem(args.work, args.phantom_seed, args.patients)
    setup = {"phantom_seed": args.phantom_seed, "patients": problem.patients,
             "nodules": len(problem.nodules), "domain_voxels": problem.domain_voxels,
             "tested_voxels": int(problem.weights.shape[0]), "min_cases": MIN_CASES,
             "weight": "mask", "spec": "null",
             "settings": TestSettings(permutations=args.permutations).record(None),
             "footprint_voxels_median": float(problem.nodules["footprint_voxels"].median()),
             "risk_mean": float(problem.nodules["risk"].mean()),
             "setup_s": time.perf_counter() - start}
    if not args.summary:
        run(args, problem)
    result = summarise(args.out, setup)
    (args.out / "fwer.json").write_text(json.dumps(result, indent=1))
    (args.out / "fwer.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
