"""Shared fixtures: tiny encoders built in-process (real MiniLM tokenizer), a 20-passage corpus.

The test run never writes to the user's home: radit's model cache ($RADIT_HOME), the Hugging Face
cache and matplotlib's font cache all live in one temporary folder, removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

PASSAGES = [
    ("ming", "Ming dynasty", "The Ming dynasty was founded by Zhu Yuanzhang, the Hongwu Emperor, in 1368."),
    ("ming", "Ming dynasty", "The Ming capital moved from Nanjing to Beijing under the Yongle Emperor."),
    ("paris", "Paris", "Paris is the capital and most populous city of France, on the river Seine."),
    ("paris", "Paris", "The Eiffel Tower was completed in 1889 for the World's Fair in Paris."),
    ("oxygen", "Oxygen", "Oxygen is a chemical element with symbol O and atomic number 8."),
    ("oxygen", "Oxygen", "Joseph Priestley and Carl Wilhelm Scheele discovered oxygen in the 1770s."),
    ("nile", "Nile", "The Nile is a major north-flowing river in northeastern Africa."),
    ("nile", "Nile", "The Nile flows into the Mediterranean Sea through a large delta in Egypt."),
    ("bowl", "Super Bowl 50", "The Denver Broncos defeated the Carolina Panthers 24 to 10 in Super Bowl 50."),
    ("bowl", "Super Bowl 50", "Super Bowl 50 was played at Levi's Stadium in Santa Clara, California."),
    ("moon", "Moon", "The Moon is Earth's only natural satellite, orbiting at about 384,400 km."),
    ("moon", "Moon", "Neil Armstrong was the first person to walk on the Moon in July 1969."),
    ("piano", "Piano", "The piano was invented by Bartolomeo Cristofori in Italy around 1700."),
    ("piano", "Piano", "A modern piano has 88 keys, 52 white and 36 black."),
    ("dna", "DNA", "DNA is a double helix, described by Watson and Crick in 1953."),
    ("dna", "DNA", "Rosalind Franklin's X-ray images were key to finding DNA's structure."),
    ("rome", "Rome", "Rome was founded, according to legend, by Romulus in 753 BC."),
    ("rome", "Rome", "The Colosseum in Rome could hold around 50,000 spectators."),
    ("tea", "Tea", "Tea is an aromatic beverage prepared by pouring hot water over cured leaves."),
    ("tea", "Tea", "Tea originated in southwest China, where it was used as a medicinal drink."),
]


_HOME_VARS = ("RADIT_HOME", "HF_HOME", "MPLCONFIGDIR")
_saved_env: dict[str, str | None] = {}


def pytest_configure(config) -> None:
    home = tempfile.mkdtemp(prefix="radit-test-home-")
    for var in _HOME_VARS:
        _saved_env[var] = os.environ.get(var)
        os.environ[var] = str(Path(home) / var.lower())
    _saved_env["_home"] = home


def pytest_unconfigure(config) -> None:
    home = _saved_env.pop("_home", None)
    for var, value in _saved_env.items():
        if value is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = value
    if home:
        shutil.rmtree(home, ignore_errors=True)


def minilm_path() -> Path:
    from radit.models import resolve_model

    return resolve_model("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with the real MiniLM tokenizer, saved as an HF folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
    )
    path = tmp_path_factory.mktemp("tiny-encoder")
    BertModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def other_tiny_encoder_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    """Same architecture, different weights: stands in for a fine-tuned query tower."""
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(tiny_encoder_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny-encoder-ft")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def wide_encoder_dir(tmp_path_factory, tiny_encoder_dir) -> Path:
    """A 48-d encoder: a query tower that does not fit a 32-d index."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("wide-encoder")
    config = BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(path)
    return path


def write_passages(path: Path, passages=PASSAGES) -> Path:
    """(doc, title, text) rows (the 20 PASSAGES) as a passages file, ids `{doc}#{chunk}` as `radit corpus` writes them."""
    counts: dict[str, int] = {}
    with open(path, "w", encoding="utf-8") as f:
        for doc, title, text in passages:
            i = counts[doc] = counts.get(doc, -1) + 1
            f.write(json.dumps({"id": f"{doc}#{i}", "doc_id": doc, "title": title, "text": text}) + "\n")
    return path


@pytest.fixture
def passages_file(tmp_path) -> Path:
    return write_passages(tmp_path / "passages.jsonl")


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide Llama with the real SmolLM2 tokenizer (49,152 tokens), saved as an HF folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from radit.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m-instruct"))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128,
        # Large weights, so log-probs differ by position and context and the oracle tests have teeth
        # (the default 0.02 gives a near-uniform next-token distribution).
        initializer_range=0.1,
    )
    path = tmp_path_factory.mktemp("tiny-lm")
    LlamaForCausalLM(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    from radit.lm.model import load_lm

    return load_lm(str(tiny_lm_dir), device="cpu")


def kill_when_logged(script: str, config_yaml: Path, run_dir: Path, line: str = '"step": 3,', timeout: float = 120) -> None:
    """Run `python -c script config_yaml` and SIGKILL it as soon as run_dir/metrics.jsonl holds `line`
    (for the resume-after-kill tests); fails with the child's stderr if it ended first."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", script, str(config_yaml)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = Path(run_dir) / "metrics.jsonl"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.is_file() and line in metrics.read_text():
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
