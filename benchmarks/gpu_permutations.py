"""Max-statistic permutations on CPU vs CUDA: same null, and the time of each.

Usage::

    python benchmarks/gpu_permutations.py [--voxels 50000 --nodules 4000 --density 0.08]

Builds a seeded random sparse weight matrix and outcome, runs
``OLSDesign.permutation_maxima`` (1,000 permutations) on the CPU and on the GPU, and prints the
largest relative difference of the permutation maxima, the largest difference of the
family-wise p-values, and the times (max-|t| only: the cluster statistics run on the CPU either
way). Needs the package installed (``pip install -e .``).
"""

import argparse
import time

import numpy as np
import scipy.sparse as sp
import torch

from llnm3d.statistics import inference


def problem(voxels, nodules, density, seed=0):
    rng = np.random.default_rng(seed)
    weights = sp.random(voxels, nodules, density=density, random_state=seed, format="csr",
                        dtype=np.float64)
    y = (rng.random(nodules) < 0.5).astype(float)
    return inference.OLSDesign(weights, y)


def timed(design, device, n_perm):
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    maxima = design.permutation_maxima(n_perm, seed=0, device=device)["t"]
    if device == "cuda":
        torch.cuda.synchronize()
    return maxima, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voxels", type=int, default=50000)
    parser.add_argument("--nodules", type=int, default=4000)
    parser.add_argument("--density", type=float, default=0.08)
    parser.add_argument("--permutations", type=int, default=1000)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, CUDA: {torch.cuda.get_device_name(0)}")
    design = problem(args.voxels, args.nodules, args.density)
    t = design.t_scores()
    timed(design, "cuda", 250)  # warm-up (CUDA context, kernels)
    cpu, cpu_s = timed(design, "cpu", args.permutations)
    gpu, gpu_s = timed(design, "cuda", args.permutations)
    p_cpu, p_gpu = inference.fwer_p_values(t, cpu), inference.fwer_p_values(t, gpu)
    print(f"{args.nodules} nodules x {args.voxels} voxels, density {args.density}, "
          f"{args.permutations} permutations")
    print(f"max relative difference of the maxima: {np.max(np.abs(cpu - gpu) / cpu):.2e}")
    print(f"max difference of family-wise p: {np.nanmax(np.abs(p_cpu - p_gpu)):.2e}")
    print(f"CPU ({torch.get_num_threads()} threads) {cpu_s:.2f} s, GPU {gpu_s:.2f} s, "
          f"ratio {cpu_s / gpu_s:.1f}x")


if __name__ == "__main__":
    main()
