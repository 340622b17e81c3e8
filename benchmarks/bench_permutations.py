"""Family-wise permutation inference against nilearn's ``permuted_ols``: time, memory, results.

Usage::

    python benchmarks/bench_permutations.py                    # the four settings below
    python benchmarks/bench_permutations.py --settings dense-t --permutations 200

One problem per density, the same for both methods, each run in its own process (peak memory
is the process's max RSS): ``--nodules`` (4,000) footprints on a box of ``--voxels`` (50,000)
voxels, each footprint a ball with weights falling from 1 at its centre to 0 at its edge
(float16 values, as registered patches hold), radii drawn so the matrix is 16 % full (the
heatmap footprints of the README's setting) or 1.5 % (nodule masks); outcomes with a weak
spatial effect (left half of the box riskier), so the t-maps have clusters for TFCE to find.

Settings (1,000 permutations, two-sided, both methods from the same inputs):

- ``dense-t``: 16 % full, no covariates, max-|t| only (the README's setting);
- ``dense-tfce``: the same with TFCE (E = 0.5, H = 2, 6-connectivity);
- ``sparse-t``: 1.5 % full, two covariates (age, log footprint size), max-|t| only;
- ``sparse-tfce``: the same with TFCE.

nilearn is run as its documentation shows: ``permuted_ols(y, X, confounds, n_perm,
two_sided_test=True, n_jobs=2, tfce=..., masker=NiftiMasker(box mask))`` with the dense
(nodules x voxels) float64 matrix it takes. llnm3d runs :func:`llnm3d.statistics.voxelwise.
permutation_tests` (t, t p, FDR, FWER; TFCE) on the sparse matrix. Reported: total time and
its split (llnm3d: set-up = the design and its torch matrix, then the permutations), peak
memory, and the largest differences of the observed t and TFCE maps. The null maxima of the two
differ only by their random permutations (tests/test_clusters.py shows them equal to 1e-6
under nilearn's own permutations); here their 95th percentiles are compared.

Before the timed llnm3d run, an untimed one with 10 permutations fills numba's on-disk cache of
compiled kernels (what a user's first run ever does; its time is ``llnm3d_first_run_s`` in the
JSON), so the timed run pays loading the compiled kernels, as every later run does, but not
compiling them.

Writes ``benchmarks/results/permutations/permutations.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

RESULTS = Path(__file__).resolve().parent / "results" / "permutations"
BOX = (50, 40, 25)  # i, j, k: 50,000 voxels
SETTINGS = {
    "dense-t": {"density": 0.16, "covariates": False, "tfce": False},
    "dense-tfce": {"density": 0.16, "covariates": False, "tfce": True},
    "sparse-t": {"density": 0.015, "covariates": True, "tfce": False},
    "sparse-tfce": {"density": 0.015, "covariates": True, "tfce": True},
}


def make_problem(n_nodules: int, density: float, covariates: bool, seed: int = 0) -> dict:
    """Ball footprints on the box (voxels in C order of ``BOX``) and outcomes.

    Returns
    -------
    dict
        ``matrix`` (sparse CSR, (voxels, nodules), float32 weights), ``y`` (nodules,),
        ``confounds`` ((nodules, 2) or None) and ``density`` (as built).
    """
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in BOX], indexing="ij"), axis=-1)
    grid = grid.reshape(-1, 3).astype(np.float32)
    centres = rng.uniform([0, 0, 0], BOX, size=(n_nodules, 3)).astype(np.float32)
    spread = rng.uniform(0.8, 1.2, n_nodules)
    # The radius of a ball holding density x voxels; once more, scaled by the density found
    # (balls near the box's edges lose part of themselves).
    radius = (3 * density * len(grid) / (4 * np.pi)) ** (1 / 3)
    matrix = _balls(grid, centres, radius * spread)
    radius *= (density / (matrix.nnz / np.prod(matrix.shape))) ** (1 / 3)
    matrix = _balls(grid, centres, radius * spread)
    logit = -0.8 + 0.6 * (centres[:, 0] < BOX[0] / 2)
    y = (rng.random(n_nodules) < 1 / (1 + np.exp(-logit))).astype(float)
    confounds = None
    if covariates:
        extent = np.log(np.diff(matrix.tocsc().indptr).astype(float))
        confounds = np.column_stack([rng.normal(50, 12, n_nodules), extent])
    return {"matrix": matrix, "y": y, "confounds": confounds,
            "density": matrix.nnz / (matrix.shape[0] * matrix.shape[1])}


def _balls(grid: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> sp.csr_matrix:
    """(voxels, balls) weights falling linearly from 1 at each centre to 0 at its radius."""
    rows, cols, values = [], [], []
    for column, (centre, r) in enumerate(zip(centres, radii, strict=True)):
        distance = np.linalg.norm(grid - centre, axis=1)
        inside = np.flatnonzero(distance < r)
        rows.append(inside)
        cols.append(np.full(len(inside), column))
        values.append((1 - distance[inside] / r).astype(np.float16).astype(np.float32))
    matrix = sp.csr_matrix((np.concatenate(values), (np.concatenate(rows),
                                                      np.concatenate(cols))),
                           shape=(len(grid), len(centres)))
    matrix.eliminate_zeros()
    return matrix


def box_ijk() -> np.ndarray:
    """Grid indices (voxels, 3) of the box's voxels, in C order."""
    return np.stack(np.unravel_index(np.arange(np.prod(BOX)), BOX), axis=1)


def _run_nilearn(problem: dict, n_perm: int, tfce: bool) -> tuple[dict, dict]:
    import nibabel as nib
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    start = time.perf_counter()
    masker = NiftiMasker(nib.Nifti1Image(np.ones(BOX, np.int8), np.eye(4))).fit()
    target = problem["matrix"].T.toarray().astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = permuted_ols(problem["y"][:, None], target, problem["confounds"], n_perm=n_perm,
                           two_sided_test=True, random_state=0, n_jobs=2, tfce=tfce,
                           masker=masker if tfce else None, output_type="dict")
    seconds = time.perf_counter() - start
    maps = {"t": out["t"][0], "h0_t": out["h0_max_t"][0]}
    if tfce:
        maps |= {"tfce": out["tfce"][0], "h0_tfce": out["h0_max_tfce"][0]}
    return maps, {"seconds": seconds}


def _run_llnm3d(problem: dict, n_perm: int, tfce: bool) -> tuple[dict, dict]:
    from llnm3d.statistics.inference import OLSDesign, permutation_kernel
    from llnm3d.statistics.voxelwise import TestSettings, permutation_maxima, permutation_tests

    settings = TestSettings(permutations=n_perm, seed=0, tfce=tfce, cluster_p=None,
                            device="cpu")
    start = time.perf_counter()
    design = OLSDesign(problem["matrix"], problem["y"], problem["confounds"])
    maps, _ = permutation_tests(design, box_ijk(), settings)
    seconds = time.perf_counter() - start
    # The split, timed apart: the design and its torch matrix, then the permutations alone.
    start = time.perf_counter()
    design = OLSDesign(problem["matrix"], problem["y"], problem["confounds"])
    permutation_kernel(design, "cpu")
    setup_s = time.perf_counter() - start
    from llnm3d.statistics.clusters import ClusterStatistics, voxel_edges

    clusters = ClusterStatistics(voxel_edges(box_ijk(), 6), tfce=tfce, mass_threshold=None)
    start = time.perf_counter()
    maxima = permutation_maxima(design, clusters, settings, None, False)
    permutations_s = time.perf_counter() - start
    out = {"t": maps["t"], "h0_t": maxima["t"]}
    if tfce:
        out |= {"tfce": maps["tfce"], "h0_tfce": maxima["tfce"]}
    return out, {"seconds": seconds, "setup_s": setup_s, "permutations_s": permutations_s}


def _child(method: str, setting: str, problem_path: str, out_path: str, n_perm: int) -> None:
    with np.load(problem_path, allow_pickle=False) as data:
        problem = {"matrix": sp.csr_matrix((data["data"], data["indices"], data["indptr"]),
                                           shape=tuple(data["shape"])),
                   "y": data["y"], "confounds": data["confounds"] if data["confounds"].size
                   else None}
    run = _run_nilearn if method == "nilearn" else _run_llnm3d
    maps, timing = run(problem, n_perm, SETTINGS[setting]["tfce"])
    timing["max_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    np.savez(out_path, **maps)
    print(json.dumps(timing))


def compare(setting: str, n_nodules: int, n_perm: int, work: Path) -> dict:
    spec = SETTINGS[setting]
    problem = make_problem(n_nodules, spec["density"], spec["covariates"])
    matrix = problem["matrix"]
    problem_path = work / f"{setting}-problem.npz"
    np.savez(problem_path, data=matrix.data, indices=matrix.indices, indptr=matrix.indptr,
             shape=np.array(matrix.shape), y=problem["y"],
             confounds=problem["confounds"] if problem["confounds"] is not None
             else np.zeros(0))
    row = {"setting": setting, "nodules": n_nodules, "voxels": matrix.shape[0],
           "density": problem["density"], "covariates": 2 if spec["covariates"] else 0,
           "tfce": spec["tfce"], "permutations": n_perm}
    maps = {}

    def child(method: str, permutations: int) -> dict:
        out_path = work / f"{setting}-{method}.npz"
        result = subprocess.run([sys.executable, __file__, "--child", method, setting,
                                 str(problem_path), str(out_path), "--permutations",
                                 str(permutations)], capture_output=True, text=True,
                                check=True)
        return json.loads(result.stdout.strip().splitlines()[-1])

    # numba compiles llnm3d's kernels on their first use ever and caches them on disk; a
    # short untimed run first, so the timed one costs what every later run of a user costs.
    row["llnm3d_first_run_s"] = child("llnm3d", 10)["seconds"]
    for method in ("nilearn", "llnm3d"):
        out_path = work / f"{setting}-{method}.npz"
        row[method] = child(method, n_perm)
        with np.load(out_path) as saved:
            maps[method] = {k: saved[k] for k in saved.files}
        print(setting, method, row[method], flush=True)
    row["speedup"] = row["nilearn"]["seconds"] / row["llnm3d"]["seconds"]
    row["memory_ratio"] = row["llnm3d"]["max_rss_gb"] / row["nilearn"]["max_rss_gb"]
    for name in ("t", "tfce"):
        if name in maps["llnm3d"]:
            ours, theirs = maps["llnm3d"][name], maps["nilearn"][name]
            # llnm3d leaves voxels no footprint reaches untested (NaN); nilearn gives 0 there.
            both = np.isfinite(ours)
            row[f"untested_{name}"] = int((~both).sum())
            row[f"untested_nonzero_in_nilearn_{name}"] = int(np.sum(theirs[~both] != 0))
            row[f"max_abs_diff_{name}"] = float(np.max(np.abs(ours[both] - theirs[both])))
            row[f"h0_{name}_q95"] = {m: float(np.quantile(maps[m][f"h0_{name}"], 0.95))
                                     for m in maps}
    return row


def markdown(rows: list[dict]) -> str:
    lines = ["| setting | density | covariates | TFCE | nilearn | llnm3d (set-up + "
             "permutations) | speed-up | peak memory nilearn / llnm3d | max abs diff t, TFCE |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ours, theirs = row["llnm3d"], row["nilearn"]
        diffs = f"{row['max_abs_diff_t']:.1e}"
        if "max_abs_diff_tfce" in row:
            diffs += f", {row['max_abs_diff_tfce']:.1e} (of {row['h0_tfce_q95']['nilearn']:.0f})"
        lines.append(
            f"| {row['setting']} | {row['density']:.1%} | {row['covariates']} | "
            f"{'yes' if row['tfce'] else 'no'} | {theirs['seconds']:.1f} s | "
            f"{ours['seconds']:.2f} s ({ours['setup_s']:.2f} + {ours['permutations_s']:.2f}) | "
            f"{row['speedup']:.0f}x | {theirs['max_rss_gb']:.2f} / {ours['max_rss_gb']:.2f} GB "
            f"| {diffs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--nodules", type=int, default=4000)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--child", nargs=4)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, args.permutations)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings.split(","):
            rows.append(compare(setting, args.nodules, args.permutations, Path(tmp)))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "permutations.json").write_text(json.dumps(rows, indent=1) + "\n")
    table = markdown(rows)
    (RESULTS / "permutations.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
