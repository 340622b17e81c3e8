import numpy as np
import pandas as pd
import pytest
from PIL import Image

from llnm3d.io import InputError
from llnm3d.manifest import read_manifest
from llnm3d.models.features import FEATURE_NAMES, features_table, nodule_features, write_features

HEADER = ("case_id,patient_id,nodule_id,side,view,image,thyroid_mask,nodule_mask,"
          "pixel_spacing_mm,label,age,sex,report")
SHAPE = (120, 120)
CENTRE = (60, 60)


def ellipse(semi_rows, semi_cols, shape=SHAPE, centre=CENTRE):
    r, c = np.ogrid[:shape[0], :shape[1]]
    return ((r - centre[0]) / semi_rows) ** 2 + ((c - centre[1]) / semi_cols) ** 2 <= 1


def star(radius=30, points=5, depth=0.45, shape=SHAPE, centre=CENTRE):
    r, c = np.ogrid[:shape[0], :shape[1]]
    dr, dc = r - centre[0], c - centre[1]
    theta = np.arctan2(dr, dc)
    return np.hypot(dr, dc) <= radius * (1 + depth * np.cos(points * theta)) / (1 + depth)


def picture(mask, inside, outside=160):
    image = np.full(mask.shape, outside, np.uint8)
    image[mask] = inside
    return image


def test_disc_shape():
    disc = ellipse(20, 20)
    f = nodule_features(picture(disc, 60), disc)
    assert list(f) == list(FEATURE_NAMES)
    assert f["aspect_ratio"] == pytest.approx(1, abs=0.02)
    assert f["solidity"] > 0.95
    assert 0.85 <= f["circularity"] <= 1.1
    assert f["convexity"] == pytest.approx(1, abs=0.02)
    assert f["taller_than_wide"] == 0


@pytest.mark.parametrize("semi_rows, semi_cols, ratio, taller", [(30, 15, 2, 1), (15, 30, 0.5, 0)])
def test_ellipse_aspect_ratio(semi_rows, semi_cols, ratio, taller):
    mask = ellipse(semi_rows, semi_cols)
    f = nodule_features(picture(mask, 60), mask)
    assert f["aspect_ratio"] == pytest.approx(ratio, abs=0.05)
    assert f["taller_than_wide"] == taller


def test_lengths_scale_with_spacing():
    disc = ellipse(20, 20)
    in_mm = nodule_features(picture(disc, 60), disc, spacing_mm=0.1)
    assert in_mm["diameter_mm"] == pytest.approx(4, abs=0.2)
    assert in_mm["area_mm2"] == pytest.approx(np.pi * 2**2, rel=0.05)
    in_px = nodule_features(picture(disc, 60), disc)
    assert in_px["diameter_mm"] == pytest.approx(10 * in_mm["diameter_mm"])
    assert in_px["area_mm2"] == pytest.approx(100 * in_mm["area_mm2"])
    assert in_px["aspect_ratio"] == pytest.approx(in_mm["aspect_ratio"])


def test_echo_contrast_sign():
    disc = ellipse(20, 20)
    dark = nodule_features(picture(disc, 60, outside=160), disc)
    bright = nodule_features(picture(disc, 220, outside=160), disc)
    assert dark["echo_contrast"] > 0.3
    assert bright["echo_contrast"] < 0


def test_ring_is_kept_inside_the_thyroid():
    disc = ellipse(10, 10)
    image = picture(disc, 60, outside=160)
    image[:, CENTRE[1] + 5:][~disc[:, CENTRE[1] + 5:]] = 20  # dark tissue outside the gland
    thyroid = np.zeros(SHAPE, bool)
    thyroid[:, :CENTRE[1] + 5] = True
    unrestricted = nodule_features(image, disc)
    restricted = nodule_features(image, disc, thyroid_mask=thyroid)
    assert restricted["echo_contrast"] > unrestricted["echo_contrast"]
    assert restricted["echo_contrast"] == pytest.approx(100 / 220, abs=1e-3)
    # A thyroid mask that misses the nodule's surroundings falls back to the whole ring.
    far = np.zeros(SHAPE, bool)
    far[:3, :3] = True
    fallback = nodule_features(image, disc, thyroid_mask=far)
    del fallback["capsule_distance_mm"], unrestricted["capsule_distance_mm"]
    assert fallback == unrestricted


def test_irregular_margin_lowers_solidity_and_convexity():
    disc, irregular = ellipse(25, 25), star()
    smooth = nodule_features(picture(disc, 60), disc)
    rough = nodule_features(picture(irregular, 60), irregular)
    assert rough["solidity"] < smooth["solidity"] - 0.1
    assert rough["convexity"] < smooth["convexity"] - 0.05


def test_texture(rng):
    disc = ellipse(20, 20)
    flat = nodule_features(picture(disc, 100), disc)
    noisy_image = picture(disc, 100)
    noisy_image[disc] = rng.integers(20, 200, disc.sum())
    noisy = nodule_features(noisy_image, disc)
    assert flat["texture_entropy"] == 0 and flat["glcm_contrast"] == 0
    assert flat["glcm_homogeneity"] == pytest.approx(1)
    assert noisy["texture_entropy"] > 3
    assert noisy["glcm_contrast"] > 10
    assert noisy["glcm_homogeneity"] < flat["glcm_homogeneity"]


def test_glcm_ignores_the_surroundings():
    disc = ellipse(20, 20)
    f = nodule_features(picture(disc, 60, outside=250), disc)
    assert f["glcm_contrast"] == 0 and f["glcm_homogeneity"] == pytest.approx(1)


def test_bright_foci():
    disc = ellipse(20, 20)
    image = picture(disc, 60)
    assert nodule_features(image, disc)["bright_foci_fraction"] == 0
    image[[55, 60, 62], [58, 60, 65]] = 255
    fraction = nodule_features(image, disc)["bright_foci_fraction"]
    assert fraction == pytest.approx(3 / disc.sum())


def test_largest_component_is_measured():
    disc = ellipse(20, 20)
    speck = np.zeros(SHAPE, bool)
    speck[2:4, 2:4] = True
    alone = nodule_features(picture(disc, 60), disc)
    assert nodule_features(picture(disc | speck, 60), disc | speck) == alone


def test_float_image_and_degenerate_mask():
    mask = np.zeros(SHAPE, bool)
    mask[40:80, 60] = True  # one pixel wide
    f = nodule_features(picture(mask, 60) / 255.0, mask, spacing_mm=0.2)
    assert f["nodule_mean"] == pytest.approx(60 / 255)
    assert np.isfinite(f["aspect_ratio"]) and f["taller_than_wide"] == 1
    assert f["glcm_contrast"] == 0
    single = np.zeros(SHAPE, bool)
    single[60, 60] = True
    f = nodule_features(picture(single, 60), single)
    assert f["area_mm2"] == 1 and f["aspect_ratio"] == 1
    assert np.isnan(f["circularity"]) and np.isnan(f["glcm_contrast"])


def test_errors():
    disc = ellipse(20, 20)
    image = picture(disc, 60)
    with pytest.raises(InputError, match="empty"):
        nodule_features(image, np.zeros(SHAPE, bool))
    with pytest.raises(InputError, match="differs from image shape"):
        nodule_features(image, disc[:-1])
    with pytest.raises(InputError, match="thyroid mask shape"):
        nodule_features(image, disc, thyroid_mask=disc[:, :-1])
    with pytest.raises(InputError, match="2D"):
        nodule_features(np.stack([image] * 3, axis=-1), disc)
    with pytest.raises(InputError, match="spacing_mm"):
        nodule_features(image, disc, spacing_mm=0)


def save(folder, name, array):
    Image.fromarray(array).save(folder / name)
    return name


@pytest.fixture
def cohort(tmp_path):
    disc, tall = ellipse(20, 20), ellipse(30, 15)
    thyroid = ellipse(50, 50).astype(np.uint8) * 255
    blank = np.zeros(SHAPE, np.uint8)
    rows = [
        f"c1,p1,1,R,transverse,{save(tmp_path, 'c1.png', picture(disc, 60))},"
        f"{save(tmp_path, 't1.png', thyroid)},{save(tmp_path, 'n1.png', disc * np.uint8(255))},"
        "0.1,1,50,F,",
        f"c2,p1,1,R,longitudinal,{save(tmp_path, 'c2.png', picture(tall, 60))},,"
        f"{save(tmp_path, 'n2.png', tall * np.uint8(255))},,0,50,F,",
        f"c3,p2,1,L,transverse,c1.png,,{save(tmp_path, 'n3.png', blank)},0.1,,,,",
        "c4,p3,1,L,transverse,c1.png,,,0.1,,,,",
    ]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows.append("c5,p4,1,L,transverse,broken.png,,n1.png,0.1,,,,")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def test_features_table_reports_bad_cases_and_keeps_the_rest(cohort):
    table, failures = features_table(read_manifest(cohort), progress=False)
    assert list(table.columns) == ["case_id", *FEATURE_NAMES]
    assert list(table["case_id"]) == ["c1", "c2"]
    assert table["diameter_mm"].iloc[0] == pytest.approx(4, abs=0.2)  # 0.1 mm pixels
    assert table["diameter_mm"].iloc[1] > 50  # no spacing: pixels
    assert table["taller_than_wide"].tolist() == [0, 1]
    reasons = dict(failures)
    assert list(reasons) == ["c3", "c4", "c5"]
    assert "empty" in reasons["c3"]
    assert reasons["c4"] == "no nodule mask"
    assert "broken.png" in reasons["c5"]


def test_write_features(cohort, tmp_path):
    out = tmp_path / "out" / "features.csv"
    failures = write_features(cohort, out, progress=False)
    assert [case for case, _ in failures] == ["c3", "c4", "c5"]
    written = pd.read_csv(out)
    assert list(written.columns) == ["case_id", *FEATURE_NAMES]
    assert list(written["case_id"]) == ["c1", "c2"]
    assert [p.name for p in out.parent.iterdir()] == ["features.csv"]


def test_capsule_distance_is_nodule_edge_to_thyroid_edge_in_mm():
    image = np.full((100, 100), 120, np.uint8)
    thyroid = np.zeros((100, 100), bool)
    thyroid[10:90, 10:90] = True
    nodule = np.zeros((100, 100), bool)
    nodule[30:50, 40:60] = True  # top edge 20 px below the thyroid's top edge
    f = nodule_features(image, nodule, spacing_mm=0.1, thyroid_mask=thyroid)
    assert f["capsule_distance_mm"] == pytest.approx(2.0, abs=0.11)
    touching = np.zeros((100, 100), bool)
    touching[10:20, 40:60] = True
    assert nodule_features(image, touching, 0.1, thyroid)["capsule_distance_mm"] == 0.0
    assert np.isnan(nodule_features(image, nodule, 0.1)["capsule_distance_mm"])
