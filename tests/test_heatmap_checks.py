"""Heatmap sanity checks: input alterations, weight randomisation, metrics, the command."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from llnm3d.cli import app
from llnm3d.io import InputError
from llnm3d.models.heatmap import load_view_model
from llnm3d.models.heatmap_checks import (
    CHECKS,
    alter_inputs,
    check_heatmaps,
    heatmap_masses,
    randomised_model,
    rank_correlations,
)
from llnm3d.models.inputs import CAPSULE, NODULE, NODULE_PROXIMITY, THYROID_GIVEN
from llnm3d.models.model import LLNMNet, config_named, save_model


def _maps(width=160):
    """Two inputs: a nodule left of centre in an image padded on the right to 224."""
    maps = np.zeros((2, 5, 224, 224), np.float32)
    maps[:, CAPSULE, 40:180, 10:150] = 0.5
    maps[:, NODULE, 90:110, 30:50] = 1.0
    maps[:, NODULE_PROXIMITY] = maps[:, CAPSULE] * maps[:, NODULE]
    maps[:, THYROID_GIVEN] = 1.0
    return maps, np.array([width, width])


def test_input_alterations_move_only_the_mask_they_name():
    maps, widths = _maps()
    nodule = maps[0, NODULE] > 0.5
    mirrored = alter_inputs(maps, "nodule_mirrored", widths)
    # Mirrored within the image's 160 columns, not the padded 224: columns 30-49 -> 110-129.
    assert np.array_equal(np.flatnonzero(mirrored[0, NODULE].any(axis=0)), np.arange(110, 130))
    shifted = alter_inputs(maps, "nodule_shifted", widths)
    # A quarter of the width (40 columns) towards the centre line.
    assert np.array_equal(np.flatnonzero(shifted[0, NODULE].any(axis=0)), np.arange(70, 90))
    dilated = alter_inputs(maps, "nodule_dilated", widths)[0, NODULE] > 0.5
    assert dilated[nodule].all() and dilated.sum() > 2 * nodule.sum()
    assert not alter_inputs(maps, "nodule_removed", widths)[:, [NODULE, NODULE_PROXIMITY]].any()
    for altered in (mirrored, shifted):
        # The image, the capsule and the flag stay; proximity follows the moved mask.
        assert np.array_equal(altered[:, [0, CAPSULE, THYROID_GIVEN]],
                              maps[:, [0, CAPSULE, THYROID_GIVEN]])
        np.testing.assert_array_equal(altered[:, NODULE_PROXIMITY],
                                      altered[:, CAPSULE] * altered[:, NODULE])
        assert altered[:, NODULE].sum() == maps[:, NODULE].sum()
    no_thyroid = alter_inputs(maps, "thyroid_removed", widths)
    assert not no_thyroid[:, [CAPSULE, NODULE_PROXIMITY, THYROID_GIVEN]].any()
    assert np.array_equal(no_thyroid[:, [0, NODULE]], maps[:, [0, NODULE]])
    with pytest.raises(InputError, match="did you mean 'nodule_removed'"):
        alter_inputs(maps, "nodule_remove", widths)


def test_masses_and_rank_correlations():
    heat = np.zeros((3, 4, 4))
    heat[0, :2] = 1.0  # half its mass in the top rows
    heat[1] = np.arange(16).reshape(4, 4)
    nodule = np.zeros((3, 4, 4), bool)
    nodule[:, 0] = True
    thyroid = np.ones((3, 4, 4), bool)
    thyroid[2] = False
    inside_nodule, inside_thyroid = heatmap_masses(heat, nodule, thyroid)
    np.testing.assert_allclose(inside_nodule[:2], [0.5, 6 / 120])
    assert np.isnan(inside_nodule[2])  # an empty map has no mass to share
    np.testing.assert_allclose(inside_thyroid[:2], [1.0, 1.0])
    assert np.isnan(heatmap_masses(heat, nodule, None)[1]).all()
    reference = heat[[1, 1, 1]]
    correlation = rank_correlations(np.stack([heat[1], -heat[1], heat[2]]), reference)
    np.testing.assert_allclose(correlation[:2], [1.0, -1.0])
    assert np.isnan(correlation[2])


def test_weight_randomisation_cascades_from_the_top(model_dir):
    model, _ = load_view_model("transverse", model_dir)
    before = {name: p.clone() for name, p in model.named_parameters()}

    def changed(stage):
        random = randomised_model(model, stage, seed=1)
        return {name for name, p in random.named_parameters()
                if not torch.equal(p, before[name])}

    head = changed("random_head")
    assert head == {n for n in before if n.startswith(("head.", "norm."))}
    blocks = changed("random_blocks")
    assert head < blocks and all(n.startswith(("head.", "norm.", "blocks.")) for n in blocks)
    assert changed("random_all") == set(before)
    # The model given is left as it was, and a seed gives the same weights again.
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    one, two = (randomised_model(model, "random_all", seed=1) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(one.parameters(), two.parameters(),
                                                  strict=True))


def test_check_heatmaps_measures_every_check_and_writes_tables(cohort, model_dir, tmp_path):
    result = check_heatmaps(cohort.out_dir / "manifest.csv", tmp_path, model_dir=model_dir,
                            layer="bidirectional", limit=3, batch_size=2, progress=False)
    table = result.per_image
    assert len(table) == 2 * 3 * len(CHECKS) and not result.failures
    unaltered = table[table["check"] == "unaltered"]
    shown = ~unaltered["empty"]
    assert shown.any()
    np.testing.assert_allclose(unaltered.loc[shown, "rank_correlation"], 1.0)
    # The phantom images have thyroid masks: every non-empty map has a thyroid mass.
    assert unaltered.loc[shown, "thyroid_mass"].between(0, 1).all()
    assert table["nodule_mass"].dropna().between(0, 1).all()
    # Removing the thyroid mask gives the inputs of an image without one: not the same map.
    removed = table[table["check"] == "thyroid_removed"]
    assert not np.allclose(removed["probability"], unaltered["probability"].to_numpy())
    summary = result.summary
    assert list(summary["check"][summary["view"] == "transverse"]) == list(CHECKS)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["settings"]["layer"] == "bidirectional" and len(saved["summary"]) == len(
        summary)
    assert (tmp_path / "checks.csv").read_text().count("\n") == len(table) + 1


def test_heatmap_check_cli(cohort, model_dir, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["heatmap-check", "--manifest", str(cohort.out_dir / "manifest.csv"),
                              "--out", str(tmp_path), "--model-dir", str(model_dir),
                              "--checks", "nodule_mirrored,random_all", "--limit", "2"])
    assert out.exit_code == 0, out.output
    assert "nodule_mirrored" in out.output and "random_all" in out.output
    bad = runner.invoke(app, ["heatmap-check", "--manifest", str(cohort.out_dir / "manifest.csv"),
                              "--out", str(tmp_path), "--checks", "nodule_flipped"])
    assert bad.exit_code == 2 and "unknown check 'nodule_flipped'" in bad.output


def test_a_model_without_nodule_channels_sees_only_the_mask_removal(cohort, tmp_path):
    # Mirroring, shifting or dilating the mask changes nothing such a model reads; removing
    # the mask also removes the morphology features measured on it.
    torch.manual_seed(0)
    config = config_named("small", channels=("bmode", "capsule_proximity",
                                             "thyroid_mask_given"))
    for view in ("transverse", "longitudinal"):
        save_model(LLNMNet(config), tmp_path / "models" / view)
    result = check_heatmaps(cohort.out_dir / "manifest.csv", model_dir=tmp_path / "models",
                            checks=("nodule_mirrored", "nodule_removed"), limit=2,
                            progress=False)
    table = result.per_image.set_index(["case_id", "check"])["probability"].unstack()
    np.testing.assert_array_equal(table["nodule_mirrored"], table["unaltered"])
    assert (table["nodule_removed"] != table["unaltered"]).all()


def test_label_randomisation_check_compares_the_other_models_heatmaps(cohort, model_dir,
                                                                      tmp_path):
    # Given the trained models themselves as the "permuted-label" models, the check must find
    # the very same maps: rank correlation 1 wherever the map is not empty.
    result = check_heatmaps(cohort.out_dir / "manifest.csv", model_dir=model_dir,
                            checks=("nodule_removed",), random_labels_model_dir=model_dir,
                            limit=2, progress=False)
    table = result.per_image
    assert set(table["check"]) == {"unaltered", "nodule_removed", "random_labels"}
    same = table[(table["check"] == "random_labels") & ~table["empty"]]
    assert len(same) and np.allclose(same["rank_correlation"], 1.0)
    with pytest.raises(InputError, match="random_labels check needs models"):
        check_heatmaps(cohort.out_dir / "manifest.csv", model_dir=model_dir,
                       checks=("random_labels",), limit=1, progress=False)
