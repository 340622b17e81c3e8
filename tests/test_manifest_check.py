"""check-manifest: misspelt columns, what each stage lacks (by case id), file headers, DICOM
and symlinks, and its exit codes."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from llnm3d.cli import app
from llnm3d.io import InputError
from llnm3d.manifest import read_manifest
from llnm3d.manifest_check import check_manifest

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "llnm-net-samples"
COLUMNS = ["case_id", "patient_id", "nodule_id", "side", "view", "image", "thyroid_mask",
           "nodule_mask", "pixel_spacing_mm", "label", "age", "sex", "report"]


def _run(*args):
    return CliRunner().invoke(app, ["check-manifest", *map(str, args)])


def _png(path: Path, size=(40, 30)) -> str:
    """A white-square-on-black PNG of ``size`` (width, height); its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros(size[::-1], np.uint8)
    pixels[5:15, 5:15] = 255
    Image.fromarray(pixels).save(path)
    return path.name


def _cohort(folder: Path, patients: int = 6, **changes) -> pd.DataFrame:
    """Rows of a complete cohort (two views per nodule, both masks, side, label) in
    ``folder``, with ``changes`` as column -> value for every row."""
    rows = []
    for patient in range(patients):
        for view in ("transverse", "longitudinal"):
            case = f"p{patient}-{view[:5]}"
            for kind in ("image", "thyroid", "nodule"):
                _png(folder / "files" / f"{case}_{kind}.png")
            rows.append({"case_id": case, "patient_id": f"p{patient}", "nodule_id": "1",
                         "side": "LR"[patient % 2], "view": view,
                         "image": f"files/{case}_image.png",
                         "thyroid_mask": f"files/{case}_thyroid.png",
                         "nodule_mask": f"files/{case}_nodule.png", "pixel_spacing_mm": "0.1",
                         "label": str(patient % 2), "age": "50", "sex": "F", "report": ""})
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column, value in changes.items():
        table[column] = value
    return table


def _write(folder: Path, table: pd.DataFrame, name: str = "manifest.csv") -> Path:
    path = folder / name
    table.to_csv(path, index=False)
    return path


def test_a_complete_cohort_is_ready_for_every_stage(tmp_path):
    result = check_manifest(_write(tmp_path, _cohort(tmp_path)))
    assert result.problems == []
    assert [(s.stage, s.status) for s in result.stages] == [
        ("heatmap", "ready"), ("register", "ready"), ("aggregate", "ready"),
        ("train", "not ready")]  # 6 labelled images per view; train needs 10
    assert result.stage("train").reasons == [
        "6 labelled longitudinal images with a nodule mask of the image's size (train needs "
        "10 per view)",
        "6 labelled transverse images with a nodule mask of the image's size (train needs 10 "
        "per view)"]
    output = _run("--manifest", _write(tmp_path, _cohort(tmp_path, patients=10))).output
    assert "20 valid images, 10 patients, 10 nodules, 0 problem(s)" in output
    assert "ready for: heatmap, register, aggregate, train" in output


@pytest.mark.parametrize("typo, column", [("pixel_spacng_mm", "pixel_spacing_mm"),
                                          ("thyroid_msk", "thyroid_mask"), ("lable", "label"),
                                          ("Sex", "sex")])
def test_a_misspelt_column_gets_its_suggestion(tmp_path, typo, column):
    table = _cohort(tmp_path, scanner="GE", split="train", lobe_third="upper",
                    front_back="front", nodule_box="", location_source="")
    path = _write(tmp_path, table.rename(columns={column: typo}))
    assert read_manifest(path).extra_columns == [(typo, column), ("scanner", None)]
    result = _run("--manifest", path)
    assert result.exit_code == 0, result.output
    assert (f"warning: column {typo!r} is not a known column; did you mean {column!r}?"
            in result.output)
    assert "note: extra column 'scanner' kept (read by no stage)" in result.output
    assert result.output.count("warning:") == 1


def test_the_misspelt_column_shows_where_a_stage_needs_it(tmp_path):
    result = check_manifest(_write(tmp_path, _cohort(tmp_path).rename(
        columns={"thyroid_mask": "thyroid_msk", "label": "lable"})))
    assert result.stage("heatmap").ready
    assert result.stage("register").lines() == [
        "register: not ready: 6 nodules lack a thyroid or nodule mask and a coarse location "
        "(lobe_third upper/middle/lower and front_back front/back) (p0-trans, p0-longi, "
        "p1-trans, ...)"]
    assert "the manifest has no label column" in result.stage("aggregate").reasons


def test_a_misspelt_required_column_is_an_input_error_with_its_suggestion(tmp_path):
    path = _write(tmp_path, _cohort(tmp_path).rename(columns={"side": "sdie"}))
    with pytest.raises(InputError, match=r"lacks required column\(s\) side "
                                         r"\(column 'sdie': did you mean 'side'\?\)"):
        read_manifest(path)
    assert _run("--manifest", path).exit_code == 2


def test_the_real_samples_are_ready_for_heatmap_only(tmp_path):
    result = _run("--manifest", SAMPLES / "manifest.csv")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "10 valid images, 10 patients, 10 nodules, 0 problem(s)" in lines
    assert "ready for: heatmap (with --resize-masks)" in lines
    assert "not ready for: register, aggregate, train" in lines
    assert ("register: not ready: 10 nodules lack side (L/R) (benign_1, benign_2, benign_3, "
            "...)") in lines
    assert ("aggregate: not ready: 10 nodules lack a label (0/1) (benign_1, benign_2, "
            "benign_3, ...)") in lines
    assert "note: extra column 'pathology' kept (read by no stage)" in lines
    assert _run("--manifest", SAMPLES / "manifest.csv", "--stage", "heatmap").exit_code == 0
    refused = _run("--manifest", SAMPLES / "manifest.csv", "--stage", "heatmap",
                   "--stage", "register")
    assert refused.exit_code == 1
    assert refused.stderr.splitlines() == ["failed: stage register: not ready"]


def test_nodules_without_side_are_named_by_case(tmp_path):
    table = _cohort(tmp_path)
    table.loc[table["patient_id"].isin(["p1", "p2"]), "side"] = ""
    table.loc[table["case_id"] == "p1-longi", "side"] = "L"
    result = check_manifest(_write(tmp_path, table))
    assert result.stage("heatmap").status == "ready"
    assert result.stage("register").reasons == [
        "2 nodules lack side (L/R) (p1-trans, p2-trans, p2-longi)"]
    assert result.stage("aggregate").reasons == ["needs register, which is not ready"]


def test_coarse_location_makes_register_ready_with_its_option(tmp_path):
    table = _cohort(tmp_path, lobe_third="", front_back="")
    table.loc[table["patient_id"] == "p0", ["thyroid_mask", "lobe_third", "front_back"]] = [
        "", "Middle", "posterior"]
    table.loc[table["patient_id"] == "p1", "thyroid_mask"] = ""
    result = check_manifest(_write(tmp_path, table))
    assert not result.stage("register").ready
    table.loc[table["patient_id"] == "p1", ["lobe_third", "front_back"]] = ["upper", "front"]
    register = check_manifest(_write(tmp_path, table)).stage("register")
    assert register.status == "ready with --allow-coarse-location"
    assert register.reasons[0].startswith(
        "2 nodules lack a thyroid or nodule mask: placed by lobe_third and front_back "
        "(p0-trans, p0-longi, p1-trans, ...)")


def test_mask_size_mismatch_is_reported_at_check_time(tmp_path):
    table = _cohort(tmp_path)
    _png(tmp_path / "files" / "p3-trans_nodule.png", size=(256, 256))
    result = check_manifest(_write(tmp_path, table))
    assert result.problems == []
    assert result.stage("heatmap").lines() == [
        "heatmap: ready with --resize-masks: 1 image has masks of another size than the image "
        "(resized with --resize-masks) (p3-trans)"]
    assert result.stage("register").reasons == [
        "1 nodule has masks of another size than the image (register does not resize) "
        "(p3-trans)"]


def test_an_unreadable_image_is_a_problem_of_its_case(tmp_path):
    table = _cohort(tmp_path)
    (tmp_path / "files" / "p2-longi_image.png").write_text("not an image")
    table.loc[table["patient_id"] == "p5", "image"] = "files/gone.png"  # the whole nodule
    result = _run("--manifest", _write(tmp_path, table))
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "failed: case p5-trans: image file 'files/gone.png' not found",
        "failed: case p5-longi: image file 'files/gone.png' not found",
        "failed: case p2-longi: image 'files/p2-longi_image.png' is not an image format "
        "Pillow can read"]
    assert "9 valid images, 5 patients, 5 nodules, 3 problem(s)" in result.output
    assert ("register: not ready: 2 nodules have a row with a problem (listed above) "
            "(p2-longi, p5-trans)") in result.output


@pytest.mark.parametrize("name, content", [("scan.dcm", b"anything"),
                                           ("scan.png", b"\0" * 128 + b"DICM" + b"\0" * 64)])
def test_dicom_is_refused_per_case_naming_import_dicom(tmp_path, name, content):
    table = _cohort(tmp_path)
    (tmp_path / "files" / name).write_bytes(content)
    table.loc[table["case_id"] == "p4-trans", "image"] = f"files/{name}"
    manifest = read_manifest(_write(tmp_path, table))
    assert manifest.problems == [
        ("p4-trans", f"image 'files/{name}' is DICOM: convert with `llnm3d import-dicom`")]
    assert len(manifest.table) == 11
    result = _run("--manifest", tmp_path / "manifest.csv")
    assert result.exit_code == 1 and "import-dicom" in result.stderr


def test_symlinks_inside_the_folder_are_accepted_and_outside_refused(tmp_path):
    cohort, elsewhere = tmp_path / "cohort", tmp_path / "elsewhere"
    table = _cohort(cohort)
    (cohort / "linked").symlink_to(cohort / "files", target_is_directory=True)
    table.loc[0, "image"] = table.loc[0, "image"].replace("files/", "linked/")
    assert check_manifest(_write(cohort, table)).problems == []

    _png(elsewhere / "outside.png")
    (cohort / "shared").symlink_to(elsewhere, target_is_directory=True)
    table.loc[1, "image"] = "shared/outside.png"
    path = _write(cohort, table)
    (case_id, problem), = read_manifest(path).problems
    assert case_id == table.loc[1, "case_id"]
    assert problem == (f"image path 'shared/outside.png' leads outside the cohort folder "
                       f"(through a symlink, to {elsewhere.resolve() / 'outside.png'}); "
                       "use --allow-outside to allow it")
    assert "../x.png' leads outside the cohort folder; use --allow-outside" in \
        read_manifest(_write(cohort, table.assign(image="../x.png"), "up.csv")).problems[0][1]
    assert read_manifest(path, allow_outside=True).problems == []
    assert _run("--manifest", path, "--allow-outside").exit_code == 0


def test_an_unknown_stage_is_a_usage_error(tmp_path):
    result = _run("--manifest", _write(tmp_path, _cohort(tmp_path)), "--stage", "registr")
    assert result.exit_code == 2
    assert "did you mean 'register'?" in result.stderr
