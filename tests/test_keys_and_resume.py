"""Ids that cannot share files, and resumes that notice changed inputs.

Every stage names its outputs by id and resumes from what its folder holds; these tests plant
the ways that went wrong with exit 0 (ids that clean to the same name, nodule keys that alias,
a corrected manifest, a changed registration, a truncated file) and check that each stage
computes from what it is given now.
"""

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from llnm3d import aggregate, register
from llnm3d.cli import app
from llnm3d.io import TEMPORARY_MARK, InputError, file_stem
from llnm3d.manifest import read_manifest
from llnm3d.models.heatmap import compute_heatmaps, load_heatmap
from llnm3d.registration import load_registered


def _cohort_copy(cohort, tmp_path, nodules: int | None = None) -> tuple:
    """A writable copy of the small phantom cohort (its first ``nodules`` nodules)."""
    folder = tmp_path / "cohort"
    shutil.copytree(cohort.out_dir, folder)
    table = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    if nodules is not None:
        keys = table[["patient_id", "nodule_id"]].drop_duplicates().head(nodules)
        table = table.merge(keys, on=["patient_id", "nodule_id"])
    return folder, table


def _write(folder, table) -> str:
    table.to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv"


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _nodules(table):
    return table[["patient_id", "nodule_id"]].drop_duplicates().itertuples(index=False)


# -- keys -----------------------------------------------------------------------------------------

def test_case_ids_that_clean_alike_keep_their_own_heatmaps(cohort, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path)
    table = table.head(3).copy()
    table["case_id"] = ["a/b", "a_b", "张三"]
    result = compute_heatmaps(_write(folder, table), tmp_path / "heat", progress=False,
                              workers=1)
    assert result.failures == []
    assert sorted(result.predictions["case_id"]) == sorted(table["case_id"])
    assert len(list((tmp_path / "heat" / "heatmaps").glob("*.npz"))) == 3
    for case_id in table["case_id"]:
        with np.load(tmp_path / "heat" / "heatmaps" / f"{file_stem(case_id)}.npz") as data:
            assert str(data["case_id"]) == case_id
        assert load_heatmap(tmp_path / "heat", case_id).shape == (256, 256)


def test_case_ids_differing_only_in_case_are_refused_by_id(cohort, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path)
    table = table.head(2).copy()
    table["case_id"] = ["Case1", "case1"]
    manifest = read_manifest(_write(folder, table))
    assert list(manifest.table["case_id"]) == ["Case1"]
    assert manifest.problems[0][0] == "case1" and "letter case" in manifest.problems[0][1]


def test_non_ascii_patients_get_separate_patches_and_are_counted_once(cohort, atlas, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path, nodules=2)
    pairs = list(_nodules(table))
    for (patient, nodule), name in zip(pairs, ["张三", "李四"], strict=True):
        rows = (table["patient_id"] == patient) & (table["nodule_id"] == nodule)
        table.loc[rows, ["patient_id", "nodule_id"]] = [name, "1"]
    table["label"] = np.where(table["patient_id"] == "张三", "0", "1")
    result = register(_write(folder, table), atlas=atlas, out_dir=tmp_path / "reg",
                      workers=1, progress=False)
    assert list(result.qc["status"]) == ["ok", "ok"] or set(result.qc["status"]) <= {"ok",
                                                                                      "warning"}
    assert len(list((tmp_path / "reg" / "patches").glob("*.npz"))) == 2
    one, two = (result.patch(key) for key in ("张三-N1", "李四-N1"))
    assert not np.array_equal(one.start_zyx, two.start_zyx) or one.mask.shape != two.mask.shape
    stats = aggregate(tmp_path / "reg", atlas=atlas, estimator="weighted", min_cases=1,
                      permutations=0, progress=False)
    assert stats.summary["nodules"] == 2 and stats.summary["events"] == 1


def test_nodule_keys_that_alias_fail_both_nodules_by_name(cohort, atlas, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path, nodules=3)
    pairs = list(_nodules(table))
    for (patient, nodule), new in zip(pairs, [("X-N1", "2"), ("X", "1-N2")], strict=False):
        rows = (table["patient_id"] == patient) & (table["nodule_id"] == nodule)
        table.loc[rows, ["patient_id", "nodule_id"]] = list(new)
    result = register(_write(folder, table), atlas=atlas, out_dir=tmp_path / "reg",
                      workers=1, progress=False)
    failed = dict(result.failures)
    assert set(failed) == {"X-N1-N2"} and len(result.failures) == 2
    assert all("not unique" in reason and "'X-N1'" in reason and "'1-N2'" in reason
               for _, reason in result.failures)
    assert (result.qc["status"] != "failed").sum() == 1


def test_rows_without_a_nodule_id_are_not_merged_into_one_nodule(cohort, atlas, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path, nodules=2)
    table["patient_id"] = table.loc[0, "patient_id"]
    table["nodule_id"] = ""
    result = register(_write(folder, table), atlas=atlas, workers=1, progress=False)
    assert len(result.failures) == 1 and "nodule_id is empty" in result.failures[0][1]
    assert (result.qc["status"] == "failed").all()


# -- register: resume by content --------------------------------------------------------------

def test_register_redoes_exactly_the_nodules_whose_inputs_changed(cohort, atlas, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path, nodules=3)
    manifest = _write(folder, table)
    out = tmp_path / "reg"
    first = register(manifest, atlas=atlas, out_dir=out, workers=1, progress=False)
    again = register(manifest, atlas=atlas, out_dir=out, workers=1, progress=False)
    assert again.resumed.reused == 3 and again.resumed.changed == []
    patient, nodule = next(_nodules(table))
    rows = (table["patient_id"] == patient) & (table["nodule_id"] == nodule)
    old_label = table.loc[rows, "label"].iloc[0]
    table.loc[rows, "label"] = "1" if old_label == "0" else "0"
    corrected = register(_write(folder, table), atlas=atlas, out_dir=out, workers=1,
                         progress=False)
    key = f"{patient}-N{nodule}"
    assert corrected.resumed.changed == [key] and corrected.resumed.reused == 2
    qc = load_registered(out).qc.set_index("nodule")
    assert qc.loc[key, "label"] == int(table.loc[rows, "label"].iloc[0])
    pd.testing.assert_frame_equal(qc.drop(index=key),
                                  first.qc.set_index("nodule").drop(index=key))


def test_register_redoes_a_changed_mask_and_an_unreadable_patch(cohort, atlas, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path, nodules=3)
    manifest = _write(folder, table)
    out = tmp_path / "reg"
    register(manifest, atlas=atlas, out_dir=out, workers=1, progress=False)
    keys = [f"{p}-N{n}" for p, n in _nodules(table)]
    mask = folder / table.loc[0, "nodule_mask"]
    pixels = np.asarray(Image.open(mask)).copy()
    pixels[:, :-3] = pixels[:, 3:]  # the nodule redrawn 3 pixels to the left
    Image.fromarray(pixels).save(mask)
    broken = out / "patches" / f"{file_stem(keys[2])}.npz"
    broken.write_bytes(broken.read_bytes()[:100])
    leftover = out / "patches" / f".x.npz.123{TEMPORARY_MARK}.npz"
    leftover.write_bytes(b"half")
    result = register(manifest, atlas=atlas, out_dir=out, workers=1, progress=False)
    assert result.resumed.changed == [keys[0]] and result.resumed.unreadable == [keys[2]]
    assert result.resumed.reused == 1 and result.resumed.temporaries_removed == 1
    assert not leftover.exists()
    assert (result.qc["status"] != "failed").all()


# -- heatmap: parameters recorded, resume by content --------------------------------------------

def test_heatmap_refuses_a_folder_made_with_another_layer(cohort, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path)
    manifest = _write(folder, table.head(1))
    compute_heatmaps(manifest, tmp_path / "heat", progress=False, workers=1, layer="fused")
    with pytest.raises(InputError, match="other parameters \\(layer\\)"):
        compute_heatmaps(manifest, tmp_path / "heat", progress=False, workers=1,
                         layer="bidirectional")


def test_heatmap_resume_redoes_changed_and_unreadable_cases(cohort, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path)
    table = table.head(3).copy()
    manifest = _write(folder, table)
    out = tmp_path / "heat"
    first = compute_heatmaps(manifest, out, progress=False, workers=1)
    image = folder / table.loc[0, "image"]
    Image.fromarray(255 - np.asarray(Image.open(image).convert("L"))).save(image)
    truncated = out / "heatmaps" / f"{file_stem(table.loc[1, 'case_id'])}.npz"
    truncated.write_bytes(truncated.read_bytes()[:200])
    (out / "heatmaps" / f".y.npz.1{TEMPORARY_MARK}.npz").write_bytes(b"")
    result = compute_heatmaps(manifest, out, progress=False, workers=1)
    assert result.resumed.changed == [table.loc[0, "case_id"]]
    assert result.resumed.unreadable == [table.loc[1, "case_id"]]
    assert result.resumed.reused == 1 and result.resumed.temporaries_removed == 1
    assert len(result.predictions) == 3 and result.failures == []
    before = first.predictions.set_index("case_id")["probability"]
    after = result.predictions.set_index("case_id")["probability"]
    assert after[table.loc[1, "case_id"]] == pytest.approx(before[table.loc[1, "case_id"]])
    assert after[table.loc[0, "case_id"]] != pytest.approx(before[table.loc[0, "case_id"]])


def test_register_refuses_a_heatmap_made_from_an_older_mask(cohort, atlas, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path, nodules=2)
    manifest = _write(folder, table)
    compute_heatmaps(manifest, tmp_path / "heat", progress=False, workers=1)
    mask = folder / table.loc[0, "nodule_mask"]
    pixels = np.asarray(Image.open(mask)).copy()
    pixels[:, :-3] = pixels[:, 3:]  # redrawn after the heatmaps were made
    Image.fromarray(pixels).save(mask)
    result = register(manifest, heatmaps=tmp_path / "heat", atlas=atlas, workers=1,
                      progress=False)
    key = f"{table.loc[0, 'patient_id']}-N{table.loc[0, 'nodule_id']}"
    assert [k for k, _ in result.failures] == [key]
    assert "heatmap is stale" in result.failures[0][1]


# -- aggregate: a changed registration is never mixed into a finished result -------------------

def test_aggregate_recomputes_when_a_registration_changed(cohort, atlas, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path, nodules=6)
    reg = tmp_path / "reg"
    register(_write(folder, table), atlas=atlas, out_dir=reg, workers=1, progress=False)
    options = dict(atlas=atlas, estimator="weighted", min_cases=1, permutations=20,
                   progress=False, workers=1)
    first = aggregate(reg, out_dir=tmp_path / "stats", **options)
    table["label"] = "1"  # outcomes corrected: every nodule had LLNM
    register(_write(folder, table), atlas=atlas, out_dir=reg, workers=1, progress=False)
    resumed = aggregate(reg, out_dir=tmp_path / "stats", **options)
    fresh = aggregate(reg, out_dir=tmp_path / "fresh", **options)
    assert len(resumed.resumed.changed) == 6 - first.summary["events"]
    assert resumed.summary["events"] == fresh.summary["events"] != first.summary["events"]
    for name, volume in fresh.volumes.items():
        np.testing.assert_array_equal(resumed.volumes[name], volume, err_msg=name)


# -- through the command line -------------------------------------------------------------------

def test_cli_refuses_another_layer_in_one_line_and_keeps_the_heatmaps(cohort, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path)
    manifest = _write(folder, table.head(1))
    out = tmp_path / "heat"
    assert _cli("heatmap", "--manifest", manifest, "--out", out).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = _cli("heatmap", "--manifest", manifest, "--out", out, "--layer", "bidirectional")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: {out} holds `llnm3d heatmap` output made with other parameters (layer); use a "
        "new folder or delete it"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_cli_says_how_many_nodules_it_redid(cohort, tmp_path):
    folder, table = _cohort_copy(cohort, tmp_path, nodules=2)
    out = tmp_path / "reg"
    assert _cli("register", "--manifest", _write(folder, table), "--out", out,
                "--workers", 1).exit_code == 0
    patient, nodule = next(_nodules(table))
    rows = (table["patient_id"] == patient) & (table["nodule_id"] == nodule)
    table.loc[rows, "label"] = "1" if table.loc[rows, "label"].iloc[0] == "0" else "0"
    result = _cli("register", "--manifest", _write(folder, table), "--out", out,
                  "--workers", 1)
    assert result.exit_code == 0, result.output
    assert (f"note: 1 nodule(s) redone because their inputs changed since the last run "
            f"(e.g. '{patient}-N{nodule}')") in result.stdout.splitlines()
