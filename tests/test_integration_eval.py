"""`radit eval` end to end with the real packaged models (SmolLM2-135M-Instruct, MiniLM) on 5 questions.

The corpus is the bundled documents of the first test article plus distractors, so the index builds
in seconds; the questions are the first five bundled SQuAD-open test questions.
"""

from __future__ import annotations

import gzip
import json

import pytest

from radit.cli import main
from radit.data.qa import load_questions, quickstart_documents

pytestmark = pytest.mark.integration


def test_radit_eval_with_real_models_on_five_questions(tmp_path, capsys):
    questions = load_questions("quickstart:squad-open/test", limit=5)
    with gzip.open(quickstart_documents(), "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    article = docs[0]["title"]
    assert all(q.question for q in questions)
    corpus = [d for d in docs if d["title"] == article] + [d for d in docs if d["title"] != article][:60]
    documents = tmp_path / "documents.jsonl"
    documents.write_text("".join(json.dumps(d) + "\n" for d in corpus), encoding="utf-8")

    assert main(["corpus", "--inputs", str(documents), "--output", str(tmp_path / "passages.jsonl"), "-q"]) == 0
    assert main(["index", "--passages", str(tmp_path / "passages.jsonl"), "--output", str(tmp_path / "index"),
                 "--device", "cpu", "-q"]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--task", "squad-open", "--index", str(tmp_path / "index"), "--mode", "replug", "--k", "3",
                 "--shots", "5", "--limit", "5", "--device", "cpu", "--output", str(out), "-q"]) == 0
    assert "over 5 questions" in capsys.readouterr().out

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 5 and metrics["temperature"]["value"] == pytest.approx(0.05)  # MiniLM's preset
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["question"] for r in records] == [q.question for q in questions]
    for rec in records:
        assert rec["prediction"] and rec["prediction"] in rec["candidates"]
        assert len(rec["weights"]) == 3 and sum(rec["weights"]) == pytest.approx(1.0, abs=1e-4)
        assert "\n" not in rec["prediction"]  # the first answer line only
    # The retriever finds the article, and with it in the Background the model gets some answers right.
    assert sum(rec["retrieved_ids"][0].startswith(f"squad:{article.replace(' ', '_')}") for rec in records) >= 4
    assert metrics["metrics"]["em"] >= 20  # measured: 1 of 5 exactly right (EM 20, F1 20)
