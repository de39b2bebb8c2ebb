"""`radit report`: bootstrap intervals, paired differences against a baseline, run families, the files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from radit.config import ReportConfig
from radit.eval.metrics import bootstrap_interval, paired_bootstrap
from radit.eval.report import make_report, read_scores, run_family

N = 200


def fake_run(root: Path, name: str, scores: dict[str, list[float]], *, task: str = "squad-open", mode: str = "replug",
             model: str = "smollm2-135m-instruct", query_encoder: str | None = None, ids: list[str] | None = None,
             extra_records: int = 0) -> Path:
    """A finished `radit eval` run: metrics.json and predictions.jsonl with the given per-question scores
    ({"em": [...], "f1": [...]} or {"accuracy": [...]}, written as `correct` as the harness does)."""
    out = root / name
    out.mkdir(parents=True)
    n = len(next(iter(scores.values())))
    ids = ids or [f"q{i}" for i in range(n + extra_records)]
    fields = {"em": "em", "f1": "f1", "accuracy": "correct"}
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for i, qid in enumerate(ids):
            rec = {"id": qid, "prediction": "x", **{fields[k]: v[i % n] for k, v in scores.items()}}
            f.write(json.dumps(rec) + "\n")
    metrics = {k: 100 * sum(v) / n for k, v in scores.items()}
    info = {"task": task, "model": model, "index": None if mode == "closed-book" else "runs/quickstart/index",
            "query_encoder": query_encoder, "mode": mode, "k": 3, "shots": 0, "scoring": "nll", "template": "qa v1",
            "n": n, "metrics": metrics, "primary_metric": "accuracy" if "accuracy" in scores else "em"}
    (out / "metrics.json").write_text(json.dumps(info))
    return out


def lm_ft_model(root: Path) -> str:
    """A `radit train-lm` model folder beside the runs, named relative to `root` as `radit eval` got it."""
    model = root / "lm-ft" / "model"
    model.mkdir(parents=True)
    (model / "radit_train_config.yaml").write_text("lr: 1.0e-5\n")
    return "lm-ft/model"


def test_bootstrap_interval_matches_numpy():
    rng = np.random.default_rng(1)
    scores = rng.random(57)
    ci = bootstrap_interval(scores, resamples=500, seed=3, level=0.9)
    draws = np.random.default_rng(3).integers(0, 57, size=(500, 57))
    means = np.array([scores[d].mean() for d in draws])  # one resample at a time, the naive way
    assert ci["mean"] == pytest.approx(scores.mean())
    assert ci["low"] == pytest.approx(np.quantile(means, 0.05)) and ci["high"] == pytest.approx(np.quantile(means, 0.95))
    assert ci == bootstrap_interval(scores, resamples=500, seed=3, level=0.9)  # fixed seed, same interval
    assert bootstrap_interval([1.0] * 10) == {"mean": 1.0, "low": 1.0, "high": 1.0}
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def test_report_intervals_and_paired_differences(tmp_path):
    rng = np.random.default_rng(0)
    base_em = (rng.random(N) < 0.3).astype(float).tolist()
    better_em = [1.0 if i % 4 == 0 else e for i, e in enumerate(base_em)]  # ~+17 points, never worse
    noisy_em = base_em[1:] + base_em[:1]  # the same mean, other questions right: no difference
    runs = [fake_run(tmp_path, "replug", {"em": base_em, "f1": base_em}),
            fake_run(tmp_path, "better", {"em": better_em, "f1": better_em}),
            fake_run(tmp_path, "noisy", {"em": noisy_em, "f1": base_em})]
    md = make_report(runs, tmp_path / "report", labels=["REPLUG", "better", "noisy"], baseline="REPLUG", resamples=1000)
    data = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert data["resamples"] == 1000 and data["seed"] == 0 and data["baseline"] == "REPLUG"
    base, better, noisy = data["runs"]
    assert base["is_baseline"] and base["vs_baseline"] is None
    assert base["metrics"]["em"]["value"] == pytest.approx(100 * np.mean(base_em))
    ci = bootstrap_interval(base_em, 1000, 0)
    assert base["metrics"]["em"]["low"] == pytest.approx(100 * ci["low"])
    assert base["metrics"]["em"]["low"] < base["metrics"]["em"]["value"] < base["metrics"]["em"]["high"]

    d = better["vs_baseline"]["em"]
    assert d["diff"] == pytest.approx(100 * (np.mean(better_em) - np.mean(base_em)))
    assert d["low"] < d["diff"] < d["high"] and d["low"] > 0 and d["significant"]
    assert d == pytest.approx({k: 100 * v if k != "significant" else v
                               for k, v in paired_bootstrap(base_em, better_em, 1000, 0).items()})
    assert better["vs_baseline"]["label"] == "REPLUG" and better["vs_baseline"]["run"] == str(runs[0])
    assert noisy["vs_baseline"]["em"]["diff"] == pytest.approx(0.0) and not noisy["vs_baseline"]["em"]["significant"]
    assert noisy["vs_baseline"]["f1"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "significant": False}

    text = md.read_text()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("| configuration"))
    assert header == ("| configuration | LM | retriever | mode/k/shots | n | EM [95% CI] | F1 [95% CI] "
                      "| ΔEM vs REPLUG [95% CI] | ΔF1 vs REPLUG [95% CI] |")
    em = better["metrics"]["em"]
    row = next(line for line in lines if line.startswith("| better |"))
    assert row.startswith(f"| better | smollm2-135m-instruct | runs/quickstart/index | replug k=3 0-shot | {N} "
                          f"| {em['value']:.1f} [{em['low']:.1f}, {em['high']:.1f}] |")
    assert f"| {d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}] |" in row and "n.s." not in row
    assert next(line for line in lines if line.startswith("| noisy |")).endswith(
        "| +0.0 [+0.0, +0.0] (n.s.) |")
    assert "| (baseline) | (baseline) |" in next(line for line in lines if line.startswith("| REPLUG |"))
    assert "1,000 resamples, seed 0" in text
    png = tmp_path / "report" / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    # No baseline: no difference columns.
    md = make_report(runs, tmp_path / "plain", labels=["a", "b", "c"], name="x", title="Three runs")
    assert md == tmp_path / "plain" / "x.md" and md.read_text().startswith("# Three runs")
    assert "Δ" not in md.read_text() and (tmp_path / "plain" / "x.png").is_file()


def test_paired_difference_needs_the_same_questions(tmp_path):
    base = fake_run(tmp_path, "base", {"em": [1.0, 0.0, 1.0], "f1": [1.0, 0.0, 1.0]})
    shuffled = fake_run(tmp_path, "shuffled", {"em": [1.0, 1.0, 0.0], "f1": [1.0, 1.0, 0.0]}, ids=["q2", "q0", "q1"])
    other = fake_run(tmp_path, "other", {"em": [1.0, 1.0, 1.0], "f1": [1.0, 1.0, 1.0]}, ids=["q0", "q1", "q9"])
    # Matched by id, not by line: q0 right in both, q1 gained, q2 lost.
    make_report([base, shuffled], tmp_path / "ok", labels=["base", "s"], baseline="base", resamples=100)
    diff = json.loads((tmp_path / "ok" / "comparison.json").read_text())["runs"][1]["vs_baseline"]["em"]["diff"]
    assert diff == pytest.approx(0.0)
    with pytest.raises(ValueError, match=r"other.*'o'.*baseline .*base.*different questions.*2 shared.*same --limit"):
        make_report([base, other], tmp_path / "bad", labels=["base", "o"], baseline="base")
    assert not (tmp_path / "bad").exists()  # checked before anything is written
    with pytest.raises(ValueError, match=r"--baseline 'nope' names no run; the labels are 'base', 'o'"):
        make_report([base, other], tmp_path / "bad", labels=["base", "o"], baseline="nope")
    make_report([base, other], tmp_path / "no-baseline", labels=["base", "o"])  # without a baseline: fine


def test_run_families_and_labels(tmp_path):
    model = lm_ft_model(tmp_path)
    em = {"em": [1.0, 0.0], "f1": [1.0, 0.5]}
    runs = [fake_run(tmp_path, "cb", em, mode="closed-book", model=model),
            fake_run(tmp_path, "replug", em),
            fake_run(tmp_path, "lm", em, model=model),
            fake_run(tmp_path, "r", em, query_encoder="r-ft/model"),
            fake_run(tmp_path, "radit", em, model=model, query_encoder="r-ft/model")]
    assert [run_family(json.loads((r / "metrics.json").read_text()), r) for r in runs] == [
        "closed-book", "REPLUG", "LM-ft", "R-ft", "RA-DIT"]
    make_report(runs, tmp_path / "report", resamples=100)
    data = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["closed-book 0-shot", "REPLUG replug k=3 0-shot",
                                                  "LM-ft replug k=3 0-shot", "R-ft replug k=3 0-shot",
                                                  "RA-DIT replug k=3 0-shot"]
    # The caller names them; two runs that would read the same get their folder's name.
    make_report(runs[:2], tmp_path / "report", families=["RA-DIT", "LM-ft"], labels=["mine", "theirs"], resamples=100)
    data = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert [(r["label"], r["family"]) for r in data["runs"]] == [("mine", "RA-DIT"), ("theirs", "LM-ft")]
    twin = fake_run(tmp_path, "twin", em)
    make_report([runs[1], twin], tmp_path / "report", resamples=100)
    data = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert [r["label"] for r in data["runs"]] == ["REPLUG replug k=3 0-shot (replug)", "REPLUG replug k=3 0-shot (twin)"]
    with pytest.raises(ValueError, match="family 'RAG'.*not one of closed-book, REPLUG"):
        make_report(runs[:1], tmp_path / "report", families=["RAG"])
    with pytest.raises(ValueError, match="--labels: 'x' names two runs of squad-open"):
        make_report(runs[:2], tmp_path / "report", labels=["x", "x"])
    with pytest.raises(ValueError, match="--labels: 1 given for 2 runs"):
        make_report(runs[:2], tmp_path / "report", labels=["x"])


def test_report_across_tasks_with_a_choice_task(tmp_path):
    """Accuracy from the harness's `correct` field; a baseline per task; a task without one gets no Δ."""
    qa = {"em": [1.0, 0.0] * 20, "f1": [1.0, 0.25] * 20}
    runs = [fake_run(tmp_path, "qa-replug", qa),
            fake_run(tmp_path, "qa-cb", {"em": [0.0] * 40, "f1": [0.1] * 40}, mode="closed-book"),
            fake_run(tmp_path, "nq-replug", qa, task="nq-open"),
            fake_run(tmp_path, "mmlu-cb", {"accuracy": [1.0, 0.0, 0.0, 0.0] * 10}, task="mmlu", mode="closed-book")]
    md = make_report(runs, tmp_path / "report", labels=["REPLUG", "closed-book", "REPLUG", "closed-book"],
                     baseline="REPLUG", resamples=200)
    data = json.loads((tmp_path / "report" / "comparison.json").read_text())
    cb = data["runs"][1]
    assert cb["vs_baseline"]["run"] == str(runs[0]) and cb["vs_baseline"]["em"]["diff"] == pytest.approx(-50.0)
    assert cb["vs_baseline"]["em"]["significant"] and cb["vs_baseline"]["em"]["high"] < 0
    assert data["runs"][3]["metrics"]["accuracy"]["value"] == pytest.approx(25.0)
    assert data["runs"][3]["vs_baseline"] is None
    text = md.read_text()
    assert [line for line in text.splitlines() if line.startswith("## ")] == ["## squad-open", "## nq-open", "## mmlu"]
    mmlu = text.split("## mmlu")[1]
    assert "| accuracy [95% CI] |" in mmlu and "Δ" not in mmlu.split("\n\n")[1]
    assert "No run of mmlu is labelled REPLUG" in mmlu
    assert "| closed-book | smollm2-135m-instruct | – | closed-book 0-shot | 40 | 0.0 [0.0, 0.0] |" in text
    assert (tmp_path / "report" / "comparison.png").stat().st_size > 5000


def test_read_scores_checks_the_run(tmp_path):
    # A run resumed with a larger --limit and killed again: the first n questions are the ones counted.
    run = fake_run(tmp_path, "resumed", {"em": [1.0, 0.0, 0.0, 1.0], "f1": [1.0, 0.0, 0.0, 1.0]}, extra_records=3)
    with open(run / "predictions.jsonl", "a", encoding="utf-8") as f:
        f.write('{"id": "q7", "em": 1')  # torn last line
    info = json.loads((run / "metrics.json").read_text())
    assert list(read_scores(run, info)) == ["q0", "q1", "q2", "q3"]
    bad = {**info, "metrics": {"em": 75.0, "f1": 50.0}}
    with pytest.raises(ValueError, match="gives em 50.000 over its first 4 questions, metrics.json 75.000"):
        read_scores(run, bad)
    with pytest.raises(ValueError, match="holds 7 questions, metrics.json counts 9"):
        read_scores(run, {**info, "n": 9})
    (run / "predictions.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="no predictions.jsonl"):
        make_report([run], tmp_path / "report")


def test_report_config_checks_its_flags():
    assert ReportConfig(runs=["a", "b"], labels=["x", "y"], baseline="x").resamples == 2000
    with pytest.raises(ValueError, match="--labels: 1 given for 2 --runs"):
        ReportConfig(runs=["a", "b"], labels=["x"])
    with pytest.raises(ValueError, match="--resamples must be >= 100"):
        ReportConfig(runs=["a"], resamples=50)
