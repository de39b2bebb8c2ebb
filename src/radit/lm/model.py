"""Load any Hugging Face causal LM and its tokenizer for scoring, fine-tuning and generation.

    python -c "from radit.lm.model import load_lm; m, t = load_lm('smollm2-135m-instruct'); print(type(m).__name__, t.pad_token)"

`spec` is anything `radit.models.resolve_model` understands: a local folder, a packaged offline model
(`smollm2-135m-instruct`) or a hub name (`meta-llama/Llama-2-7b-hf`).
"""

from __future__ import annotations

import inspect
import logging

import torch

from radit.models import resolve_model
from radit.runtime import DTYPES, resolve_device, resolve_dtype

log = logging.getLogger(__name__)


def load_lm(spec: str, device: str = "auto", dtype: str = "float32"):
    """A causal LM in eval mode on `device`, and its tokenizer with a pad token.

    Args:
        spec: a folder, a packaged model name or a hub name (see `radit.models.resolve_model`).
        device: `auto`, `cpu`, `cuda`, `cuda:1`, `mps`, ... (see `radit.runtime.resolve_device`).
        dtype: `float32`, `bfloat16`, `float16`, or `auto` (`radit.runtime.resolve_dtype`: bfloat16
            where the device runs it fast, else float32). On an accelerator the weights are stored in this
            dtype (half the memory). On CPU the weights stay float32 whatever `dtype` says: callers
            get low precision from `radit.runtime.autocast(device, dtype)` instead. CPU kernels for
            half-precision weights are slow or missing for many ops (float16 especially), and
            rounding the weights once would make every CPU run, including the tests, lose precision
            for no memory that matters at the sizes run on CPU; autocast keeps fp32 weights and runs
            only the matmuls in low precision.

    Returns:
        `(model, tokenizer)`. A tokenizer without a pad token gets `pad_token = eos_token` (padding
        is always masked out, so which token fills it does not change any score).

    Raises:
        ValueError: on an unknown dtype, or a tokenizer with neither a pad nor an eos token.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_device = resolve_device(device)
    dtype = resolve_dtype(dtype, torch_device)  # an unknown dtype fails here, before any loading
    path = resolve_model(spec)

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"the tokenizer of {spec!r} has neither a pad token nor an eos token, so batches cannot be padded; "
                f"save it with one (tokenizer.add_special_tokens({{'pad_token': ...}}); tokenizer.save_pretrained(...)) "
                "and pass that folder"
            )
        tokenizer.pad_token = tokenizer.eos_token
        log.info("%s: tokenizer has no pad token; using eos %r as pad", spec, tokenizer.eos_token)

    weights_dtype = DTYPES[dtype] if torch_device.type != "cpu" else DTYPES["float32"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=weights_dtype)
    model.to(torch_device).eval()
    return model, tokenizer


def model_device(model) -> torch.device:
    """The device of the model's weights: where its inputs go."""
    return next(model.parameters()).device


def context_length(model, max_length: int | None = None) -> int | None:
    """`max_length` if given, else the model's `max_position_embeddings` (None if it has none)."""
    return max_length if max_length is not None else getattr(model.config, "max_position_embeddings", None)


def logits_to_keep_supported(model) -> bool:
    """Whether the forward can project only some positions onto the vocabulary (`logits_to_keep`)."""
    return "logits_to_keep" in inspect.signature(model.forward).parameters
