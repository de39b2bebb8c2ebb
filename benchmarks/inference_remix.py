"""Eq. 2 at other k and retrieval temperatures T, read off one evaluation's predictions: no LM call.

    radit eval --task qa-file:quickstart:squad-open/dev --sample 200 --shots 0 --k 10 \\
        --model runs/quickstart/lm-ft/model --index runs/quickstart/index --output runs/remix/dev-k10
    python benchmarks/inference_remix.py runs/remix/dev-k10 --ks 1 2 3 5 10 \\
        --temperatures 0.01 0.02 0.05 0.1 0.2 1 inf --name inference_remix-dev

Under `replug` generation each chunk's greedy answer does not depend on T or on the other chunks, and
`predictions.jsonl` keeps every candidate's score under every chunk (`chunk_scores`) and the retrieval
scores, so one run at k = 10 answers every (k <= 10, T) question by `radit.augment.remix`
(tests/test_augment.py checks it against running again). Per setting: EM / F1 and the paired bootstrap
difference against the run's own (k, T). Choose on a dev split; apply the choice to test once.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from common import save

from radit.augment import Prediction, remix
from radit.eval.harness import read_predictions
from radit.eval.metrics import exact_match, f1_score, paired_bootstrap


def load(run: Path) -> tuple[list[dict], dict]:
    if not (run / "metrics.json").is_file() or not (run / "predictions.jsonl").is_file():
        raise SystemExit(f"{run}: no metrics.json and predictions.jsonl; give the --output folder of a finished `radit eval`")
    metrics = json.loads((run / "metrics.json").read_text())
    records = list(read_predictions(run / "predictions.jsonl").values())  # file order; file:line on a bad line
    missing = [r["id"] for r in records if "chunk_scores" not in r]
    if missing:
        raise SystemExit(f"{run}/predictions.jsonl: {len(missing)} records have no chunk_scores (question {missing[0]}); "
                         "rerun `radit eval` with this radit into a new --output")
    return records, metrics


def _floats(xs: list) -> list[float]:
    return [-math.inf if x is None else x for x in xs]  # the file writes -inf as null


def as_prediction(rec: dict) -> Prediction:
    return Prediction(rec["question"], rec["prediction"], rec["candidates"], _floats(rec["mixed"]), rec["chunk_answers"],
                      _floats(rec["weights"]), rec["passage_ids"], [_floats(row) for row in rec["chunk_scores"]], "replug", "nll")


def _interval(d: dict) -> str:
    return f"{100 * d['diff']:+5.1f} [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a `radit eval` output folder of a replug generation task")
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.01, 0.02, 0.05, 0.1, 0.2, 1.0, math.inf],
                    help="p_R temperatures; inf weighs the k chunks equally")
    ap.add_argument("--name", default="inference_remix", help="results/<name>.json")
    args = ap.parse_args(argv)

    run = Path(args.run)
    records, metrics = load(run)
    if metrics.get("mode") != "replug":
        raise SystemExit(f"{run}: mode {metrics.get('mode')!r}; remixing needs a replug run")
    k0, t0 = metrics["k"], metrics["temperature"]["value"]
    scores = {"em": [r["em"] for r in records], "f1": [r["f1"] for r in records]}
    rows = []
    print(f"{run}: {len(records)} questions, run at k={k0}, T={t0}: EM {100 * sum(scores['em']) / len(records):.1f}")
    # The run's own setting read back from the file must give the run's own answers.
    differ = sum(remix(as_prediction(r), r["retrieval_scores"], k0, t0).answer != r["prediction"] for r in records)
    print(f"remixed at the run's own (k, T): {differ} of {len(records)} answers differ from the run's")
    print(f"{'k':>3} {'T':>6} {'EM':>6} {'F1':>6}  ΔEM [95 %]            ΔF1 [95 %]")
    for k in args.ks:
        if k > k0:
            continue
        for t in args.temperatures:
            answers = [remix(as_prediction(r), r["retrieval_scores"], k, t).answer for r in records]
            em = [exact_match(a, r["gold"]) for a, r in zip(answers, records)]
            f1 = [f1_score(a, r["gold"]) for a, r in zip(answers, records)]
            d_em, d_f1 = paired_bootstrap(scores["em"], em), paired_bootstrap(scores["f1"], f1)
            row = {"k": k, "temperature": t if math.isfinite(t) else "inf", "em": 100 * sum(em) / len(em),
                   "f1": 100 * sum(f1) / len(f1),
                   **{f"d{m}_vs_run": {key: (100 * v if key != "significant" else v) for key, v in d.items()}
                      for m, d in (("em", d_em), ("f1", d_f1))}}
            rows.append(row)
            print(f"{k:>3} {t:>6g} {row['em']:6.1f} {row['f1']:6.1f}  {_interval(d_em):<21} {_interval(d_f1)}")
    save(args.name, {"run": str(run), "task": metrics.get("task"), "model": metrics.get("model"),
                     "questions": len(records), "run_k": k0, "run_temperature": t0,
                     "own_setting_answers_differing": differ, "settings": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
