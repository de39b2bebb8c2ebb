"""Large-index options of `radit index --index-type ivfpq`: the HNSW coarse quantizer, OPQ, batched adds,
a memory-mapped faiss.index, and search-time nprobe / rerank overrides."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from test_retriever import QUESTIONS, index_cfg

from radit.config import IndexConfig, SearchConfig
from radit.retriever.index import build_faiss, build_index
from radit.retriever.manifest import read_manifest
from radit.retriever.search import DenseSearcher, load_searcher

IVF = {"index_type": "ivfpq", "nlist": 2, "pq_m": 4, "pq_bits": 4, "nprobe": 1}


def rows(results) -> list[list[int]]:
    return [[h.row for h in r] for r in results]


def test_hnsw_coarse_quantizer_builds_searches_and_reranks_to_exact(tmp_path, passages_file, tiny_encoder_dir):
    out = build_index(index_cfg(passages_file, tmp_path / "ivf", tiny_encoder_dir, **IVF, ivf_quantizer="hnsw"))
    assert read_manifest(out)[0]["index_params"]["ivf_quantizer"] == "hnsw"
    searcher = DenseSearcher(out, device="cpu")
    assert isinstance(faiss.downcast_index(faiss.extract_index_ivf(searcher.index).quantizer), faiss.IndexHNSWFlat)
    # Every list probed and all 20 candidates re-scored exactly: the exact (flat) ranking.
    exact = DenseSearcher(build_index(index_cfg(passages_file, tmp_path / "flat", tiny_encoder_dir)), device="cpu")
    full = DenseSearcher(out, device="cpu", nprobe=2, rerank=20)
    assert faiss.extract_index_ivf(full.index).nprobe == 2
    assert rows(full.search(QUESTIONS, k=5)) == rows(exact.search(QUESTIONS, k=5))


def test_opq_rotates_before_product_quantisation(tmp_path, passages_file, tiny_encoder_dir):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 16), dtype=np.float32)
    index, params = build_faiss([x], 16, IndexConfig(index_type="ivfpq", nlist=8, pq_m=4, opq=True))
    assert params["opq"] and isinstance(faiss.downcast_index(index), faiss.IndexPreTransform)
    faiss.extract_index_ivf(index).nprobe = 8
    _, found = index.search(x[:50], 10)
    exact = faiss.IndexFlatIP(16)
    exact.add(x)
    truth = exact.search(x[:50], 10)[1]
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]) > 0.5  # PQ4 of 16-d noise: coarse (measured 0.70), not random (0.005)
    with pytest.raises(ValueError, match="--opq needs at least 256 passages"):
        build_index(index_cfg(passages_file, tmp_path / "opq", tiny_encoder_dir, **IVF, opq=True))
    assert not (tmp_path / "opq").exists()  # refused before anything was written


def test_mmap_index_is_served_from_disk_with_the_same_results(tmp_path, passages_file, tiny_encoder_dir):
    in_ram = build_index(index_cfg(passages_file, tmp_path / "ram", tiny_encoder_dir, **IVF))
    mapped = build_index(index_cfg(passages_file, tmp_path / "mmap", tiny_encoder_dir, **IVF, mmap=True))
    assert (in_ram / "faiss.index").read_bytes() == (mapped / "faiss.index").read_bytes()  # a serving choice only
    a, b = DenseSearcher(in_ram, device="cpu"), DenseSearcher(mapped, device="cpu")
    lists = faiss.extract_index_ivf(b.index).invlists
    assert isinstance(faiss.downcast_InvertedLists(lists), faiss.OnDiskInvertedLists)
    assert not isinstance(faiss.downcast_InvertedLists(faiss.extract_index_ivf(a.index).invlists), faiss.OnDiskInvertedLists)
    for x, y in zip(a.search(QUESTIONS, k=5), b.search(QUESTIONS, k=5)):
        assert [h.row for h in x] == [h.row for h in y]
        np.testing.assert_array_equal([h.score for h in x], [h.score for h in y])


def test_batched_add_equals_one_add_per_shard():
    """build_faiss adds at most `add_batch` rows at a time (so a float16 shard of 1M rows is never
    converted whole): the index is byte-identical to adding each whole shard (the naive path)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 16), dtype=np.float32)
    shards = [x[:1700].astype(np.float16), x[1700:].astype(np.float16)]
    cfg = IndexConfig(index_type="ivfpq", nlist=4, pq_m=4, pq_bits=4)
    batched, _ = build_faiss(shards, 16, cfg, add_batch=256)
    naive, params = build_faiss(shards, 16, cfg, add_batch=10**9)
    assert params["nlist"] == 4 and batched.ntotal == 3000
    assert faiss.serialize_index(batched).tobytes() == faiss.serialize_index(naive).tobytes()


def test_bad_large_index_options_are_refused(tmp_path, passages_file, tiny_encoder_dir):
    for bad in ({"ivf_quantizer": "hnsw"}, {"opq": True}, {"mmap": True}):
        with pytest.raises(ValueError, match="applies to --index-type ivfpq only"):
            IndexConfig(**bad)
    with pytest.raises(ValueError, match="--nprobe must be >= 1"):
        SearchConfig(query=["q"], nprobe=0)
    flat = build_index(index_cfg(passages_file, tmp_path / "flat", tiny_encoder_dir))
    with pytest.raises(ValueError, match="--nprobe applies to an ivfpq index"):
        load_searcher(flat, device="cpu", nprobe=4)
    with pytest.raises(ValueError, match="--rerank applies to an ivfpq or hnsw index"):
        load_searcher(flat, device="cpu", rerank=10)
    bm25 = build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "bm25"), backend="bm25"))
    with pytest.raises(ValueError, match="--nprobe applies to dense and hybrid indexes only"):
        load_searcher(bm25, nprobe=4)


def test_search_cli_overrides_nprobe_and_rerank(tmp_path, passages_file, tiny_encoder_dir, capsys):
    from radit.cli import main

    ivf = build_index(index_cfg(passages_file, tmp_path / "ivf", tiny_encoder_dir, **IVF))
    flat = build_index(index_cfg(passages_file, tmp_path / "flat", tiny_encoder_dir))
    capsys.readouterr()
    assert main(["search", "--index", str(flat), "--k", "5", "--device", "cpu", "-q", QUESTIONS[0]]) == 0
    exact = capsys.readouterr().out
    assert main(["search", "--index", str(ivf), "--k", "5", "--device", "cpu", "-q", "--nprobe", "2", "--rerank", "20", QUESTIONS[0]]) == 0
    assert capsys.readouterr().out == exact  # every list probed, every candidate re-scored: the exact ranking
    assert main(["search", "--index", str(flat), "--device", "cpu", "-q", "--nprobe", "2", QUESTIONS[0]]) == 2
    assert "--nprobe applies to an ivfpq index" in capsys.readouterr().err

