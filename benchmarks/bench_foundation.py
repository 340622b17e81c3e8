"""Benchmark the foundation stages: atlas build and phantom generation.

Usage::

    python benchmarks/bench_foundation.py [--patients 300]

Prints a Markdown table. Every figure is also given as a ratio to a baseline measured in the
same run, so tables from different machines compare.
"""

import argparse
import tempfile
import time

import numpy as np

from llnm3d import Atlas
from llnm3d.anatomy import ThyroidShape
from llnm3d.phantom import PatientDeformation, make_phantom, sample_truth
from llnm3d.phantom.ultrasound import ViewPlane, _atlas_coordinates


def timed(fn, repeat=1):
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=300)
    args = parser.parse_args()
    rows = []

    t_coarse, _ = timed(lambda: Atlas.from_shape(ThyroidShape(), spacing_mm=1.0), repeat=3)
    t_fine, atlas = timed(lambda: Atlas.from_shape(ThyroidShape(), spacing_mm=0.5), repeat=3)
    rows.append(("atlas build, 1.0 mm grid (baseline)", f"{t_coarse:.2f} s", "1.00"))
    rows.append(("atlas build, 0.5 mm grid", f"{t_fine:.2f} s", f"{t_fine / t_coarse:.2f}"))

    deformation = PatientDeformation.random(np.random.default_rng(0),
                                            {1: np.array([-19.0, 8.5, 5.0]),
                                             2: np.array([19.0, 8.5, 5.0])})
    plane = ViewPlane.through("transverse", np.array([19.0, 8.0, 5.0]), -8.0, 0.15, (256, 256),
                              0.0)
    rr, cc = np.indices(plane.shape)
    t_exact, exact = timed(lambda: deformation.to_atlas(plane.pixel_points(rr, cc)), repeat=20)
    t_interp, interp = timed(lambda: _atlas_coordinates(plane, deformation), repeat=20)
    error = np.abs(interp.reshape(-1, 3) - exact).max()
    rows.append(("pixel->atlas map of a 256x256 image, exact (baseline)",
                 f"{t_exact * 1e3:.1f} ms", "1.00"))
    rows.append((f"pixel->atlas map, coarse grid + bilinear (max error {error * 1e3:.2f} um)",
                 f"{t_interp * 1e3:.1f} ms", f"{t_interp / t_exact:.2f}"))

    n = args.patients
    with tempfile.TemporaryDirectory() as tmp:
        t_one, _ = timed(lambda: make_phantom(f"{tmp}/w1", n, seed=1, atlas=atlas, workers=1,
                                              progress=False))
        t_two, cohort = timed(lambda: make_phantom(f"{tmp}/w2", n, seed=1, atlas=atlas,
                                                   workers=2, progress=False))
    t_truth, _ = timed(lambda: sample_truth(n, seed=1, atlas=atlas, workers=1))
    images = len(cohort.manifest)
    rows.append((f"phantom, {n} patients / {images} images, 1 worker (baseline)",
                 f"{t_one:.1f} s ({n / t_one:.0f} patients/s)", "1.00"))
    rows.append((f"phantom, {n} patients, 2 workers",
                 f"{t_two:.1f} s ({n / t_two:.0f} patients/s)", f"{t_two / t_one:.2f}"))
    rows.append((f"truth only (sample_truth), {n} patients, 1 worker",
                 f"{t_truth:.1f} s ({n / t_truth:.0f} patients/s)", f"{t_truth / t_one:.2f}"))

    print("| measurement | time | ratio to baseline |")
    print("|---|---|---|")
    for name, value, ratio in rows:
        print(f"| {name} | {value} | {ratio} |")


if __name__ == "__main__":
    main()
