"""A corpus of broken inputs through the command line: each broken case is named with its
problem, the others complete, and the exit code follows the convention (0 success, 1 some cases
failed, 2 usage or input error)."""

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from llnm3d.cli import app


def _run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def corpus(cohort, tmp_path_factory):
    """The small phantom cohort with one problem planted per case, written as a semicolon CSV
    with a byte-order mark and an unknown column."""
    folder = tmp_path_factory.mktemp("corpus") / "cohort"
    shutil.copytree(cohort.out_dir, folder)
    table = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    table["scanner"] = "GE Logiq"  # an unknown column: kept, harmless
    transverse = table[table["view"] == "transverse"]["case_id"].tolist()
    broken = dict(zip(["truncated", "wrong_size", "grey_mask", "negative_age", "empty_report",
                       "duplicate"], transverse, strict=False))

    def row(case):
        return table.index[table["case_id"] == case][0]

    image = folder / table.loc[row(broken["truncated"]), "image"]
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])
    mask = folder / table.loc[row(broken["wrong_size"]), "nodule_mask"]
    Image.open(mask).resize((100, 80)).save(mask)
    grey = folder / table.loc[row(broken["grey_mask"]), "thyroid_mask"]
    size = Image.open(grey).size
    Image.fromarray(np.tile(np.linspace(0, 255, size[0]).astype(np.uint8),
                            (size[1], 1))).save(grey)
    table.loc[row(broken["negative_age"]), "age"] = "-4"
    table.loc[row(broken["empty_report"]), "report"] = ""
    table = pd.concat([table, table.loc[[row(broken["duplicate"])]]], ignore_index=True)
    with open(folder / "manifest.csv", "w", encoding="utf-8-sig") as handle:
        table.to_csv(handle, sep=";", index=False)
    return folder, table, broken


def test_heatmap_and_register_name_each_broken_case_and_finish_the_rest(corpus, tmp_path):
    folder, table, broken = corpus
    manifest = folder / "manifest.csv"
    result = _run("heatmap", "--manifest", manifest, "--out", tmp_path / "heat")
    assert result.exit_code == 1, result.output
    expected = {"truncated": "truncated", "wrong_size": "differs from image shape",
                "grey_mask": "not a binary mask", "negative_age": "age '-4' must be positive",
                "duplicate": "duplicate case_id"}
    failed = [line for line in result.output.splitlines() if line.startswith("failed:")]
    for problem, words in expected.items():
        lines = [line for line in failed if broken[problem] in line]
        assert lines and words in lines[0], (problem, failed)
    predictions = pd.read_csv(tmp_path / "heat" / "predictions.csv")
    # The first row of a duplicated case id runs; the repeat is reported.
    bad = {broken[p] for p in expected if p != "duplicate"}
    done = set(predictions["case_id"])
    assert broken["empty_report"] in done  # a missing report is missing data, not an error
    assert done == set(table["case_id"]) - bad
    assert len(failed) == len(expected)

    # A NaN heatmap fails its nodule at registration; the others register.
    broken_patients = {case.split("-")[0] for case in broken.values()}
    nan_case = sorted(c for c in done if c.split("-")[0] not in broken_patients)[0]
    path = tmp_path / "heat" / "heatmaps" / f"{nan_case}.npz"
    with np.load(path) as saved:
        arrays = dict(saved)
    arrays["heatmap"][:5] = np.nan
    np.savez(path, **arrays)
    result = _run("register", "--manifest", manifest, "--heatmaps", tmp_path / "heat",
                  "--out", tmp_path / "registered", "--workers", 1)
    assert result.exit_code == 1, result.output
    nan_row = table[table["case_id"] == nan_case].iloc[0]
    nan_key = f"{nan_row['patient_id']}-N{nan_row['nodule_id']}"
    failed = [line for line in result.output.splitlines() if line.startswith("failed:")]
    assert any(nan_key in line and "NaN" in line for line in failed), failed
    qc = pd.read_csv(tmp_path / "registered" / "qc.csv")
    assert (qc["status"] != "failed").sum() >= len(qc) - len(expected) - 1 > 0

    # A patient on both sides of a manifest split stops training before it starts (exit 2).
    patients = sorted(table["patient_id"].unique())
    table["split"] = np.where(table["patient_id"].isin(patients[::3]), "val", "train")
    leaked = table.index[table["patient_id"] == patients[1]][0]
    table.loc[leaked, "split"] = "val"
    split_manifest = folder / "split.csv"
    table.drop_duplicates("case_id").to_csv(split_manifest, index=False)
    result = _run("train", "--manifest", split_manifest, "--view", "transverse", "--out",
                  tmp_path / "model")
    assert result.exit_code == 2 and "patient" in result.output and "both" in result.output


def test_ids_that_clean_alike_through_the_cli_keep_their_own_results(cohort, tmp_path):
    folder = tmp_path / "cohort"
    shutil.copytree(cohort.out_dir, folder)
    table = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False).head(4)
    table["case_id"] = ["a/b", "a_b", "张三\nfailed: forged", "李四"]
    table.to_csv(folder / "ids.csv", index=False)
    result = _run("heatmap", "--manifest", folder / "ids.csv", "--out", tmp_path / "heat")
    assert result.exit_code == 0, result.output
    predictions = pd.read_csv(tmp_path / "heat" / "predictions.csv", dtype=str,
                              keep_default_na=False)
    assert sorted(predictions["case_id"]) == sorted(table["case_id"])
    assert len(list((tmp_path / "heat" / "overlays").glob("*.png"))) == 4


def test_a_full_disk_while_writing_maps_keeps_the_previous_ones(registered, monkeypatch,
                                                                tmp_path):
    from llnm3d import io

    out = tmp_path / "stats"
    args = ("aggregate", "--registered", registered.out_dir, "--out", out, "--estimator",
            "weighted", "--min-cases", 2, "--permutations", 0, "--workers", 1)
    assert _run(*args).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    real = io._write_nifti_file
    calls = []

    def short_write(image, path):  # the disk fills at the third map
        real(image, path)
        calls.append(path)
        if len(calls) >= 3:
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 3])

    monkeypatch.setattr(io, "_write_nifti_file", short_write)
    result = _run(*args)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write ") and (
        "incomplete" in lines[0] and "MB free" in lines[0]), lines
    assert len(calls) > 3  # the maps were all written before any replaced its old version
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
