"""DICOM import: calibration from the ultrasound regions, cropping to the B-mode region, every
supported photometric interpretation, frames, opaque ids, per-file errors, resuming, the CLI.

Every DICOM file here is written by the tests with pydicom (its wheel ships no ultrasound
files)."""

import io
import json
import os
import stat

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, generate_uid
from typer.testing import CliRunner

from llnm3d.cli import app
from llnm3d.dicom import default_key_path, import_dicom, read_ultrasound
from llnm3d.io import InputError
from llnm3d.manifest import read_manifest

ROWS, COLS = 60, 80
# The B-mode region: rows 12-51, columns 16-63 (inclusive corners, as DICOM stores them).
MIN_X, MIN_Y, MAX_X, MAX_Y = 16, 12, 63, 51
PATIENT_ID, PATIENT_NAME = "PID-0042-SECRET", "Doe^Jane^Q"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
runner = CliRunner()


def screen(seed: int = 0) -> np.ndarray:
    """A (ROWS, COLS) uint8 scanner screen: tissue values 10-200 in the B-mode region, burned-in
    text (255) and a depth scale (254) outside it."""
    rng = np.random.default_rng(seed)
    image = np.zeros((ROWS, COLS), np.uint8)
    image[MIN_Y:MAX_Y + 1, MIN_X:MAX_X + 1] = rng.integers(10, 201, (MAX_Y - MIN_Y + 1,
                                                                      MAX_X - MIN_X + 1))
    image[2:9, 4:70] = 255  # patient name banner
    image[MIN_Y:MAX_Y + 1, 70:74:2] = 254  # depth scale ticks
    return image


def bmode(image: np.ndarray) -> np.ndarray:
    return image[MIN_Y:MAX_Y + 1, MIN_X:MAX_X + 1]


def region(delta_x_cm=0.0125, delta_y_cm=0.0125, units=(3, 3), data_type=1) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = 1
    item.RegionDataType = data_type
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = MIN_X, MIN_Y
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = MAX_X, MAX_Y
    item.PhysicalUnitsXDirection, item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta_x_cm, delta_y_cm
    return item


def ultrasound(pixels: np.ndarray, photometric: str = "MONOCHROME2", *, regions=None,
               patient_id=PATIENT_ID, patient_name=PATIENT_NAME, study=None,
               **attributes) -> Dataset:
    """An ultrasound image dataset with ``pixels`` stored as ``photometric``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = US_IMAGE_STORAGE
    ds.SOPClassUID = US_IMAGE_STORAGE
    ds.PatientID, ds.PatientName = patient_id, patient_name
    ds.InstitutionName = "Secret Hospital"
    ds.AccessionNumber = "ACC-777-SECRET"
    ds.StudyInstanceUID = study or generate_uid()
    ds.set_pixel_data(pixels, "PALETTE COLOR" if photometric == "PALETTE COLOR"
                      else photometric, 8)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SequenceOfUltrasoundRegions = Sequence([region()] if regions is None else regions)
    for name, value in attributes.items():
        setattr(ds, name, value)
    return ds


def save(ds: Dataset, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def encode(gray: np.ndarray, photometric: str) -> Dataset:
    """A dataset whose pixels show ``gray`` once decoded and converted to grayscale."""
    if photometric == "MONOCHROME2":
        return ultrasound(gray)
    if photometric == "MONOCHROME1":
        return ultrasound(255 - gray, "MONOCHROME1")
    if photometric == "RGB":
        return ultrasound(np.stack([gray] * 3, axis=-1), "RGB")
    neutral = np.full_like(gray, 128)
    if photometric == "YBR_FULL":
        return ultrasound(np.stack([gray, neutral, neutral], axis=-1), "YBR_FULL")
    if photometric == "YBR_FULL_422":
        ds = ultrasound(np.stack([gray, neutral, neutral], axis=-1), "YBR_FULL")
        pairs = gray.reshape(-1, 2)  # 4:2:2 stores Y1 Y2 Cb Cr per pair of pixels
        ds.PixelData = np.column_stack([pairs, neutral.reshape(-1, 2)]).astype(np.uint8).tobytes()
        ds.PhotometricInterpretation = "YBR_FULL_422"
        return ds
    assert photometric == "PALETTE COLOR"
    ds = ultrasound(gray, "PALETTE COLOR")
    ramp = (np.arange(256, dtype=np.uint16) * 257).tobytes()  # a 16-bit gray palette
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", ramp)
    return ds


def png(out, manifest: pd.DataFrame, index: int = 0) -> np.ndarray:
    with Image.open(out / manifest["image"].iloc[index]) as image:
        assert image.mode == "L"
        return np.asarray(image)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL",
                                         "YBR_FULL_422", "PALETTE COLOR"])
def test_every_photometric_interpretation_gives_the_b_mode_region_in_gray(photometric,
                                                                          tmp_path):
    gray = screen()
    save(encode(gray, photometric), tmp_path / "in" / "a.dcm")
    result = import_dicom(tmp_path / "in", tmp_path / "out", progress=False)
    assert result.failures == [] and result.imported == 1
    image = png(tmp_path / "out", result.manifest)
    # Exactly the B-mode region: no banner (255) or scale (254) pixel reaches the PNG.
    np.testing.assert_array_equal(image, bmode(gray))
    assert image.max() <= 200


def test_colour_becomes_bt601_luma(tmp_path):
    rgb = np.zeros((ROWS, COLS, 3), np.uint8)
    rgb[MIN_Y:MAX_Y + 1, MIN_X:MAX_X + 1] = (255, 0, 0)
    rgb[MIN_Y:MAX_Y + 1, 40:MAX_X + 1] = (0, 0, 255)
    save(ultrasound(rgb, "RGB"), tmp_path / "in" / "doppler.dcm")
    result = import_dicom(tmp_path / "in", tmp_path / "out", progress=False)
    image = png(tmp_path / "out", result.manifest)
    assert set(np.unique(image)) == {76, 29}  # 0.299 * 255 and 0.114 * 255


def test_jpeg_compressed_ybr_full_422_decodes_with_the_installed_pillow(tmp_path):
    # How most scanners store ultrasound: JPEG baseline, YBR_FULL_422.
    rgb = np.stack([screen()] * 3, axis=-1)
    rgb[16:32, 24:40] = (255, 0, 0)  # whole 8x8 JPEG blocks of red: luma 76
    encoded = io.BytesIO()
    Image.fromarray(rgb).save(encoded, format="JPEG", quality=95, subsampling=1)  # 4:2:2
    ds = ultrasound(rgb, "RGB")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([encoded.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "YBR_FULL_422"
    save(ds, tmp_path / "in" / "jpeg.dcm")
    result = import_dicom(tmp_path / "in", tmp_path / "out", progress=False)
    assert result.failures == []
    image = png(tmp_path / "out", result.manifest).astype(int)
    expected = bmode(rgb @ np.array([0.299, 0.587, 0.114]))
    assert image.shape == expected.shape
    assert np.abs(image - expected).mean() < 3  # lossy, so close rather than equal
    assert abs(image[18 - MIN_Y:30 - MIN_Y, 26 - MIN_X:38 - MIN_X].mean() - 76) < 3


def test_spacing_is_converted_from_cm_and_side_and_view_come_from_attributes(tmp_path):
    view = Dataset()
    view.CodeMeaning = "Transverse"
    ds = ultrasound(screen(), ImageLaterality="R", PatientSex="F", PatientAge="045Y",
                    ViewCodeSequence=Sequence([view]))
    ds.SequenceOfUltrasoundRegions = Sequence([region(0.0125, 0.0125)])
    image = ultrasound(screen(), PatientAge="095Y")
    image.SequenceOfUltrasoundRegions = Sequence([region(0.0080, 0.0080)])
    save(ds, tmp_path / "in" / "a.dcm")
    save(image, tmp_path / "in" / "b.dcm")
    table = import_dicom(tmp_path / "in", tmp_path / "out", progress=False).manifest
    assert table["pixel_spacing_mm"].tolist() == ["0.125", "0.08"]
    assert table[["side", "view", "sex", "age"]].values.tolist() == [
        ["R", "transverse", "F", "45"], ["", "", "", "90"]]  # ages over 89 as 90


def test_multi_frame_takes_the_middle_frame_unless_told(tmp_path):
    frames = np.stack([screen() // 2 + 20 * i for i in range(5)])
    save(ultrasound(frames), tmp_path / "in" / "cine.dcm")
    save(ultrasound(screen()), tmp_path / "in" / "still.dcm")
    middle = import_dicom(tmp_path / "in", tmp_path / "middle", progress=False)
    assert middle.failures == []
    cine = middle.manifest[middle.manifest["frames"] == "5"].index[0]
    assert middle.manifest.loc[cine, "frame"] == "2"
    np.testing.assert_array_equal(png(tmp_path / "middle", middle.manifest, cine),
                                  bmode(frames[2]))

    last = import_dicom(tmp_path / "in", tmp_path / "last", frame=4, progress=False)
    cine = last.manifest[last.manifest["frames"] == "5"].index[0]
    np.testing.assert_array_equal(png(tmp_path / "last", last.manifest, cine),
                                  bmode(frames[4]))
    assert last.manifest["frame"].tolist().count("0") == 1  # the still image's only frame

    beyond = import_dicom(tmp_path / "in", tmp_path / "beyond", frame=7, progress=False)
    assert len(beyond.manifest) == 1 and [f for f, _ in beyond.failures] == ["cine.dcm"]
    assert "has 5 frames" in beyond.failures[0][1]


def test_ids_are_opaque_and_nothing_identifying_reaches_the_cohort(tmp_path):
    study = generate_uid()
    datasets = [ultrasound(screen(i), study=study) for i in range(2)]
    datasets.append(ultrasound(screen(2), patient_id="OTHER-77", patient_name="Roe^Richard"))
    for index, ds in enumerate(datasets):
        save(ds, tmp_path / "in" / "Doe_Jane" / f"{index}.dcm")
    out = tmp_path / "out"
    result = import_dicom(tmp_path / "in", out, progress=False)
    table = result.manifest
    assert table["patient_id"].nunique() == 2 and table["study_id"].nunique() == 2
    assert table.loc[:1, "patient_id"].nunique() == 1  # one patient's two images share an id
    secrets = [PATIENT_ID, "Doe", "Jane", "Roe", "Richard", "OTHER-77", "Secret Hospital",
               "ACC-777", study, *[ds.SOPInstanceUID for ds in datasets]]
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for text in secrets:
                assert text.encode() not in data, (path, text)
    # The key, outside the cohort and private to its owner, maps the ids back.
    key = json.loads(result.key_path.read_text())
    assert result.key_path == default_key_path(out) and not result.key_path.is_relative_to(out)
    assert stat.S_IMODE(os.stat(result.key_path).st_mode) == 0o600
    entry = key["cases"][table["case_id"].iloc[0]]
    assert entry["PatientID"] == PATIENT_ID and entry["file"] == "Doe_Jane/0.dcm"
    # Another key gives other ids for the same patients.
    other = import_dicom(tmp_path / "in", tmp_path / "other", progress=False)
    assert not set(other.manifest["patient_id"]) & set(table["patient_id"])

    with pytest.raises(InputError, match="must lie outside the cohort folder"):
        import_dicom(tmp_path / "in", out, key_path=out / "key.json", progress=False)


def broken_folder(folder):
    """One good file and one of each broken kind; returns the expected reason per file."""
    save(ultrasound(screen()), folder / "good.dcm")
    no_regions = ultrasound(screen())
    del no_regions.SequenceOfUltrasoundRegions
    save(no_regions, folder / "no_regions.dcm")
    save(ultrasound(screen(), regions=[region(0.0, 0.0)]), folder / "zero.dcm")
    save(ultrasound(screen(), regions=[region(-0.01, -0.01)]), folder / "negative.dcm")
    save(ultrasound(screen(), regions=[region(0.0125, 0.02)]), folder / "unequal.dcm")
    save(ultrasound(screen(), regions=[region(units=(4, 3))]), folder / "seconds.dcm")
    save(ultrasound(screen(), regions=[region(data_type=2)]), folder / "doppler_only.dcm")
    save(ultrasound(screen(), regions=[region(), region()]), folder / "split.dcm")
    too_wide = region()
    too_wide.RegionLocationMaxX1 = COLS + 10
    save(ultrasound(screen(), regions=[too_wide]), folder / "beyond.dcm")
    save(ultrasound(screen(), "PALETTE COLOR"), folder / "no_palette.dcm")
    good = pydicom.dcmread(folder / "good.dcm")
    good.InstanceNumber = 2  # other bytes, the same image
    save(good, folder / "good_copy.dcm")
    unsupported = ultrasound(np.stack([screen()] * 3, axis=-1), "RGB")
    unsupported.PhotometricInterpretation = "YBR_PARTIAL_420"
    save(unsupported, folder / "partial.dcm")
    compressed = ultrasound(screen())
    compressed.file_meta.TransferSyntaxUID = JPEGLSLossless
    compressed.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    compressed["PixelData"].VR = "OB"
    save(compressed, folder / "jpegls.dcm")
    (folder / "notes.txt").write_text("Doe, Jane: thyroid nodule\n")
    return {"no_regions.dcm": "no Sequence of Ultrasound Regions (0018,6011)",
            "zero.dcm": "PhysicalDeltaX of the B-mode region is 0.0 cm",
            "negative.dcm": "a pixel size must be positive",
            "unequal.dcm": "pixels are not square (0.125 mm wide, 0.2 mm high)",
            "seconds.dcm": "PhysicalUnitsXDirection of the B-mode region is 4 (seconds)",
            "doppler_only.dcm": "no B-mode region (RegionDataType 1, 2D)",
            "split.dcm": "2 B-mode regions (a split screen)",
            "beyond.dcm": "columns 16-90) extends beyond the 60x80 image",
            "no_palette.dcm": "malformed DICOM attributes",
            "good_copy.dcm": "the same image (SOP Instance UID) as good.dcm",
            "partial.dcm": "unsupported photometric interpretation 'YBR_PARTIAL_420'",
            "jpegls.dcm": "compressed as JPEG-LS Lossless Image Compression",
            "notes.txt": "not a DICOM file"}


def test_each_broken_file_fails_by_name_while_the_rest_import(tmp_path):
    expected = broken_folder(tmp_path / "in")
    result = import_dicom(tmp_path / "in", tmp_path / "out", progress=False)
    assert result.imported == 1 and len(result.manifest) == 1
    reasons = dict(result.failures)
    assert sorted(reasons) == sorted(expected)
    for name, reason in expected.items():
        assert reason in reasons[name], (name, reasons[name])
    assert "no decoder for it is installed" in reasons["jpegls.dcm"]
    assert len(list((tmp_path / "out" / "images").iterdir())) == 1


def test_rerun_resumes_keeps_hand_edits_and_refuses_another_frame(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    save(ultrasound(screen(0)), source / "a.dcm")
    changed = ultrasound(screen(1))
    save(changed, source / "b.dcm")
    first = import_dicom(source, out, progress=False)
    assert (first.imported, first.reused) == (2, 0)
    assert any("2 of 2 images have no view" in note for note in first.notes)
    manifest = out / "manifest.csv"
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    table["view"], table["nodule_id"] = "transverse", "1"
    table.to_csv(manifest, index=False)
    images = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}

    save(ultrasound(screen(2)), source / "c.dcm")
    second = import_dicom(source, out, progress=False)
    assert (second.imported, second.reused) == (1, 2)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()
            if p.name in images} == images
    kept = second.manifest.set_index("case_id").loc[table["case_id"]]
    assert (kept["view"] == "transverse").all() and (kept["nodule_id"] == "1").all()
    assert second.manifest["case_id"].tolist()[:2] == table["case_id"].tolist()

    # A changed file is imported again under its id and keeps the cells filled in by hand.
    changed.PixelData = screen(3).tobytes()
    save(changed, source / "b.dcm")
    third = import_dicom(source, out, progress=False)
    assert (third.imported, third.reused) == (1, 2) and len(third.manifest) == 3
    row = third.manifest.set_index("case_id").loc[table["case_id"].iloc[1]]
    assert (row["view"], row["nodule_id"]) == ("transverse", "1")
    np.testing.assert_array_equal(png(out, third.manifest, 1), bmode(screen(3)))

    with pytest.raises(InputError, match="imported with"):
        import_dicom(source, out, frame=3, progress=False)


def test_annotations_fill_what_dicom_cannot_tell_and_the_manifest_validates(tmp_path):
    source, out = tmp_path / "in", tmp_path / "out"
    save(ultrasound(screen(0), ImageLaterality="L"), source / "n1" / "trans.dcm")
    save(ultrasound(screen(1), ImageLaterality="L"), source / "n1" / "long.dcm")
    annotations = tmp_path / "annotations.csv"
    annotations.write_text("file,nodule_id,view,label\n"
                           "n1/trans.dcm,1,transverse,1\nn1/long.dcm,1,longitudinal,1\n"
                           "missing.dcm,2,transverse,0\n")
    result = import_dicom(source, out, annotations=annotations, progress=False)
    checked = read_manifest(out / "manifest.csv")
    assert checked.problems == [] and len(checked.table) == 2
    assert sorted(checked.table["view"]) == ["longitudinal", "transverse"]
    assert set(checked.table["side"]) == {"L"} and set(checked.table["label"]) == {1}
    assert any("1 annotation row(s) match no imported file" in n for n in result.notes)
    assert checked.table["pixel_spacing_mm"].tolist() == [0.125, 0.125]
    assert read_ultrasound(source / "n1" / "trans.dcm").pixels.shape == (40, 48)


def test_cli_exit_codes(tmp_path):
    source = tmp_path / "in"
    save(ultrasound(screen()), source / "good.dcm")
    ok = runner.invoke(app, ["import-dicom", str(source), "--out", str(tmp_path / "ok")])
    assert ok.exit_code == 0, ok.output
    assert "1 images" in ok.stdout and "keep it private" in ok.stdout

    (source / "broken.dcm").write_bytes(b"not dicom at all")
    some = runner.invoke(app, ["import-dicom", str(source), "--out", str(tmp_path / "some")])
    assert some.exit_code == 1
    failed = [line for line in some.stderr.splitlines() if line.startswith("failed:")]
    assert failed == ["failed: file broken.dcm: not a DICOM file (no 'DICM' file header)"]

    missing = runner.invoke(app, ["import-dicom", str(tmp_path / "nowhere"), "--out",
                                  str(tmp_path / "x")])
    assert missing.exit_code == 2
    assert missing.stderr.strip() == f"error: {tmp_path / 'nowhere'}: DICOM folder not found"
    negative = runner.invoke(app, ["import-dicom", str(source), "--out", str(tmp_path / "y"),
                                   "--frame", "-1"])
    assert negative.exit_code == 2 and "frame must be an integer >= 0" in negative.stderr
