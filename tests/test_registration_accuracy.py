"""The registration's acceptance figures on a phantom of more than 500 nodules (slow)."""

import pytest

from llnm3d import register
from llnm3d.phantom import make_phantom
from llnm3d.validation import registration_errors


@pytest.mark.slow
def test_centre_error_and_thyroid_overlap_on_500_nodules(atlas, tmp_path):
    cohort = make_phantom(tmp_path / "phantom", 380, seed=11, atlas=atlas, progress=False)
    result = register(cohort.out_dir / "manifest.csv", atlas=atlas, out_dir=tmp_path / "reg",
                      progress=False)
    assert len(result.qc) >= 500 and (result.qc["status"] != "failed").all()
    errors = registration_errors(result.qc, cohort.out_dir, atlas)
    assert errors["error_mm"].median() <= 1.5
    assert errors["error_mm"].quantile(0.95) <= 4.0
    for view in ("transverse", "longitudinal"):
        assert result.qc[f"{view}_dice"].median() >= 0.9
    # No nodule lands in the other lobe (one next to the isthmus may land in it).
    other_lobe = errors["side"].map({"R": 2, "L": 1})
    assert (errors["region"] // 10 != other_lobe).all()
    assert (errors["region"] // 10 == 3 - other_lobe).mean() > 0.99
