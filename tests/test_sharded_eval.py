"""`radit eval` on 2 processes (torchrun, gloo on CPU) writes what 1 process writes.

Both runs are the CLI in subprocesses with OMP_NUM_THREADS=1, on a tiny Llama (real SmolLM2
tokenizer), a dense index of the 20 conftest passages under a tiny BERT, 5 questions (shards of 3
and 2) and one demonstration each: `python -m radit.cli eval`, and `torchrun --nproc-per-node 2`
of this file, whose `_worker` runs the same CLI with the answer function wrapped to note which
questions each process answers (each its own share, none twice). Compared with the one-process run:

- predictions.jsonl: the same records in question order, predictions and their em/f1 identical; the
  float lists (mixed log-probabilities, p_R weights, retrieval scores, per-chunk scores) within
  FLOAT_ATOL, for float noise from the query and answer batches, which differ (3 + 2 questions
  against 5: other padding; measured about 1e-6 on CPU);
- metrics.json: equal but for the timings and the process count; config.yaml equal but for --output;
- nothing else left in the run directory (the per-process files are merged and deleted).

Resume: a run directory holding a killed one-process run's first answers and a killed 4-process
run's per-process file (with a torn last line) is finished by 2 processes, which answer only the
questions left and end with the same files; one process finishes a killed 2-process run (in-process,
with test_harness's fake answers); and the merge itself, on hand-written files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import write_passages
from test_ddp import LAUNCHER_VARS
from test_harness import QUESTIONS, FakeAnswers, eval_cfg

from radit.eval.harness import merge_predictions, run_eval

FLOAT_ATOL = 1e-5
FLOAT_LISTS = ("mixed", "weights", "retrieval_scores", "chunk_scores")
TIMINGS = ("seconds", "wall_seconds")


def python(*args: str) -> subprocess.CompletedProcess:
    """`python ARGS` in a subprocess outside any launcher, checked to succeed."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and k != "TQDM_DISABLE"}
    env["OMP_NUM_THREADS"] = "1"  # the same thread count for both runs (and two processes on a small machine)
    run = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


def two_processes(*args: str) -> list[list[str]]:
    """`radit eval ARGS` under torchrun on 2 processes; the questions each process answered, in rank order."""
    answered = Path(args[args.index("--output") + 1] + ".answered")
    answered.mkdir()
    python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, str(answered), *args)
    return [json.loads((answered / f"rank{r}.json").read_text()) for r in range(2)]


def _worker(answered: str, *argv: str) -> None:
    """One process under torchrun: `radit ARGV` (the CLI's `main`), with its LM answer function
    wrapped to note the questions this process answers, written to ANSWERED/rank{r}.json."""
    from radit import distributed
    from radit.cli import main
    from radit.eval import harness

    questions: list[str] = []
    fns = harness.default_answer_fns()
    answer = fns["generative_batch"]

    def noted(model, tokenizer, batch, *args, **kwargs):
        questions.extend(batch)
        return answer(model, tokenizer, batch, *args, **kwargs)

    harness.default_answer_fns = lambda: {**fns, "generative_batch": noted}
    code = main(list(argv))
    Path(answered, f"rank{distributed.rank()}.json").write_text(json.dumps(questions))
    sys.exit(code)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def float_gap(a: list[float | None], b: list[float | None]) -> float:
    """The largest |a - b| over two lists of floats, where None (a -inf log-probability) must match None."""
    assert len(a) == len(b) and [x is None for x in a] == [y is None for y in b], (a, b)
    return max((abs(x - y) for x, y in zip(a, b) if x is not None), default=0.0)


def assert_same_eval(run: Path, reference: Path) -> float:
    """`run` holds the reference's predictions, metrics and config; returns the largest float difference."""
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.json", "predictions.jsonl"]
    got, want = records(run), records(reference)
    assert [r["id"] for r in got] == [r["id"] for r in want] == [q["id"] for q in QUESTIONS]
    gap = 0.0
    for x, y in zip(got, want):
        assert x.keys() == y.keys()
        for key in x.keys() - {"seconds", *FLOAT_LISTS}:
            assert x[key] == y[key], (x["id"], key)
        for key in FLOAT_LISTS:
            a, b = x[key], y[key]
            if key == "chunk_scores":  # [prompts][candidates]
                assert [len(row) for row in a] == [len(row) for row in b]
                a, b = [v for row in a for v in row], [v for row in b for v in row]
            gap = max(gap, float_gap(a, b))
    assert gap <= FLOAT_ATOL

    metrics, reference_metrics = (json.loads((d / "metrics.json").read_text()) for d in (run, reference))
    assert metrics["processes"] == 2 and reference_metrics["processes"] == 1
    skip = {*TIMINGS, "processes", "resumed"}
    assert {k: v for k, v in metrics.items() if k not in skip} == {k: v for k, v in reference_metrics.items() if k not in skip}
    config, reference_config = (yaml.safe_load((d / "config.yaml").read_text()) for d in (run, reference))
    assert config.pop("output") == str(run) and reference_config.pop("output") == str(reference)
    assert config == reference_config
    return gap


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_encoder_dir, tiny_lm_dir) -> tuple[list[str], Path]:
    """(the eval arguments but --output, the one-process run's directory)."""
    from radit.config import EncoderConfig, IndexConfig
    from radit.retriever.index import build_index

    root = tmp_path_factory.mktemp("sharded-eval")
    index = build_index(IndexConfig(passages=str(write_passages(root / "passages.jsonl")), output=str(root / "index"),
                                    device="cpu", encoder=EncoderConfig(query_model=str(tiny_encoder_dir))))
    questions = root / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    args = ["eval", "--task", f"qa-file:{questions}", "--demos", "quickstart:squad-open/train", "--shots", "1",
            "--model", str(tiny_lm_dir), "--index", str(index), "--mode", "replug", "--k", "3", "--max-new-tokens", "4",
            "--device", "cpu", "-q"]
    python("-m", "radit.cli", *args, "--output", str(root / "one"))
    return args, root / "one"


@pytest.mark.distributed
def test_two_processes_write_what_one_process_writes(tmp_path, one_process):
    args, reference = one_process
    answered = two_processes(*args, "--output", str(tmp_path / "two"))
    assert answered == [[q["question"] for q in QUESTIONS[:3]], [q["question"] for q in QUESTIONS[3:]]]
    gap = assert_same_eval(tmp_path / "two", reference)
    print(f"largest float difference, 2 processes vs 1: {gap:.3g}")
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["resumed"] == 0


@pytest.mark.distributed
def test_two_processes_resume_a_killed_run_of_another_size(tmp_path, one_process):
    args, reference = one_process
    want = records(reference)
    run = tmp_path / "resumed"
    run.mkdir()
    shutil.copy(reference / "config.yaml", run / "config.yaml")  # --output differs: it may, on resuming

    def killed(rec: dict) -> str:  # a finished line, marked so that a re-answered question shows
        return json.dumps({**rec, "seconds": -1.0}) + "\n"

    # One process answered the first two questions; then a 4-process run's rank 3 answered the fourth
    # and was killed writing the fifth.
    (run / "predictions.jsonl").write_text(killed(want[0]) + killed(want[1]))
    (run / "predictions.rank3.jsonl").write_text(killed(want[3]) + killed(want[4])[:40])
    answered = two_processes(*args, "--output", str(run))

    assert answered == [[QUESTIONS[2]["question"]], [QUESTIONS[4]["question"]]]  # what was left, one each
    assert_same_eval(run, reference)
    assert [r["seconds"] == -1.0 for r in records(run)] == [True, True, False, True, False]  # the killed runs' lines kept
    assert json.loads((run / "metrics.json").read_text())["resumed"] == 3


def test_merge_puts_questions_in_order_and_deletes_the_per_process_files(tmp_path):
    def write(name: str, *lines: dict, torn: str = "") -> None:
        (tmp_path / name).write_text("".join(json.dumps(x) + "\n" for x in lines) + torn)

    write("predictions.jsonl", {"id": "c", "by": "one"}, {"id": "x", "by": "one"})  # x: beyond this run's --limit
    write("predictions.rank0.jsonl", {"id": "a", "by": 0})
    write("predictions.rank10.jsonl", {"id": "b", "by": 10}, torn='{"id": "d", "by"')
    write("predictions.rank2.jsonl", {"id": "b", "by": 2}, {"id": "c", "by": 2})  # answered twice: the first record stays
    write("predictions.rankX.jsonl", {"id": "d"})  # not a per-process file
    merged = merge_predictions(tmp_path, ["a", "b", "c", "d"])
    want = [{"id": "a", "by": 0}, {"id": "b", "by": 2}, {"id": "c", "by": "one"}, {"id": "x", "by": "one"}]
    assert list(merged.values()) == want and records(tmp_path) == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.jsonl", "predictions.rankX.jsonl"]
    # Nothing to merge: read only (a one-process run appends to predictions.jsonl in its own order).
    write("predictions.jsonl", {"id": "b"}, {"id": "a"})
    assert list(merge_predictions(tmp_path, ["a", "b"])) == ["b", "a"] and [r["id"] for r in records(tmp_path)] == ["b", "a"]


def test_one_process_finishes_a_killed_multi_process_run(tmp_path):
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    full = run_eval(eval_cfg(tmp_path, questions, None, mode="closed-book", output=str(tmp_path / "full")),
                    FakeAnswers().fns, lm=(None, None))
    want = records(tmp_path / "full")
    run = tmp_path / "killed"
    run.mkdir()
    shutil.copy(tmp_path / "full" / "config.yaml", run / "config.yaml")
    (run / "predictions.rank0.jsonl").write_text(json.dumps(want[0]) + "\n")
    (run / "predictions.rank1.jsonl").write_text(json.dumps(want[3]) + "\n")

    fake = FakeAnswers()
    report = run_eval(eval_cfg(tmp_path, questions, None, mode="closed-book", output=str(run)), fake.fns, lm=(None, None))
    assert [c["question"] for c in fake.calls] == [QUESTIONS[i]["question"] for i in (1, 2, 4)]
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "metrics.json", "predictions.jsonl"]
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in records(run)] == [
        {k: v for k, v in r.items() if k not in drop} for r in want]
    assert report["resumed"] == 2 and report["processes"] == 1 and report["metrics"] == full["metrics"]


if __name__ == "__main__":
    _worker(*sys.argv[1:])
