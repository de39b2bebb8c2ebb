"""Dual encoder, index build/load, dense and BM25 search, against brute-force oracles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import faiss
import numpy as np
import pytest
import torch
from conftest import PASSAGES

from radit.config import EncoderConfig, IndexConfig
from radit.corpus import PassageStore
from radit.retriever.bm25 import BM25Searcher
from radit.retriever.encoder import Encoder, passage_input, pool, resolve_encoder_spec
from radit.retriever.index import build_index
from radit.retriever.manifest import IndexMismatchError, read_manifest
from radit.retriever.search import DenseSearcher, load_searcher

QUESTIONS = ["who founded the Ming dynasty?", "when was the Eiffel Tower completed?", "how many keys does a piano have?"]


def index_cfg(passages: Path, out: Path, encoder_dir: Path, **kw) -> IndexConfig:
    enc = EncoderConfig(query_model=str(encoder_dir), pooling="mean", normalize=True)
    return IndexConfig(passages=str(passages), output=str(out), encoder=enc, batch_size=4, shard_size=8, device="cpu", **kw)


def dir_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def test_pool_mean_ignores_padding_and_cls_takes_first():
    hidden = torch.arange(24, dtype=torch.float32).view(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    mean = pool(hidden, mask, "mean")
    assert torch.allclose(mean[0], hidden[0, :2].mean(0))
    assert torch.allclose(mean[1], hidden[1].mean(0))
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, mask, "max")


def test_preset_fills_only_unset_fields():
    spec = resolve_encoder_spec(EncoderConfig(preset="e5-base-v2", pooling="cls"))
    assert spec.pooling == "cls" and spec.query_prefix == "query: " and spec.normalize
    spec = resolve_encoder_spec(EncoderConfig(query_model="/some/dir"))
    assert spec.doc_model == "/some/dir"  # the doc tower follows a new query tower unless set
    with pytest.raises(ValueError, match="--encoder.preset"):
        resolve_encoder_spec(EncoderConfig(preset="nope"))


def test_batched_encode_equals_one_at_a_time(tiny_encoder_dir):
    enc = Encoder.load(str(tiny_encoder_dir), "mean", True, 64)
    texts = [t for _, _, t in PASSAGES[:7]] + ["a", "short one"]
    batched = enc.encode(texts, batch_size=4)
    single = np.concatenate([enc.encode([t], batch_size=1) for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_exact_search_equals_brute_force_topk(tmp_path, passages_file, tiny_encoder_dir):
    out = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == 20 and manifest["n_shards"] == 3 and manifest["dim"] == 32
    assert manifest["encoder"]["pooling"] == "mean" and manifest["index_type"] == "flat"

    # Oracle: embed everything independently and take torch.topk of the dot products.
    enc = Encoder.load(str(tiny_encoder_dir), "mean", True, 256)
    docs = torch.from_numpy(enc.encode([passage_input(p) for p in PassageStore(passages_file)]))
    queries = torch.from_numpy(Encoder.load(str(tiny_encoder_dir), "mean", True, 64).encode(QUESTIONS))
    expected_scores, expected_rows = torch.topk(queries @ docs.T, k=7)

    searcher = DenseSearcher(out, device="cpu")
    results = searcher.search(QUESTIONS, k=7)
    for hits, rows, scores in zip(results, expected_rows, expected_scores):
        assert [h.row for h in hits] == rows.tolist()
        np.testing.assert_allclose([h.score for h in hits], scores.numpy(), atol=1e-5)
        assert hits[0].id == PassageStore(passages_file)[hits[0].row]["id"]


def test_k_larger_than_corpus_is_clipped(tmp_path, passages_file, tiny_encoder_dir):
    out = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    hits = DenseSearcher(out, device="cpu").search(["tea"], k=50)[0]
    assert len(hits) == 20 and len({h.id for h in hits}) == 20


def test_swapping_query_encoder_leaves_index_untouched(tmp_path, passages_file, tiny_encoder_dir, other_tiny_encoder_dir):
    out = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    before = dir_digest(out)
    base = DenseSearcher(out, device="cpu").search(QUESTIONS, k=20)
    swapped = DenseSearcher(out, query_encoder=str(other_tiny_encoder_dir), device="cpu")
    results = swapped.search(QUESTIONS, k=20)
    assert dir_digest(out) == before
    # Scores now come from the new query tower against the same stored document vectors.
    docs = np.concatenate([np.load(p) for p in sorted((out / "embeddings").glob("shard_*.npy"))])
    q = Encoder.load(str(other_tiny_encoder_dir), "mean", True, 64).encode(QUESTIONS)
    for hits, qv in zip(results, q):
        np.testing.assert_allclose([h.score for h in hits], (docs[[h.row for h in hits]] @ qv), atol=1e-5)
    assert [[h.row for h in r] for r in results] != [[h.row for h in r] for r in base]


def test_query_encoder_of_other_dimension_is_rejected(tmp_path, passages_file, tiny_encoder_dir):
    from transformers import AutoTokenizer, BertConfig, BertModel

    wide = tmp_path / "wide"
    BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)).save_pretrained(wide)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(wide)
    out = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    with pytest.raises(IndexMismatchError, match="48-d"):
        DenseSearcher(out, query_encoder=str(wide), device="cpu")


def test_changed_passages_file_is_rejected(tmp_path, passages_file, tiny_encoder_dir):
    out = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    with open(passages_file, "a") as f:
        f.write(json.dumps({"id": "x#0", "doc_id": "x", "title": "", "text": "new"}) + "\n")
    with pytest.raises(IndexMismatchError, match="not the one this index was built from"):
        load_searcher(out, device="cpu")


def test_crash_while_writing_leaves_no_loadable_index_and_rerun_resumes(tmp_path, passages_file, tiny_encoder_dir, monkeypatch):
    cfg = index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir)
    calls = {"n": 0}
    real_encode, real_write = Encoder.encode, faiss.write_index

    def crash_on_second_shard(self, texts, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_encode(self, texts, **kw)

    monkeypatch.setattr(Encoder, "encode", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        build_index(cfg)
    with pytest.raises(IndexMismatchError, match="not a complete index"):
        load_searcher(cfg.output, device="cpu")
    assert len(list((tmp_path / "idx" / "embeddings").glob("shard_*.ids.json"))) == 1

    # Rerun, killed while writing faiss.index: only the unfinished shards are embedded.
    counted = {"texts": 0}

    def counting(self, texts, **kw):
        counted["texts"] += len(texts)
        return real_encode(self, texts, **kw)

    def crash_in_write(index, path):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Encoder, "encode", counting)
    monkeypatch.setattr(faiss, "write_index", crash_in_write)
    with pytest.raises(OSError):
        build_index(cfg)
    assert counted["texts"] == 20 - 8
    assert not (tmp_path / "idx" / "faiss.index").exists() and not (tmp_path / "idx" / "manifest.json").exists()
    with pytest.raises(IndexMismatchError, match="not a complete index"):
        load_searcher(cfg.output, device="cpu")

    # Final rerun: every shard is reused, the index completes and loads.
    monkeypatch.setattr(faiss, "write_index", real_write)
    counted["texts"] = 0
    build_index(cfg)
    assert counted["texts"] == 0
    assert len(load_searcher(cfg.output, device="cpu").search(["tea"], 3)[0]) == 3


def test_rebuild_with_other_encoder_needs_overwrite(tmp_path, passages_file, tiny_encoder_dir, other_tiny_encoder_dir):
    build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    with pytest.raises(IndexMismatchError, match="--overwrite"):
        build_index(index_cfg(passages_file, tmp_path / "idx", other_tiny_encoder_dir))
    build_index(index_cfg(passages_file, tmp_path / "idx", other_tiny_encoder_dir, overwrite=True))
    assert read_manifest(tmp_path / "idx")[0]["encoder"]["query_model"] == str(other_tiny_encoder_dir)


@pytest.mark.parametrize("index_type,extra", [("hnsw", {}), ("ivfpq", {"nlist": 2, "pq_m": 4, "pq_bits": 4, "nprobe": 2})])
def test_approximate_indexes_build_and_search(tmp_path, passages_file, tiny_encoder_dir, index_type, extra):
    out = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir, index_type=index_type, **extra))
    exact = build_index(index_cfg(passages_file, tmp_path / "exact", tiny_encoder_dir))
    approx_hits = DenseSearcher(out, device="cpu").search(QUESTIONS, k=5)
    exact_hits = DenseSearcher(exact, device="cpu").search(QUESTIONS, k=5)
    overlap = np.mean([len({h.row for h in a} & {h.row for h in e}) / 5 for a, e in zip(approx_hits, exact_hits)])
    assert overlap >= (1.0 if index_type == "hnsw" else 0.4)


def test_bm25_finds_lexical_matches(tmp_path, passages_file):
    out = build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "bm25"), backend="bm25"))
    searcher = load_searcher(out)
    assert isinstance(searcher, BM25Searcher)
    results = searcher.search(["Who founded the Ming dynasty?", "Eiffel Tower completed", "piano keys"], k=3)
    assert [r[0].id for r in results] == ["ming#0", "paris#1", "piano#1"]
    assert all(r[0].score > r[1].score >= 0 for r in results)
    assert results[0][1].id == "ming#1"  # the other Ming passage shares "Ming" and the title
    assert len(searcher.search(["tea"], k=100)[0]) == 20


def test_exact_rerank_of_approximate_candidates_equals_exact_search(tmp_path, passages_file, tiny_encoder_dir):
    from radit.retriever.search import rerank_exact
    from radit.retriever.shards import ShardedVectors

    # Pure function: re-ranking every row is an exact search.
    rng = np.random.default_rng(0)
    vectors, q = rng.standard_normal((30, 8), dtype=np.float32), rng.standard_normal((4, 8), dtype=np.float32)
    candidates = np.stack([rng.permutation(30) for _ in range(4)])
    candidates[:, -1] = -1  # a missing candidate never wins
    scores, rows = rerank_exact(q, candidates, lambda r: np.where((r >= 0)[..., None], vectors[r], 0), k=5)
    exact = q @ vectors.T
    for i in range(4):
        offered = candidates[i][candidates[i] >= 0]
        order = offered[np.argsort(-exact[i, offered], kind="stable")[:5]]
        assert rows[i].tolist() == order.tolist()
        np.testing.assert_allclose(scores[i], exact[i, order], rtol=1e-5)

    # Through the index: ivfpq + rerank of the whole (20-passage) corpus == flat search.
    approx = build_index(index_cfg(passages_file, tmp_path / "ivf", tiny_encoder_dir, index_type="ivfpq", nlist=2, pq_m=4, pq_bits=4, nprobe=1, rerank=20))
    exact_dir = build_index(index_cfg(passages_file, tmp_path / "flat", tiny_encoder_dir))
    a = DenseSearcher(approx, device="cpu").search(QUESTIONS, k=5)
    e = DenseSearcher(exact_dir, device="cpu").search(QUESTIONS, k=5)
    assert [[h.row for h in r] for r in a] == [[h.row for h in r] for r in e]
    np.testing.assert_allclose([[h.score for h in r] for r in a], [[h.score for h in r] for r in e], atol=1e-5)

    stacked = np.concatenate([np.load(p) for p in sorted((tmp_path / "flat" / "embeddings").glob("shard_*.npy"))])
    gathered = ShardedVectors(tmp_path / "flat" / "embeddings", 20, 8, 32)(np.array([[19, 0, 8], [7, -1, 16]]))
    np.testing.assert_array_equal(gathered[0], stacked[[19, 0, 8]])
    assert not gathered[1, 1].any()


@pytest.mark.parametrize("embedding_dtype", ["float32", "float16"])
def test_doc_vectors_reproduce_the_scores_of_a_flat_search(tmp_path, passages_file, tiny_encoder_dir, embedding_dtype):
    out = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir, embedding_dtype=embedding_dtype))
    searcher = DenseSearcher(out, device="cpu")
    q = searcher.encode_queries(QUESTIONS)  # [3, 32]
    scores, rows = searcher.search_vectors(q, k=6)  # [3, 6] each
    docs = searcher.doc_vectors(rows)  # [3, 6, 32]
    assert docs.shape == (3, 6, 32) and docs.dtype == np.float32
    np.testing.assert_allclose(np.einsum("qkd,qd->qk", docs, q), scores, atol=1e-5)
    assert [[h.row for h in hits] for hits in searcher.search(QUESTIONS, k=6)] == rows.tolist()
    assert not searcher.doc_vectors(np.array([-1])).any()  # no hit: a zero vector
    with pytest.raises(IndexError, match="out of range"):
        searcher.doc_vectors(np.array([20]))


def test_searchers_own_the_retrieval_temperature(tmp_path, passages_file, tiny_encoder_dir):
    from radit.retriever.hits import Searcher

    dense = DenseSearcher(build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir)), device="cpu")
    assert dense.retrieval_temperature == 0.05  # the minilm preset's
    assert "score_temperature" in dense.retrieval_temperature_source and str(tmp_path / "idx") in dense.retrieval_temperature_source
    bm25 = load_searcher(build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "bm25"), backend="bm25")))
    assert bm25.retrieval_temperature == 1.0 and "BM25" in bm25.retrieval_temperature_source
    for searcher in (dense, bm25):
        assert all(hasattr(searcher, name) for name in Searcher.__annotations__)

    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    del manifest["encoder"]["score_temperature"]  # an index from before the temperature was recorded
    (tmp_path / "idx" / "manifest.json").write_text(json.dumps(manifest))
    legacy = DenseSearcher(tmp_path / "idx", device="cpu")
    assert legacy.retrieval_temperature == 1.0 and "records no" in legacy.retrieval_temperature_source


def test_dtype_auto_is_resolved_once_and_recorded(tmp_path, passages_file, tiny_encoder_dir):
    from radit.runtime import resolve_dtype

    out = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir, dtype="auto"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dtype"] == resolve_dtype("auto", "cpu") and manifest["embedding_dtype"] == "float32"
    assert "dtype: auto" not in (out / "config.yaml").read_text()
    other = "bfloat16" if manifest["dtype"] == "float32" else "float32"
    with pytest.raises(IndexMismatchError, match=f"dtype {manifest['dtype']} -> {other}"):
        build_index(index_cfg(passages_file, out, tiny_encoder_dir, dtype=other))
    enc = Encoder.load(str(tiny_encoder_dir), "mean", True, 64)
    np.testing.assert_array_equal(enc.encode(["tea"], dtype="auto"), enc.encode(["tea"], dtype=manifest["dtype"]))


def test_run_file_keeps_rows_and_reads_back(tmp_path, passages_file, tiny_encoder_dir):
    from radit.retriever.search import read_run, write_run

    searcher = DenseSearcher(build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir)), device="cpu")
    results = searcher.search(QUESTIONS, k=4)
    run = tmp_path / "run.jsonl"
    write_run(run, ["q1", "q2", "q3"], QUESTIONS, results)
    records = read_run(run)
    assert [r.qid for r in records] == ["q1", "q2", "q3"] and records[1].question == QUESTIONS[1]
    for rec, hits in zip(records, results):
        assert rec.passage_ids == [h.id for h in hits] and rec.rows == [h.row for h in hits]
        assert rec.scores == [h.score for h in hits]
    np.testing.assert_allclose(searcher.doc_vectors(np.array(records[0].rows)) @ searcher.encode_queries(QUESTIONS[:1])[0],
                               records[0].scores, atol=1e-5)

    lines = run.read_text().splitlines()
    old_style = json.loads(lines[0])
    del old_style["rows"]  # run files written before rows were kept still read, without rows
    (tmp_path / "old.jsonl").write_text(json.dumps(old_style) + "\n")
    assert read_run(tmp_path / "old.jsonl")[0].rows is None
    short_scores = '{"qid": "x", "question": "q", "passage_ids": ["a"], "scores": [1.0, 2.0]}'
    for bad, problem in [("{oops", "invalid JSON"), ('{"qid": "x"}', "missing question, passage_ids, scores"),
                         (short_scores, "passage_ids, scores differ in length")]:
        (tmp_path / "bad.jsonl").write_text(lines[0] + "\n" + bad + "\n")
        with pytest.raises(ValueError, match=rf"bad.jsonl:2: {problem}"):
            read_run(tmp_path / "bad.jsonl")
