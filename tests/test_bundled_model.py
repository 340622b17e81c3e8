"""The bundled weights: they load, and run on the real LLNM-Net sample images."""

from pathlib import Path

import numpy as np
import pytest

from llnm3d.io import read_grayscale
from llnm3d.models.heatmap import MODEL_DIR, compute_heatmaps, load_heatmap, load_view_model
from llnm3d.models.model import parameter_count

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "llnm-net-samples"


@pytest.mark.parametrize("view", ["transverse", "longitudinal"])
def test_bundled_weights_load_and_are_small(view):
    model, record = load_view_model(view)
    assert record["view"] == view and record["config"]["name"] == "small"
    assert parameter_count(model) == record["parameters"]
    assert (MODEL_DIR / f"{view}.safetensors").stat().st_size < 5_000_000


def test_real_samples_without_thyroid_masks(tmp_path):
    # The bundled weights were trained on phantoms only. On the real samples (no thyroid
    # mask) the default layer finds positive evidence for half of the images and little of it
    # in the nodule (model/MODEL_CARD.md): this test guards the behaviour (every case done,
    # empty maps flagged as such), not a meaning the maps do not have there.
    result = compute_heatmaps(SAMPLES / "manifest.csv", tmp_path, resize_masks=True,
                              progress=False, workers=1)
    assert result.failures == []
    assert len(result.predictions) == 10
    assert result.predictions["probability"].between(0, 1).all()
    for case, empty in zip(result.predictions["case_id"], result.predictions["heatmap_empty"],
                           strict=True):
        image = read_grayscale(SAMPLES / "image" / f"{case}.jpg")
        heat = load_heatmap(tmp_path, case)
        assert heat.shape == image.shape and np.isfinite(heat).all()
        assert heat.min() >= 0
        assert (heat.max() == 0) if empty else np.isclose(heat.max(), 1.0, atol=0.01)
