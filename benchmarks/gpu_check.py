"""Does radit use this GPU well? LM-ft model FLOP utilisation, MiniLM embedding and LSR scoring speed, in one short run.

    python benchmarks/gpu_check.py [--steps 20] [--device auto] [--dtype auto]
    python benchmarks/gpu_check.py --steps 2 --device cpu --quick     # smoke test: tiny shapes, about a minute on 2 cores

On `--device` (default: the GPU) in `--dtype` (default auto: bf16 on a bf16 GPU), all on bundled data:

1. Matmul peak: the best FLOP/s of an n x n x n GEMM in that precision (`matmul_peak.matmul_peak`):
   the denominator of the model FLOP utilisation (MFU), measured here rather than read off a spec sheet.
2. LM-ft: `--steps` optimizer steps of `radit train-lm` (`radit.train.lm_ft.train_lm`: packed rows,
   autocast, AdamW, full fine-tuning) of SmolLM2-135M-Instruct, at the gpu-1x recipe's micro-batch of
   8 rows x 2,048 tokens, on SQuAD-open training questions each with its gold paragraph as Background
   (qa template, as `radit build-lm-data` writes them). Tokens/s over the steps after the first (and their
   median step time, which a slow step building kernels for a new shape does not move); model
   FLOPs counted as benchmarks/matmul_peak.py counts them (6 x non-embedding parameters + attention
   within each packed example + the vocabulary projection of target tokens); MFU = model FLOP/s /
   the measured peak; the run's peak GPU memory.
3. Embedding: the MiniLM document tower (`radit.retriever.encoder`, as `radit index` encodes) over the
   bundled corpus cut into passages by `radit corpus`; passages/s.
4. LSR scoring: log p_LM(y | c ∘ x) of (question, chunk, gold answer) slots, laid out by
   `radit.train.lsr_data.score_requests` and scored by `radit.lm.shared_prefix.shared_prefix_logprobs`
   (KV-cache prefix reuse, its default batch sizes). Each question takes its gold paragraph and k - 1
   chunks drawn from a pool a third as large as the slots, so a chunk serves about 3 slots, as with
   retrieved top-10s (benchmarks/lsr_scoring.py: 200 slots on 70 chunks); pairs/s.

Writes results/gpu_check-{device}.json, {device} being the GPU's name (or cpu), `-quick` added with --quick.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from common import describe, device_slug, machine, save
from matmul_peak import lm_ft_flops, matmul_peak, mean_example_tokens, non_embedding_params, speed_config, timed_steps

from radit.augment import chunk_text
from radit.config import CorpusConfig, EncoderConfig, LSRDataConfig
from radit.corpus import PassageStore, build_passages
from radit.data.qa import load_questions, quickstart_documents
from radit.lm.model import load_lm
from radit.lm.shared_prefix import shared_prefix_logprobs
from radit.prompts import resolve_template
from radit.retriever.encoder import DualEncoder, passage_input, resolve_encoder_spec
from radit.runtime import DTYPE_CHOICES, resolve_device, resolve_dtype
from radit.train.lsr_data import score_requests

QUESTIONS = "quickstart:squad-open/train"

# Shapes of a full check (an accelerator; the LM-ft ones are the gpu-1x recipe's) and of --quick (CPU smoke test).
FULL = {"sizes": (2048, 4096, 8192), "batch_size": 8, "max_length": 2048, "lm_examples": None, "passages": None,
        "embed_batch": 256, "lsr_questions": 200, "lsr_k": 10}
QUICK = {"sizes": (256, 512), "batch_size": 2, "max_length": 256, "lm_examples": 48, "passages": 64,
         "embed_batch": 32, "lsr_questions": 2, "lsr_k": 4}


def bundled_passages(workdir: Path) -> tuple[PassageStore, dict[str, int]]:
    """The bundled corpus cut by `radit corpus` into `workdir`, and each document's first chunk (a
    SQuAD question's gold paragraph) by document id."""
    passages = workdir / "passages.jsonl"
    build_passages(CorpusConfig(inputs=[str(quickstart_documents())], output=str(passages)))
    store = PassageStore(passages)
    gold_rows: dict[str, int] = {}
    for row, p in enumerate(store):
        gold_rows.setdefault(p["doc_id"], row)
    return store, gold_rows


def gold_examples(store: PassageStore, gold_rows: dict[str, int], limit: int | None = None) -> list[dict]:
    """LM-ft examples as `radit build-lm-data` writes them: SQuAD-open training questions, each with
    its gold paragraph as Background (qa template)."""
    template = resolve_template("qa")
    questions = load_questions(QUESTIONS, limit=limit, require_answers=True)
    passages = store.get_many([gold_rows[q.positive_ids[0]] for q in questions])
    return [{"prompt": template.render(q.question, background=chunk_text(_hit(p))), "target": template.continuation(q.answers[0])}
            for q, p in zip(questions, passages)]


def lm_ft(args, shapes: dict, store: PassageStore, gold_rows: dict[str, int], device: torch.device, dtype: str,
          peak: float, workdir: Path) -> dict:
    """Train for --steps on a training file of (question, gold paragraph, answer) examples; throughput and MFU."""
    examples = gold_examples(store, gold_rows, shapes["lm_examples"])
    data = workdir / "lm-data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(ex) + "\n" for ex in examples), encoding="utf-8")

    cfg = speed_config(str(data), args.model, str(workdir / "lm-ft"), args.steps, shapes["batch_size"], shapes["max_length"],
                       dtype, str(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    steps = timed_steps(cfg)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    tokens, targets, seconds = (sum(s[k] for s in steps) for k in ("tokens", "target_tokens", "seconds"))
    median_s = statistics.median(s["seconds"] for s in steps)

    model, tokenizer = load_lm(args.model, device="cpu")
    non_embed = non_embedding_params(model)
    mean_len = mean_example_tokens(tokenizer, examples[:2000])
    flops = lm_ft_flops(model.config, non_embed, mean_len, tokens, targets) / seconds
    return {"steps_timed": len(steps), "batch_size": cfg.batch_size, "max_length": cfg.max_length, "examples": len(examples),
            "tokens_per_step": tokens / len(steps), "s_per_step": seconds / len(steps), "median_s_per_step": median_s,
            "step_seconds": [round(s["seconds"], 4) for s in steps], "tokens_per_s": tokens / seconds,
            "mean_example_tokens": mean_len, "non_embedding_params": non_embed, "model_flops_per_s": flops,
            "mfu": flops / peak, "peak_memory_gib": memory}


def _hit(passage: dict) -> SimpleNamespace:
    return SimpleNamespace(title=passage.get("title") or "", text=passage["text"])


def embedding(args, shapes: dict, store: PassageStore, device: torch.device, dtype: str) -> dict:
    """Passages/s of the MiniLM document tower over the bundled passages."""
    rows = range(len(store)) if shapes["passages"] is None else range(min(shapes["passages"], len(store)))
    texts = [passage_input(p) for p in store.get_many(list(rows))]
    encoder = DualEncoder.load(resolve_encoder_spec(EncoderConfig(query_model=args.encoder)), device=device).doc
    encoder.encode(texts[: shapes["embed_batch"]], batch_size=shapes["embed_batch"], dtype=dtype)  # warm-up
    t0 = time.perf_counter()
    encoder.encode(texts, batch_size=shapes["embed_batch"], dtype=dtype)  # returns numpy: synchronised
    seconds = time.perf_counter() - t0
    return {"passages": len(texts), "batch_size": shapes["embed_batch"], "seconds": seconds, "passages_per_s": len(texts) / seconds}


def lsr_scoring(args, shapes: dict, store: PassageStore, gold_rows: dict[str, int], device: torch.device, dtype: str) -> dict:
    """Pairs/s of LSR scoring with prefix reuse: each question's gold chunk + k - 1 from a shared pool."""
    n, k = shapes["lsr_questions"], shapes["lsr_k"]
    questions = load_questions(QUESTIONS, limit=n, require_answers=True)
    rng = random.Random(0)
    pool = rng.sample(range(len(store)), max(k, n * k // 3))
    records = []
    for q in questions:
        gold = gold_rows[q.positive_ids[0]]
        rows = [gold] + rng.sample([r for r in pool if r != gold], k - 1)
        records.append({"kind": "task", "query": q.question, "target": q.answers[0], "rows": rows})
    model, tokenizer = load_lm(args.model, device=str(device), dtype=dtype)
    prefixes, requests = score_requests(records, store, tokenizer, resolve_template(LSRDataConfig().template))
    shared_prefix_logprobs(model, tokenizer, prefixes, requests[: min(len(requests), 8)], dtype=dtype)  # warm-up
    t0 = time.perf_counter()
    shared_prefix_logprobs(model, tokenizer, prefixes, requests, dtype=dtype)  # returns CPU tensors: synchronised
    seconds = time.perf_counter() - t0
    return {"questions": len(questions), "k": k, "slots": len(requests), "distinct_chunks": len(prefixes),
            "slots_per_chunk": len(requests) / len(prefixes), "seconds": seconds, "pairs_per_s": len(requests) / seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="LM-ft optimizer steps; the first is left out of the timing")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="auto: bfloat16 where it is fast (a bf16 GPU)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the LM: a folder, a packaged or a hub name")
    ap.add_argument("--encoder", default="all-minilm-l6-v2",
                    help="the encoder (minilm preset: mean pooling, normalised): a folder, a packaged or a hub name")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, to check that the script runs (on CPU)")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be >= 2: the first step is a warm-up")
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    shapes = QUICK if args.quick else FULL
    print(describe(machine(str(device))))
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, {torch.cuda.get_device_properties(device).total_memory / 2**30:.0f} GiB, "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}")

    sizes = shapes["sizes"] if device.type != "cpu" or args.quick else (1024, 2048, 4096)
    peaks = matmul_peak(dtype, sizes, device=device)
    peak = max(peaks.values())
    print(f"matmul peak ({dtype}): " + ", ".join(f"{n}: {f / 1e12:.2f} TFLOP/s" for n, f in peaks.items()))

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        store, gold_rows = bundled_passages(workdir)
        train = lm_ft(args, shapes, store, gold_rows, device, dtype, peak, workdir)
        mem = f", peak memory {train['peak_memory_gib']:.1f} GiB" if train["peak_memory_gib"] is not None else ""
        print(f"LM-ft: {train['tokens_per_s']:.0f} tokens/s ({train['steps_timed']} steps of {train['tokens_per_step']:.0f} tokens, "
              f"{train['s_per_step']:.3f} s each, median {train['median_s_per_step']:.3f} s), {train['model_flops_per_s'] / 1e12:.2f} model TFLOP/s = "
              f"MFU {train['mfu']:.3f} of the measured peak{mem}")
        embed = embedding(args, shapes, store, device, dtype)
        print(f"MiniLM embedding: {embed['passages_per_s']:.0f} passages/s ({embed['passages']} passages, batch {embed['batch_size']})")
        lsr = lsr_scoring(args, shapes, store, gold_rows, device, dtype)
        print(f"LSR scoring: {lsr['pairs_per_s']:.1f} pairs/s ({lsr['slots']} slots on {lsr['distinct_chunks']} chunks)")

    name = f"gpu_check-{device_slug(device)}" + ("-quick" if args.quick else "")
    save(name, {"device": str(device), "dtype": dtype, "model": args.model, "encoder": args.encoder, "steps": args.steps, "quick": args.quick,
                "matmul_flops": {str(n): f for n, f in peaks.items()}, "peak_flops": peak,
                "lm_ft": train, "embedding": embed, "lsr_scoring": lsr,
                "flop_count": "6 x non-embedding params + attention 12 x layers x width x mean_len/2 per token, "
                              "+ 6 x width x vocab per target token"}, device=str(device))


if __name__ == "__main__":
    main()
