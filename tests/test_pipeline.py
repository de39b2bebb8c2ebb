"""`radit pipeline` end to end on tiny in-process models and a 20-passage corpus: every stage, the
report, skipping finished stages, rerunning changed ones and continuing a crashed one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PASSAGES

from radit.config import (
    CorpusConfig,
    EncoderConfig,
    IndexConfig,
    InferenceConfig,
    LMDataConfig,
    LSRDataConfig,
    PipelineConfig,
    PipelineEvalConfig,
    TrainLMConfig,
    TrainRetrieverConfig,
)
from radit.eval.tasks import task_slug
from radit.pipeline import LEDGER, plan, run_pipeline

QA = [("who founded the Ming dynasty?", "Zhu Yuanzhang"), ("what is the capital of France?", "Paris"),
      ("which river runs through Paris?", "the Seine"), ("when was the Ming dynasty founded?", "1368"),
      ("where did the Ming capital move?", "Beijing"), ("who moved the Ming capital?", "the Yongle Emperor")]


@pytest.fixture
def recipe(tmp_path, tiny_lm_dir, tiny_encoder_dir) -> PipelineConfig:
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "title": t, "text": x}) + "\n" for i, (_, t, x) in enumerate(PASSAGES)))
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"id": f"t{i}", "instruction": q, "output": a}) + "\n" for i, (q, a) in enumerate(QA)))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"id": f"q{i}", "question": q, "answers": [a]}) + "\n" for i, (q, a) in enumerate(QA[:4])))
    no_data = str(tmp_path / "no-data")
    return PipelineConfig(
        output=str(tmp_path / "run"), documents=[str(docs)], lm=str(tiny_lm_dir), device="cpu", dtype="float32",
        corpus=CorpusConfig(max_words=40),
        index=IndexConfig(encoder=EncoderConfig(query_model=str(tiny_encoder_dir), pooling="mean", normalize=True,
                                                score_temperature=0.05)),
        lm_data=LMDataConfig(sources=[f"jsonl:{train}"], k=2, max_length=96, data_dir=no_data),
        train_lm=TrainLMConfig(max_length=96, batch_size=2, steps=2, lr=1e-3, warmup_steps=0, eval_every=2,
                               eval_questions=0, checkpoint_every=2),
        lsr_data=LSRDataConfig(pairs=6, corpus_fraction=0.5, sources=[f"jsonl:{train}"], corpus_tokens=6, k=3,
                               part_size=3, data_dir=no_data),
        train_retriever=TrainRetrieverConfig(batch_size=2, steps=2, lr=1e-3, dev_pairs=2, eval_every=2,
                                             eval_questions=0, checkpoint_every=2),
        eval=PipelineEvalConfig(tasks=[f"qa-file:{test}"], limit=None, shots=0, resamples=200, retrieval_questions=str(test),
                                inference=InferenceConfig(k=2, max_new_tokens=3)),
    )


def counting(calls: list[str], stage_names: list[str]):
    """Runners that record which stages ran and then run the real stage."""
    def wrap(name, func):
        def run(cfg):
            calls.append(name)
            return func(cfg)
        return run
    return lambda stages: {s.name: wrap(s.name, s.run) for s in stages if s.name in stage_names}


def test_pipeline_runs_every_stage_and_reports_the_five_rows(recipe):
    report = run_pipeline(recipe)
    out = Path(recipe.output)
    ledger = json.loads((out / LEDGER).read_text())["stages"]
    names = [s.name for s in plan(recipe, out)]
    assert list(ledger) == names and all(e["state"] == "done" for e in ledger.values())
    assert names[:2] == ["corpus", "index"] and names.index("train-lm") < names.index("lsr-data")
    for path in ("passages.jsonl", "index/manifest.json", "lm-data/train.jsonl", "lm-ft/model/config.json",
                 "lsr-data/manifest.json", "r-ft/model/radit_encoder.json", "eval-retrieval/base/metrics.json",
                 "eval-retrieval/r-ft/metrics.json", "report.md", "report.png", "report.json"):
        assert (out / path).exists(), path
    task = task_slug(recipe.eval.tasks[0])
    rows = {row: json.loads((out / "eval" / task / row / "metrics.json").read_text()) for row in
            ("closed-book", "replug", "lm-ft", "r-ft", "ra-dit")}
    assert rows["closed-book"]["mode"] == "closed-book" and rows["replug"]["mode"] == "replug"
    assert rows["lm-ft"]["model"].endswith("lm-ft/model") and rows["lm-ft"]["query_encoder"] is None
    assert rows["r-ft"]["model"] == recipe.lm and rows["r-ft"]["query_encoder"].endswith("r-ft/model")
    assert rows["ra-dit"]["model"].endswith("lm-ft/model") and rows["ra-dit"]["query_encoder"].endswith("r-ft/model")
    # LSR targets come from the *base* LM, as in the paper
    assert json.loads((out / "lsr-data/manifest.json").read_text())["lm"]["spec"] == recipe.lm
    md = (out / "report.md").read_text()
    for label in ("closed-book", "REPLUG", "LM-ft", "R-ft", "RA-DIT"):
        assert label in md
    assert "Time per stage" in md and report["total_seconds"] > 0
    assert "Retrieval: answer-hit@k" in md and set(report["retrieval"]) == {"base", "r-ft"}
    assert all(f"eval/{task}/" in name for name in names if name.startswith("eval/"))  # a file-name-safe task folder
    checks = report["ordering"][recipe.eval.tasks[0]]
    assert any(c.startswith("RA-DIT the best row on EM") for c in checks)
    assert any(c.startswith("LM-ft above REPLUG on EM") for c in checks) and "paper's ordering" in md


def test_a_rerun_skips_finished_stages_and_reruns_what_changed(recipe, caplog):
    import dataclasses

    import radit.pipeline as pipeline

    run_pipeline(recipe)
    calls: list[str] = []
    real_plan = pipeline.plan

    def run_counted(cfg):
        stages = real_plan(cfg, Path(cfg.output))
        return pipeline.run_pipeline(cfg, runners=counting(calls, [s.name for s in stages])(stages))

    run_counted(recipe)
    assert calls == []  # everything finished with the same settings: nothing runs again
    changed = dataclasses.replace(recipe, train_retriever=dataclasses.replace(recipe.train_retriever, steps=3))
    with caplog.at_level("INFO", logger="radit.pipeline"):
        run_counted(changed)
    assert "train-retriever: changed since the last run (steps: 2 -> 3)" in caplog.text
    task = task_slug(recipe.eval.tasks[0])
    assert calls == ["train-retriever", "retrieval/r-ft", f"eval/{task}/r-ft", f"eval/{task}/ra-dit"]  # and everything downstream of it
    state = json.loads((Path(recipe.output) / "r-ft" / "metrics.json").read_text())
    assert state["steps"] == 3


def test_a_larger_eval_limit_continues_the_evaluations(recipe, caplog):
    """Raising --eval.limit answers only the new questions (eval resumes across --limit); a row whose
    upstream stage changed at the same time is rebuilt from scratch."""
    import dataclasses

    task = task_slug(recipe.eval.tasks[0])
    small = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, limit=2))
    run_pipeline(small)
    before = (Path(recipe.output) / "eval" / task / "replug" / "predictions.jsonl").read_text().splitlines()
    assert len(before) == 2
    seen: dict[str, bool] = {}

    def runners(cfg):
        stages = plan(cfg, Path(cfg.output))
        return {s.name: (lambda c, s=s: (seen.__setitem__(s.name, c.overwrite), s.run(c))[1]) for s in stages
                if s.name.startswith("eval/")}

    larger = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, limit=4),
                                 train_lm=dataclasses.replace(recipe.train_lm, steps=3))
    with caplog.at_level("INFO", logger="radit.pipeline"):
        run_pipeline(larger, runners=runners(larger))
    assert f"eval/{task}/replug: limit: 2 -> 4, continuing" in caplog.text
    assert not seen[f"eval/{task}/closed-book"] and not seen[f"eval/{task}/replug"] and not seen[f"eval/{task}/r-ft"]
    assert seen[f"eval/{task}/lm-ft"] and seen[f"eval/{task}/ra-dit"]  # train-lm changed too: rebuilt
    after = (Path(recipe.output) / "eval" / task / "replug" / "predictions.jsonl").read_text().splitlines()
    assert len(after) == 4 and after[:2] == before
    assert json.loads((Path(recipe.output) / "eval" / task / "replug" / "metrics.json").read_text())["n"] == 4
    ledger = json.loads((Path(recipe.output) / LEDGER).read_text())["stages"]
    assert ledger[f"eval/{task}/replug"]["settings"]["limit"] == 4 and ledger[f"eval/{task}/replug"]["state"] == "done"


def test_a_crashed_stage_continues_and_the_rest_is_kept(recipe):
    import radit.pipeline as pipeline

    def crash(cfg):
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_pipeline(recipe, runners={"lsr-data": crash})
    ledger = json.loads((Path(recipe.output) / LEDGER).read_text())["stages"]
    assert ledger["lsr-data"]["state"] == "started" and ledger["train-lm"]["state"] == "done"
    assert "train-retriever" not in ledger
    calls: list[str] = []
    stages = pipeline.plan(recipe, Path(recipe.output))
    run_pipeline(recipe, runners=counting(calls, [s.name for s in stages])(stages))
    assert calls[0] == "lsr-data" and "train-lm" not in calls and "corpus" not in calls
    assert json.loads((Path(recipe.output) / LEDGER).read_text())["stages"]["lsr-data"]["state"] == "done"


def test_a_recipe_may_not_set_the_paths_the_pipeline_connects(recipe):
    import dataclasses

    with pytest.raises(ValueError, match="train_lm.output is set by the pipeline"):
        dataclasses.replace(recipe, train_lm=dataclasses.replace(recipe.train_lm, output="elsewhere"))
    with pytest.raises(ValueError, match="top-level `dtype`"):
        dataclasses.replace(recipe, lsr_data=dataclasses.replace(recipe.lsr_data, dtype="bfloat16"))


def test_the_run_directory_must_be_the_pipelines_own(recipe, tmp_path):
    import dataclasses

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError):
        run_pipeline(dataclasses.replace(recipe, output=str(foreign)))
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1


def test_only_the_stages_the_rows_need_run(recipe):
    import dataclasses

    cfg = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, configurations=["closed-book", "replug", "r-ft"]))
    run_pipeline(cfg)
    ledger = json.loads((Path(cfg.output) / LEDGER).read_text())["stages"]
    assert "train-lm" not in ledger and "lm-data" not in ledger and "train-retriever" in ledger


def test_a_field_added_with_its_default_keeps_the_key():
    """A later radit that adds a config field (with a default) must not rerun finished stages."""
    import dataclasses

    from radit.pipeline import Stage, stage_key, stage_settings

    @dataclasses.dataclass
    class Before:
        steps: int = 10
        lr: float = 1e-5

    @dataclasses.dataclass
    class After:
        steps: int = 10
        lr: float = 1e-5
        new_option: str = "default"

    assert stage_settings(Before(steps=3)) == {"steps": 3}
    key = stage_key(Stage("s", Before(steps=3), print), {})
    assert stage_key(Stage("s", After(steps=3), print), {}) == key
    assert stage_key(Stage("s", After(steps=3, new_option="x"), print), {}) != key
    assert stage_key(Stage("s", Before(steps=4), print), {}) != key


def test_each_task_may_have_its_own_question_count(recipe):
    import dataclasses

    from radit.pipeline import eval_config

    ev = dataclasses.replace(recipe.eval, tasks=["squad-open", "nq-open"], limit=200, limits=[200, 100])
    cfg = dataclasses.replace(recipe, eval=ev)
    assert [eval_config(cfg, Path(cfg.output), t, "replug").limit for t in ev.tasks] == [200, 100]
    with pytest.raises(ValueError, match="one count >= 1 per task"):
        dataclasses.replace(ev, limits=[100])


def test_a_broken_ledger_is_a_one_line_error_and_nothing_is_written(recipe):
    out = Path(recipe.output)
    out.mkdir()
    (out / ".radit-output").write_text('{"written_by": "radit", "output": "pipeline"}\n')
    (out / LEDGER).write_text("{not json")
    with pytest.raises(ValueError, match="pipeline.json: not a pipeline ledger radit wrote"):
        run_pipeline(recipe)
    assert sorted(p.name for p in out.iterdir()) == [".radit-output", LEDGER]
