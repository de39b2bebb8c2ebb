"""Retrieval-augmented answering (Eq. 2, generation): radit's batched path vs the naive loop, same questions.

    python benchmarks/inference_speed.py --index runs/quickstart/index [--questions 10] [--k 10] [--shots 0]
    python benchmarks/inference_speed.py --index I --model M --template M --k 3 --questions 48 \
        --no-naive --batch-sizes 4 8 16          # several questions at once, as `radit eval --batch-size`
    python benchmarks/inference_speed.py --index I --model M --template M --k 3 --questions 96 \
        --no-naive --no-one-question --batch-sizes 8 16 --share both   # shared chunks read once, or not

All answer the same SQuAD-open test questions with the LM (default SmolLM2-135M-Instruct) and the top-k chunks:

- naive (`radit.augment.answer_naive`): decodes the k prompts one at a time, then scores every
  (chunk, candidate answer) pair with its own full forward pass;
- batched (`radit.augment.answer_generative`): the k prompts run once as one batch; greedy decoding
  and the rescoring of every candidate both continue from that KV cache;
- B questions at once (`radit.augment.answer_generative_batch`, `--batch-sizes`): each question's
  prompts are prefilled apart and joined, then all rows decode together and every (chunk, candidate)
  pair of the B questions is scored in the same forwards. A chunk that several of the B questions
  retrieved is read once (`radit.lm.prefill.prefill_shared`); `--share both` also times the batches
  without that (`share_prefixes=False`: each question's prompts prefilled apart, then joined).

Reports seconds per question for each, the speed ratios (naive vs batched: target >= 3x) and how many
answers, candidate lists and mixed scores agree with the one-question path (target: all answers identical).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import save

from radit.augment import answer_generative, answer_generative_batch, answer_naive
from radit.config import InferenceConfig
from radit.data.qa import load_questions
from radit.eval.harness import demonstration
from radit.eval.tasks import get_task
from radit.lm.model import load_lm
from radit.prompts import resolve_template
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
    ap.add_argument("--template", default="qa", help="prompt template: a name, or a model folder to use the template it was trained with")
    ap.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True, help="also time the naive loop")
    ap.add_argument("--one-question", action=argparse.BooleanOptionalAction, default=True,
                    help="time one question at a time (answer_generative), the reference of the batch rows")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[], help="also answer this many questions at once")
    ap.add_argument("--share", choices=["on", "both"], default="on",
                    help="both: also time each batch size without reading shared chunks once")
    args = ap.parse_args()

    questions = [q.question for q in load_questions("quickstart:squad-open/test", limit=args.questions + 1)]
    searcher = load_searcher(args.index, device=args.device)
    hits = search_batched(searcher, questions, args.k)
    temperature = searcher.retrieval_temperature
    model, tokenizer = load_lm(args.model, device=args.device, dtype=args.dtype)
    template = resolve_template(args.template)
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

    def agreement(preds: list, reference: list) -> dict:
        diffs = [float((torch.tensor(a.mixed) - torch.tensor(b.mixed)).abs().max())
                 for a, b in zip(preds, reference) if a.candidates == b.candidates and a.mixed]
        return {"identical_answers": sum(a.answer == b.answer for a, b in zip(preds, reference)),
                "identical_candidates": sum(a.candidates == b.candidates for a, b in zip(preds, reference)),
                "max_abs_mixed_diff": max(diffs, default=0.0)}

    n = len(questions) - 1
    results = {
        "model": args.model, "index": args.index, "template": template.name, "k": args.k, "shots": args.shots,
        "scoring": args.scoring, "dtype": args.dtype, "questions": n,
    }
    fast: list = []
    if args.one_question or args.naive:
        fast, fast_t = run(answer_generative)
        results.update({"batched_s_per_question": round(sum(fast_t) / n, 3),
                        "batched_median_s": round(statistics.median(fast_t), 3),
                        "mean_candidates": round(sum(len(p.candidates) for p in fast) / n, 2)})
        print(f"{n} questions, k={args.k}, {args.shots}-shot, {args.dtype}: batched {results['batched_s_per_question']:.2f} s/q")
    if args.naive:
        naive, naive_t = run(answer_naive)
        ratio = sum(naive_t) / sum(fast_t)
        results.update({"naive_s_per_question": round(sum(naive_t) / n, 3),
                        "naive_median_s": round(statistics.median(naive_t), 3),
                        "speedup": round(ratio, 2), **agreement(fast, naive)})
        print(f"  naive {results['naive_s_per_question']:.2f} s/q -> batched is {ratio:.2f}x; identical answers "
              f"{results['identical_answers']}/{n}, candidates {results['identical_candidates']}/{n}, "
              f"max |mixed diff| {results['max_abs_mixed_diff']:.2e}")

    def batches(size: int, shares: list[bool]) -> dict[bool, tuple[list, float]]:
        """Answer the questions `size` at a time with each setting; the settings alternate batch by batch
        (and which goes first), so that the machine's drift falls on both alike."""
        out: dict[bool, tuple[list, float]] = {share: ([], 0.0) for share in shares}
        for share in shares:  # warm-up
            answer_generative_batch(model, tokenizer, questions[:size], hits[:size], template, settings, [demos] * size,
                                    share_prefixes=share)
        for b, start in enumerate(range(1, len(questions), size)):
            chunk = questions[start : start + size]
            for share in (shares if b % 2 == 0 else shares[::-1]):
                t = time.perf_counter()
                preds = answer_generative_batch(model, tokenizer, chunk, hits[start : start + size], template, settings,
                                                [demos] * len(chunk), share_prefixes=share)
                out[share] = (out[share][0] + preds, out[share][1] + time.perf_counter() - t)
        return out

    results["question_batches"] = []
    for size in args.batch_sizes:
        slots = [[h.id for h in hs[: args.k]] for hs in hits[1:]]
        distinct = sum(len({i for ids in slots[s : s + size] for i in ids}) for s in range(0, n, size))
        timed = batches(size, [True, False] if args.share == "both" else [True])
        preds, seconds = timed[True]
        row = {"batch_size": size, "s_per_question": round(seconds / n, 3),
               "distinct_chunks_per_slot": round(distinct / sum(map(len, slots)), 3)}
        line = (f"  {size} questions at once: {row['s_per_question']:.2f} s/q "
                f"({row['distinct_chunks_per_slot']:.0%} of the chunk slots distinct)")
        if fast:
            row.update({"speedup_vs_one_question": round(sum(fast_t) / seconds, 2), **agreement(preds, fast)})
            line += (f" -> {row['speedup_vs_one_question']:.2f}x one question at a time; identical answers "
                     f"{row['identical_answers']}/{n}, max |mixed diff| {row['max_abs_mixed_diff']:.2e}")
        if args.share == "both":
            apart, apart_s = timed[False]
            row.update({"apart_s_per_question": round(apart_s / n, 3), "shared_speedup": round(apart_s / seconds, 2),
                        "vs_apart": agreement(preds, apart)})
            line += (f"; without reading shared chunks once {row['apart_s_per_question']:.2f} s/q -> shared "
                     f"{row['shared_speedup']:.2f}x, identical answers {row['vs_apart']['identical_answers']}/{n}, "
                     f"max |mixed diff| {row['vs_apart']['max_abs_mixed_diff']:.2e}")
        results["question_batches"].append(row)
        print(line)

    name = (f"inference_speed-k{args.k}-{args.shots}shot-{args.dtype}" + ("-question-batches" if args.batch_sizes else "")
            + ("-shared" if args.share == "both" else ""))
    save(name, results, device=str(model.device))


if __name__ == "__main__":
    main()
