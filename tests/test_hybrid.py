"""Hybrid retrieval: the fusion functions by hand and against a naive oracle, and a hybrid index over
tiny dense + BM25 indexes through `load_searcher` and the CLI (build, search, eval-retrieval, errors)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PASSAGES, write_passages

from radit import cli
from radit.config import EncoderConfig, HybridConfig, IndexConfig
from radit.retriever.bm25 import BM25Searcher
from radit.retriever.hits import Searcher
from radit.retriever.hybrid import FUSION_TEMPERATURE, HybridSearcher, fuse, minmax_contributions, rrf_contributions, sum_by_row
from radit.retriever.index import build_index
from radit.retriever.search import DenseSearcher, load_searcher

QUESTIONS = ["who founded the Ming dynasty?", "when was the Eiffel Tower completed?", "how many keys does a piano have?"]
NONE = -1


# --------------------------------------------------------------------------------------------------
# Fusion by hand
# --------------------------------------------------------------------------------------------------


def test_rrf_by_hand():
    dense_rows = np.array([[3, 1, 2]])
    bm25_rows = np.array([[1, 4, NONE]])  # BM25 found only two
    scores, rows = fuse((np.zeros((1, 3)), dense_rows), (np.zeros((1, 3)), bm25_rows), k=5, method="rrf", rrf_k=60)
    # row 1: ranks 2 and 1; row 3: rank 1 (dense only); row 4: rank 2 (BM25 only); row 2: rank 3.
    assert rows.tolist() == [[1, 3, 4, 2, NONE]]
    np.testing.assert_allclose(scores[0, :4], [1 / 62 + 1 / 61, 1 / 61, 1 / 62, 1 / 63])
    assert scores[0, 4] == -np.inf  # only 4 candidates: padded
    np.testing.assert_allclose(rrf_contributions(np.array([[5, NONE]]), rrf_k=1), [[1 / 2, 0]])


def test_weighted_by_hand():
    dense = (np.array([[0.9, 0.7, 0.5]]), np.array([[3, 1, 2]]))  # normalised: 1, 0.5, 0
    bm25 = (np.array([[10.0, 6.0, 2.0]]), np.array([[1, 4, 2]]))  # normalised: 1, 0.5, 0
    scores, rows = fuse(dense, bm25, k=4, method="weighted", weight=0.25)
    # row 1: .25 * .5 + .75 * 1; row 4: BM25 only, dense adds its minimum 0: .75 * .5; row 3: .25 * 1; row 2: 0.
    assert rows.tolist() == [[1, 4, 3, 2]]
    np.testing.assert_allclose(scores, [[0.875, 0.375, 0.25, 0.0]])
    # w = 1: the dense order; a candidate only BM25 returned ties at 0 with dense's last (smaller row first).
    assert fuse(dense, bm25, k=4, method="weighted", weight=1.0)[1].tolist() == [[3, 1, 2, 4]]
    with pytest.raises(ValueError, match="valid: rrf, weighted"):
        fuse(dense, bm25, k=4, method="max")


def test_minmax_ignores_missing_rows_and_flat_sides():
    scores = np.array([[4.0, 2.0, 99.0], [3.0, 3.0, 3.0], [7.0, 0.0, 0.0]])
    rows = np.array([[0, 1, NONE], [0, 1, 2], [5, NONE, NONE]])
    # 99 belongs to no row; a side whose candidates all tie (one candidate, or BM25 of an unknown word) adds 0.
    np.testing.assert_allclose(minmax_contributions(scores, rows), [[1, 0, 0], [0, 0, 0], [0, 0, 0]])


def _naive_sum_by_row(rows, values, k):
    """One dict per query, sorted by (-score, row): the reference for the vectorised `sum_by_row`."""
    out_scores, out_rows = [], []
    for q in range(rows[0].shape[0]):
        total: dict[int, float] = {}
        for r, v in zip(rows, values):
            for row, value in zip(r[q], v[q]):
                if row >= 0:
                    total[int(row)] = total.get(int(row), 0.0) + float(value)
        ranked = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:k]
        ranked += [(NONE, -np.inf)] * (k - len(ranked))
        out_rows.append([r for r, _ in ranked])
        out_scores.append([s for _, s in ranked])
    return np.array(out_scores), np.array(out_rows)


@pytest.mark.parametrize("k", [1, 4, 11, 30])
def test_sum_by_row_equals_naive(k):
    rng = np.random.default_rng(k)
    n_queries, n_rows = 7, 13
    rows, values = [], []
    for width in (5, 9):  # sides of different depths, neither dividing the other
        r = np.stack([rng.permutation(n_rows)[:width] for _ in range(n_queries)])
        r[rng.random(r.shape) < 0.2] = NONE  # missing candidates (an approximate index, masked BM25 zeros)
        rows.append(r)
        values.append(np.round(rng.random(r.shape), 1))  # rounded: ties happen and must break by row
    rows[0][3] = NONE  # a query one side found nothing for
    expected_scores, expected_rows = _naive_sum_by_row(rows, values, k)
    scores, got_rows = sum_by_row(rows, values, k)
    assert got_rows.tolist() == expected_rows.tolist()
    np.testing.assert_allclose(scores, expected_scores)


# --------------------------------------------------------------------------------------------------
# A hybrid index over tiny dense + BM25 indexes
# --------------------------------------------------------------------------------------------------


def dense_cfg(passages: Path, out: Path, encoder_dir: Path) -> IndexConfig:
    enc = EncoderConfig(query_model=str(encoder_dir), pooling="mean", normalize=True)
    return IndexConfig(passages=str(passages), output=str(out), encoder=enc, batch_size=4, shard_size=8, device="cpu")


@pytest.fixture(scope="module")
def sides(tmp_path_factory, tiny_encoder_dir) -> Path:
    """runs/{passages.jsonl, dense, bm25}: a dense and a BM25 index of the same 20 passages."""
    runs = tmp_path_factory.mktemp("runs")
    passages = write_passages(runs / "passages.jsonl")
    build_index(dense_cfg(passages, runs / "dense", tiny_encoder_dir))
    build_index(IndexConfig(passages=str(passages), output=str(runs / "bm25"), backend="bm25"))
    return runs


@pytest.fixture
def runs(tmp_path, sides) -> Path:
    """A copy of `sides` a test may move, damage or add to."""
    shutil.copytree(sides, tmp_path / "runs")
    return tmp_path / "runs"


def hybrid(runs: Path, *flags: str, output: str = "hybrid") -> list[str]:
    return ["index", "--backend", "hybrid", "--dense-index", str(runs / "dense"), "--bm25-index", str(runs / "bm25"),
            "--output", str(runs / output), "-q", *flags]


def test_hybrid_search_equals_fusing_each_sides_own_search(sides, tmp_path):
    out = build_index(IndexConfig(output=str(tmp_path / "h"), backend="hybrid",
                                  hybrid=HybridConfig(dense_index=str(sides / "dense"), bm25_index=str(sides / "bm25"))))
    searcher = load_searcher(out, device="cpu")
    assert isinstance(searcher, HybridSearcher) and searcher.count == 20 and searcher.manifest["backend"] == "hybrid"
    results = searcher.search(QUESTIONS, k=6)

    # Oracle: each side searched on its own, BM25's zero scores dropped, fused by hand-checked `fuse`.
    dense, bm25 = DenseSearcher(sides / "dense", device="cpu"), BM25Searcher(sides / "bm25")
    d = dense.search_vectors(dense.encode_queries(QUESTIONS), 20)
    b_scores, b_rows = bm25.search_rows(QUESTIONS, 20)
    scores, rows = fuse(d, (b_scores, np.where(b_scores > 0, b_rows, NONE)), 6, "weighted", 0.5)
    for hits, r, s in zip(results, rows, scores):
        assert [h.row for h in hits] == r.tolist() and len(hits) == 6
        np.testing.assert_allclose([h.score for h in hits], s)
        # A row is the same passage on both sides: both number the passages file in order.
        assert [h.id for h in hits] == [bm25.store[h.row]["id"] for h in hits] == [dense.ids[h.row] for h in hits]
    assert results[0][0].doc_id == "ming" and results[2][0].doc_id == "piano"
    assert len(searcher.search(["tea"], k=50)[0]) == 20  # k is clipped to the corpus


def test_manifest_records_the_settings_and_the_temperature(runs):
    assert cli.main(hybrid(runs, "--fusion", "rrf", "--rrf-k", "10", "--fusion-depth", "7")) == 0
    manifest = json.loads((runs / "hybrid" / "manifest.json").read_text())
    assert manifest["backend"] == "hybrid" and manifest["count"] == 20
    assert manifest["fusion"] == {"method": "rrf", "weight": None, "rrf_k": 10, "depth": 7,
                                  "temperature": FUSION_TEMPERATURE["rrf"], "temperature_source": "default"}
    assert manifest["dense_index"]["path"] == "dense" and manifest["bm25_index"]["absolute"] == str((runs / "bm25").resolve())
    searcher = load_searcher(runs / "hybrid", device="cpu")
    assert all(hasattr(searcher, name) for name in Searcher.__annotations__)
    assert (searcher.method, searcher.rrf_k, searcher.depth) == ("rrf", 10, 7)
    assert searcher.retrieval_temperature == FUSION_TEMPERATURE["rrf"] and "rrf fusion temperature (default)" in searcher.retrieval_temperature_source

    flags = ["--fusion", "weighted", "--fusion-weight", "0.3", "--fusion-temperature", "0.5"]
    assert cli.main(hybrid(runs, *flags, output="weighted")) == 0
    searcher = load_searcher(runs / "weighted", device="cpu")
    assert (searcher.method, searcher.weight, searcher.retrieval_temperature) == ("weighted", 0.3, 0.5)
    assert "--fusion-temperature" in searcher.retrieval_temperature_source
    config = (runs / "weighted" / "config.yaml").read_text()
    assert f"dense_index: {(runs / 'dense').resolve()}" in config and "fusion_weight: 0.3" in config


def test_search_and_eval_retrieval_cli_on_a_hybrid_index(runs, capsys):
    assert cli.main(hybrid(runs)) == 0
    capsys.readouterr()
    assert cli.main(["search", "--index", str(runs / "hybrid"), "Zhu Yuanzhang Ming", "--k", "2", "--device", "cpu"]) == 0
    assert "Ming dynasty (ming#0)" in capsys.readouterr().out
    questions = runs / "questions.jsonl"
    rows = [{"id": "q1", "question": "Who founded the Ming dynasty?", "answers": ["Zhu Yuanzhang"], "positive_ids": ["ming"]},
            {"id": "q2", "question": "How many keys does a modern piano have?", "answers": ["88"], "positive_ids": ["piano"]}]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = runs / "eval"
    args = ["eval-retrieval", "--index", str(runs / "hybrid"), "--questions", str(questions), "--output", str(out), "--ks", "1", "5"]
    assert cli.main([*args, "--device", "cpu", "-q"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["backend"] == "hybrid" and report["n"] == 2 and report["metrics"]["answer_hit@5"] == 100.0


def test_swapped_query_encoder_goes_to_the_dense_side(sides, tmp_path, other_tiny_encoder_dir):
    out = build_index(IndexConfig(output=str(tmp_path / "h"), backend="hybrid",
                                  hybrid=HybridConfig(dense_index=str(sides / "dense"), bm25_index=str(sides / "bm25"))))
    swapped = load_searcher(out, query_encoder=str(other_tiny_encoder_dir), device="cpu")
    own = DenseSearcher(sides / "dense", query_encoder=str(other_tiny_encoder_dir), device="cpu")
    base = DenseSearcher(sides / "dense", device="cpu")
    q = swapped.dense.encode_queries(QUESTIONS)
    np.testing.assert_allclose(q, own.encode_queries(QUESTIONS), atol=1e-6)
    assert not np.allclose(q, base.encode_queries(QUESTIONS), atol=1e-3)
    dense, _ = swapped.candidates(QUESTIONS, 20)
    assert dense[1].tolist() == own.search_vectors(q, 20)[1].tolist()


def test_indexes_of_different_passages_are_refused(runs, capsys):
    other = write_passages(runs / "other.jsonl", PASSAGES[:-1])
    assert cli.main(["index", "--backend", "bm25", "--passages", str(other), "--output", str(runs / "bm25"), "--overwrite", "-q"]) == 0
    capsys.readouterr()
    assert cli.main(hybrid(runs)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("radit index: error: ") and len(err.splitlines()) == 1
    assert str(runs / "dense") in err and str(runs / "bm25") in err and "different passages" in err
    assert not (runs / "hybrid").exists()
    # The sides swapped, or a side of the wrong kind: named as such.
    assert cli.main(hybrid(runs, "--dense-index", str(runs / "bm25"))) == 2
    assert f"--dense-index {runs / 'bm25'} is a bm25 index, not dense" in capsys.readouterr().err


def test_sides_rebuilt_from_other_passages_after_the_hybrid_are_caught(runs):
    build_index(IndexConfig(output=str(runs / "hybrid"), backend="hybrid",
                            hybrid=HybridConfig(dense_index=str(runs / "dense"), bm25_index=str(runs / "bm25"))))
    other = write_passages(runs / "other.jsonl", PASSAGES[:-1])
    build_index(IndexConfig(passages=str(other), output=str(runs / "bm25"), backend="bm25", overwrite=True))
    with pytest.raises(ValueError, match=r"different passages; rebuild one"):
        load_searcher(runs / "hybrid", device="cpu")


def test_hybrid_index_opens_after_moving_it_or_the_whole_tree(runs, tmp_path):
    assert cli.main(hybrid(runs)) == 0
    expected = [[h.id for h in hits] for hits in load_searcher(runs / "hybrid", device="cpu").search(QUESTIONS, 3)]
    moved = tmp_path / "elsewhere" / "h"  # the hybrid index alone: found through the absolute paths
    shutil.copytree(runs / "hybrid", moved)
    assert [[h.id for h in hits] for hits in load_searcher(moved, device="cpu").search(QUESTIONS, 3)] == expected
    tree = tmp_path / "tree"  # the indexes together (their passages file stays): found relative to each other
    tree.mkdir()
    for name in ("dense", "bm25", "hybrid"):
        shutil.move(runs / name, tree / name)
    assert [[h.id for h in hits] for hits in load_searcher(tree / "hybrid", device="cpu").search(QUESTIONS, 3)] == expected
    shutil.rmtree(tree / "bm25")
    with pytest.raises(FileNotFoundError, match=r"its BM25 index is neither at .*tree/bm25 nor at .*runs/bm25"):
        load_searcher(tree / "hybrid", device="cpu")


def test_output_safety(runs, capsys):
    assert cli.main(hybrid(runs, output="dense")) == 2
    assert "is the --dense-index itself" in capsys.readouterr().err
    assert cli.main(hybrid(runs)) == 0
    assert cli.main(hybrid(runs)) == 0  # the same build again: allowed
    capsys.readouterr()
    assert cli.main(hybrid(runs, "--fusion-weight", "0.3")) == 2  # another build there needs --overwrite
    assert "holds a hybrid index of another build (differs in: weight 0.5 -> 0.3)" in capsys.readouterr().err
    assert cli.main(hybrid(runs, "--fusion-weight", "0.3", "--overwrite")) == 0
    assert load_searcher(runs / "hybrid", device="cpu").weight == 0.3
    (runs / "mine").mkdir()
    (runs / "mine" / "notes.txt").write_text("keep")
    assert cli.main(hybrid(runs, output="mine")) == 2
    assert "not an index radit wrote" in capsys.readouterr().err and (runs / "mine" / "notes.txt").is_file()
    # A dense index replaced by a hybrid one with --overwrite leaves none of its files behind.
    shutil.copytree(runs / "dense", runs / "old")
    assert cli.main(hybrid(runs, output="old")) == 2
    assert cli.main(hybrid(runs, "--overwrite", output="old")) == 0
    assert sorted(p.name for p in (runs / "old").iterdir()) == [".radit-output", "config.yaml", "manifest.json"]


def test_bad_flags_are_one_line_errors(runs, capsys):
    for flags, message in [
        (["--fusion", "rrf", "--fusion-weight", "0.3"], "--fusion-weight applies to --fusion weighted only"),
        (["--fusion-weight", "1.5"], "--fusion-weight must be in [0, 1]"),
        (["--fusion-depth", "0"], "--fusion-depth must be >= 1"),
    ]:
        assert cli.main(hybrid(runs, *flags)) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["index", "--backend", "hybrid", "--dense-index", str(runs / "dense"), "-q"]) == 2
    assert "--backend hybrid needs --dense-index DIR and --bm25-index DIR" in capsys.readouterr().err
    assert cli.main(["index", "--bm25-index", str(runs / "bm25"), "-q"]) == 2
    assert "apply to --backend hybrid only" in capsys.readouterr().err


def test_damaged_hybrid_manifest_names_the_file_and_the_repair(runs, capsys):
    assert cli.main(hybrid(runs)) == 0
    path = runs / "hybrid" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["fusion"]
    path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert cli.main(["search", "--index", str(runs / "hybrid"), "tea", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: the hybrid manifest is damaged (no 'fusion' entry)" in err and "Traceback" not in err
    command = re.search(r"`radit (index --config [^`]+)`", err).group(1)
    assert cli.main([*shlex.split(command), "-q"]) == 0  # the saved config rebuilds it
    assert load_searcher(runs / "hybrid", device="cpu").method == "weighted"
    with pytest.raises(ValueError, match="a hybrid index"):
        DenseSearcher(runs / "hybrid", device="cpu")
