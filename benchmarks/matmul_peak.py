"""What fraction of this machine's matmul peak LM-ft training reaches.

    python benchmarks/matmul_peak.py --data runs/lm-data/train.jsonl [--steps 6] [--batch-size 4] [--max-length 512]

1. The peak: torch matmul of square matrices (1024-4096) in the training precision with the same
   thread count, best of several runs, in FLOP/s.
2. Training: a few `radit train-lm` steps (the quickstart preset's shapes) on the packaged SmolLM2;
   tokens/s over the steps after the first.
3. FLOPs per trained token, counted as the model does them: 6 x the non-embedding parameters
   (forward 2, backward 4), plus attention 6 x 2 x layers x width x (the mean attended length: half
   the mean example length, as examples are packed with attention kept within each), plus the
   vocabulary projection 6 x width x vocabulary on the target positions only (radit projects only
   those: `logits_to_keep`).

The fraction is training FLOP/s / peak FLOP/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import torch
from common import save

from radit.config import TrainLMConfig
from radit.lm.model import load_lm
from radit.runtime import DTYPES, autocast, resolve_dtype
from radit.train.lm_ft import train_lm


def matmul_peak(dtype: str, sizes=(1024, 2048, 4096), repeats: int = 5, device: str | torch.device = "cpu") -> dict:
    """Best FLOP/s of an n x n x n matmul per size.

    On CPU the inputs are fp32 under autocast, as in training. On an accelerator they are stored in
    `dtype` (a plain GEMM in that precision: the card's peak), and each timing covers 10 matmuls
    between synchronisations, since one alone takes about as long as the synchronisation.
    """
    device = torch.device(device)
    out = {}
    for n in sizes:
        if device.type == "cpu":
            a, b, inner, precision = torch.randn(n, n), torch.randn(n, n), 1, autocast(device, dtype)
        else:
            a, b = (torch.randn(n, n, device=device, dtype=DTYPES[dtype]) for _ in range(2))
            inner, precision = 10, contextlib.nullcontext()
        with precision:
            a @ b  # warm-up
            best = float("inf")
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(inner):
                    a @ b
                _sync(device)
                best = min(best, time.perf_counter() - t0)
        out[n] = 2 * n**3 * inner / best
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def speed_config(data: str, model: str, output: str, steps: int, batch_size: int, max_length: int, dtype: str,
                 device: str = "cpu") -> TrainLMConfig:
    """`radit train-lm` settings for timing: constant learning rate, no evaluation, no checkpoint."""
    return TrainLMConfig(data=data, model=model, output=output, steps=steps, batch_size=batch_size, max_length=max_length,
                         lr=5e-5, min_lr=5e-5, warmup_steps=0, eval_questions=0, eval_every=10**6,
                         checkpoint_every=10**6, dtype=dtype, device=device)


def timed_steps(cfg: TrainLMConfig, skip: int = 1) -> list[dict]:
    """Run `train_lm(cfg)`; its per-step train records (tokens, target_tokens, seconds) after the first `skip`."""
    train_lm(cfg)
    with open(Path(cfg.output) / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if '"train"' in line][skip:]


def non_embedding_params(model) -> int:
    c = model.config
    return sum(p.numel() for p in model.parameters()) - c.vocab_size * c.hidden_size  # tied embeddings once


def mean_example_tokens(tokenizer, examples: list[dict]) -> float:
    """Mean tokens of a training example (prompt + target + eos)."""
    return sum(len(tokenizer(ex["prompt"] + ex["target"])["input_ids"]) + 1 for ex in examples) / len(examples)


def lm_ft_flops(config, non_embed: int, mean_len: float, tokens: int, targets: int) -> float:
    """Training FLOPs of `tokens` packed tokens, `targets` of them targets (the module docstring, point 3)."""
    flops_per_token = 6 * non_embed + 6 * 2 * config.num_hidden_layers * config.hidden_size * (mean_len / 2)
    return flops_per_token * tokens + 6 * config.hidden_size * config.vocab_size * targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/lm-data/train.jsonl")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))

    peak = matmul_peak(dtype)
    best_peak = max(peak.values())
    print(f"torch matmul peak ({dtype}, {torch.get_num_threads()} threads): "
          + ", ".join(f"{n}: {f / 1e9:.1f} GFLOP/s" for n, f in peak.items()))

    with tempfile.TemporaryDirectory() as tmp:
        cfg = speed_config(args.data, args.model, str(Path(tmp) / "run"), args.steps, args.batch_size, args.max_length, dtype)
        steps = timed_steps(cfg)
    tokens = sum(s["tokens"] for s in steps)
    targets = sum(s["target_tokens"] for s in steps)
    seconds = sum(s["seconds"] for s in steps)

    model, tok = load_lm(args.model, device="cpu")
    non_embed = non_embedding_params(model)
    examples = [json.loads(line) for line in open(args.data)][:2000]
    mean_len = mean_example_tokens(tok, examples)
    flops = lm_ft_flops(model.config, non_embed, mean_len, tokens, targets)
    achieved = flops / seconds
    print(f"training: {tokens / seconds:.0f} tokens/s ({len(steps)} steps, {seconds:.1f} s), "
          f"{achieved / 1e9:.1f} GFLOP/s = {achieved / best_peak:.2f} of the matmul peak")
    save(f"matmul_peak-{dtype}", {
        "dtype": dtype, "threads": torch.get_num_threads(), "matmul_flops": {str(n): f for n, f in peak.items()},
        "peak_flops": best_peak, "train_tokens_per_s": tokens / seconds, "train_steps_timed": len(steps),
        "non_embedding_params": non_embed, "mean_example_tokens": mean_len, "target_tokens": targets,
        "train_flops_per_s": achieved, "fraction_of_peak": achieved / best_peak,
        "flop_count": "6 x non-embedding params + attention 12 x layers x width x mean_len/2 per token, "
                      "+ 6 x width x vocab per target token",
    })


if __name__ == "__main__":
    main()
