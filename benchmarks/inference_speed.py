"""Retrieval-augmented answering (Eq. 2, generation): radit's batched path vs the naive loop, same questions.

    python benchmarks/inference_speed.py --index runs/quickstart/index [--questions 10] [--k 10] [--shots 0]

Both answer the same SQuAD-open test questions with SmolLM2-135M-Instruct and the top-k chunks:

- naive (`radit.augment.answer_naive`): decodes the k prompts one at a time, then scores every
  (chunk, candidate answer) pair with its own full forward pass;
- batched (`radit.augment.answer_generative`): the k prompts run once as one batch; greedy decoding
  and the rescoring of every candidate both continue from that KV cache.

Reports seconds per question for each, the speed ratio (target >= 3x) and how many answers,
candidate lists and mixed scores agree (target: all answers identical).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import save

from radit.augment import answer_generative, answer_naive
from radit.config import InferenceConfig
from radit.data.qa import load_questions
from radit.eval.harness import demonstration
from radit.eval.tasks import get_task
from radit.lm.model import load_lm
from radit.prompts import get_template
from radit.retriever.search import load_searcher, search_batched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="runs/quickstart/index")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--shots", type=int, default=0, help="demonstrations from the bundled SQuAD-open train split")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--scoring", default="nll")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    questions = [q.question for q in load_questions("quickstart:squad-open/test", limit=args.questions + 1)]
    searcher = load_searcher(args.index, device=args.device)
    hits = search_batched(searcher, questions, args.k)
    temperature = searcher.retrieval_temperature
    model, tokenizer = load_lm(args.model, device=args.device, dtype=args.dtype)
    template = get_template("qa")
    task = get_task("squad-open")
    demos = [demonstration(d, template) for d in task.demonstrations(args.shots)]
    settings = InferenceConfig(mode="replug", k=args.k, retrieval_temperature=temperature, scoring=args.scoring,
                               max_new_tokens=args.max_new_tokens, dtype=args.dtype)

    def run(fn) -> tuple[list, list[float]]:
        fn(model, tokenizer, questions[0], hits[0], template, settings, demos)  # warm-up, not timed
        preds, times = [], []
        for question, h in zip(questions[1:], hits[1:]):
            t = time.perf_counter()
            preds.append(fn(model, tokenizer, question, h, template, settings, demos))
            times.append(time.perf_counter() - t)
        return preds, times

    naive, naive_t = run(answer_naive)
    fast, fast_t = run(answer_generative)

    same_answer = sum(a.answer == b.answer for a, b in zip(fast, naive))
    same_candidates = sum(a.candidates == b.candidates for a, b in zip(fast, naive))
    max_diff = max(float((torch.tensor(a.mixed) - torch.tensor(b.mixed)).abs().max())
                   for a, b in zip(fast, naive) if a.candidates == b.candidates and a.mixed)
    ratio = sum(naive_t) / sum(fast_t)
    n = len(fast)
    results = {
        "model": args.model, "index": args.index, "k": args.k, "shots": args.shots, "scoring": args.scoring, "dtype": args.dtype,
        "questions": n,
        "naive_s_per_question": round(sum(naive_t) / n, 3),
        "batched_s_per_question": round(sum(fast_t) / n, 3),
        "naive_median_s": round(statistics.median(naive_t), 3),
        "batched_median_s": round(statistics.median(fast_t), 3),
        "speedup": round(ratio, 2),
        "mean_candidates": round(sum(len(p.candidates) for p in fast) / n, 2),
        "identical_answers": same_answer,
        "identical_candidates": same_candidates,
        "max_abs_mixed_diff": max_diff,
    }
    print(f"{n} questions, k={args.k}, {args.shots}-shot, {args.dtype}: naive {results['naive_s_per_question']:.2f} s/q, "
          f"batched {results['batched_s_per_question']:.2f} s/q -> {ratio:.2f}x; "
          f"identical answers {same_answer}/{n}, candidates {same_candidates}/{n}, max |mixed diff| {max_diff:.2e}")
    save(f"inference_speed-k{args.k}-{args.shots}shot-{args.dtype}", results, device=str(model.device))


if __name__ == "__main__":
    main()
