import json

import numpy as np
import pytest
import torch

from llnm3d.io import InputError
from llnm3d.models.features import MODEL_FEATURES
from llnm3d.models.inputs import CHANNELS
from llnm3d.models.model import (
    CONFIGS,
    BidirectionalBlock,
    Block,
    LLNMNet,
    config_named,
    load_model,
    parameter_count,
    save_model,
)
from llnm3d.models.text import VOCAB_SIZE

TINY = dict(hidden=32, n_layers=3, n_bidirectional=2, n_heads=4, mlp_dim=64, dropout=0.0)


def inputs(batch=2, seed=0, config=None):
    generator = torch.Generator().manual_seed(seed)
    config = config or config_named("small")
    return {
        "image": torch.rand(batch, 5, 224, 224, generator=generator),
        "report_tokens": torch.randint(1, VOCAB_SIZE, (batch, config.report_length),
                                       generator=generator),
        "features": torch.randn(batch, len(MODEL_FEATURES), generator=generator),
        "sex": torch.tensor([0, 1] * (batch // 2) + [2] * (batch % 2)),
        "age": torch.rand(batch, generator=generator) * 50 + 20,
    }


def test_small_config_forward_shape_and_size():
    model = LLNMNet(config_named("small")).eval()
    assert model(**inputs()).shape == (2, 2)
    assert parameter_count(model) < 2_000_000  # bundled weights stay a few MB


@pytest.mark.slow
def test_full_config_forward_shape():
    model = LLNMNet(CONFIGS["full"]).eval()
    assert 100e6 < parameter_count(model) < 200e6
    with torch.no_grad():
        assert model(**inputs(batch=1, config=CONFIGS["full"])).shape == (1, 2)


def test_full_config_is_the_studys_best():
    full = CONFIGS["full"]
    assert (full.hidden, full.n_layers, full.n_heads, full.mlp_dim, full.n_bidirectional) == \
        (768, 16, 12, 3072, 4)
    assert full.image_size == 224 and full.patch_size == 16 and full.n_image_tokens == 197


@pytest.mark.parametrize("n_bidirectional", [0, 1, 3])
def test_bidirectional_block_count_is_honoured(n_bidirectional):
    model = LLNMNet(config_named("small", **{**TINY, "n_bidirectional": n_bidirectional}))
    assert sum(isinstance(m, BidirectionalBlock) for m in model.modules()) == n_bidirectional
    assert sum(isinstance(m, Block) for m in model.modules()) == 3 - n_bidirectional
    assert model(**inputs()).shape == (2, 2)


def test_gradients_reach_every_modality():
    model = LLNMNet(config_named("small", **TINY))
    batch = inputs()
    batch["image"].requires_grad_(True)
    batch["features"].requires_grad_(True)
    batch["age"].requires_grad_(True)
    model(**batch)[:, 1].sum().backward()
    assert batch["image"].grad.abs().sum() > 0
    assert batch["features"].grad.abs().sum() > 0
    assert batch["age"].grad.abs().sum() > 0
    used_words = batch["report_tokens"].unique()
    assert model.report_embedding.weight.grad[used_words].abs().sum() > 0
    assert model.sex_embedding.weight.grad[:2].abs().sum() > 0


def test_missing_inputs_are_handled_explicitly():
    model = LLNMNet(config_named("small", **TINY)).eval()
    batch = inputs()
    with torch.no_grad():
        bare = model(batch["image"])
        nan_features = model(batch["image"], features=torch.full((2, len(MODEL_FEATURES)),
                                                                 float("nan")))
    assert torch.isfinite(bare).all()
    assert torch.allclose(bare, nan_features)


def test_precomputed_report_embeddings():
    config = config_named("small", **{**TINY, "report_embedding_dim": 24})
    model = LLNMNet(config).eval()
    embeddings = torch.randn(2, 10, 24)
    assert model(inputs()["image"], report_embeddings=embeddings).shape == (2, 2)
    plain = LLNMNet(config_named("small", **TINY))
    with pytest.raises(InputError, match="report token ids"):
        plain(inputs()["image"], report_embeddings=embeddings)


def test_save_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    model = LLNMNet(config_named("small", **TINY)).eval()
    model.feature_mean.fill_(0.5)
    save_model(model, tmp_path / "m", metadata={"view": "transverse"})
    assert not list(tmp_path.glob("*.pt*")) and (tmp_path / "m.safetensors").exists()
    loaded, record = load_model(tmp_path / "m")
    assert record["view"] == "transverse" and record["config"]["hidden"] == 32
    batch = inputs()
    with torch.no_grad():
        assert torch.equal(model(**batch), loaded(**batch))


def test_invalid_configs_are_refused():
    with pytest.raises(InputError, match="divisible"):
        LLNMNet(config_named("small", hidden=30, n_heads=4))
    with pytest.raises(InputError, match="n_bidirectional"):
        LLNMNet(config_named("small", n_layers=2, n_bidirectional=3))
    with pytest.raises(InputError, match="unknown model config"):
        config_named("huge")


def test_patch_map_layout():
    model = LLNMNet(config_named("small", **TINY))
    tokens = torch.arange(197, dtype=torch.float32)[None, :, None].expand(1, 197, 32)
    patch_map = model.patch_map(tokens)
    assert patch_map.shape == (1, 32, 14, 14)
    assert patch_map[0, 0, 0, 0] == 1 and patch_map[0, 0, 0, 1] == 2  # row-major, cls dropped
    assert patch_map[0, 0, 1, 0] == 15
    assert np.isclose(float(patch_map[0, 0, 13, 13]), 196)


IMAGE_ONLY = ("bmode", "capsule_proximity", "thyroid_mask_given")


def test_a_model_reads_only_the_channels_its_config_names(tmp_path):
    torch.manual_seed(0)
    config = config_named("small", **TINY, channels=IMAGE_ONLY)
    model = LLNMNet(config).eval()
    assert model.patch_embedding.in_channels == 3
    batch = inputs()
    nodule_hidden = {**batch, "image": batch["image"].clone()}
    nodule_hidden["image"][:, [2, 3]] = 0.0  # the nodule channels, which it does not read
    bmode_hidden = {**batch, "image": batch["image"].clone()}
    bmode_hidden["image"][:, 0] = 0.0
    with torch.no_grad():
        assert torch.equal(model(**batch), model(**nodule_hidden))
        assert not torch.allclose(model(**batch), model(**bmode_hidden))
    save_model(model, tmp_path / "m")
    loaded, record = load_model(tmp_path / "m")
    assert record["config"]["channels"] == list(IMAGE_ONLY)
    assert loaded.config.channels == IMAGE_ONLY
    with torch.no_grad():
        assert torch.equal(model(**batch), loaded(**batch))


def test_records_from_before_named_channels_read_every_channel(tmp_path):
    model = LLNMNet(config_named("small", **TINY)).eval()
    save_model(model, tmp_path / "m")
    record = json.loads((tmp_path / "m.json").read_text())
    del record["config"]["channels"]
    record["config"]["in_channels"] = 5
    (tmp_path / "m.json").write_text(json.dumps(record))
    loaded, _ = load_model(tmp_path / "m")
    assert loaded.config.channels == CHANNELS and loaded.channel_index is None


@pytest.mark.parametrize("channels", [(), ("bmode", "bmode"), ("bmode", "doppler")])
def test_unknown_empty_or_repeated_channels_are_refused(channels):
    with pytest.raises(InputError, match="model channels"):
        LLNMNet(config_named("small", **TINY, channels=channels))


def test_nodule_head_gives_two_logits_per_patch_and_only_when_built():
    model = LLNMNet(config_named("small", **TINY, nodule_head=True)).eval()
    with torch.no_grad():
        logits, nodule = model(**inputs(), return_nodule=True)
        assert logits.shape == (2, 2) and nodule.shape == (2, 2, 14, 14)
        assert torch.equal(model(**inputs()), logits)
    with pytest.raises(InputError, match="without a nodule head"):
        LLNMNet(config_named("small", **TINY))(**inputs(), return_nodule=True)


def test_conv_stem_gives_one_token_per_patch_from_local_evidence(tmp_path):
    torch.manual_seed(0)
    model = LLNMNet(config_named("small", **TINY, stem="conv")).eval()
    batch = inputs()
    with torch.no_grad():
        tokens = model.patch_embedding(batch["image"])
        assert tokens.shape == (2, 32, 14, 14)
        # A change inside one 16x16 patch reaches that token and its neighbours only (the 3x3
        # convolutions see a little past the patch edge), never the far side of the image.
        changed = batch["image"].clone()
        changed[:, :, 16 * 5:16 * 6, 16 * 7:16 * 8] += 1.0
        moved = (model.patch_embedding(changed) - tokens).abs().amax(dim=(0, 1))
        assert moved[5, 7] > 0 and moved[5, 8] > 0
        assert float(moved[:3].max()) == 0.0 and float(moved[:, :5].max()) == 0.0
    save_model(model, tmp_path / "m")
    loaded, record = load_model(tmp_path / "m")
    assert record["config"]["stem"] == "conv"
    with torch.no_grad():
        assert torch.equal(model(**batch), loaded(**batch))
    with pytest.raises(InputError, match="power-of-two"):
        LLNMNet(config_named("small", **TINY, stem="conv", image_size=240, patch_size=12))
    with pytest.raises(InputError, match="unknown image stem"):
        LLNMNet(config_named("small", **TINY, stem="resnet"))
