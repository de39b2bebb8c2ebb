"""Which LSR target form, temperature, pair mixture and KL direction train the best query tower — on
SQuAD-open *dev* only (the test split is for `benchmarks/r_ft_quality.py`).

    python benchmarks/r_ft_sweep.py --config configs/r-ft-quickstart.yaml [--only NAME ...] [--out runs/r-ft-sweep]

Each variant is `radit train-retriever` with the preset plus a few overrides, into --out/NAME (a rerun
skips finished variants). Reported per variant: dev answer-hit@1/@10 of the starting tower and of the
best evaluation, dev MRR of the LM-preferred chunk, steps, seconds and training pairs/s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import RESULTS, save

from radit.config import TrainRetrieverConfig
from radit.config_io import from_dict, load_yaml, to_dict
from radit.train.r_ft import train_retriever

VARIANTS: dict[str, dict] = {
    # p_LSR forms on task pairs alone
    "task-prob-0.01": {"use": "task", "task_target": "prob", "task_tau": 0.01},
    "task-logprob-1": {"use": "task", "task_target": "logprob", "task_tau": 1.0},
    "task-logprob-3": {"use": "task", "task_target": "logprob", "task_tau": 3.0},
    "task-mean-0.3": {"use": "task", "task_target": "mean-logprob", "task_tau": 0.3},
    # p_LSR forms on corpus pairs alone
    "corpus-prob-0.01": {"use": "corpus", "corpus_target": "prob", "corpus_tau": 0.01},
    "corpus-mean-0.1": {"use": "corpus", "corpus_target": "mean-logprob", "corpus_tau": 0.1},
    "corpus-logprob-3": {"use": "corpus", "corpus_target": "logprob", "corpus_tau": 3.0},
    # the mixture, and the other KL direction
    "all-logprob-1-mean-0.1": {"use": "all", "task_target": "logprob", "task_tau": 1.0,
                               "corpus_target": "mean-logprob", "corpus_tau": 0.1},
    "task-logprob-1-reverse-kl": {"use": "task", "task_target": "logprob", "task_tau": 1.0, "kl_direction": "lsr-retriever"},
    # the best form above, with its temperature and the schedule varied
    "task-mean-0.1": {"use": "task", "task_target": "mean-logprob", "task_tau": 0.1},
    "task-mean-0.3-lr5e-5-300": {"use": "task", "task_target": "mean-logprob", "task_tau": 0.3, "lr": 5e-5, "steps": 300},
    "all-mean-0.3-logprob-3": {"use": "all", "task_target": "mean-logprob", "task_tau": 0.3,
                               "corpus_target": "logprob", "corpus_tau": 3.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/r-ft-quickstart.yaml")
    ap.add_argument("--out", default="runs/r-ft-sweep")
    ap.add_argument("--only", nargs="+", default=None)
    ap.add_argument("--name", default="r_ft_sweep")
    args = ap.parse_args()

    base = to_dict(from_dict(TrainRetrieverConfig, load_yaml(args.config), where=args.config))
    results = {}
    for name, overrides in VARIANTS.items():
        if args.only and name not in args.only:
            continue
        cfg = from_dict(TrainRetrieverConfig, {**base, **overrides, "output": str(Path(args.out) / name)})
        summary = train_retriever(cfg)
        lines = [json.loads(x) for x in (Path(cfg.output) / "metrics.jsonl").read_text().splitlines()]
        train = [x for x in lines if x["kind"] == "train"]
        results[name] = {
            "overrides": overrides, "base": summary["base"], "best": summary["best"], "trained_on": summary.get("trained_on"),
            "seconds": summary["seconds"], "steps": summary["steps"],
            "train_pairs_per_s": sum(x["pairs"] for x in train) / sum(x["seconds"] for x in train) if train else None,
        }
        b, s = summary["base"], summary["best"]
        print(f"{name:<28} dev hit@1 {b['dev_hit@1']:.1f} -> {s['dev_hit@1']:.1f}  hit@10 {b['dev_hit@10']:.1f} -> "
              f"{s['dev_hit@10']:.1f}  MRR {b['dev_mrr']:.3f} -> {s['dev_mrr']:.3f}  (step {s['step']})", flush=True)
    old = RESULTS / f"{args.name}.json"
    if args.only and old.is_file():  # a partial rerun adds its variants to the earlier ones
        results = {**json.loads(old.read_text()).get("results", {}), **results}
    save(args.name, {"config": args.config, "split": "quickstart:squad-open/dev", "results": results})


if __name__ == "__main__":
    main()
