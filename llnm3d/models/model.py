"""LLNM-Net: a multimodal transformer that predicts lateral lymph node metastasis.

The architecture of Shen et al. (2025, supplementary Table S8; IRENE lineage), implemented so
that it runs. Two token streams:

- **image**: one token per 16x16 patch of the 224x224 location feature map
  (:mod:`llnm3d.models.inputs`), from a ViT-style linear patch embedding (``stem="linear"``)
  or from four stride-2 3x3 convolutions (``stem="conv"``, :func:`conv_stem`), plus a class
  token and learned position embeddings (197 tokens);
- **clinical text**: the report's tokens (``report_length``; from :mod:`llnm3d.models.text`, or
  precomputed embeddings ``(B, L, D)`` from any external encoder, projected to the hidden size),
  one token per morphology feature (a scalar times a learned vector plus a bias; a learned
  "missing" vector when the feature is NaN), one token for sex and one for age, each with its
  own learned position embedding.

The first ``n_bidirectional`` blocks are bidirectional multimodal attention blocks: each stream
attends to itself and to the other (image self-attention + image->text cross attention, text
self-attention + text->image cross attention, summed as in the study), then an MLP per stream.
After them the streams are concatenated and the remaining blocks are plain pre-norm
self-attention blocks. A final LayerNorm, the mean over (non-padding) tokens, and a linear head
give two logits (no LLNM, LLNM).

Configurations (:data:`CONFIGS`): ``full`` is the study's best (hidden 768, 16 layers, 12 heads,
MLP 3072, 4 bidirectional blocks); ``small`` is the bundled configuration that trains on a CPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from .._version import __version__
from ..checks import check_choice
from ..io import InputError, atomic_path, read_json, write_json
from .features import MODEL_FEATURES
from .inputs import CHANNELS
from .text import VOCAB_SIZE

AGE_CENTRE_YEARS, AGE_SCALE_YEARS = 45.0, 15.0
SEX_CODES = {"F": 0, "M": 1}
SEX_UNKNOWN = 2


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of LLNM-Net (see :data:`CONFIGS`)."""

    name: str = "small"
    image_size: int = 224
    patch_size: int = 16
    channels: tuple[str, ...] = CHANNELS
    hidden: int = 64
    n_layers: int = 4
    n_bidirectional: int = 2
    n_heads: int = 4
    mlp_dim: int = 128
    dropout: float = 0.1
    vocab_size: int = VOCAB_SIZE
    report_length: int = 48
    report_embedding_dim: int = 0
    n_features: int = len(MODEL_FEATURES)
    n_classes: int = 2
    nodule_head: bool = False
    stem: str = "linear"

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def n_image_tokens(self) -> int:
        return self.grid**2 + 1

    def validate(self) -> ModelConfig:
        unknown = [c for c in self.channels if c not in CHANNELS]
        if unknown or not self.channels or len(set(self.channels)) < len(self.channels):
            raise InputError(f"model channels {list(self.channels)} must be distinct names "
                             f"from {', '.join(CHANNELS)}")
        if self.image_size % self.patch_size:
            raise InputError(f"image size {self.image_size} is not a multiple of the patch size")
        if self.hidden % self.n_heads:
            raise InputError(f"hidden size {self.hidden} is not divisible by {self.n_heads} heads")
        check_choice("image stem", self.stem, STEMS)
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            raise InputError(f"the conv stem needs a power-of-two patch size, not "
                             f"{self.patch_size}")
        if not 0 <= self.n_bidirectional <= self.n_layers:
            raise InputError(f"n_bidirectional {self.n_bidirectional} must be within 0.."
                             f"{self.n_layers}")
        return self


STEMS = ("linear", "conv")


def conv_stem(in_channels: int, hidden: int, patch_size: int) -> nn.Sequential:
    """Image tokens from stride-2 3x3 convolutions (log2(patch_size) of them, widths doubling
    from 16 up to ``hidden``), one token per ``patch_size`` square as the linear patch
    embedding gives. With it, the heatmaps keep more heat in the true nodule under a wrong
    nodule mask and pass the weight-randomisation checks (BENCHMARKS.md, "Input designs")."""
    layers: list[nn.Module] = []
    n_stages = patch_size.bit_length() - 1
    width = in_channels
    for stage in range(n_stages):
        out = hidden if stage == n_stages - 1 else min(hidden, 16 * 2 ** stage)
        layers.append(nn.Conv2d(width, out, 3, stride=2, padding=1))
        if stage < n_stages - 1:
            layers.append(nn.GELU())
        width = out
    return nn.Sequential(*layers)


CONFIGS = {
    "full": ModelConfig(name="full", hidden=768, n_layers=16, n_bidirectional=4, n_heads=12,
                        mlp_dim=3072),
    "small": ModelConfig(),
}


class Attention(nn.Module):
    """Multi-head attention of ``query`` tokens over ``context`` tokens."""

    def __init__(self, hidden: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(hidden, hidden)
        self.key_value = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, query: torch.Tensor, context: torch.Tensor,
                context_padding: torch.Tensor | None = None) -> torch.Tensor:
        batch, n_query, hidden = query.shape
        heads = self.n_heads
        q = self.query(query).view(batch, n_query, heads, -1).transpose(1, 2)
        k, v = self.key_value(context).view(batch, context.shape[1], 2, heads, -1).unbind(2)
        mask = None
        if context_padding is not None:
            mask = ~context_padding[:, None, None, :]
        # No dropout on attention weights: it forces the slow reference kernel on CPU, and the
        # residual dropout regularises enough.
        attended = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2),
                                                  attn_mask=mask)
        return self.out(attended.transpose(1, 2).reshape(batch, n_query, hidden))


def _mlp(hidden: int, mlp_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(mlp_dim, hidden), nn.Dropout(dropout))


class Block(nn.Module):
    """Pre-norm self-attention block over one token sequence."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden)
        self.attention = Attention(config.hidden, config.n_heads)
        self.norm2 = nn.LayerNorm(config.hidden)
        self.mlp = _mlp(config.hidden, config.mlp_dim, config.dropout)

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        normed = self.norm1(tokens)
        tokens = tokens + self.attention(normed, normed, padding)
        return tokens + self.mlp(self.norm2(tokens))


class BidirectionalBlock(nn.Module):
    """Image and text streams, each attending to itself and to the other stream."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h, n, d = config.hidden, config.n_heads, config.dropout
        self.norm1 = nn.LayerNorm(h)  # image tokens (GradCAM++ reads this layer's output)
        self.norm1_text = nn.LayerNorm(h)
        self.image_self = Attention(h, n)
        self.image_to_text = Attention(h, n)
        self.text_self = Attention(h, n)
        self.text_to_image = Attention(h, n)
        self.norm2 = nn.LayerNorm(h)
        self.norm2_text = nn.LayerNorm(h)
        self.mlp = _mlp(h, config.mlp_dim, d)
        self.mlp_text = _mlp(h, config.mlp_dim, d)

    def forward(self, image: torch.Tensor, text: torch.Tensor, text_padding: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        image_n, text_n = self.norm1(image), self.norm1_text(text)
        image = image + self.image_self(image_n, image_n) + self.image_to_text(
            image_n, text_n, text_padding)
        text = text + self.text_self(text_n, text_n, text_padding) + self.text_to_image(
            text_n, image_n)
        image = image + self.mlp(self.norm2(image))
        text = text + self.mlp_text(self.norm2_text(text))
        return image, text


class LLNMNet(nn.Module):
    """LLNM-Net (see the module docstring). Call with :meth:`forward`."""

    # Buffers (register_buffer): declared for the type checker, which cannot see them.
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        h = config.hidden
        # The model reads the channels of the location feature map its config names, in
        # that order; None means all of them, as built.
        self.channel_index = (None if tuple(config.channels) == CHANNELS else
                              [CHANNELS.index(name) for name in config.channels])
        self.patch_embedding = (
            nn.Conv2d(config.in_channels, h, config.patch_size, stride=config.patch_size)
            if config.stem == "linear" else conv_stem(config.in_channels, h, config.patch_size))
        self.class_token = nn.Parameter(torch.zeros(1, 1, h))
        self.image_position = nn.Parameter(torch.zeros(1, config.n_image_tokens, h))
        self.report_embedding = nn.Embedding(config.vocab_size, h, padding_idx=0)
        self.report_projection = (nn.Linear(config.report_embedding_dim, h)
                                  if config.report_embedding_dim else None)
        self.report_position = nn.Parameter(torch.zeros(1, config.report_length, h))
        self.feature_weight = nn.Parameter(torch.zeros(config.n_features, h))
        self.feature_bias = nn.Parameter(torch.zeros(config.n_features, h))
        self.feature_missing = nn.Parameter(torch.zeros(config.n_features, h))
        self.feature_position = nn.Parameter(torch.zeros(1, config.n_features, h))
        self.sex_embedding = nn.Embedding(3, h)
        self.sex_position = nn.Parameter(torch.zeros(1, 1, h))
        self.age_weight = nn.Parameter(torch.zeros(h))
        self.age_bias = nn.Parameter(torch.zeros(h))
        self.age_missing = nn.Parameter(torch.zeros(h))
        self.age_position = nn.Parameter(torch.zeros(1, 1, h))
        # Standardisation of raw morphology features, set from the training data.
        self.register_buffer("feature_mean", torch.zeros(config.n_features))
        self.register_buffer("feature_std", torch.ones(config.n_features))
        self.dropout = nn.Dropout(config.dropout)
        self.bidirectional = nn.ModuleList(
            BidirectionalBlock(config) for _ in range(config.n_bidirectional))
        self.blocks = nn.ModuleList(
            Block(config) for _ in range(config.n_layers - config.n_bidirectional))
        self.norm = nn.LayerNorm(h)
        self.head = nn.Linear(h, config.n_classes)
        # Training only: where the nodule is and how close it comes to the capsule, per patch,
        # read from the image tokens leaving the bidirectional blocks (see :meth:`forward`'s
        # ``return_nodule``).
        self.nodule_head = nn.Linear(h, 2) if config.nodule_head else None
        self._initialise()

    def _initialise(self) -> None:
        for parameter in (self.class_token, self.image_position, self.report_position,
                          self.feature_weight, self.feature_bias, self.feature_missing,
                          self.feature_position, self.sex_position, self.age_position):
            nn.init.trunc_normal_(parameter, std=0.02)
        for parameter in (self.age_weight, self.age_bias, self.age_missing):
            nn.init.normal_(parameter, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def gradcam_layers(self) -> dict[str, nn.Module]:
        """Layers GradCAM++ can read; each one's output starts with the image tokens.

        ``fused`` (the default, :data:`llnm3d.models.DEFAULT_LAYER`): the input, after
        LayerNorm, of the first block over the concatenated streams, whose image tokens have
        taken in the text through every bidirectional block yet still map to their patches.
        ``last``: the last block's input. ``bidirectional``: the image tokens entering the last
        bidirectional block. Without plain blocks, ``fused`` and ``last`` fall back to
        ``bidirectional``. BENCHMARKS.md compares them on held-out phantom images.
        """
        # A ModuleList item is typed as Module, whose attributes read as Tensor | Module.
        bidirectional = (cast(nn.Module, self.bidirectional[-1].norm1)
                         if len(self.bidirectional) else None)
        first = cast(nn.Module, self.blocks[0].norm1) if len(self.blocks) else bidirectional
        last = cast(nn.Module, self.blocks[-1].norm1) if len(self.blocks) else bidirectional
        return {name: layer for name, layer in (("fused", first), ("last", last),
                                                ("bidirectional", bidirectional))
                if layer is not None}

    def patch_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Image patch tokens of a layer output, shape (B, n, H), as maps (B, H, grid, grid)."""
        grid = self.config.grid
        patches = tokens[:, 1:1 + grid * grid, :]
        return patches.reshape(tokens.shape[0], grid, grid, -1).permute(0, 3, 1, 2)

    def _text_tokens(self, batch: int, report_tokens, report_embeddings, features, sex, age
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.class_token.device
        c = self.config
        if report_embeddings is not None:
            if self.report_projection is None:
                raise InputError("this model was built without report_embedding_dim; "
                                 "it takes report token ids")
            report = self.report_projection(report_embeddings)
            report_padding = torch.zeros(report.shape[:2], dtype=torch.bool, device=device)
        else:
            if report_tokens is None:
                report_tokens = torch.zeros(batch, c.report_length, dtype=torch.long,
                                            device=device)
            report = self.report_embedding(report_tokens)
            report_padding = report_tokens == 0
        report = report + self.report_position[:, :report.shape[1]]

        if features is None:
            features = torch.full((batch, c.n_features), float("nan"), device=device)
        missing = torch.isnan(features)
        standard = torch.nan_to_num((features - self.feature_mean) / self.feature_std)
        feature = standard[..., None] * self.feature_weight + self.feature_bias
        feature = torch.where(missing[..., None], self.feature_missing, feature)
        feature = feature + self.feature_position

        if sex is None:
            sex = torch.full((batch,), SEX_UNKNOWN, dtype=torch.long, device=device)
        sex_token = self.sex_embedding(sex)[:, None] + self.sex_position
        if age is None:
            age = torch.full((batch,), float("nan"), device=device)
        age_std = torch.nan_to_num((age - AGE_CENTRE_YEARS) / AGE_SCALE_YEARS)[:, None]
        age_token = torch.where(torch.isnan(age)[:, None], self.age_missing,
                                age_std * self.age_weight + self.age_bias)
        age_token = age_token[:, None] + self.age_position

        text = torch.cat([report, feature, sex_token, age_token], dim=1)
        others = torch.zeros(batch, c.n_features + 2, dtype=torch.bool, device=device)
        return self.dropout(text), torch.cat([report_padding, others], dim=1)

    def forward(self, image: torch.Tensor, report_tokens: torch.Tensor | None = None,
                report_embeddings: torch.Tensor | None = None,
                features: torch.Tensor | None = None, sex: torch.Tensor | None = None,
                age: torch.Tensor | None = None, return_nodule: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Two-class logits.

        Parameters
        ----------
        image : Tensor, shape (B, 5, 224, 224)
            Location feature map (:func:`llnm3d.models.inputs.location_feature_map`), every channel;
            the model reads those of ``config.channels``.
        report_tokens : Tensor of int64, shape (B, L), optional
            Token ids from :func:`llnm3d.models.text.encode` (0 = padding).
        report_embeddings : Tensor, shape (B, L, D), optional
            Precomputed report embeddings, instead of token ids (needs
            ``report_embedding_dim = D`` in the config).
        features : Tensor, shape (B, n_features), optional
            Raw morphology features in :data:`llnm3d.models.features.MODEL_FEATURES` order; NaN =
            missing.
        sex : Tensor of int64, shape (B,), optional
            0 female, 1 male, 2 unknown.
        age : Tensor, shape (B,), optional
            Age in years; NaN = unknown.
        return_nodule : bool
            Also return the nodule head's two logits per patch, shape (B, 2, grid, grid): the
            share of the patch inside the nodule and its mean nodule proximity (a model built
            with ``nodule_head``; used by training, :func:`llnm3d.models.train.nodule_targets`).

        Returns
        -------
        Tensor, shape (B, 2)
            Or ``(logits, nodule_logits)`` with ``return_nodule``.
        """
        batch = image.shape[0]
        if self.channel_index is not None:
            image = image[:, self.channel_index]
        patches = self.patch_embedding(image).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(batch, -1, -1), patches], dim=1)
        tokens = self.dropout(tokens + self.image_position)
        text, text_padding = self._text_tokens(batch, report_tokens, report_embeddings,
                                               features, sex, age)
        for block in self.bidirectional:
            tokens, text = block(tokens, text, text_padding)
        nodule = None
        if return_nodule:
            if self.nodule_head is None:
                raise InputError("this model was built without a nodule head")
            grid = self.config.grid
            nodule = self.nodule_head(tokens[:, 1:]).transpose(1, 2).reshape(
                batch, 2, grid, grid)
        tokens = torch.cat([tokens, text], dim=1)
        padding = torch.cat([torch.zeros(batch, self.config.n_image_tokens, dtype=torch.bool,
                                         device=image.device), text_padding], dim=1)
        for block in self.blocks:
            tokens = block(tokens, padding)
        tokens = self.norm(tokens)
        keep = (~padding).unsqueeze(-1).to(tokens.dtype)
        pooled = (tokens * keep).sum(1) / keep.sum(1)
        logits = self.head(pooled)
        return (logits, nodule) if nodule is not None else logits


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_model(model: LLNMNet, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``<path>.safetensors`` (weights and buffers) and ``<path>.json`` (config and
    metadata), atomically. Nothing is pickled."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    weights = path.with_suffix(".safetensors")
    with atomic_path(weights) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                  str(tmp), metadata={"format": "llnm3d-llnm-net/1"})
    write_json(path.with_suffix(".json"), {
        "format": "llnm3d-llnm-net/1", "config": asdict(model.config),
        "parameters": parameter_count(model), "llnm3d_version": __version__,
        **(metadata or {})})
    return weights


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[LLNMNet, dict]:
    """Read a model written by :func:`save_model` (``path`` with or without suffix).

    Returns the model in eval mode and the JSON record (config and metadata).
    """
    path = Path(path)
    record = read_json(path.with_suffix(".json"))
    if record.get("format") != "llnm3d-llnm-net/1":
        raise InputError(f"{path.with_suffix('.json')}: not an LLNM-Net model record")
    model = LLNMNet(config_from_record(record["config"]))
    weights = path.with_suffix(".safetensors")
    if not weights.exists():
        raise InputError(f"{weights}: weights not found")
    model.load_state_dict(load_file(str(weights), device=str(device)))
    return model.to(device).eval(), record


def config_from_record(values: dict) -> ModelConfig:
    """The ModelConfig of a model record's ``config``. Records written before models named
    their channels hold ``in_channels`` (5): those models read every channel."""
    values = {k: v for k, v in values.items() if k != "in_channels"}
    values["channels"] = tuple(values.get("channels", CHANNELS))
    return ModelConfig(**values)


def config_named(name: str, **overrides) -> ModelConfig:
    """A named configuration (``full`` or ``small``) with optional overrides."""
    if name not in CONFIGS:
        raise InputError(f"unknown model config {name!r} (known: {', '.join(CONFIGS)})")
    return replace(CONFIGS[name], **overrides)


def sex_codes(values) -> np.ndarray:
    """Sex strings (F/M, anything else unknown) as model codes, shape (N,)."""
    return np.array([SEX_CODES.get(str(v).strip().upper(), SEX_UNKNOWN) for v in values])
