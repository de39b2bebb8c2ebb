"""LSR scoring (Eq. 4's log p_LM(y | c ∘ x)): KV-cache prefix reuse vs one full forward per pair, same pairs.

    python benchmarks/lsr_scoring.py --index runs/quickstart/index [--n 20] [--k 10] [--dtype auto]

N SQuAD-open train questions retrieve their top-k chunks; every (chunk, question, gold answer) slot
is scored with SmolLM2-135M-Instruct under the `qa` template, split right after the chunk text into
prefix `Background: {chunk}`, suffix `\\n\\nQuestion: {x}\\nAnswer:` and continuation ` {y}`:

- naive (`shared_prefix_logprobs(naive=True)`): one right-padded row prefix ∘ suffix ∘ continuation
  per slot, `--naive-rows` rows per forward (default: the shared path's `--max-rows`);
- shared (the default path): each distinct chunk is read once and every question that retrieved it
  continues from a copy of its KV cache.

Reports pairs/s of each, the speed ratio, distinct chunks per slot, the largest difference between
the two paths' log-probs, and how many splits tokenise exactly like the whole prompt.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import save

from radit.augment import chunk_text
from radit.data.qa import load_questions
from radit.lm.model import load_lm, model_device
from radit.lm.shared_prefix import shared_prefix_logprobs
from radit.prompts import get_template
from radit.retriever.search import load_searcher, search_batched
from radit.runtime import DTYPE_CHOICES, resolve_dtype


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="runs/quickstart/index")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--questions", default="quickstart:squad-open/train")
    ap.add_argument("--n", type=int, default=20, help="questions (20: 200 slots, 70 distinct chunks, ~3 min on 2 cores)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="auto: bfloat16 where it is fast")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prefix-batch", type=int, default=None, help="default: shared_prefix_logprobs' own")
    ap.add_argument("--max-rows", type=int, default=None, help="default: shared_prefix_logprobs' own")
    ap.add_argument("--naive-rows", type=int, default=None, help="rows per naive forward; default: --max-rows")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    questions = load_questions(args.questions, limit=args.n, require_answers=True)
    searcher = load_searcher(args.index, device=args.device)
    hits = search_batched(searcher, [q.question for q in questions], args.k, progress=False)
    model, tokenizer = load_lm(args.model, device=args.device, dtype=args.dtype)
    device = model_device(model)
    dtype = resolve_dtype(args.dtype, device)
    template = get_template("qa")
    lead = template.background.split("{background}")[0]  # "Background: "

    prefixes: list[str] = []
    index: dict[str, int] = {}
    requests: list[tuple[int, str, str]] = []
    whole = split = 0
    for q, q_hits in zip(questions, hits):
        for hit in q_hits:
            chunk = chunk_text(hit).strip()  # trailing whitespace would merge with the template's "\n\n"
            prompt = template.render(q.question, background=chunk)
            prefix = lead + chunk
            assert prompt.startswith(prefix)
            if hit.id not in index:
                index[hit.id] = len(prefixes)
                prefixes.append(prefix)
            requests.append((index[hit.id], prompt[len(prefix):], template.continuation(q.answers[0])))
            ids = tokenizer(prefix).input_ids + tokenizer(prompt[len(prefix):], add_special_tokens=False).input_ids
            whole += 1
            split += ids == tokenizer(prompt).input_ids

    naive_rows = args.naive_rows or args.max_rows

    def run(naive: bool) -> tuple[list, float, dict]:
        stats: dict = {}
        rows = naive_rows if naive else args.max_rows
        t = time.perf_counter()
        out = shared_prefix_logprobs(model, tokenizer, prefixes, requests, dtype=dtype, naive=naive,
                                     prefix_batch=args.prefix_batch, max_rows=rows, stats=stats)
        return out, time.perf_counter() - t, stats

    warm = requests[: min(len(requests), 8)]  # one small call of each, not timed
    for naive in (True, False):
        shared_prefix_logprobs(model, tokenizer, prefixes, warm, dtype=dtype, naive=naive)
    naive_lp, naive_s, naive_stats = run(naive=True)
    shared_lp, shared_s, shared_stats = run(naive=False)
    assert naive_stats == shared_stats
    max_diff = max(float((a - b).abs().max()) for a, b in zip(shared_lp, naive_lp) if a.numel())

    n = len(requests)
    results = {
        "model": args.model, "index": args.index, "questions": args.questions, "n": len(questions), "k": args.k,
        "dtype": dtype, "device": str(device), "prefix_batch": args.prefix_batch, "max_rows": args.max_rows,
        "naive_rows": naive_rows,
        "slots": n, "distinct_chunks": len(prefixes), "slots_per_chunk": round(n / len(prefixes), 2),
        "prefix_tokens_mean": round(sum(len(tokenizer(p).input_ids) for p in prefixes) / len(prefixes), 1),
        "truncated": shared_stats["truncated"],
        "naive_s": round(naive_s, 2), "shared_s": round(shared_s, 2),
        "naive_pairs_per_s": round(n / naive_s, 2), "shared_pairs_per_s": round(n / shared_s, 2),
        "speedup": round(naive_s / shared_s, 2),
        "max_abs_logprob_diff": max_diff,
        "split_tokenises_as_whole": f"{split}/{whole}",
    }
    print(f"{n} slots ({len(questions)} questions x top-{args.k}), {len(prefixes)} distinct chunks "
          f"({results['slots_per_chunk']} slots each, {results['prefix_tokens_mean']} prefix tokens), {dtype} on {device}: "
          f"naive {results['naive_pairs_per_s']} pairs/s, shared {results['shared_pairs_per_s']} pairs/s -> "
          f"{results['speedup']}x; max |diff| {max_diff:.1e}; split == whole tokenisation {split}/{whole}")
    save(f"lsr_scoring-{dtype}", results, device=str(device))


if __name__ == "__main__":
    main()
