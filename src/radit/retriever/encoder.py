"""Dual encoder s(x, c) = E_q(x) · E_d(c) (the paper's Eq. 1) with separate query and document towers.

The document tower embeds the corpus once (`radit index`); R-ft later trains only the query tower, so
a fine-tuned query encoder is saved as its own folder (HF weights + `radit_encoder.json`) and searched
against the unchanged index.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from radit.config import EncoderConfig
from radit.distributed import progress_bar
from radit.models import resolve_model, weights_fingerprint
from radit.runtime import autocast, resolve_dtype

ENCODER_SETTINGS_FILE = "radit_encoder.json"


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    """Fully resolved dual-encoder settings (EncoderConfig with the preset applied)."""

    query_model: str
    doc_model: str
    pooling: str
    normalize: bool
    query_prefix: str = ""
    doc_prefix: str = ""
    query_max_length: int = 64
    doc_max_length: int = 256
    score_temperature: float = 1.0


ENCODER_PRESETS: dict[str, EncoderSpec] = {
    # Offline default. Cosine scores of a normalised encoder lie within a few hundredths of each
    # other, so p_R = softmax(s) is nearly uniform; 0.05 is the usual contrastive-training temperature.
    "minilm": EncoderSpec("all-minilm-l6-v2", "all-minilm-l6-v2", "mean", True, score_temperature=0.05),
    # The paper's retriever (CC-BY-NC 4.0): CLS pooling, raw dot products, no temperature in Eq. 2.
    "dragon-plus": EncoderSpec(
        "facebook/dragon-plus-query-encoder", "facebook/dragon-plus-context-encoder", "cls", False, score_temperature=1.0
    ),
    # A permissively licensed (MIT) alternative; trained with temperature 0.01 and these prefixes.
    "e5-base-v2": EncoderSpec(
        "intfloat/e5-base-v2", "intfloat/e5-base-v2", "mean", True, "query: ", "passage: ", 64, 512, 0.01
    ),
}


def resolve_encoder_spec(cfg: EncoderConfig) -> EncoderSpec:
    """Apply `cfg.preset`, then every field the user set explicitly."""
    if cfg.preset not in ENCODER_PRESETS:
        raise ValueError(f"--encoder.preset {cfg.preset!r} is unknown; choose one of {sorted(ENCODER_PRESETS)}")
    base = ENCODER_PRESETS[cfg.preset]
    overrides = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EncoderSpec) if getattr(cfg, f.name) is not None}
    if "query_model" in overrides and "doc_model" not in overrides:
        overrides["doc_model"] = overrides["query_model"]
    return dataclasses.replace(base, **overrides)


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] (1 = token) -> [B, H]."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")


def passage_input(passage: dict[str, Any]) -> str:
    """The text the document tower sees: title and chunk, as Atlas and DPR feed them."""
    title = passage.get("title") or ""
    return f"{title} {passage['text']}" if title else passage["text"]


class Encoder(nn.Module):
    """One tower: a Hugging Face encoder plus pooling, optional L2 norm, truncation and prefix."""

    def __init__(self, model: nn.Module, tokenizer, pooling: str, normalize: bool, max_length: int, prefix: str = ""):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.pooling, self.normalize, self.max_length, self.prefix = pooling, normalize, max_length, prefix

    @classmethod
    def load(cls, spec: str, pooling: str, normalize: bool, max_length: int, prefix: str = "") -> Encoder:
        """Load from a folder / packaged name / hub name; a radit-saved folder brings its own settings."""
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model(spec)
        settings_file = path / ENCODER_SETTINGS_FILE
        if settings_file.is_file():
            saved = json.loads(settings_file.read_text())
            pooling, normalize = saved["pooling"], saved["normalize"]
            max_length, prefix = saved["max_length"], saved["prefix"]
        model = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(model.eval(), tokenizer, pooling, normalize, max_length, prefix)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
        settings = {"pooling": self.pooling, "normalize": self.normalize, "max_length": self.max_length, "prefix": self.prefix}
        (path / ENCODER_SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            [self.prefix + t for t in texts], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        emb = pool(hidden, attention_mask, self.pooling).float()
        return nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64, dtype: str = "float32", progress: bool = False) -> np.ndarray:
        """Embed `texts` -> float32 [N, dim]. Longest texts first so each batch pads little.

        `dtype` is the compute precision (autocast); `auto` picks it for this encoder's device.
        """
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with autocast(self.device, resolve_dtype(dtype, self.device)):
            for start in progress_bar(range(0, len(texts), batch_size), enabled=progress, desc="encode", unit="batch"):
                idx = order[start : start + batch_size]
                out[idx] = self(**self.tokenize([texts[i] for i in idx])).cpu().numpy()
        return out


class DualEncoder:
    """Query and document towers. Same weights load once and are shared until R-ft splits them."""

    def __init__(self, query: Encoder, doc: Encoder, spec: EncoderSpec):
        self.query, self.doc, self.spec = query, doc, spec

    @classmethod
    def load(cls, spec: EncoderSpec, device: torch.device | str = "cpu", query_model: str | None = None) -> DualEncoder:
        """`query_model` swaps in another query tower (e.g. one fine-tuned by R-ft)."""
        doc = Encoder.load(spec.doc_model, spec.pooling, spec.normalize, spec.doc_max_length, spec.doc_prefix).to(device)
        q_spec = query_model or spec.query_model
        if q_spec == spec.doc_model and spec.query_prefix == spec.doc_prefix and spec.query_max_length == spec.doc_max_length:
            query = doc
        elif q_spec == spec.doc_model:
            query = Encoder(doc.model, doc.tokenizer, spec.pooling, spec.normalize, spec.query_max_length, spec.query_prefix)
        else:
            query = Encoder.load(q_spec, spec.pooling, spec.normalize, spec.query_max_length, spec.query_prefix).to(device)
        return cls(query, doc, spec)
