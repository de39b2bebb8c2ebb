"""The retrieval stages end to end through the CLI: corpus -> index -> search -> eval-retrieval."""

from __future__ import annotations

import json

import pytest
from conftest import PASSAGES

from radit import cli


@pytest.fixture
def documents_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    texts: dict[str, list[str]] = {}
    titles = {}
    for doc, title, text in PASSAGES:
        texts.setdefault(doc, []).append(text)
        titles[doc] = title
    with open(path, "w") as f:
        for doc, parts in texts.items():
            f.write(json.dumps({"id": doc, "title": titles[doc], "text": " ".join(parts)}) + "\n")
    return path


@pytest.fixture
def questions_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    rows = [
        {"id": "q1", "question": "Who founded the Ming dynasty?", "answers": ["Zhu Yuanzhang"], "positive_ids": ["ming"]},
        {"id": "q2", "question": "How many keys does a modern piano have?", "answers": ["88"], "positive_ids": ["piano"]},
        {"id": "q3", "question": "Who walked on the Moon first?", "answers": ["Neil Armstrong"], "positive_ids": ["moon"]},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_stages(tmp_path, documents_file, questions_file, index_args):
    passages = tmp_path / "passages.jsonl"
    assert cli.main(["corpus", "--inputs", str(documents_file), "--output", str(passages), "--max-words", "12", "-q"]) == 0
    rows = [json.loads(line) for line in passages.open()]
    assert len(rows) > 10 and all(len(r["text"].split()) <= 12 for r in rows)
    index = tmp_path / "index"
    assert cli.main(["index", "--passages", str(passages), "--output", str(index), "-q", *index_args]) == 0
    run = tmp_path / "run.jsonl"
    assert cli.main(["search", "--index", str(index), "--queries", str(questions_file), "--output", str(run), "--k", "4", "-q"]) == 0
    records = [json.loads(line) for line in run.open()]
    assert [r["qid"] for r in records] == ["q1", "q2", "q3"] and all(len(r["passage_ids"]) == 4 for r in records)
    out = tmp_path / "eval"
    assert cli.main(["eval-retrieval", "--index", str(index), "--questions", str(questions_file), "--output", str(out), "--ks", "1", "5", "-q"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["n"] == 3 and set(report["metrics"]) == {"answer_hit@1", "answer_hit@5", "recall@1", "recall@5", "mrr@5"}
    return index, report["metrics"]


def test_bm25_stages_end_to_end(tmp_path, documents_file, questions_file, capsys):
    index, metrics = run_stages(tmp_path, documents_file, questions_file, ["--backend", "bm25"])
    assert metrics["answer_hit@5"] == 100.0 and metrics["recall@5"] == 100.0
    assert cli.main(["search", "--index", str(index), "Zhu Yuanzhang Ming", "--k", "1"]) == 0
    assert "ming#0" in capsys.readouterr().out


def test_dense_stages_end_to_end_with_tiny_encoder(tmp_path, documents_file, questions_file, tiny_encoder_dir):
    run_stages(tmp_path, documents_file, questions_file, ["--encoder.query-model", str(tiny_encoder_dir), "--shard-size", "5"])
    manifest = json.loads((tmp_path / "index" / "manifest.json").read_text())
    assert manifest["encoder"]["query_model"] == str(tiny_encoder_dir) and manifest["n_shards"] >= 3


@pytest.mark.integration
def test_real_minilm_matches_sentence_transformers_and_finds_the_answer(tmp_path, documents_file, questions_file):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from radit.models import resolve_model
    from radit.retriever.encoder import Encoder

    texts = [t for _, _, t in PASSAGES]
    ours = Encoder.load("all-minilm-l6-v2", "mean", True, 256).encode(texts, batch_size=7)
    reference = SentenceTransformer(str(resolve_model("all-minilm-l6-v2")), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, reference, atol=2e-5)

    _, metrics = run_stages(tmp_path, documents_file, questions_file, [])
    assert metrics["answer_hit@1"] == 100.0 and metrics["mrr@5"] == 1.0
