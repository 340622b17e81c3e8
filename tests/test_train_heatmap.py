import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from llnm3d.io import InputError
from llnm3d.models import train as train_module
from llnm3d.models.heatmap import compute_heatmaps, load_heatmap, overlay
from llnm3d.models.inputs import location_feature_map, to_image_space
from llnm3d.models.model import load_model
from llnm3d.models.train import TrainSettings, check_patient_split, split_by_patient, train

FAST = TrainSettings(epochs=2, batch_size=8, warmup_epochs=1, val_fraction=0.3)


def test_location_map_channels_and_missing_thyroid():
    image = np.full((100, 150), 128, np.uint8)
    nodule = np.zeros((100, 150), bool)
    nodule[40:60, 70:90] = True
    thyroid = np.zeros((100, 150), bool)
    thyroid[20:80, 40:120] = True
    channels, geometry = location_feature_map(image, nodule, thyroid, spacing_mm=0.1)
    assert channels.shape == (5, 224, 224) and channels.dtype == np.float32
    assert channels[0].max() == pytest.approx(128 / 255, abs=1e-3)
    assert channels[1].max() == pytest.approx(1.0, abs=0.05)  # at the capsule
    # the nodule's nearest edge is 20 px = 2 mm from the capsule: exp(-2 mm / 2 mm)
    assert channels[1][channels[2] > 0].max() == pytest.approx(np.exp(-1.0), abs=0.03)
    assert np.array_equal(channels[3], channels[1] * channels[2])
    assert np.all(channels[4] == 1)
    bare, _ = location_feature_map(image, nodule, None, spacing_mm=0.1)
    assert np.all(bare[[1, 3, 4]] == 0)
    assert np.array_equal(bare[[0, 2]], channels[[0, 2]])
    back = to_image_space(channels[2], geometry)
    assert back.shape == (100, 150)
    assert np.mean((back > 0.5) == nodule) > 0.98


def test_split_by_patient_never_leaks_and_guard_fires():
    table = pd.DataFrame({"patient_id": np.repeat([f"p{i}" for i in range(20)], 3)})
    train_index, val_index = split_by_patient(table, 0.25, seed=1)
    assert not set(table.loc[train_index, "patient_id"]) & set(table.loc[val_index, "patient_id"])
    assert len(val_index) == 15
    with pytest.raises(InputError, match="p3.*both sides|both sides.*p3"):
        check_patient_split(["p1", "p3"], ["p3", "p4"])
    table["split"] = ["train"] * 30 + ["val"] * 30
    table.loc[29, "patient_id"] = "p15"  # p15 now on both sides
    with pytest.raises(InputError, match="both sides"):
        split_by_patient(table, 0.25, seed=1)


def test_training_refuses_a_leaky_manifest_split(cohort, tmp_path):
    manifest = pd.read_csv(cohort.out_dir / "manifest.csv")
    # a patient's first nodule in train, their other nodules in validation: a leak
    manifest["split"] = np.where(manifest["nodule_id"] == 1, "train", "val")
    assert manifest.groupby("patient_id")["split"].nunique().max() == 2
    path = cohort.out_dir / "manifest_leaky.csv"
    manifest.to_csv(path, index=False)
    with pytest.raises(InputError, match="both sides"):
        train(path, "transverse", tmp_path, FAST, progress=False, workers=1)


def test_train_saves_safetensors_and_resumes_identically(cohort, tmp_path, monkeypatch):
    manifest = cohort.out_dir / "manifest.csv"
    full = train(manifest, "transverse", tmp_path / "full", FAST, progress=False, workers=1)
    assert list(full.history["epoch"]) == [1, 2]
    assert (tmp_path / "full" / "model.safetensors").exists()
    assert not list((tmp_path / "full").glob("*.pt"))

    calls = {"n": 0}
    real_evaluate = train_module._evaluate

    def killed_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "_evaluate", killed_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(manifest, "transverse", tmp_path / "resumed", FAST, progress=False, workers=1)
    monkeypatch.setattr(train_module, "_evaluate", real_evaluate)
    resumed = train(manifest, "transverse", tmp_path / "resumed", FAST, progress=False,
                    workers=1)
    pd.testing.assert_frame_equal(resumed.history, full.history)
    a, _ = load_model(tmp_path / "full" / "model")
    b, _ = load_model(tmp_path / "resumed" / "model")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name


def test_train_refuses_to_resume_on_corrected_labels_under_the_same_path(cohort, tmp_path):
    import shutil

    folder = tmp_path / "cohort"
    shutil.copytree(cohort.out_dir, folder)
    one_epoch = TrainSettings(epochs=1, batch_size=8, warmup_epochs=1, val_fraction=0.3)
    train(folder / "manifest.csv", "transverse", tmp_path / "model", one_epoch, progress=False,
          workers=1)
    table = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    table.loc[table["view"] == "transverse", "label"] = "1"
    table.to_csv(folder / "manifest.csv", index=False)
    with pytest.raises(InputError, match="different run \\(data_sha256 differ"):
        train(folder / "manifest.csv", "transverse", tmp_path / "model", one_epoch,
              progress=False, workers=1)


def test_heatmaps_files_ranges_and_resume(cohort, model_dir, tmp_path):
    manifest = pd.read_csv(cohort.out_dir / "manifest.csv").head(6)
    manifest.loc[5, "image"] = "images/missing.png"
    path = cohort.out_dir / "manifest_six.csv"
    manifest.to_csv(path, index=False)
    result = compute_heatmaps(path, tmp_path, model_dir=model_dir, batch_size=4,
                              progress=False, workers=1)
    assert [case for case, _ in result.failures] == [manifest.loc[5, "case_id"]]
    predictions = result.predictions
    assert len(predictions) == 5
    assert predictions["probability"].between(0, 1).all()
    assert set(predictions["view"]) == {"transverse", "longitudinal"}
    on_disk = pd.read_csv(tmp_path / "predictions.csv")
    assert list(on_disk.columns) == ["case_id", "patient_id", "nodule_id", "view", "probability",
                                     "heatmap_empty", "model_version"]
    for case_id, image_path in zip(manifest["case_id"][:5], manifest["image"][:5], strict=True):
        heat = load_heatmap(tmp_path, case_id)
        image = np.asarray(Image.open(cohort.out_dir / image_path))
        assert heat.shape == image.shape and heat.dtype == np.float32
        assert 0 <= heat.min() and heat.max() <= 1
        assert (tmp_path / "overlays" / f"{case_id}.png").exists()

    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "heatmaps").glob("*.npz")}
    again = compute_heatmaps(path, tmp_path, model_dir=model_dir, progress=False, workers=1)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "heatmaps").glob("*.npz")}
    assert before == after  # finished cases were skipped
    pd.testing.assert_frame_equal(again.predictions, predictions)


def test_missing_model_is_an_input_error(cohort, tmp_path):
    with pytest.raises(InputError, match="no transverse model"):
        compute_heatmaps(cohort.out_dir / "manifest.csv", tmp_path, model_dir=tmp_path,
                         progress=False, workers=1)


def test_overlay_blends_only_where_hot():
    image = np.full((4, 4), 100, np.uint8)
    heat = np.zeros((4, 4))
    heat[0, 0] = 1.0
    rgb = overlay(image, heat)
    assert rgb.shape == (4, 4, 3) and np.all(rgb[1:, 1:] == 100)
    assert not np.all(rgb[0, 0] == 100)


def test_modality_dropout_hides_inputs_like_real_missing_data():
    from llnm3d.models.train import _drop_modalities

    inputs = {"image": torch.ones(3, 5, 8, 8), "report_tokens": torch.ones(3, 5, dtype=torch.long),
              "age": torch.full((3,), 50.0), "sex": torch.zeros(3, dtype=torch.long)}
    dropped = _drop_modalities(inputs, 1.0, torch.Generator().manual_seed(0))
    assert torch.all(dropped["image"][:, [1, 3, 4]] == 0)
    assert torch.all(dropped["image"][:, [0, 2]] == 1)
    assert torch.all(dropped["report_tokens"] == 0) and torch.isnan(dropped["age"]).all()
    assert torch.all(dropped["sex"] == 2)
    kept = _drop_modalities(inputs, 0.0, torch.Generator().manual_seed(0))
    assert kept is inputs


def test_nodule_dropout_hides_the_nodule_channels_only_at_its_rate():
    from llnm3d.models.train import _drop_modalities

    batch = 4000
    inputs = {"image": torch.ones(batch, 5, 2, 2),
              "report_tokens": torch.ones(batch, 5, dtype=torch.long),
              "age": torch.full((batch,), 50.0), "sex": torch.zeros(batch, dtype=torch.long)}
    dropped = _drop_modalities(inputs, 0.0, torch.Generator().manual_seed(0), nodule_rate=0.3)
    hidden = dropped["image"][:, 2, 0, 0] == 0
    assert 0.27 < hidden.float().mean() < 0.33
    assert torch.all(dropped["image"][hidden][:, [2, 3]] == 0)
    assert torch.all(dropped["image"][~hidden] == 1)
    assert torch.all(dropped["image"][:, [0, 1, 4]] == 1)
    assert torch.equal(dropped["report_tokens"], inputs["report_tokens"])
    assert torch.all(inputs["image"] == 1)  # the caller's batch is left as it was


def test_train_settings_refuse_unknown_channels():
    with pytest.raises(InputError, match="did you mean 'nodule_mask'"):
        TrainSettings(channels=("bmode", "nodule_masks"))
    with pytest.raises(InputError, match="nodule_dropout"):
        TrainSettings(nodule_dropout=1.0)


def test_gradcam_equals_the_librarys_own_run_and_leaves_the_model_trainable(cohort, model_dir):
    from dataclasses import replace

    from pytorch_grad_cam import GradCAMPlusPlus
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from llnm3d.manifest import read_manifest
    from llnm3d.models.cases import load_cases
    from llnm3d.models.heatmap import _BoundInputs, gradcam_batch, load_view_model

    model, _ = load_view_model("transverse", model_dir)
    manifest = read_manifest(cohort.out_dir / "manifest.csv")
    manifest = replace(manifest, table=manifest.table[manifest.table["view"] == "transverse"]
                       .head(4))
    batch = load_cases(manifest, view="transverse", progress=False, workers=1).batch(
        np.arange(4))
    for layer, target in model.gradcam_layers().items():
        library = GradCAMPlusPlus(
            model=_BoundInputs(model, {k: v for k, v in batch.items() if k != "image"}),
            target_layers=[target], reshape_transform=model.patch_map)
        expected = np.nan_to_num(library(input_tensor=batch["image"],
                                         targets=[ClassifierOutputTarget(1)] * 4))
        library.activations_and_grads.release()
        maps, _ = gradcam_batch(model, batch, layer)
        np.testing.assert_allclose(maps, expected, atol=1e-6)
        assert maps.any()
    assert all(p.requires_grad for p in model.parameters())
    assert not any(module._forward_hooks for module in model.modules())


def test_permuted_labels_keep_the_prevalence_and_the_missing():
    from llnm3d.models.train import permuted_labels

    labels = np.array([1, 0, -1, 1, 1, 0, 0, -1, 1, 0] * 50)
    shuffled = permuted_labels(labels, seed=3)
    assert np.array_equal(shuffled == -1, labels == -1)
    assert shuffled.sum() == labels.sum() and not np.array_equal(shuffled, labels)
    assert np.array_equal(shuffled, permuted_labels(labels, seed=3))


def test_nodule_targets_are_the_masked_share_and_proximity_of_each_patch():
    from llnm3d.models.train import _drop_modalities, nodule_targets, nodule_truth

    image = torch.zeros(2, 5, 224, 224)
    image[:, 1] = 0.5  # capsule proximity everywhere
    image[:, 2, 16:32, 32:48] = 1.0  # patch (1, 2) entirely
    image[:, 2, 0:8, 0:16] = 1.0  # half of patch (0, 0)
    image[:, 3] = image[:, 1] * image[:, 2]
    targets = nodule_targets(image, 16)
    assert targets.shape == (2, 2, 14, 14)
    assert targets[0, 0, 1, 2] == 1.0 and targets[0, 0, 0, 0] == 0.5
    assert targets[0, 0].sum() == 1.5 and targets[0, 1].sum() == 0.75
    # Training hides the nodule channels from the model, not from its targets; a hidden
    # thyroid mask leaves no proximity to learn.
    batch = {"image": image, "report_tokens": torch.ones(2, 3, dtype=torch.long),
             "age": torch.full((2,), 50.0), "sex": torch.zeros(2, dtype=torch.long)}
    shown = _drop_modalities(batch, 0.0, torch.Generator().manual_seed(0), nodule_rate=1.0)
    assert not shown["image"][:, 2].any()
    assert torch.equal(nodule_targets(nodule_truth(batch, shown), 16), targets)
    no_thyroid = _drop_modalities(batch, 1.0, torch.Generator().manual_seed(0))
    truth = nodule_targets(nodule_truth(batch, no_thyroid), 16)
    assert torch.equal(truth[:, 0], targets[:, 0]) and not truth[:, 1].any()


def test_training_with_the_nodule_loss_saves_a_model_that_loads(cohort, tmp_path):
    settings = TrainSettings(epochs=1, batch_size=8, warmup_epochs=1, nodule_loss_weight=5.0,
                             channels=("bmode", "capsule_proximity", "thyroid_mask_given"))
    train(cohort.out_dir / "manifest.csv", "transverse", tmp_path, settings, progress=False,
          workers=1)
    model, record = load_model(tmp_path / "model")
    assert record["config"]["nodule_head"] and model.nodule_head is not None
    assert model.config.channels == settings.channels


def test_train_cli_passes_the_input_design(cohort, tmp_path):
    from typer.testing import CliRunner

    from llnm3d.cli import app

    out = CliRunner().invoke(app, [
        "train", "--manifest", str(cohort.out_dir / "manifest.csv"), "--view", "transverse",
        "--out", str(tmp_path), "--epochs", "1", "--batch-size", "8",
        "--channels", "bmode, capsule_proximity", "--nodule-dropout", "0", "--nodule-swap",
        "0.5", "--nodule-loss-weight", "0"])
    assert out.exit_code == 0, out.output
    model, record = load_model(tmp_path / "model")
    assert model.config.channels == ("bmode", "capsule_proximity") and not model.config.nodule_head
    settings = record["training"]["settings"]
    assert (settings["nodule_dropout"], settings["nodule_swap"]) == (0.0, 0.5)
