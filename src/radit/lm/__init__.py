"""The language model: loading (`model`) and scoring log p(y | c ∘ x) (`scoring`)."""

from __future__ import annotations

import importlib

# Resolved lazily so that `python -m radit.lm.scoring` does not import its own module twice
# (runpy warns when a package's __init__ has already imported the module it is asked to run).
_EXPORTS = {
    "load_lm": "radit.lm.model",
    "COMP_PROMPT": "radit.lm.scoring",
    "SCORERS": "radit.lm.scoring",
    "continuation_logprobs": "radit.lm.scoring",
    "score": "radit.lm.scoring",
    "shared_prompt_logprobs": "radit.lm.scoring",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'radit.lm' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
