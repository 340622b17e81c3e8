import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from llnm3d.cli import app

runner = CliRunner()
COMMANDS = ["atlas", "phantom", "section", "check-manifest", "contact-sheet", "features",
            "train", "heatmap", "register", "aggregate", "export", "build-site", "serve",
            "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "llnm3d", "--version"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and result.stdout.startswith("llnm3d ")


def test_usage_error_exits_2():
    assert runner.invoke(app, ["phantom", "--patients", "many", "--out", "x"]).exit_code == 2


def test_invalid_risk_spec_is_one_line_and_exit_2(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"format": "llnm3d-risk-spec/1", "intercept": 0,
                                "terms": [{"type": "linear", "covariate": "shoe_size",
                                           "coefficient": 1}]}))
    result = runner.invoke(app, ["phantom", "--out", str(tmp_path / "c"), "--risk-spec",
                                 str(spec)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "shoe_size" in lines[0] and "spec.json" in lines[0]


@pytest.mark.parametrize("side, view, word", [("X", "transverse", "side"),
                                              ("R", "coronal", "view")])
def test_unknown_side_or_view_exit_2(tmp_path, side, view, word):
    result = runner.invoke(app, ["section", "--side", side, "--view", view, "--level-mm", "0",
                                 "--out", str(tmp_path / "s.png")])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"unknown {word}" in lines[0]


def test_non_writable_output_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    for args in (["atlas", "--out", str(blocker / "atlas")],
                 ["phantom", "--out", str(blocker / "cohort"), "--patients", "1"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "not writable" in lines[0]


def test_atlas_command_writes_files(tmp_path):
    result = runner.invoke(app, ["atlas", "--out", str(tmp_path), "--spacing-mm", "1.0"])
    assert result.exit_code == 0, result.output
    for name in ("labels.nii.gz", "capsule_distance.nii.gz", "capsule.glb", "capsule.stl",
                 "atlas.json"):
        assert (tmp_path / name).stat().st_size > 0


def test_section_command_writes_mask_and_geometry(tmp_path):
    out = tmp_path / "cut.png"
    result = runner.invoke(app, ["section", "--side", "L", "--view", "longitudinal",
                                 "--level-mm", "19", "--out", str(out)])
    assert result.exit_code == 0, result.output
    geometry = json.loads(out.with_suffix(".json").read_text())
    assert geometry["col_dir"] == [0.0, 0.0, -1.0] and geometry["area_mm2"] > 300


def test_phantom_command_and_checks(tmp_path):
    out = tmp_path / "cohort"
    result = runner.invoke(app, ["phantom", "--out", str(out), "--patients", "3", "--seed", "2",
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    manifest = pd.read_csv(out / "manifest.csv")
    assert manifest["patient_id"].nunique() == 3
    check = runner.invoke(app, ["check-manifest", "--manifest", str(out / "manifest.csv")])
    assert check.exit_code == 0 and "0 problem(s)" in check.output
    sheet = runner.invoke(app, ["contact-sheet", "--manifest", str(out / "manifest.csv"),
                                "--out", str(tmp_path / "sheet.png")])
    assert sheet.exit_code == 0 and (tmp_path / "sheet.png").stat().st_size > 0

    manifest.loc[0, "side"] = "middle"
    manifest.to_csv(out / "manifest.csv", index=False)
    check = runner.invoke(app, ["check-manifest", "--manifest", str(out / "manifest.csv")])
    assert check.exit_code == 1
    assert f"{manifest.loc[0, 'case_id']}: unknown side 'middle'" in check.stderr


def test_demo_runs_and_is_idempotent(tmp_path):
    args = ["demo", "--out", str(tmp_path), "--patients", "3"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["patients"] == 3 and summary["images"] == 2 * summary["nodules"]
    assert sum(summary["registration_status"].values()) == summary["nodules"]
    assert summary["registration_centre_error_mm"]["median"] < 3.0
    assert (tmp_path / "site" / "index.html").is_file() and "llnm3d serve" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0
    assert json.loads((tmp_path / "summary.json").read_text()) == summary


def test_features_train_and_heatmap_commands(cohort, model_dir, tmp_path):
    manifest = str(cohort.out_dir / "manifest.csv")
    result = runner.invoke(app, ["features", "--manifest", manifest,
                                 "--out", str(tmp_path / "features.csv")])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "features.csv")
    assert len(table) == len(cohort.manifest) and table["aspect_ratio"].notna().all()

    result = runner.invoke(app, ["train", "--manifest", manifest, "--view", "longitudinal",
                                 "--out", str(tmp_path / "run"), "--epochs", "1",
                                 "--batch-size", "8"])
    assert result.exit_code == 0, result.output
    assert "best epoch 1" in result.output
    assert (tmp_path / "run" / "model.safetensors").exists()

    result = runner.invoke(app, ["heatmap", "--manifest", manifest, "--out",
                                 str(tmp_path / "heat"), "--model-dir", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "heat" / "predictions.csv")) == len(cohort.manifest)

    result = runner.invoke(app, ["register", "--manifest", manifest, "--heatmaps",
                                 str(tmp_path / "heat"), "--out", str(tmp_path / "reg"),
                                 "--workers", "2"])
    assert result.exit_code == 0, result.output
    qc = pd.read_csv(tmp_path / "reg" / "qc.csv")
    assert len(qc) == len(cohort.truth) and (qc["status"] != "failed").all()
    assert qc["probability"].between(0, 1).all()
    # Patches carry the heatmap (the briefly trained model leaves some maps empty).
    peaks = []
    for nodule in qc["nodule"]:
        with np.load(tmp_path / "reg" / "patches" / f"{nodule}.npz") as patch:
            assert patch["heatmap"].dtype == np.float16
            peaks.append(float(patch["heatmap"].max()))
    assert max(peaks) > 0


def test_train_rejects_unknown_view(cohort, tmp_path):
    result = runner.invoke(app, ["train", "--manifest", str(cohort.out_dir / "manifest.csv"),
                                 "--view", "sagittal", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "unknown view" in result.stderr


def test_mismatched_masks_fail_per_case_unless_resized(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((60, 80), 120, np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    (tmp_path / "manifest.csv").write_text(
        "case_id,patient_id,nodule_id,side,view,image,nodule_mask\n"
        "c1,p1,1,,transverse,img.png,mask.png\n")
    args = ["features", "--manifest", str(tmp_path / "manifest.csv"), "--out",
            str(tmp_path / "f.csv")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "c1" in result.stderr and "shape" in result.stderr
    assert runner.invoke(app, [*args, "--resize-masks"]).exit_code == 0


def test_paths_outside_the_cohort_folder_need_the_flag(cohort, tmp_path):
    """A manifest one folder above its images: refused per case unless --allow-outside."""
    manifest = pd.read_csv(cohort.out_dir / "manifest.csv").head(2)
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    for column in ("image", "thyroid_mask", "nodule_mask"):
        manifest[column] = [os.path.relpath(cohort.out_dir / v, folder) for v in manifest[column]]
    manifest.to_csv(folder / "manifest.csv", index=False)
    args = ["features", "--manifest", str(folder / "manifest.csv"), "--out",
            str(tmp_path / "f.csv")]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and "outside the cohort folder" in refused.output
    allowed = runner.invoke(app, [*args, "--allow-outside"])
    assert allowed.exit_code == 0, allowed.output
    assert len(pd.read_csv(tmp_path / "f.csv")) == 2
