"""LM-ft recipes compared on SQuAD-open *dev*: train each, then 0-shot REPLUG EM/F1 on the same questions.

    python benchmarks/lm_ft_sweep.py --save-hits runs/dev_hits.pkl            # once, where the index is
    python benchmarks/lm_ft_sweep.py --hits runs/dev_hits.pkl --device cuda --model DIR \\
        --run A=runs/quickstart/lm-data/train.jsonl,150,5e-5 --run E=runs/lm-data-2000/train.jsonl,600,5e-5

Each `--run NAME=DATA,STEPS,LR` trains `radit.train.lm_ft.train_lm` from `--model` with the quickstart's
other settings (batch 4 x 512 tokens, packing, cosine to LR/10 after max(15, STEPS/10) warm-up steps, no
in-training evaluation: the last step's model is scored), then answers the first `--questions` SQuAD-open
dev questions with REPLUG over their top-`--k` MiniLM chunks. The chunks are retrieved once (`--save-hits`
writes them, with the index's retrieval temperature), so the machine that trains needs neither the index
nor the encoder. Prints and saves per run: EM, F1, training and evaluation seconds, every step's seconds
(what an estimate of the training time needs), and each run's paired bootstrap difference in EM against
the first run.

Writes results/lm_ft_sweep-{device}[-TAG].json.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import time
from pathlib import Path

from common import device_slug, save


def save_hits(path: str, index: str, questions: int, k: int) -> None:
    from radit.data.qa import load_questions
    from radit.retriever.search import load_searcher, search_batched

    qs = load_questions("quickstart:squad-open/dev", limit=questions, require_answers=True)
    searcher = load_searcher(index, device="cpu")
    hits = search_batched(searcher, [q.question for q in qs], k, progress=False)
    with open(path, "wb") as f:
        pickle.dump({"questions": qs, "hits": hits, "temperature": searcher.retrieval_temperature, "index": index, "k": k}, f)
    print(f"{len(qs)} questions, top-{k} hits -> {path}")


def score(model_dir: str, dev: dict, device: str) -> dict:
    from radit.augment import answer_generative
    from radit.config import InferenceConfig
    from radit.eval.metrics import exact_match, f1_score
    from radit.lm.model import load_lm
    from radit.prompts import resolve_template

    model, tokenizer = load_lm(model_dir, device=device, dtype="float32")
    settings = InferenceConfig(mode="replug", k=dev["k"], retrieval_temperature=dev["temperature"], template="qa", dtype="auto")
    template = resolve_template("qa")
    em, f1, t = [], [], time.perf_counter()
    for q, h in zip(dev["questions"], dev["hits"]):
        answer = answer_generative(model, tokenizer, q.question, h, template, settings).answer
        em.append(exact_match(answer, q.gold_answers))
        f1.append(f1_score(answer, q.gold_answers))
    return {"em": 100 * statistics.mean(em), "f1": 100 * statistics.mean(f1),
            "eval_s": round(time.perf_counter() - t, 1), "per_question_em": em}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", default=[], metavar="NAME=DATA,STEPS,LR", help="a recipe (repeatable)")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="LM to fine-tune (name, folder)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--hits", help="dev questions with their chunks, from --save-hits")
    ap.add_argument("--save-hits", metavar="FILE", help="retrieve the dev questions' chunks from --index, write FILE, exit")
    ap.add_argument("--index", default="runs/quickstart/index")
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--output", default="runs/lm-ft-sweep")
    ap.add_argument("--tag", default="", help="suffix of the results file's name")
    args = ap.parse_args(argv)
    if args.save_hits:
        save_hits(args.save_hits, args.index, args.questions, args.k)
        return 0
    if not args.hits or not args.run:
        ap.error("give --hits FILE (from --save-hits) and at least one --run")

    import torch

    from radit.config import TrainLMConfig
    from radit.eval.metrics import paired_bootstrap
    from radit.runtime import resolve_device
    from radit.train.lm_ft import train_lm

    device = str(resolve_device(args.device))
    with open(args.hits, "rb") as f:
        dev = pickle.load(f)
    dev["questions"], dev["hits"] = dev["questions"][: args.questions], dev["hits"][: args.questions]
    results = {}
    for spec in args.run:
        name, _, values = spec.partition("=")
        data, steps, lr = values.split(",")
        steps = int(steps)
        out = Path(args.output) / name
        cfg = TrainLMConfig(data=data, model=args.model, output=str(out), max_length=512, batch_size=4, steps=steps,
                            lr=float(lr), min_lr=float(lr) / 10, warmup_steps=max(15, steps // 10), eval_every=steps,
                            eval_questions=0, checkpoint_every=steps, device=device, dtype="auto", overwrite=True)
        t = time.perf_counter()
        summary = train_lm(cfg)
        train_s = time.perf_counter() - t
        step_s = [r["seconds"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                  if r.get("kind") != "eval" and "loss" in r]
        r = {"data": data, "steps": steps, "lr": float(lr), "warmup": cfg.warmup_steps, "dtype": summary["dtype"],
             "train_s": round(train_s, 1), "step_s": step_s, **score(str(out / "model"), dev, device)}
        if results:
            first = next(iter(results.values()))
            d = paired_bootstrap(first["per_question_em"], r["per_question_em"])  # second minus first
            r["em_vs_first"] = {key: (100 * v if isinstance(v, float) else v) for key, v in d.items()}
        results[name] = r
        print(f"{name}: {Path(data).parent.name} {steps} steps lr {lr}: dev EM {r['em']:.1f} F1 {r['f1']:.1f} "
              f"(train {train_s:.0f} s, median step {statistics.median(step_s):.2f} s, eval {r['eval_s']} s)", flush=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    name = f"lm_ft_sweep-{device_slug(device)}" + (f"-{args.tag}" if args.tag else "")
    save(name, {"questions": "quickstart:squad-open/dev", "n": len(dev["questions"]), "k": dev["k"],
                "hits_index": dev.get("index"), "model": args.model, "device": device, "results": results}, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
