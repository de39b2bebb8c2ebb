"""The Qdrant backend (local mode, no server) against the flat FAISS index of the same passages and
encoder: the same hits and scores, the same swapped query tower, the same document vectors; the CLI on
a qdrant index; resume of a killed upload; one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_passages

from radit import cli
from radit.config import EncoderConfig, IndexConfig, QdrantConfig
from radit.retriever.encoder import Encoder
from radit.retriever.hits import Searcher
from radit.retriever.index import build_index
from radit.retriever.manifest import IndexMismatchError
from radit.retriever.qdrant import UPLOAD_FILE, QdrantIndex
from radit.retriever.search import DenseSearcher, load_searcher

qdrant_client = pytest.importorskip("qdrant_client")

QUESTIONS = ["who founded the Ming dynasty?", "when was the Eiffel Tower completed?", "how many keys does a piano have?"]


def index_cfg(passages: Path, out: Path, encoder_dir: Path, **kw) -> IndexConfig:
    enc = EncoderConfig(query_model=str(encoder_dir), pooling="mean", normalize=True)
    return IndexConfig(passages=str(passages), output=str(out), encoder=enc, batch_size=4, shard_size=8, device="cpu", **kw)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder_dir) -> Path:
    """runs/{passages.jsonl, dense, qdrant}: a flat FAISS and a local-mode Qdrant index of the same 20
    passages with the same encoder (3 shards of 8, 8, 4; upserts of 3 points)."""
    runs = tmp_path_factory.mktemp("runs")
    passages = write_passages(runs / "passages.jsonl")
    build_index(index_cfg(passages, runs / "dense", tiny_encoder_dir))
    build_index(index_cfg(passages, runs / "qdrant", tiny_encoder_dir, backend="qdrant", qdrant=QdrantConfig(batch_size=3)))
    return runs


def assert_same_hits(got, want):
    for g, w in zip(got, want, strict=True):
        assert [h.id for h in g] == [h.id for h in w] and [h.row for h in g] == [h.row for h in w]
        np.testing.assert_allclose([h.score for h in g], [h.score for h in w], atol=1e-5)


def test_qdrant_hits_equal_flat_faiss_hits(built):
    manifest = json.loads((built / "qdrant" / "manifest.json").read_text())
    assert manifest["backend"] == "qdrant" and manifest["count"] == 20 and manifest["dim"] == 32 and manifest["n_shards"] == 3
    assert manifest["qdrant"] == {"path": "qdrant", "collection": "radit", "distance": "dot"}
    assert not (built / "qdrant" / "faiss.index").exists()

    searcher, dense = load_searcher(built / "qdrant", device="cpu"), load_searcher(built / "dense", device="cpu")
    assert isinstance(searcher, DenseSearcher) and isinstance(searcher.index, QdrantIndex)
    assert all(hasattr(searcher, name) for name in Searcher.__annotations__)
    assert searcher.retrieval_temperature == dense.retrieval_temperature
    assert "score_temperature" in searcher.retrieval_temperature_source
    assert_same_hits(searcher.search(QUESTIONS, k=7), dense.search(QUESTIONS, k=7))
    hits = searcher.search(["tea"], k=50)[0]  # k is clipped to the corpus
    assert len(hits) == 20 and {h.row for h in hits} == set(range(20))
    assert_same_hits([hits], dense.search(["tea"], k=20))
    q = searcher.encode_queries(QUESTIONS)
    _, ids = searcher.search_ids(q, 4)
    np.testing.assert_array_equal(ids, dense.search_ids(q, 4)[1])


def test_swapped_query_encoder_matches_the_dense_index_with_that_tower(built, other_tiny_encoder_dir):
    before = (built / "qdrant" / "manifest.json").read_text()
    swapped = load_searcher(built / "qdrant", query_encoder=str(other_tiny_encoder_dir), device="cpu")
    dense = load_searcher(built / "dense", query_encoder=str(other_tiny_encoder_dir), device="cpu")
    got = swapped.search(QUESTIONS, k=20)
    assert_same_hits(got, dense.search(QUESTIONS, k=20))
    # The new tower's queries against the unchanged stored document vectors.
    q = Encoder.load(str(other_tiny_encoder_dir), "mean", True, 64).encode(QUESTIONS)
    for hits, qv in zip(got, q):
        np.testing.assert_allclose([h.score for h in hits], swapped.doc_vectors(np.array([h.row for h in hits])) @ qv, atol=1e-5)
    base = load_searcher(built / "qdrant", device="cpu").search(QUESTIONS, k=20)
    assert [[h.row for h in r] for r in got] != [[h.row for h in r] for r in base]
    assert (built / "qdrant" / "manifest.json").read_text() == before


def test_doc_vectors_equal_the_stored_embeddings_and_payloads_the_passage_ids(built):
    searcher, dense = load_searcher(built / "qdrant", device="cpu"), load_searcher(built / "dense", device="cpu")
    rows = np.array([[3, -1, 19, 3], [0, 7, 8, -1]])  # repeats, shard boundaries, no-hit rows
    got = searcher.doc_vectors(rows)
    assert got.shape == (2, 4, 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, dense.doc_vectors(rows), atol=1e-7)
    assert not got[0, 1].any() and not got[1, 3].any()
    np.testing.assert_allclose(searcher.doc_vectors(np.arange(20)), np.concatenate(dense.vectors.shards), atol=1e-7)
    assert searcher.doc_vectors(np.zeros((0,), dtype=np.int64)).shape == (0, 32)
    with pytest.raises(IndexError, match="out of range"):
        searcher.doc_vectors(np.array([20]))
    points = searcher.index.client.retrieve("radit", ids=list(range(20)), with_payload=True)
    assert {p.id: p.payload["passage_id"] for p in points} == dict(enumerate(dense.ids))


def test_search_and_eval_retrieval_cli_on_a_qdrant_index(tmp_path, tiny_encoder_dir, capsys):
    passages = write_passages(tmp_path / "passages.jsonl")
    index = tmp_path / "index"
    args = ["index", "--backend", "qdrant", "--passages", str(passages), "--output", str(index),
            "--encoder.query-model", str(tiny_encoder_dir), "--shard-size", "8", "--device", "cpu", "-q"]
    assert cli.main([*args, "--qdrant.collection", "wiki", "--qdrant.batch-size", "5"]) == 0
    assert json.loads((index / "manifest.json").read_text())["qdrant"]["collection"] == "wiki"
    capsys.readouterr()
    assert cli.main(["search", "--index", str(index), "Zhu Yuanzhang Ming", "--k", "2", "--device", "cpu"]) == 0
    assert "Ming dynasty (ming#0)" in capsys.readouterr().out

    rows = [{"id": "q1", "question": "Who founded the Ming dynasty?", "answers": ["Zhu Yuanzhang"], "positive_ids": ["ming"]},
            {"id": "q2", "question": "How many keys does a modern piano have?", "answers": ["88"], "positive_ids": ["piano"]}]
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run.jsonl"
    assert cli.main(["search", "--index", str(index), "--queries", str(questions), "--output", str(run), "--k", "3",
                     "--device", "cpu", "-q"]) == 0
    lines = [json.loads(line) for line in run.read_text().splitlines()]
    assert [r["qid"] for r in lines] == ["q1", "q2"] and all(len(r["passage_ids"]) == len(r["rows"]) == 3 for r in lines)
    out = tmp_path / "eval"
    assert cli.main(["eval-retrieval", "--index", str(index), "--questions", str(questions), "--output", str(out),
                     "--ks", "1", "20", "--device", "cpu", "-q"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["backend"] == "qdrant" and report["n"] == 2 and report["metrics"]["answer_hit@20"] == 100.0


def test_query_tower_of_another_dimension_is_a_one_line_error(built, wide_encoder_dir, capsys):
    with pytest.raises(IndexMismatchError, match="makes 48-d vectors but .* holds 32-d ones"):
        load_searcher(built / "qdrant", query_encoder=str(wide_encoder_dir), device="cpu")
    assert cli.main(["search", "--index", str(built / "qdrant"), "--query-encoder", str(wide_encoder_dir), "tea",
                     "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("radit search: error: query encoder") and "48-d" in err and len(err.splitlines()) == 1


def test_killed_upload_resumes_and_a_finished_build_is_skipped(tmp_path, tiny_encoder_dir, monkeypatch):
    cfg = index_cfg(write_passages(tmp_path / "passages.jsonl"), tmp_path / "idx", tiny_encoder_dir,
                    backend="qdrant", qdrant=QdrantConfig(batch_size=4))
    real_upsert, real_encode = qdrant_client.QdrantClient.upsert, Encoder.encode
    calls = {"upsert": [], "texts": 0}

    def upsert(self, collection_name, points, **kw):
        if len(calls["upsert"]) == 2 and calls.get("kill"):  # the first batch of shard 1
            raise KeyboardInterrupt("killed")
        calls["upsert"].append(list(points.ids))
        return real_upsert(self, collection_name, points, **kw)

    def encode(self, texts, **kw):
        calls["texts"] += len(texts)
        return real_encode(self, texts, **kw)

    monkeypatch.setattr(qdrant_client.QdrantClient, "upsert", upsert)
    monkeypatch.setattr(Encoder, "encode", encode)
    calls["kill"] = True
    with pytest.raises(KeyboardInterrupt):
        build_index(cfg)
    assert calls["texts"] == 20 and calls["upsert"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert json.loads((tmp_path / "idx" / UPLOAD_FILE).read_text())["shards"] == [0]
    with pytest.raises(IndexMismatchError, match="not a complete index"):
        load_searcher(cfg.output, device="cpu")

    # Rerun: nothing is embedded again, only shards 1 and 2 are upserted.
    calls.update(kill=False, upsert=[], texts=0)
    build_index(cfg)
    assert calls["texts"] == 0 and calls["upsert"] == [[8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19]]
    dense = build_index(index_cfg(Path(cfg.passages), tmp_path / "dense", tiny_encoder_dir))
    assert_same_hits(load_searcher(cfg.output, device="cpu").search(QUESTIONS, k=20),
                     load_searcher(dense, device="cpu").search(QUESTIONS, k=20))

    # A finished build run again: neither embeds nor upserts.
    calls.update(upsert=[], texts=0)
    build_index(cfg)
    assert calls["texts"] == 0 and calls["upsert"] == []


def test_a_collection_this_directory_did_not_fill_needs_overwrite(built, tmp_path, tiny_encoder_dir):
    shutil.copytree(built / "qdrant", tmp_path / "idx")
    (tmp_path / "idx" / UPLOAD_FILE).unlink()  # as if another index had filled the collection
    cfg = index_cfg(built / "passages.jsonl", tmp_path / "idx", tiny_encoder_dir, backend="qdrant")
    with pytest.raises(IndexMismatchError, match="exists and was not filled by .*pass --overwrite"):
        build_index(cfg)
    build_index(dataclasses.replace(cfg, overwrite=True))
    assert_same_hits(load_searcher(tmp_path / "idx", device="cpu").search(QUESTIONS, k=5),
                     load_searcher(built / "dense", device="cpu").search(QUESTIONS, k=5))


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # qdrant-client's, for the unreachable URL
def test_setup_problems_are_one_line_errors_before_anything_is_written(tmp_path, tiny_encoder_dir, monkeypatch, capsys):
    passages = write_passages(tmp_path / "passages.jsonl")
    base = ["index", "--passages", str(passages), "--encoder.query-model", str(tiny_encoder_dir), "--device", "cpu", "-q"]
    for flags, message in [
        (["--backend", "qdrant", "--qdrant.url", "http://127.0.0.1:9", "--output", str(tmp_path / "a")], "request failed"),
        (["--qdrant.collection", "wiki", "--output", str(tmp_path / "b")], "--qdrant.* flags apply to --backend qdrant only"),
        (["--backend", "qdrant", "--qdrant.batch-size", "0", "--output", str(tmp_path / "c")], "--qdrant.batch-size must be >= 1"),
    ]:
        assert cli.main([*base, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # as if not installed
    assert cli.main([*base, "--backend", "qdrant", "--output", str(tmp_path / "d")]) == 2
    assert "pip install radit[qdrant]" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_shipped_preset_loads():
    from radit.config_io import from_dict, load_yaml

    path = Path(__file__).parents[1] / "configs" / "index-qdrant.yaml"
    cfg = from_dict(IndexConfig, load_yaml(path), where=str(path))
    assert cfg.backend == "qdrant" and cfg.qdrant.url is None
