"""Evaluation tasks, the eval harness (fake answer functions and a tiny in-process Llama) and the report."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import random
from pathlib import Path

import pytest
import torch
import yaml

from radit.config import EvalConfig, InferenceConfig, ReportConfig
from radit.eval.harness import read_predictions, run_eval, summarize
from radit.eval.report import make_report, run_report
from radit.eval.tasks import HELD_OUT, get_task, resolve_data_dir

QUESTIONS = [
    {"id": "ming", "question": "Who founded the Ming dynasty?", "answers": ["Zhu Yuanzhang"]},
    {"id": "paris", "question": "What is the capital of France?", "answers": ["Paris"]},
    {"id": "eiffel", "question": "When was the Eiffel Tower completed?", "answers": ["1889"]},
    {"id": "oxygen", "question": "Who discovered oxygen?", "answers": ["Joseph Priestley", "Carl Wilhelm Scheele"]},
    {"id": "piano", "question": "How many keys does a modern piano have?", "answers": ["88"]},
]
# Known predictions and their SQuAD scores: (em, f1).
PREDICTIONS = {
    "ming": ("Zhu Yuanzhang", 1, 1.0),
    "paris": ("the city of Paris", 0, 0.5),  # "city of paris" vs "paris": P 1/3, R 1
    "eiffel": ("1889.", 1, 1.0),
    "oxygen": ("Priestley", 0, 2 / 3),  # vs "joseph priestley": P 1, R 1/2
    "piano": ("52", 0, 0.0),
}
EM = 100 * 2 / 5
F1 = 100 * (1 + 0.5 + 1 + 2 / 3 + 0) / 5


# --------------------------------------------------------------------------------------------------
# Fixture files in the real formats
# --------------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A miniature ../shared/data: MMLU csv, FEVER jsonl, DPR tsv, NQ-open jsonl, HotpotQA json."""
    root = tmp_path / "data"
    # MMLU: header-less question,A,B,C,D,answer; a quoted cell with a comma and doubled quotes.
    write_csv(root / "mmlu/data/test/astronomy_test.csv", [
        ['What is true for a type-Ia ("type one-a") supernova?', "Binary systems", "Young galaxies", "Gamma rays", "X-rays", "A"],
        ["Which planet is largest?", "Mars", "Jupiter", "Venus", "Earth", "B"],
    ])
    write_csv(root / "mmlu/data/test/anatomy_test.csv", [["How many bones, roughly, in an adult?", "106", "156", "206", "306", "C"]])
    for subject in ("astronomy", "anatomy"):
        write_csv(root / f"mmlu/data/dev/{subject}_dev.csv",
                  [[f"{subject} demo {i}?", "w", "x", "y", "z", "ABCD"[i % 4]] for i in range(5)])
    # FEVER: {id, verifiable, label, claim, evidence}; NOT ENOUGH INFO is dropped.
    fever = []
    for i in range(HELD_OUT + 6):
        label = "SUPPORTS" if i % 3 else "REFUTES"
        fever.append({"id": 1000 + i, "verifiable": "VERIFIABLE", "label": label, "claim": f"Claim number {i}.", "evidence": []})
        if i % 20 == 0:
            fever.append({"id": 5000 + i, "verifiable": "NOT VERIFIABLE", "label": "NOT ENOUGH INFO", "claim": "Unknown.",
                          "evidence": [[[1, None, None, None]]]})
    (root / "fever").mkdir(parents=True)
    (root / "fever/dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fever))
    # NQ-open: test.jsonl with `answer` lists; dev.tsv DPR style, one row CSV-quoted.
    (root / "nq_open").mkdir()
    (root / "nq_open/test.jsonl").write_text(
        '{"question": "who founded the ming dynasty", "answer": ["Zhu Yuanzhang", "Hongwu Emperor"]}\n'
        '{"question": "capital of france", "answer": ["Paris"]}\n'
    )
    (root / "nq_open/dev.tsv").write_text(
        "who wrote hamlet\t['William Shakespeare']\n"
        'what is "the big apple"\t"[\'New York City\', ""NYC""]"\n'
        "how many legs does a spider have\t['8', 'eight']\n"
    )
    # TriviaQA: same DPR tsv format, one split: its head is the demonstration pool.
    (root / "triviaqa").mkdir()
    (root / "triviaqa/dev.tsv").write_text("".join(f"Trivia question {i}?\t['answer {i}']\n" for i in range(HELD_OUT + 4)))
    # HotpotQA: a JSON list of {question, answer, type}.
    (root / "hotpotqa").mkdir()
    hotpot = [{"question": f"Hotpot question {i}?", "answer": "yes" if i % 2 else f"entity {i}", "type": "comparison" if i % 2 else "bridge"}
              for i in range(HELD_OUT + 3)]
    (root / "hotpotqa/dev.json").write_text(json.dumps(hotpot))
    return root


@pytest.fixture
def questions_file(tmp_path) -> Path:
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


@pytest.fixture
def bm25_index(tmp_path, passages_file) -> Path:
    from radit.config import IndexConfig
    from radit.retriever.index import build_index

    return build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "index"), backend="bm25"))


# --------------------------------------------------------------------------------------------------
# Task readers
# --------------------------------------------------------------------------------------------------


def test_mmlu_reads_csv_and_takes_demos_from_the_same_subjects_dev(data_dir):
    task = get_task("mmlu", data_dir=data_dir)
    assert (task.kind, task.template, task.metric) == ("choice", "mmlu", "accuracy")
    examples = task.load()
    assert [e.id for e in examples] == ["anatomy-0", "astronomy-0", "astronomy-1"]  # subjects in name order
    first = examples[1]
    assert first.question == 'What is true for a type-Ia ("type one-a") supernova?'
    assert first.choices == {"A": "Binary systems", "B": "Young galaxies", "C": "Gamma rays", "D": "X-rays"}
    assert first.label == "A" and first.answers == ["A"] and first.meta == {"subject": "astronomy"}
    demos = task.demonstrations(3, first)
    assert [d.question for d in demos] == ["astronomy demo 0?", "astronomy demo 1?", "astronomy demo 2?"]
    assert task.demonstrations(5, examples[0])[0].question == "anatomy demo 0?"
    with pytest.raises(ValueError, match="only 5 demonstrations"):
        task.demonstrations(6, first)
    assert task.load(limit=2) == examples[:2]


def test_mmlu_bad_row_names_file_and_line(data_dir):
    path = data_dir / "mmlu/data/test/anatomy_test.csv"
    path.write_text('"A question, quoted",a,b,c,d,A\nshort row,a,b,c,A\n')
    with pytest.raises(ValueError, match=r"anatomy_test\.csv:2: row: 5 columns"):
        get_task("mmlu", data_dir=data_dir).load()
    path.write_text("q,a,b,c,d,E\n")
    with pytest.raises(ValueError, match=r"anatomy_test\.csv:1: answer: 'E'"):
        get_task("mmlu", data_dir=data_dir).load()


def test_fever_maps_labels_drops_nei_and_holds_out_demos(data_dir):
    task = get_task("fever", data_dir=data_dir)
    assert (task.kind, task.template, task.metric) == ("choice", "fever", "accuracy")
    examples = task.load()
    assert len(examples) == 6  # 70 labelled claims, the first 64 held out
    assert [e.id for e in examples] == [str(1000 + i) for i in range(HELD_OUT, HELD_OUT + 6)]
    for e in examples:
        i = int(e.id) - 1000
        assert e.label == ("true" if i % 3 else "false") and e.answers == [e.label] and e.choices is None
        assert e.question == f"Claim number {i}."
    assert task.notes == ["dropped 4 NOT ENOUGH INFO claims (KILT FEVER is two-way)"]
    demos = task.demonstrations(5)
    assert demos == task.demonstrations(5) == get_task("fever", data_dir=data_dir).demonstrations(5)  # deterministic
    assert {int(d.id) - 1000 for d in demos} <= set(range(HELD_OUT))  # never an evaluated claim


def test_nq_open_evaluates_test_jsonl_with_demos_from_dev_tsv(data_dir):
    task = get_task("nq-open", data_dir=data_dir)
    examples = task.load()
    assert [(e.question, e.answers) for e in examples] == [
        ("who founded the ming dynasty", ["Zhu Yuanzhang", "Hongwu Emperor"]), ("capital of france", ["Paris"])]
    demos = task.demonstrations(3)
    assert sorted(d.question for d in demos) == ['how many legs does a spider have', 'what is "the big apple"', "who wrote hamlet"]
    assert next(d for d in demos if "apple" in d.question).answers == ["New York City", "NYC"]  # CSV-quoted row
    with pytest.raises(ValueError, match="only 3 demonstrations"):
        task.demonstrations(4)


def test_triviaqa_and_hotpotqa_hold_out_their_head(data_dir):
    trivia = get_task("triviaqa", data_dir=data_dir)
    assert [e.question for e in trivia.load()] == [f"Trivia question {i}?" for i in range(HELD_OUT, HELD_OUT + 4)]
    assert trivia.load()[0].answers == [f"answer {HELD_OUT}"]
    assert {d.question for d in trivia.demonstrations(5)} <= {f"Trivia question {i}?" for i in range(HELD_OUT)}

    hotpot = get_task("hotpotqa", data_dir=data_dir)
    examples = hotpot.load(limit=2)
    assert [(e.question, e.answers, e.meta["type"]) for e in examples] == [
        (f"Hotpot question {HELD_OUT}?", [f"entity {HELD_OUT}"], "bridge"),
        (f"Hotpot question {HELD_OUT + 1}?", ["yes"], "comparison"),
    ]
    assert hotpot.template == "qa" and hotpot.metric == "em_f1"


def test_squad_open_uses_bundled_test_and_train_demos():
    task = get_task("squad-open")
    test_ids = {e.id for e in task.load()}
    assert len(task.load(limit=3)) == 3
    demos = task.demonstrations(5)
    assert len(demos) == 5 and not {d.id for d in demos} & test_ids


def test_qa_file_task_and_its_errors(tmp_path, questions_file):
    task = get_task(f"qa-file:{questions_file}")
    assert [e.id for e in task.load()] == [q["id"] for q in QUESTIONS]
    with pytest.raises(ValueError, match="--demos"):
        task.demonstrations(1)
    with_demos = get_task(f"qa-file:{questions_file}", demos="quickstart:squad-open/train")
    assert len(with_demos.demonstrations(2)) == 2

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok?", "answers": ["a"]}\n{"question": "  ", "answers": ["b"]}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: question: empty"):
        get_task(f"qa-file:{bad}").load()
    with pytest.raises(ValueError, match="nq-open, triviaqa"):
        get_task("nq")


def test_missing_data_dir_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("RADIT_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"--data-dir \(or \$RADIT_DATA\)"):
        get_task("nq-open")
    monkeypatch.setenv("RADIT_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path


# --------------------------------------------------------------------------------------------------
# Harness with fake answer functions
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FakePrediction:
    answer: str
    candidates: list[str]
    mixed: list[float]
    chunk_answers: list[str]
    weights: list[float]
    passage_ids: list[str]


INFERENCE_FIELDS = {f.name for f in dataclasses.fields(InferenceConfig)}


def ecfg(**kw) -> EvalConfig:
    """EvalConfig with the inference settings given as plain keywords, as on the command line."""
    inference = {key: kw.pop(key) for key in list(kw) if key in INFERENCE_FIELDS}
    return EvalConfig(inference=InferenceConfig(**inference), **kw)


class FakeAnswers:
    """Stands in for radit.augment: known answers, records its calls, can fail after n calls."""

    def __init__(self, fail_after: int | None = None, choice_answer: str = "true"):
        self.calls: list[dict] = []
        self.batches: list[list[str]] = []
        self.fail_after = fail_after
        self.choice_answer = choice_answer

    def _predict(self, answer: str, hits, candidates) -> FakePrediction:
        if self.fail_after is not None and len(self.calls) > self.fail_after:
            raise RuntimeError("killed")
        weights = torch.softmax(torch.tensor([h.score for h in hits] or [0.0]), 0).tolist()[: len(hits)]
        return FakePrediction(answer, candidates, [-1.0] + [float("-inf")] * (len(candidates) - 1),
                              [answer] * len(hits), weights, [h.id for h in hits])

    def generative(self, model, tokenizer, question, hits, template, settings, demonstrations=()):
        self.calls.append({"question": question, "hits": hits, **dataclasses.asdict(settings), "template": template,
                           "demonstrations": demonstrations})
        qid = next(q["id"] for q in QUESTIONS if q["question"] == question)
        return self._predict(PREDICTIONS[qid][0], hits, [PREDICTIONS[qid][0], "other"])

    def choice(self, model, tokenizer, question, options, hits, template, settings, demonstrations=()):
        self.calls.append({"question": question, "options": options, "hits": hits, **dataclasses.asdict(settings),
                           "template": template, "demonstrations": demonstrations})
        return self._predict(self.choice_answer, hits, list(template.answer_options))

    def generative_batch(self, model, tokenizer, questions, hits, template, settings, demonstrations=None):
        self.batches.append(list(questions))
        return [self.generative(model, tokenizer, q, h, template, settings, d)
                for q, h, d in zip(questions, hits, demonstrations or [()] * len(questions))]

    @property
    def fns(self):
        return {"generative": self.generative, "choice": self.choice}

    @property
    def batch_fns(self):
        return {**self.fns, "generative_batch": self.generative_batch}


def eval_cfg(tmp_path, questions_file, index, **kw) -> EvalConfig:
    kw.setdefault("output", str(tmp_path / "run"))
    kw.setdefault("k", 3)
    return ecfg(task=f"qa-file:{questions_file}", index=str(index) if index else None, **kw)


def test_eval_end_to_end_with_known_predictions(tmp_path, questions_file, bm25_index):
    fake = FakeAnswers()
    report = run_eval(eval_cfg(tmp_path, questions_file, bm25_index), fake.fns, lm=(None, None))
    out = tmp_path / "run"
    assert report["n"] == 5 and report["primary_metric"] == "em"
    assert report["metrics"]["em"] == pytest.approx(EM) and report["metrics"]["f1"] == pytest.approx(F1)
    assert report["temperature"]["value"] == 1.0 and "BM25" in report["temperature"]["source"]
    assert json.loads((out / "metrics.json").read_text()) == report
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["inference"]["k"] == 3 and saved["inference"]["template"] == "qa" and saved["inference"]["dtype"] == "float32"

    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [q["id"] for q in QUESTIONS]
    for rec in records:
        pred, em, f1 = PREDICTIONS[rec["id"]]
        assert (rec["prediction"], rec["em"], rec["f1"]) == (pred, em, pytest.approx(f1))
        assert len(rec["retrieved_ids"]) == 3 and rec["passage_ids"] == rec["retrieved_ids"]
        assert rec["mixed"] == [-1.0, None]  # -inf written as null
        assert sum(rec["weights"]) == pytest.approx(1.0)
    assert records[0]["retrieved_ids"][0] == "ming#0"  # BM25 finds the answering passage
    call = fake.calls[0]
    assert (call["mode"], call["k"], call["retrieval_temperature"], call["scoring"], call["demonstrations"]) == ("replug", 3, 1.0, "nll", [])
    assert call["template"].name == "qa" and call["max_new_tokens"] == 32


def test_eval_resumes_after_a_kill_without_duplicates(tmp_path, questions_file, bm25_index):
    cfg = eval_cfg(tmp_path, questions_file, bm25_index)
    with pytest.raises(RuntimeError, match="killed"):
        run_eval(cfg, FakeAnswers(fail_after=2).fns, lm=(None, None))
    preds = tmp_path / "run" / "predictions.jsonl"
    assert [json.loads(line)["id"] for line in preds.read_text().splitlines()] == ["ming", "paris"]
    with open(preds, "a") as f:
        f.write('{"id": "eiffel", "quest')  # killed mid-write

    fake = FakeAnswers()
    report = run_eval(cfg, fake.fns, lm=(None, None))
    assert [c["question"] for c in fake.calls] == [q["question"] for q in QUESTIONS[2:]]
    ids = [json.loads(line)["id"] for line in preds.read_text().splitlines()]
    assert ids == [q["id"] for q in QUESTIONS] and len(set(ids)) == len(ids)
    assert report["resumed"] == 2 and report["n"] == 5 and report["metrics"]["em"] == pytest.approx(EM)

    # Everything done: a rerun answers nothing and rewrites the same metrics.
    again = FakeAnswers()
    assert run_eval(cfg, again.fns, lm=(None, None))["metrics"] == report["metrics"] and not again.calls


def test_eval_answers_in_batches_and_a_killed_batch_resumes(tmp_path, questions_file, bm25_index):
    """--batch-size 2: open-QA questions go to the batch answer function two at a time; every record is
    as one at a time; a run killed mid-batch keeps the batches before it and resumes with another size."""
    cfg = eval_cfg(tmp_path, questions_file, bm25_index, batch_size=2)
    with pytest.raises(RuntimeError, match="killed"):
        run_eval(cfg, FakeAnswers(fail_after=2).batch_fns, lm=(None, None))  # the third question fails
    preds = tmp_path / "run" / "predictions.jsonl"
    assert [json.loads(line)["id"] for line in preds.read_text().splitlines()] == ["ming", "paris"]

    fake = FakeAnswers()
    report = run_eval(dataclasses.replace(cfg, batch_size=3), fake.batch_fns, lm=(None, None))
    assert fake.batches == [[q["question"] for q in QUESTIONS[2:]]]
    assert report["resumed"] == 2 and report["n"] == 5 and report["metrics"]["em"] == pytest.approx(EM)
    one = FakeAnswers()
    run_eval(eval_cfg(tmp_path, questions_file, bm25_index, output=str(tmp_path / "one")), one.fns, lm=(None, None))
    drop = lambda line: {k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
    assert ([drop(x) for x in preds.read_text().splitlines()]
            == [drop(x) for x in (tmp_path / "one" / "predictions.jsonl").read_text().splitlines()])
    with pytest.raises(ValueError, match="--batch-size"):
        eval_cfg(tmp_path, questions_file, bm25_index, batch_size=0)


def test_eval_limit_and_settings_mismatch(tmp_path, questions_file, bm25_index):
    cfg = eval_cfg(tmp_path, questions_file, bm25_index, limit=2)
    assert run_eval(cfg, FakeAnswers().fns, lm=(None, None))["n"] == 2
    fake = FakeAnswers()
    assert run_eval(dataclasses.replace(cfg, limit=None), fake.fns, lm=(None, None))["n"] == 5  # raising --limit resumes
    assert len(fake.calls) == 3 and fake.calls[0]["token_level"] is False
    # A run written before a setting existed resumes: the missing setting counts as its default.
    import yaml

    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del saved["inference"]["token_level"]
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(saved))
    assert run_eval(dataclasses.replace(cfg, limit=None), FakeAnswers().fns, lm=(None, None))["resumed"] == 5
    # ... and so does one written before the inference settings were a group (flat keys, `temperature`).
    legacy = {key: value for key, value in saved.items() if key != "inference"}
    legacy.update({("temperature" if key == "retrieval_temperature" else key): value for key, value in saved["inference"].items()})
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(legacy))
    assert run_eval(dataclasses.replace(cfg, limit=None), FakeAnswers().fns, lm=(None, None))["resumed"] == 5
    changed = eval_cfg(tmp_path, questions_file, bm25_index, scoring="nll_char")
    with pytest.raises(ValueError, match=r"inference.scoring: 'nll' -> 'nll_char'.*--overwrite"):
        run_eval(changed, FakeAnswers().fns, lm=(None, None))
    fake = FakeAnswers()
    run_eval(dataclasses.replace(changed, overwrite=True), fake.fns, lm=(None, None))
    assert len(fake.calls) == 5 and fake.calls[0]["scoring"] == "nll_char"


def test_eval_bad_input(tmp_path, questions_file, bm25_index, caplog):
    with pytest.raises(ValueError, match="--index is needed for --mode replug"):
        ecfg(task="squad-open")
    with pytest.raises(ValueError, match="--shots must be >= 0"):
        ecfg(task="squad-open", mode="closed-book", shots=-1)
    with pytest.raises(ValueError, match="--task 'nope' is unknown; valid: squad-open, nq-open"):
        run_eval(ecfg(task="nope", mode="closed-book", output=str(tmp_path / "x")), FakeAnswers().fns, lm=(None, None))
    with pytest.raises(ValueError, match="--template mmlu does not fit"):
        run_eval(eval_cfg(tmp_path, questions_file, bm25_index, template="mmlu"), FakeAnswers().fns, lm=(None, None))
    # k larger than the corpus (20 passages): a warning, and every passage comes back.
    with caplog.at_level(logging.WARNING):
        big_k = eval_cfg(tmp_path, questions_file, bm25_index, limit=1, output=str(tmp_path / "big-k"))
        big_k = dataclasses.replace(big_k, inference=dataclasses.replace(big_k.inference, k=50))
        run_eval(big_k, FakeAnswers().fns, lm=(None, None))
    assert "larger than the corpus" in caplog.text
    rec = json.loads((tmp_path / "big-k" / "predictions.jsonl").read_text())
    assert len(rec["retrieved_ids"]) == 20


def test_eval_choice_task_closed_book_with_demos(tmp_path, data_dir):
    fake = FakeAnswers(choice_answer="true")
    cfg = ecfg(task="fever", mode="closed-book", shots=2, data_dir=str(data_dir), output=str(tmp_path / "{task}-{mode}-{shots}"))
    report = run_eval(cfg, fake.fns, lm=(None, None))
    assert (tmp_path / "fever-closed-book-2" / "metrics.json").is_file()
    examples = get_task("fever", data_dir=data_dir).load()
    assert report["n"] == 6 and report["primary_metric"] == "accuracy"
    assert report["metrics"] == {"accuracy": pytest.approx(100 * sum(e.label == "true" for e in examples) / 6)}
    assert report["temperature"]["value"] is None and report["notes"]
    call = fake.calls[0]
    assert call["hits"] == [] and call["options"] is None and call["template"].name == "fever"
    demos = get_task("fever", data_dir=data_dir).demonstrations(2)
    assert call["demonstrations"] == [(d.question, d.label) for d in demos]

    mmlu = FakeAnswers(choice_answer="A")
    report = run_eval(ecfg(task="mmlu", mode="closed-book", shots=1, data_dir=str(data_dir),
                                 output=str(tmp_path / "mmlu")), mmlu.fns, lm=(None, None))
    assert report["metrics"]["accuracy"] == pytest.approx(100 / 3)
    assert mmlu.calls[0]["options"] == {"A": "106", "B": "156", "C": "206", "D": "306"}
    assert mmlu.calls[0]["demonstrations"] == [("anatomy demo 0?", "A", {"A": "w", "B": "x", "C": "y", "D": "z"})]


def test_temperature_comes_from_flag_or_the_searcher(tmp_path, passages_file, tiny_encoder_dir, bm25_index, questions_file):
    from radit.config import EncoderConfig, IndexConfig
    from radit.retriever.index import build_index

    dense = build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "dense"), device="cpu",
                                    encoder=EncoderConfig(preset="minilm", query_model=str(tiny_encoder_dir))))
    fake = FakeAnswers()
    report = run_eval(eval_cfg(tmp_path, questions_file, dense, limit=1, output=str(tmp_path / "d")), fake.fns, lm=(None, None))
    assert report["temperature"]["value"] == 0.05 and "score_temperature" in report["temperature"]["source"]
    assert fake.calls[0]["retrieval_temperature"] == 0.05
    report = run_eval(eval_cfg(tmp_path, questions_file, bm25_index, limit=1, retrieval_temperature=0.5,
                               output=str(tmp_path / "b")), FakeAnswers().fns, lm=(None, None))
    assert report["temperature"] == {"value": 0.5, "source": "--retrieval-temperature"}


def test_summarize_and_torn_lines(tmp_path):
    task = get_task("squad-open")
    records = [{"em": 1.0, "f1": 1.0}, {"em": 0.0, "f1": 0.25}]
    assert summarize(task, records) == ({"em": 50.0, "f1": 62.5}, "em")
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "x"')
    assert list(read_predictions(path)) == ["a", "b"] and path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    path.write_text('{"id": "a"}\nnot json\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: invalid JSON"):
        read_predictions(path)


# --------------------------------------------------------------------------------------------------
# Harness with a tiny real LM
# --------------------------------------------------------------------------------------------------


def test_eval_with_tiny_llama_and_bm25(tmp_path, questions_file, bm25_index, tiny_lm_dir):
    cfg = ecfg(task=f"qa-file:{questions_file}", model=str(tiny_lm_dir), index=str(bm25_index), k=3, limit=3,
                     max_new_tokens=4, device="cpu", output=str(tmp_path / "run"))
    report = run_eval(cfg)
    assert report["n"] == 3 and set(report["metrics"]) == {"em", "f1"}
    assert report["truncated_prompts"] == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == ["ming", "paris", "eiffel"]
    for rec in records:
        assert isinstance(rec["prediction"], str) and len(rec["retrieved_ids"]) == 3
        assert sum(rec["weights"]) == pytest.approx(1.0, abs=1e-4)
        assert rec["prediction"] in rec["candidates"] or not rec["candidates"]
        # the saved per-chunk scores and weights give back the saved Eq. 2 mixture (what remixing reads)
        assert len(rec["chunk_scores"]) == 3 and all(len(row) == len(rec["candidates"]) for row in rec["chunk_scores"])
        scores = torch.tensor([[-math.inf if x is None else x for x in row] for row in rec["chunk_scores"]], dtype=torch.float64)
        log_w = torch.tensor(rec["weights"], dtype=torch.float64).log()
        remixed = torch.logsumexp(scores + log_w[:, None], dim=0).tolist()
        assert remixed == pytest.approx([-math.inf if x is None else x for x in rec["mixed"]], abs=1e-3)


def test_eval_batches_of_questions_equal_one_at_a_time_with_tiny_llama(tmp_path, questions_file, bm25_index, tiny_lm_dir):
    """The default batch answer path against --batch-size 1 on a real (tiny) LM: the same records up to float rounding."""
    runs = {}
    for size in (1, 4):
        cfg = ecfg(task=f"qa-file:{questions_file}", model=str(tiny_lm_dir), index=str(bm25_index), k=3,
                   max_new_tokens=4, device="cpu", output=str(tmp_path / f"b{size}"), batch_size=size)
        run_eval(cfg)
        runs[size] = [json.loads(line) for line in (tmp_path / f"b{size}" / "predictions.jsonl").read_text().splitlines()]
    assert len(runs[1]) == 5
    for a, b in zip(runs[1], runs[4], strict=True):
        for key in ("id", "prediction", "em", "f1", "candidates", "chunk_answers", "passage_ids"):
            assert a[key] == b[key], (a["id"], key)
        assert a["mixed"] == pytest.approx(b["mixed"], abs=1e-4)
        assert torch.allclose(torch.tensor(a["chunk_scores"]), torch.tensor(b["chunk_scores"]), atol=1e-4)


def test_eval_choice_tasks_with_tiny_llama(tmp_path, data_dir, bm25_index, tiny_lm_dir):
    from radit.lm.model import load_lm

    lm = load_lm(str(tiny_lm_dir), device="cpu")
    mmlu = run_eval(ecfg(task="mmlu", index=str(bm25_index), k=2, shots=1, data_dir=str(data_dir), device="cpu",
                               output=str(tmp_path / "mmlu")), lm=lm)
    fever = run_eval(ecfg(task="fever", mode="closed-book", limit=2, data_dir=str(data_dir), device="cpu",
                                output=str(tmp_path / "fever")), lm=lm)
    cloze = run_eval(ecfg(task="mmlu", mode="closed-book", template="mmlu-cloze", shots=1, data_dir=str(data_dir),
                                device="cpu", output=str(tmp_path / "cloze")), lm=lm)
    assert mmlu["n"] == 3 and fever["n"] == 2 and cloze["n"] == 3 and cloze["template"] == "mmlu-cloze v1"
    runs = ((tmp_path / "mmlu", ["A", "B", "C", "D"]), (tmp_path / "fever", ["true", "false"]), (tmp_path / "cloze", ["A", "B", "C", "D"]))
    for run, options in runs:
        for rec in map(json.loads, (run / "predictions.jsonl").read_text().splitlines()):
            assert rec["candidates"] == options and rec["prediction"] in options
            assert rec["correct"] == float(rec["prediction"] == rec["gold"][0])
    # Cloze scores each option's text after the bare question, with the correct option's text as the demonstration.
    from radit.lm.scoring import continuation_logprobs
    from radit.prompts import get_template

    model, tokenizer = lm
    task = get_task("mmlu", data_dir=str(data_dir))
    example = task.load()[0]
    (demo,) = task.demonstrations(1, example)
    prompt = get_template("mmlu-cloze").render(example.question, demonstrations=[(demo.question, demo.choices[demo.label])])
    assert "A. " not in prompt and prompt.endswith(f"Question: {example.question}\nAnswer:")
    texts = [" " + example.choices[label] for label in "ABCD"]
    want = [float(lp.sum()) for lp in continuation_logprobs(model, tokenizer, [prompt] * 4, texts)]
    rec = json.loads((tmp_path / "cloze" / "predictions.jsonl").read_text().splitlines()[0])
    assert rec["mixed"] == pytest.approx(want, abs=1e-4)
    assert rec["prediction"] == "ABCD"[max(range(4), key=want.__getitem__)]
    with pytest.raises(ValueError, match="answer options"):
        run_eval(ecfg(task="fever", mode="closed-book", template="mmlu-cloze", data_dir=str(data_dir),
                            output=str(tmp_path / "bad")), lm=lm)


def test_eval_sample_is_a_fixed_random_subset_in_file_order(tmp_path, questions_file, bm25_index):
    reports = [run_eval(eval_cfg(tmp_path, questions_file, bm25_index, sample=3, output=str(tmp_path / f"s{i}")),
                        FakeAnswers().fns, lm=(None, None)) for i in range(2)]
    ids = [[json.loads(line)["id"] for line in (tmp_path / f"s{i}" / "predictions.jsonl").read_text().splitlines()] for i in range(2)]
    order = [q["id"] for q in QUESTIONS]
    assert reports[0]["n"] == 3 and ids[0] == ids[1]  # the same draw every time
    assert ids[0] == [order[i] for i in sorted(random.Random(0).sample(range(len(order)), 3))]
    with pytest.raises(ValueError, match="--sample and --limit"):
        ecfg(task="squad-open", mode="closed-book", sample=3, limit=3)


def test_radit_eval_and_report_commands(tmp_path, questions_file, bm25_index, tiny_lm_dir, capsys):
    from radit.cli import main

    runs = []
    for mode in ("replug", "closed-book"):
        out = tmp_path / mode
        args = ["eval", "--task", f"qa-file:{questions_file}", "--model", str(tiny_lm_dir), "--mode", mode, "--k", "2",
                "--limit", "2", "--max-new-tokens", "3", "--device", "cpu", "--output", str(out), "-q"]
        if mode != "closed-book":
            args += ["--index", str(bm25_index)]
        assert main(args) == 0
        printed = capsys.readouterr().out
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["n"] == 2 and metrics["mode"] == mode
        assert f"em {metrics['metrics']['em']:.2f}" in printed and str(out) in printed
        runs.append(str(out))
    assert main(["report", "--runs", *runs, "--output", str(tmp_path / "report"), "--labels", "REPLUG", "closed-book",
                 "--baseline", "REPLUG", "--resamples", "200", "-q"]) == 0
    table = capsys.readouterr().out
    assert f"| REPLUG | {tiny_lm_dir} | {bm25_index} | replug k=2 0-shot | 2 |" in table
    assert f"| closed-book | {tiny_lm_dir} | – | closed-book 0-shot | 2 |" in table
    assert "ΔEM vs REPLUG [95% CI]" in table and "200 resamples, seed 0" in table
    data = json.loads((tmp_path / "report" / "comparison.json").read_text())
    assert data["resamples"] == 200 and data["runs"][1]["vs_baseline"]["label"] == "REPLUG"
    assert (tmp_path / "report" / "comparison.png").is_file()
    # Bad input: a clear message and exit code 2, nothing written.
    assert main(["eval", "--task", "nope", "--mode", "closed-book", "--output", str(tmp_path / "bad"), "-q"]) == 2
    assert main(["eval", "--task", f"qa-file:{questions_file}", "--index", str(tmp_path / "no-index"),
                 "--output", str(tmp_path / "bad"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "unknown task" in err.lower() or "nope" in err
    assert "no-index" in err
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def test_report_writes_table_and_chart(tmp_path, questions_file, bm25_index, data_dir):
    qa = run_eval(eval_cfg(tmp_path, questions_file, bm25_index, output=str(tmp_path / "qa")), FakeAnswers().fns, lm=(None, None))
    closed = run_eval(eval_cfg(tmp_path, questions_file, None, mode="closed-book", output=str(tmp_path / "qa-cb")),
                      FakeAnswers().fns, lm=(None, None))
    fever = run_eval(ecfg(task="fever", mode="closed-book", data_dir=str(data_dir), output=str(tmp_path / "fever")),
                     FakeAnswers(choice_answer="false").fns, lm=(None, None))
    cfg = ReportConfig(runs=[str(tmp_path / d) for d in ("qa", "qa-cb", "fever")], output=str(tmp_path / "report"),
                       labels=["REPLUG", "closed-book", "closed-book"], baseline="REPLUG", resamples=200)
    md = run_report(cfg)
    assert qa["metrics"] == closed["metrics"]
    ci = {r["run"]: r["metrics"] for r in json.loads((tmp_path / "report" / "comparison.json").read_text())["runs"]}
    em, f1, acc = ci[cfg.runs[0]]["em"], ci[cfg.runs[0]]["f1"], ci[cfg.runs[2]]["accuracy"]
    assert em["low"] <= EM <= em["high"] and em["value"] == pytest.approx(EM) and acc["low"] <= acc["value"] <= acc["high"]
    task = f"qa-file:{questions_file}"
    tables = md.read_text().split("## ")[1:]
    assert [t.splitlines()[0] for t in tables] == [task, "fever"]
    lines = tables[0].splitlines()
    assert lines[2] == ("| configuration | LM | retriever | mode/k/shots | n | EM [95% CI] | F1 [95% CI] "
                        "| ΔEM vs REPLUG [95% CI] | ΔF1 vs REPLUG [95% CI] |")
    cells = f"5 | {EM:.1f} [{em['low']:.1f}, {em['high']:.1f}] | {F1:.1f} [{f1['low']:.1f}, {f1['high']:.1f}]"
    assert lines[4] == f"| REPLUG | {qa['model']} | {bm25_index} | replug k=3 0-shot | {cells} | (baseline) | (baseline) |"
    # The same answers as the baseline: no difference, and none claimed.
    assert lines[5] == (f"| closed-book | {qa['model']} | – | closed-book 0-shot | {cells} "
                        "| +0.0 [+0.0, +0.0] (n.s.) | +0.0 [+0.0, +0.0] (n.s.) |")
    fever_lines = tables[1].splitlines()
    assert fever_lines[2] == "| configuration | LM | retriever | mode/k/shots | n | accuracy [95% CI] |"
    assert fever_lines[4] == (f"| closed-book | {fever['model']} | – | closed-book 0-shot | 6 "
                              f"| {fever['metrics']['accuracy']:.1f} [{acc['low']:.1f}, {acc['high']:.1f}] |")
    png = tmp_path / "report" / "comparison.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        make_report([tmp_path / "missing"], tmp_path / "report")
    with pytest.raises(ValueError, match="--runs"):
        ReportConfig(runs=[])


def test_chart_labels_name_what_differs():
    from radit.eval.report import _varying, run_label

    base = {"task": "mmlu", "mode": "closed-book", "k": 10, "shots": 0, "template": "mmlu v1", "scoring": "nll"}
    runs = [base, {**base, "template": "mmlu-cloze v1"}, {**base, "template": "mmlu-cloze v1", "scoring": "nll_char"}]
    extra = _varying(runs)
    assert extra == ("template", "scoring")
    assert [run_label(m, extra) for m in runs] == ["closed-book 0-shot mmlu nll", "closed-book 0-shot mmlu-cloze nll",
                                                   "closed-book 0-shot mmlu-cloze nll_char"]
    assert run_label({**base, "mode": "replug", "k": 5}) == "replug k=5 0-shot"
    assert _varying([base, {**base, "task": "fever", "template": "fever v1"}]) == ()  # differs across tasks only


def test_eval_long_question_and_k_over_the_corpus(tmp_path, bm25_index, tiny_lm_dir, caplog):
    """A question that leaves little room cuts the Background (counted), never the question; k larger
    than the corpus retrieves the whole corpus, with a warning."""
    long_question = "Which of the following dynasties " + "and its many later emperors " * 19 + "founded Beijing?"
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "long", "question": long_question, "answers": ["Ming"]}) + "\n"
                    + json.dumps(QUESTIONS[0]) + "\n")
    cfg = ecfg(task=f"qa-file:{path}", model=str(tiny_lm_dir), index=str(bm25_index), k=50, max_new_tokens=4,
                     device="cpu", output=str(tmp_path / "run"))
    with caplog.at_level(logging.WARNING):
        report = run_eval(cfg)
    assert "larger than the corpus" in caplog.text
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "run" / "predictions.jsonl").read_text().splitlines())}
    assert len(records["long"]["retrieved_ids"]) == 20 and len(records["long"]["weights"]) == 20
    assert records["long"]["truncated"] > 0 and records["ming"]["truncated"] == 0
    assert report["truncated_prompts"] == records["long"]["truncated"] and report["questions_with_truncation"] == 1


def test_failed_eval_leaves_its_output_untouched(tmp_path, passages_file, tiny_encoder_dir, wide_encoder_dir,
                                                 questions_file, capsys):
    """Everything the user gave is checked before the run directory is written: a corrected rerun is
    not refused for a config.yaml that a failed run left behind."""
    from radit.cli import main
    from radit.config import EncoderConfig, IndexConfig
    from radit.retriever.index import build_index

    index = build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "dense"), device="cpu",
                                    encoder=EncoderConfig(query_model=str(tiny_encoder_dir))))
    out = tmp_path / "run"
    out.mkdir()
    (out / "sentinel.txt").write_text("keep")
    args = ["eval", "--task", f"qa-file:{questions_file}", "--index", str(index), "--k", "2", "--device", "cpu",
            "--output", str(out), "-q"]
    assert main([*args, "--query-encoder", str(wide_encoder_dir)]) == 2
    assert "48-d" in capsys.readouterr().err
    assert main([*args, "--model", str(tmp_path / "no-such-model")]) == 2
    assert main([*args, "--template", str(tmp_path)]) == 2  # a folder without prompt_template.json
    assert main([*args, "--shots", "2"]) == 2  # a qa-file task needs --demos for demonstrations
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["sentinel.txt"]
    # The corrected run goes through (fake answers: the check is about what is written).
    report = run_eval(eval_cfg(tmp_path, questions_file, index, output=str(out)), FakeAnswers().fns, lm=(None, None))
    assert report["n"] == 5 and (out / "config.yaml").is_file() and (out / "sentinel.txt").read_text() == "keep"


def test_template_from_a_model_folder(tmp_path, questions_file, bm25_index, tiny_lm_dir, capsys):
    """A fine-tuned model's folder carries the template it was trained with; eval and ask take the
    folder wherever a template name goes (radit.prompts.resolve_template)."""
    from radit.cli import main
    from radit.prompts import PromptTemplate, resolve_template

    model_dir = tmp_path / "ft-model"
    model_dir.mkdir()
    saved = PromptTemplate(name="qa-ft", version=1, question="Q: {question}\nA:")
    saved.save(model_dir)
    assert resolve_template(str(model_dir)) == saved and resolve_template("qa").name == "qa"
    with pytest.raises(ValueError, match="unknown prompt template 'nope'"):
        resolve_template("nope")
    fake = FakeAnswers()
    report = run_eval(eval_cfg(tmp_path, questions_file, bm25_index, template=str(model_dir)), fake.fns, lm=(None, None))
    assert report["template"] == "qa-ft v1" and fake.calls[0]["template"] == saved
    assert main(["ask", "--index", str(bm25_index), "--k", "2", "--model", str(tiny_lm_dir), "--device", "cpu",
                 "--max-new-tokens", "3", "--template", str(model_dir), "-q", "Who founded the Ming dynasty?"]) == 0
    assert capsys.readouterr().out.startswith("Q: Who founded the Ming dynasty?")
