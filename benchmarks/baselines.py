"""The baselines RA-DIT must beat: the base LM with and without retrieval, on the bundled SQuAD-open test
questions, plus MMLU 0-shot closed-book (the check that multiple-choice scoring beats chance). The same
sweep measures a fine-tuned LM (`--model runs/lm-ft/model --template runs/lm-ft/model`).

    python benchmarks/baselines.py --index runs/quickstart/index [--limit 200] [--mmlu-sample 1000]
    python benchmarks/baselines.py --model runs/lm-ft/model --template runs/lm-ft/model --out runs/lm-ft-eval \
        --name lm_ft_quality --shots 0 --mmlu-sample 0 --only squad-open-replug-k3-0shot

Runs `radit eval` (in-process, one LM load) for closed-book, top-1, concat k=3 and REPLUG k=3, 5, 10,
each 0-shot and 5-shot, into runs/baselines/<name>/ (resumable: a rerun continues), then writes
benchmarks/results/baselines.json and, via `radit report`, benchmarks/results/baselines/comparison.{md,png}.
Equivalent CLI for one row:

    radit eval --task squad-open --index runs/quickstart/index --mode replug --k 10 --shots 5 --limit 200
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, save

from radit.config import EvalConfig, InferenceConfig
from radit.eval.harness import run_eval
from radit.eval.report import make_report
from radit.lm.model import load_lm

SQUAD_RUNS = [  # (mode, k, shots): cheapest first, so that a partial sweep is still useful
    ("closed-book", 0, 0), ("closed-book", 0, 5), ("top1", 1, 0), ("top1", 1, 5), ("concat", 3, 0), ("concat", 3, 5),
    ("replug", 3, 0), ("replug", 3, 5), ("replug", 5, 5), ("replug", 10, 5), ("replug", 5, 0), ("replug", 10, 0),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default="runs/quickstart/index")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=200, help="SQuAD-open test questions (the first N)")
    ap.add_argument("--mmlu-sample", type=int, default=1000, help="MMLU test questions drawn at random (0: skip)")
    ap.add_argument("--shots", type=int, nargs="+", default=[0, 5])
    ap.add_argument("--scoring", default="nll")
    ap.add_argument("--out", default="runs/baselines")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--template", default=None, help="template name or model folder (default: each task's own)")
    ap.add_argument("--name", default="baselines", help="results file benchmarks/results/<name>.json and report folder")
    ap.add_argument("--only", nargs="+", default=None, help="run only these named runs (e.g. squad-open-replug-k3-0shot)")
    ap.add_argument("--report-only", action="store_true",
                    help="evaluate nothing: tabulate the runs already finished (a partial sweep)")
    args = ap.parse_args()

    lm = None if args.report_only else load_lm(args.model, device=args.device)
    configs = []
    if args.mmlu_sample:
        # The paper's letter format, and cloze (each option's text scored; what small models are measured with).
        mmlu = dict(task="mmlu", sample=args.mmlu_sample)
        closed = dict(mode="closed-book")
        configs.append(("mmlu-closed-book-0shot", EvalConfig(**mmlu, inference=InferenceConfig(**closed))))
        configs.append(("mmlu-cloze-closed-book-0shot", EvalConfig(**mmlu, inference=InferenceConfig(**closed, template="mmlu-cloze"))))
        configs.append(("mmlu-cloze-nll_char-closed-book-0shot",
                        EvalConfig(**mmlu, inference=InferenceConfig(**closed, template="mmlu-cloze", scoring="nll_char"))))
    for mode, k, shots in SQUAD_RUNS:
        if shots not in args.shots:
            continue
        name = f"squad-open-{mode}" + ("" if mode in ("closed-book", "top1") else f"-k{k}") + f"-{shots}shot"
        inference = InferenceConfig(mode=mode, k=max(k, 1), scoring=args.scoring, template=args.template)
        configs.append((name, EvalConfig(task="squad-open", index=None if mode == "closed-book" else args.index,
                                         inference=inference, shots=shots, limit=args.limit)))
    if args.only:
        configs = [(name, cfg) for name, cfg in configs if name in args.only]
    rows, dirs, missing = [], [], []
    for name, cfg in configs:
        cfg.model, cfg.device, cfg.output = args.model, args.device, f"{args.out}/{name}"
        t = time.time()
        if args.report_only:
            path = Path(cfg.output) / "metrics.json"
            report = json.loads(path.read_text()) if path.is_file() else None
            if report is None or report["n"] != (cfg.sample or cfg.limit):
                missing.append(name)
                continue
        else:
            report = run_eval(cfg, lm=lm)
        print(f"{name}: {json.dumps(report['metrics'])} n={report['n']} ({time.time() - t:.0f} s)", flush=True)
        rows.append({"name": name, "command": eval_command(cfg), **{k: report[k] for k in (
            "task", "mode", "k", "shots", "scoring", "template", "n", "metrics", "temperature", "truncated_prompts", "seconds")}})
        dirs.append(Path(cfg.output))
    if dirs:
        print(make_report(dirs, RESULTS / args.name).read_text())
    if missing:
        print(f"not finished (rerun without --report-only to resume them): {', '.join(missing)}")
    save(args.name, {"model": args.model, "index": args.index, "runs": rows, "not_finished": missing})


def eval_command(cfg: EvalConfig) -> str:
    """The `radit eval` command line that reproduces one run."""
    inf = cfg.inference
    parts = [f"radit eval --task {cfg.task} --mode {inf.mode}"]
    if cfg.model != "smollm2-135m-instruct":
        parts.append(f"--model {cfg.model}")
    if inf.mode == "top1":
        parts.append(f"--index {cfg.index}")
    elif inf.mode != "closed-book":
        parts.append(f"--index {cfg.index} --k {inf.k}")
    parts.append(f"--shots {cfg.shots}")
    parts.append(f"--sample {cfg.sample}" if cfg.sample else f"--limit {cfg.limit}")
    if inf.template:
        parts.append(f"--template {inf.template}")
    if inf.scoring != "nll":
        parts.append(f"--scoring {inf.scoring}")
    return " ".join(parts)


if __name__ == "__main__":
    main()
