"""Cost of each stage against cohort size and atlas resolution, local processes vs Dask.

    python benchmarks/bench_scale.py --work DIR [--patients 500,1000,2000,4000]
        [--workers 2] [--spacings 0.5,1.0] [--schedulers local,dask]

For each cohort size: a phantom (``llnm3d phantom``), then ``llnm3d register`` (nodule masks
only, no heatmaps, so the cost is registration's own) and ``llnm3d aggregate`` (mask weights,
1,000 permutations), each run as the command a user types, once on local worker processes and
once on a Dask LocalCluster with the same number of workers, on the 0.5 mm atlas; and on a 1 mm
atlas with local processes. Reported per run: wall seconds, nodules per second, peak memory
(resident set of the command and all its worker processes together, sampled every 0.2 s),
and whether the Dask outputs are identical to the local ones (patch files byte for byte; maps
array-equal). A linear fit of seconds against nodules per stage gives the figure for the
study's 40,000 patients, marked as extrapolated.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

BIN = Path(sys.executable).parent / "llnm3d"
STUDY_PATIENTS = 40_000


def run(args: list, log: Path) -> dict:
    """Run one llnm3d command; wall seconds and peak summed RSS (GB) of its process tree."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen([str(BIN), *map(str, args)], stdout=out,
                                   stderr=subprocess.STDOUT)
        peak, parent = [0.0], psutil.Process(process.pid)

        def sample():
            while process.poll() is None:
                try:
                    tree = [parent, *parent.children(recursive=True)]
                    peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree
                                               if p.is_running()) / 1e9)
                except psutil.Error:
                    pass
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        sampler.join()
    if code not in (0, 1):
        raise SystemExit(f"{args[0]} failed (exit {code}); see {log}")
    return {"seconds": round(time.perf_counter() - start, 1), "peak_gb": round(peak[0], 2)}


def patch_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((folder / "patches").glob("*.npz")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def same_maps(a: Path, b: Path) -> bool:
    from llnm3d import load_stats

    first, second = load_stats(a), load_stats(b)
    return all(np.array_equal(first.volumes[k], second.volumes[k], equal_nan=True)
               for k in first.volumes)


def nodules_of(registered: Path) -> int:
    import pandas as pd

    return int((pd.read_csv(registered / "qc.csv")["status"] != "failed").sum())


def one_size(work: Path, patients: int, workers: int, spacings: list[float],
             schedulers: list[str]) -> list[dict]:
    folder = work / f"n{patients}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    cohort = folder / "phantom"
    manifest = cohort / "manifest.csv"
    # A phantom left by an earlier run is only checked and resumed: its row is marked, since
    # its time is then not the cost of making one.
    existed = manifest.exists()
    timing = run(["phantom", "--patients", patients, "--seed", 500 + patients, "--out", cohort,
                  "--workers", workers], folder / "phantom.log")
    rows.append({"stage": "phantom (resumed)" if existed else "phantom", "patients": patients,
                 "atlas_mm": 0.5, "scheduler": "local", **timing})
    for spacing in spacings:
        atlas = folder / f"atlas-{spacing}"
        run(["atlas", "--out", atlas, "--spacing-mm", spacing], folder / "atlas.log")
        for scheduler in schedulers if spacing == 0.5 else ["local"]:
            extra = ["--scheduler", "local"] if scheduler == "dask" else []
            tag = f"{spacing}-{scheduler}"
            registered = folder / f"registered-{tag}"
            timing = run(["register", "--manifest", manifest, "--out", registered, "--atlas",
                          atlas, "--workers", workers, *extra], folder / f"register-{tag}.log")
            nodules = nodules_of(registered)
            rows.append({"stage": "register", "patients": patients, "nodules": nodules,
                         "atlas_mm": spacing, "scheduler": scheduler, **timing})
            stats = folder / f"stats-{tag}"
            timing = run(["aggregate", "--registered", registered, "--out", stats, "--atlas",
                          atlas, "--weight", "mask", "--permutations", 1000, "--workers",
                          workers, *extra], folder / f"aggregate-{tag}.log")
            rows.append({"stage": "aggregate", "patients": patients, "nodules": nodules,
                         "atlas_mm": spacing, "scheduler": scheduler, **timing})
        if spacing == 0.5 and "dask" in schedulers:
            local, dask = (folder / f"registered-0.5-{s}" for s in ("local", "dask"))
            identical = patch_digest(local) == patch_digest(dask) and same_maps(
                folder / "stats-0.5-local", folder / "stats-0.5-dask")
            for row in rows[-4:]:
                row["dask_identical"] = identical
    for row in rows:
        if "nodules" in row:
            row["nodules_per_s"] = round(row["nodules"] / row["seconds"], 1)
    return rows


def extrapolate(rows: list[dict]) -> list[dict]:
    """Seconds = a + b * patients per (stage, atlas, scheduler), least squares, at 40,000."""
    out = []
    keys = sorted({(r["stage"], r["atlas_mm"], r["scheduler"]) for r in rows})
    for stage, spacing, scheduler in keys:
        group = [r for r in rows if (r["stage"], r["atlas_mm"], r["scheduler"])
                 == (stage, spacing, scheduler)]
        if len(group) < 2:
            continue
        x = np.array([r["patients"] for r in group], float)
        slope, intercept = np.polyfit(x, [r["seconds"] for r in group], 1)
        memory = np.polyfit(x, [r["peak_gb"] for r in group], 1)
        out.append({"stage": stage, "atlas_mm": spacing, "scheduler": scheduler,
                    "seconds_per_1000_patients": round(1000 * slope, 1),
                    "extrapolated_hours_40k": round((intercept + slope * STUDY_PATIENTS)
                                                    / 3600, 2),
                    # Never below what was measured: worker memory does not shrink.
                    "extrapolated_peak_gb_40k": round(max(float(np.polyval(
                        memory, STUDY_PATIENTS)), max(r["peak_gb"] for r in group)), 1)})
    return out


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--patients", default="500,1000,2000,4000")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spacings", default="0.5,1.0")
    parser.add_argument("--schedulers", default="local,dask",
                        help="local, dask or both (Dask runs on the 0.5 mm atlas only)")
    args = parser.parse_args()
    sizes = [int(v) for v in args.patients.split(",")]
    spacings = [float(v) for v in args.spacings.split(",")]
    rows = []
    for patients in sizes:
        rows += one_size(args.work, patients, args.workers, spacings,
                         args.schedulers.split(","))
        (args.work / "scale.json").write_text(json.dumps(rows, indent=1))
        print(f"{patients} patients done", file=sys.stderr, flush=True)
    print(f"`{' '.join(sys.argv)}` ({args.workers} workers, {psutil.cpu_count()} CPUs)\n")
    print(table(rows, ["stage", "patients", "nodules", "atlas_mm", "scheduler", "seconds",
                       "nodules_per_s", "peak_gb", "dask_identical"]))
    print()
    print(table(extrapolate(rows), ["stage", "atlas_mm", "scheduler",
                                    "seconds_per_1000_patients", "extrapolated_hours_40k",
                                    "extrapolated_peak_gb_40k"]))


if __name__ == "__main__":
    main()
