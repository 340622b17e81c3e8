"""Python API walkthrough: the atlas, its queries and sections, and a phantom cohort.

Usage::

    python examples/atlas_and_phantom.py [OUT_DIR]
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from llnm3d import Atlas
from llnm3d.atlas import REGION_NAMES
from llnm3d.phantom import RiskSpec, make_phantom, sample_truth


def main(out_dir: Path) -> None:
    atlas = Atlas.default()  # 0.5 mm grid, atlas mm in LPS, origin at the isthmus centre
    print(f"atlas grid {atlas.labels.shape[::-1]} (x, y, z), {atlas.spacing_mm} mm voxels, "
          f"gland {atlas.surface.volume / 1000:.1f} mL")

    # Where is a point, and how far from the capsule?
    points_mm = np.array([[19.0, 9.0, 20.0],   # left lobe, high
                          [-18.0, 11.0, -8.0],   # right lobe, low and posterior
                          [0.0, 0.0, 0.0]])     # isthmus centre
    for point, region, distance in zip(points_mm, atlas.region_of(points_mm),
                                       atlas.capsule_distance_mm(points_mm), strict=True):
        print(f"  {point} mm -> {REGION_NAMES.get(int(region), 'outside')}, "
              f"{distance:+.1f} mm from the capsule")

    # A transverse section of the right lobe at its centre, as registration will use it.
    level = atlas.lobe_axes[1]["centre_mm"][2]
    cut = atlas.section("R", "transverse", level)
    print(f"transverse section at z = {level:.1f} mm: {cut.mask.shape} pixels, "
          f"{cut.mask.sum() * cut.spacing_mm ** 2:.0f} mm2 of lobe")

    # A small rendered cohort, then the planted risk over a large one (truth only, no images).
    cohort = make_phantom(out_dir / "cohort", 10, seed=0, atlas=atlas)
    print(f"cohort: {len(cohort.truth)} nodules, manifest at {cohort.out_dir / 'manifest.csv'}")

    spec = RiskSpec.load(Path(__file__).with_name("risk_spec_posterior_lower.json"))
    for name, risk_spec in (("default", RiskSpec.default()), ("posterior-lower", spec)):
        truth = sample_truth(1000, seed=1, risk_spec=risk_spec, atlas=atlas)
        bins = pd.cut(truth["capsule_distance_mm"], [0, 1, 2.5, 5, np.inf], right=False)
        print(f"\n{name} spec, {len(truth)} nodules, LLNM rate by capsule distance (mm):")
        print(truth.groupby(bins, observed=True)["label"].agg(["size", "mean"]).round(2))
        print("by lobe third:")
        print(truth.groupby("lobe_third")["label"].agg(["size", "mean"]).round(2))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
