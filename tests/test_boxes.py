"""Nodule boxes instead of masks: the inscribed ellipse, the manifest checks, and every reader."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from llnm3d import register
from llnm3d.annotations import BOX_COLUMNS, BOX_NOTE, ellipse_mask, mask_box, read_nodule_mask
from llnm3d.cli import app
from llnm3d.manifest import read_manifest
from llnm3d.models.cases import load_cases
from llnm3d.models.features import features_table
from llnm3d.models.inputs import CHANNELS
from llnm3d.models.qc import NODULE_COLOUR, contact_sheet

HEADER = ("case_id,patient_id,nodule_id,side,view,image,thyroid_mask,nodule_mask,"
          "pixel_spacing_mm,label,age,sex,report," + ",".join(BOX_COLUMNS))
WIDTH, HEIGHT = 160, 120


@pytest.mark.parametrize("box", [(10, 20, 110, 70), (3.5, 4.2, 40.7, 90.1), (0, 0, 160, 120),
                                 (50, 30, 58, 90)])
def test_ellipse_has_a_quarter_pi_of_the_box_area_and_is_centred_in_it(box):
    mask = ellipse_mask(box, (HEIGHT, WIDTH))
    width, height = box[2] - box[0], box[3] - box[1]
    assert mask.sum() == pytest.approx(np.pi / 4 * width * height, rel=0.02)
    rows, cols = np.nonzero(mask)
    # Pixel (r, c) is centred at (c + 0.5, r + 0.5) in box coordinates.
    assert cols.mean() + 0.5 == pytest.approx((box[0] + box[2]) / 2, abs=0.1)
    assert rows.mean() + 0.5 == pytest.approx((box[1] + box[3]) / 2, abs=0.1)
    # It touches the middle of each side and stays inside the box.
    x0, y0, x1, y1 = mask_box(mask)
    assert box[0] - 1 < x0 and x1 < box[2] + 1 and box[1] - 1 < y0 and y1 < box[3] + 1
    assert x1 - x0 >= width - 2 and y1 - y0 >= height - 2


def test_mask_box_is_the_tight_box_of_a_mask():
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[5:10, 10:20] = True
    assert mask_box(mask) == (10, 5, 20, 10)
    assert mask_box(ellipse_mask((10, 5, 20, 10), mask.shape)) == (10, 5, 20, 10)


def _png(path, array):
    Image.fromarray(array).save(path)
    return path.name


@pytest.fixture
def folder(tmp_path):
    image = np.full((HEIGHT, WIDTH), 150, np.uint8)
    image[40:80, 30:90] = 60  # a dark nodule
    _png(tmp_path / "a.png", image)
    thyroid = np.zeros((HEIGHT, WIDTH), np.uint8)
    thyroid[10:110, 10:150] = 255
    _png(tmp_path / "thyroid.png", thyroid)
    nodule = np.zeros((HEIGHT, WIDTH), np.uint8)
    nodule[40:80, 30:90] = 255
    _png(tmp_path / "nodule.png", nodule)
    return tmp_path


def _manifest(folder, *rows):
    path = folder / "manifest.csv"
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("box, message", [
    ("40,30,40,70", "is empty (x1 must exceed x0"),
    ("40,30,20,70", "is empty (x1 must exceed x0"),
    ("40,70,90,30", "is empty"),
    ("-1,30,90,70", "lies outside the 160x120 image"),
    ("40,30,161,70", "lies outside the 160x120 image"),
    ("40,30,90,120.5", "lies outside the 160x120 image"),
    ("40,30,,70", "nodule box incomplete (nodule_box_x1 empty)"),
    ("40,thirty,90,70", "nodule_box_y0 'thirty' is not a number"),
    ("40,30,inf,70", "nodule_box_x1 'inf' is not a finite number"),
])
def test_bad_boxes_are_problems_of_their_case(folder, box, message):
    path = _manifest(folder, f"c1,p1,1,R,transverse,a.png,thyroid.png,,0.1,1,50,F,,{box}",
                     "c2,p2,1,R,transverse,a.png,thyroid.png,,0.1,0,50,F,,30,40,90,80")
    manifest = read_manifest(path)
    assert len(manifest.problems) == 1
    case_id, problem = manifest.problems[0]
    assert case_id == "c1" and message in problem
    assert list(manifest.table["case_id"]) == ["c2"]
    result = CliRunner().invoke(app, ["check-manifest", "--manifest", str(path)])
    assert result.exit_code == 1 and "c1" in result.output and message in result.output


def test_a_box_filling_the_image_is_valid(folder):
    manifest = read_manifest(_manifest(
        folder, "c1,p1,1,R,transverse,a.png,,,0.1,,,,,0,0,160,120"))
    assert manifest.problems == []


def test_a_box_gives_the_ellipse_to_features_and_model_inputs(folder):
    path = _manifest(folder, "c1,p1,1,R,transverse,a.png,thyroid.png,,0.1,1,50,F,,30,40,90,80")
    manifest = read_manifest(path)
    table, failures = features_table(manifest, progress=False)
    assert failures == []
    # The ellipse inscribed in the 60 x 40 px box: 6 mm long at 0.1 mm pixels.
    assert table.loc[0, "diameter_mm"] == pytest.approx(6.0, abs=0.15)
    assert table.loc[0, "area_mm2"] == pytest.approx(np.pi / 4 * 6 * 4, rel=0.03)
    cases = load_cases(manifest, workers=1, progress=False)
    assert cases.failures == []
    channel = cases.maps[0, CHANNELS.index("nodule_mask")] > 127
    # The 160 x 120 image is padded square and resized to 224: 1.4 model pixels per pixel.
    assert channel.sum() == pytest.approx(np.pi / 4 * 60 * 40 * 1.4**2, rel=0.05)


def test_a_row_with_a_mask_and_a_box_uses_the_mask(folder):
    both = _manifest(folder, "c1,p1,1,R,transverse,a.png,thyroid.png,nodule.png,0.1,1,50,F,,"
                             "100,10,110,20")
    manifest = read_manifest(both)
    row = manifest.table.iloc[0]
    mask = read_nodule_mask(manifest.path(row, "nodule_mask"), (100, 10, 110, 20),
                            (HEIGHT, WIDTH))
    assert mask_box(mask) == (30, 40, 90, 80)
    table, _ = features_table(manifest, progress=False)
    assert table.loc[0, "area_mm2"] == pytest.approx(60 * 40 * 0.01, rel=0.01)
    # The box is no input of such a row: its heatmap is not stale when the box changes.
    mask_only = read_manifest(_manifest(
        folder, "c1,p1,1,R,transverse,a.png,thyroid.png,nodule.png,0.1,1,50,F,,,,,"))
    assert (manifest.model_input_digest(row)
            == mask_only.model_input_digest(mask_only.table.iloc[0]))


def test_a_changed_box_changes_the_model_input_digest(folder):
    rows = [read_manifest(_manifest(folder, f"c1,p1,1,R,transverse,a.png,thyroid.png,,0.1,1,50,"
                                            f"F,,{box}")) for box in ("30,40,90,80", "30,40,90,81")]
    digests = [m.model_input_digest(m.table.iloc[0]) for m in rows]
    assert digests[0] != digests[1]


def _box_manifest(cohort, patients: int) -> pd.DataFrame:
    """The first ``patients`` of the cohort with each nodule mask replaced by its box, and
    absolute paths."""
    table = pd.read_csv(cohort.out_dir / "manifest.csv", dtype=str, keep_default_na=False)
    table = table[table["patient_id"].isin(table["patient_id"].unique()[:patients])].copy()
    boxes = [mask_box(np.asarray(Image.open(cohort.out_dir / path)) >= 128)
             for path in table["nodule_mask"]]
    for index, column in enumerate(BOX_COLUMNS):
        table[column] = [str(box[index]) for box in boxes]
    for column in ("image", "thyroid_mask", "nodule_mask"):
        table[column] = [str(cohort.out_dir / path) for path in table[column]]
    return table


def test_a_cohort_with_boxes_only_registers_and_is_flagged(cohort, atlas, tmp_path):
    with_masks = _box_manifest(cohort, 4)
    with_boxes = with_masks.assign(nodule_mask="")
    with_masks.to_csv(tmp_path / "masks.csv", index=False)
    with_boxes.to_csv(tmp_path / "boxes.csv", index=False)
    masks = register(read_manifest(tmp_path / "masks.csv", allow_outside=True), atlas=atlas,
                     workers=1, progress=False).qc.set_index("nodule")
    boxes = register(read_manifest(tmp_path / "boxes.csv", allow_outside=True), atlas=atlas,
                     workers=1, progress=False).qc.set_index("nodule")
    assert len(boxes) == with_boxes.groupby(["patient_id", "nodule_id"]).ngroups
    assert (boxes["status"] == "warning").all()
    assert boxes["reason"].str.contains(BOX_NOTE, regex=False).all()
    assert not masks["reason"].str.contains(BOX_NOTE, regex=False).any()
    # Each case of the nodule is named in its flag.
    for _, row in boxes.iterrows():
        assert row["transverse_case_id"] in row["reason"]
    # The ellipse has the mask's centre up to the nodule's shape: the registered centres agree.
    columns = ["centre_x_mm", "centre_y_mm", "centre_z_mm"]
    shift = np.linalg.norm(boxes[columns].to_numpy(float) - masks.loc[boxes.index, columns]
                           .to_numpy(float), axis=1)
    assert np.median(shift) < 0.5 and shift.max() < 2.0


def test_a_box_is_in_the_stored_image_before_flip_horizontal(cohort, atlas, tmp_path):
    table = _box_manifest(cohort, 1).head(2).assign(nodule_mask="")
    table.to_csv(tmp_path / "plain.csv", index=False)
    flipped = table.copy()
    for column in ("image", "thyroid_mask"):
        for index, path in flipped[column].items():
            mirrored = np.ascontiguousarray(np.asarray(Image.open(path))[:, ::-1])
            name = f"{flipped.loc[index, 'case_id']}_{column}_f.png"
            Image.fromarray(mirrored).save(tmp_path / name)
            flipped.loc[index, column] = str(tmp_path / name)
    width = np.asarray(Image.open(table["image"].iloc[0])).shape[1]
    x0, x1 = flipped["nodule_box_x0"].astype(int), flipped["nodule_box_x1"].astype(int)
    flipped["nodule_box_x0"], flipped["nodule_box_x1"] = width - x1, width - x0
    flipped["flip_horizontal"] = "1"
    flipped.to_csv(tmp_path / "flipped.csv", index=False)
    a, b = (register(read_manifest(tmp_path / name, allow_outside=True), atlas=atlas, workers=1,
                     progress=False).qc for name in ("plain.csv", "flipped.csv"))
    columns = ["centre_x_mm", "centre_y_mm", "centre_z_mm"]
    np.testing.assert_allclose(a[columns].to_numpy(float), b[columns].to_numpy(float), atol=1e-6)


def test_the_contact_sheet_outlines_the_ellipse_of_a_box(folder):
    manifest = read_manifest(_manifest(folder, "c1,p1,1,R,transverse,a.png,,,0.1,,,,,30,40,90,80"))
    sheet = np.asarray(Image.open(contact_sheet(manifest, folder / "sheet.png", n=1, columns=1,
                                                tile_px=WIDTH)))
    red = np.all(sheet == NODULE_COLOUR, axis=2)
    rows, cols = np.nonzero(red)
    # The tile is the image squeezed to 160 x 160 below a 16 px caption.
    assert cols.min() == 30 and cols.max() == 89
    assert (rows.max() - rows.min() + 1) == pytest.approx(40 * WIDTH / HEIGHT, abs=2)
