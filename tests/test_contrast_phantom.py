"""A group contrast end to end through ``llnm3d aggregate``, checked against planted truth.

Two rendered phantoms stand for two hospitals: "A" draws its outcomes from
``benchmarks/specs/one_lobe_spot.json`` without its Gaussian spot (a flat risk), "B" from the
same spec with the spot. One combined manifest (patient ids prefixed by the hospital, a
``hospital`` column) is registered and aggregated with ``--contrast hospital``, as a user
would. Every check compares with the spec itself (the spot's centre and sigma in mm, its
coefficient, the intercept), never with another output of the pipeline (slow: about 90 s
on two cores).
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit

from llnm3d import aggregate, register
from llnm3d.phantom import RiskSpec, make_phantom

SPEC = Path(__file__).resolve().parents[1] / "benchmarks" / "specs" / "one_lobe_spot.json"
PATIENTS = 300  # per hospital
SEEDS = {"A": 31, "B": 32}
PERMUTATIONS = 200
MIN_CASES = 10
ALPHA = 0.05


def hospital_specs() -> dict[str, RiskSpec]:
    """Hospital A's spec (no spot) and B's (the spot)."""
    data = RiskSpec.load(SPEC).data
    flat = {**data, "terms": [t for t in data["terms"] if t["type"] != "gaussian"]}
    return {"A": RiskSpec.from_dict(flat), "B": RiskSpec.from_dict(data)}


def the_spot() -> dict:
    """The planted spot: the spec's Gaussian term (``centre_mm``, ``sigma_mm``,
    ``coefficient``) and ``intercept``."""
    data = hospital_specs()["B"].data
    term = next(t for t in data["terms"] if t["type"] == "gaussian")
    return {**term, "intercept": data["intercept"]}


def combine_manifests(phantoms: dict[str, Path], out: Path) -> Path:
    """One manifest of several phantoms: ``out`` in their common parent folder, ``case_id``
    and ``patient_id`` prefixed by the phantom's name (their ids collide), file paths
    relative to ``out`` and a ``hospital`` column holding the name."""
    tables = []
    for name, folder in phantoms.items():
        table = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
        for column in ("case_id", "patient_id"):
            table[column] = f"{name}-" + table[column]
        for column in ("image", "thyroid_mask", "nodule_mask"):
            table[column] = [(folder / value).relative_to(out.parent).as_posix()
                             for value in table[column]]
        tables.append(table.assign(hospital=name))
    pd.concat(tables, ignore_index=True).to_csv(out, index=False)
    return out


@pytest.fixture(scope="module")
def two_hospitals(atlas, tmp_path_factory):
    """The two phantoms, their combined manifest and its registration (mask footprints)."""
    folder = tmp_path_factory.mktemp("two_hospitals")
    specs = hospital_specs()
    phantoms = {name: make_phantom(folder / name, PATIENTS, seed=SEEDS[name],
                                   risk_spec=specs[name], atlas=atlas, workers=2,
                                   progress=False).out_dir
                for name in specs}
    manifest = combine_manifests(phantoms, folder / "hospitals.csv")
    registered = register(manifest, atlas=atlas, out_dir=folder / "registered", workers=2,
                          progress=False)
    return manifest, registered


@pytest.fixture(scope="module")
def contrast_stats(two_hospitals, atlas, tmp_path_factory):
    manifest, registered = two_hospitals
    return aggregate(registered, atlas=atlas, out_dir=tmp_path_factory.mktemp("stats"),
                     weight="mask", min_cases=MIN_CASES, permutations=PERMUTATIONS, seed=0,
                     workers=2, progress=False, contrast="hospital", contrast_manifest=manifest)


def spot_distance_mm(atlas) -> np.ndarray:
    """Each atlas voxel's distance from the planted spot's centre, in mm (the atlas's shape)."""
    k, j, i = np.indices(atlas.labels.shape).reshape(3, -1)  # labels are (z, y, x)
    centre = np.asarray(the_spot()["centre_mm"], float)
    points = atlas.voxel_to_world(np.stack([i, j, k], axis=1))
    return np.linalg.norm(points - centre, axis=1).reshape(atlas.labels.shape)


def true_difference(distance_mm: np.ndarray) -> np.ndarray:
    """Hospital B's planted risk minus A's at a distance from the spot's centre."""
    spot = the_spot()
    bump = spot["coefficient"] * np.exp(-0.5 * (distance_mm / spot["sigma_mm"]) ** 2)
    return expit(spot["intercept"] + bump) - expit(spot["intercept"])


@pytest.mark.slow
def test_the_hospital_with_a_planted_spot_differs_there_and_nowhere_else(contrast_stats,
                                                                          atlas):
    record = contrast_stats.summary["contrast"]
    assert (record["column"], record["level_a"], record["level_b"]) == ("hospital", "A", "B")
    maps = contrast_stats.volumes
    distance = spot_distance_mm(atlas)
    shown = np.isfinite(maps["contrast_significance"])
    near = shown & (distance < 4.0)
    # Beyond 20 mm the planted difference is below 0.003: the truth there is "no difference".
    far = shown & (distance > 20.0)
    assert near.sum() >= 20 and far.sum() >= 1000
    truth_near = true_difference(distance[near])
    assert truth_near.min() > 0.35
    # At the spot, B's risk is above A's: the interval excludes 0, the estimate is of the
    # planted size (a smoother flattens a peak: at least half of it, never more), and the
    # simultaneous band marks the spot with B above A. Over every shown voxel the pointwise
    # interval holds the planted difference at most of them.
    low, high = maps["contrast_difference_ci_low"], maps["contrast_difference_ci_high"]
    difference = maps["contrast_difference"]
    assert np.mean(low[near] > 0) >= 0.9
    ratio = np.median(difference[near] / truth_near)
    truth = true_difference(distance[shown])
    coverage = np.mean((low[shown] <= truth) & (truth <= high[shown]))
    print(f"estimate/planted at the spot {ratio:.2f}, coverage {coverage:.3f}")
    # Measured: 0.52 (300 patients per hospital, seeds 31 and 32), coverage 0.94.
    assert 0.4 <= ratio <= 1.1
    assert coverage >= 0.85
    # Nowhere else: the simultaneous band (which at this size may mark nothing: BENCHMARKS.md
    # finds it marks the spot's flank with 500 per group) marks no voxel more than 12 mm from
    # the centre or of the wrong sign, the pointwise interval holds 0 at >= 90 % of the far
    # voxels, and the interaction test makes no family-wise finding there.
    band = maps["contrast_significance"]
    print(f"band: {int(np.sum(band[shown] == 1))} voxels +1, "
          f"{int(np.sum(band[shown] == -1))} -1")
    assert not np.any(band[shown & (distance > 12.0)] != 0)
    assert not np.any(band[shown] == -1)
    assert np.mean((low[far] <= 0) & (0 <= high[far])) >= 0.9
    for name in ("contrast_t_p_fwer", "contrast_tfce_p_fwer"):
        assert not np.any(maps[name][far] <= ALPHA), name
    # The group maps are each hospital's own: A near its flat rate at the spot, B well above.
    flat = expit(the_spot()["intercept"])
    assert abs(np.nanmedian(maps["contrast_probability_a"][near]) - flat) < 0.15
    assert np.nanmedian(maps["contrast_probability_b"][near]) > flat + 0.25
