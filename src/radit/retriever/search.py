"""Top-k search over a dense (FAISS or a vector database), BM25 or hybrid index, one interface for all,
and run files.

    radit search --index runs/index "who founded the Ming dynasty?"
    radit search --index runs/index --queries questions.jsonl --output run.jsonl --k 10
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import textwrap
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from radit.artifacts import atomic_open, open_text
from radit.distributed import progress_bar
from radit.retriever.bm25 import BM25Searcher
from radit.retriever.encoder import Encoder, EncoderSpec
from radit.retriever.hits import Hit, Searcher, VectorStore, clip_k, hits_from_rows
from radit.retriever.hybrid import HybridSearcher, is_hybrid_index, read_hybrid_manifest
from radit.retriever.manifest import FAISS_FILE, IndexMismatchError, encoder_spec_of, open_passages, read_manifest, rebuild_hint
from radit.retriever.qdrant import QdrantIndex
from radit.retriever.shards import EMBEDDINGS_DIR, ShardedVectors, load_shard_ids, shard_rows
from radit.runtime import resolve_device

__all__ = [
    "BM25Searcher", "DenseSearcher", "Hit", "HybridSearcher", "RunRecord", "Searcher", "format_hits", "load_searcher",
    "read_run", "rerank_exact", "search_batched", "write_run",
]  # Hit, Searcher, BM25Searcher and HybridSearcher live in hits.py / bm25.py / hybrid.py; callers import them from here too


def rerank_exact(q: np.ndarray, rows: np.ndarray, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-score approximate candidates exactly and keep the best k.

    q [Q, d]; rows [Q, C] candidate rows (-1 = none); vectors(rows) -> [Q, C, d] -> (scores [Q, k], rows [Q, k]).
    """
    scores = np.einsum("qd,qcd->qc", q, vectors(rows))
    scores[rows < 0] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)


VECTOR_DATABASES: dict[str, type[VectorStore]] = {"qdrant": QdrantIndex}
"""Manifest `backend` -> the class that opens (index_dir, manifest) a vector database holding a dense
index's vectors; `DenseSearcher` searches it in place of FAISS."""


def _read_faiss(index_dir: Path, manifest: dict[str, Any]) -> faiss.Index:
    """faiss.index, checked against the manifest (vector count and dimension); memory-mapped, read-only,
    when the index was built with --mmap (its inverted lists are then read from disk as queries need them)."""
    path = index_dir / FAISS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; {rebuild_hint(index_dir)}")
    mmap = manifest.get("index_params", {}).get("mmap", False)
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0)
    except RuntimeError as e:  # faiss reports a truncated or foreign file as a RuntimeError
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        reason = re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", first_line)  # drop faiss's C++ location
        problem = f"cannot be read by FAISS (truncated or damaged: {reason})"
        raise IndexMismatchError(f"{path}: {problem}; {rebuild_hint(index_dir)}") from None
    problem = None
    if index.ntotal != manifest["count"]:
        problem = f"holds {index.ntotal} vectors, the manifest says {manifest['count']}"
    elif index.d != manifest["dim"]:
        problem = f"holds {index.d}-d vectors, the manifest says {manifest['dim']}-d"
    if problem:
        raise IndexMismatchError(f"{path}: {problem}; {rebuild_hint(index_dir)}")
    return index


class DenseSearcher:
    """Inner-product search with a query encoder, in FAISS or a vector database (`VECTOR_DATABASES`);
    rows map to passages through the store and to the stored document vectors through the memory-mapped
    embedding shards (FAISS) or the database."""

    def __init__(
        self,
        index_dir: str | Path,
        query_encoder: str | None = None,
        device: str = "auto",
        passages: str | Path | None = None,
        batch_size: int = 128,
        verify: bool = False,
        *,
        nprobe: int | None = None,
        rerank: int | None = None,
        checked: tuple[dict[str, Any], Path] | None = None,
    ):
        """`nprobe` and `rerank` override the values an approximate index was built with (None: keep
        them); `checked` is the result of `read_manifest` when the caller has it already (read once)."""
        self.index_dir = Path(index_dir)
        self.manifest, passages_path = checked or read_manifest(index_dir, passages, verify=verify)
        backend = self.manifest["backend"]
        if backend != "dense" and backend not in VECTOR_DATABASES:
            raise IndexMismatchError(f"{index_dir} is a {backend} index, not dense")
        self.spec: EncoderSpec = encoder_spec_of(self.manifest)
        self.count = int(self.manifest["count"])
        self.dim = int(self.manifest["dim"])
        self.retrieval_temperature = float(self.spec.score_temperature)
        if "score_temperature" in self.manifest["encoder"]:
            self.retrieval_temperature_source = f"index manifest ({index_dir}): encoder {self.spec.query_model} score_temperature"
        else:
            self.retrieval_temperature_source = f"default 1.0: the index manifest ({index_dir}) records no encoder score_temperature"
        self.store = open_passages(self.index_dir, self.manifest, passages_path)
        params = self.manifest.get("index_params", {})
        index_type = self.manifest.get("index_type", backend)
        if nprobe is not None and "nprobe" not in params:
            raise ValueError(f"--nprobe applies to an ivfpq index; {index_dir} is {index_type}")
        if rerank and index_type not in ("ivfpq", "hnsw"):
            raise ValueError(f"--rerank applies to an ivfpq or hnsw index; {index_dir} is {index_type} (exact already)")
        self.rerank = int(params.get("rerank", 0) if rerank is None else rerank)
        if backend in VECTOR_DATABASES:
            self.index = VECTOR_DATABASES[backend](self.index_dir, self.manifest)
            self.vectors = self.index.vectors
        else:
            self.index = _read_faiss(self.index_dir, self.manifest)
            if "nprobe" in params:
                faiss.extract_index_ivf(self.index).nprobe = params["nprobe"] if nprobe is None else nprobe
            self.vectors = ShardedVectors(self.index_dir / EMBEDDINGS_DIR, self.count, int(self.manifest["shard_size"]), self.dim)
        self.batch_size = batch_size
        self.query_encoder = Encoder.load(
            query_encoder or self.spec.query_model,
            self.spec.pooling,
            self.spec.normalize,
            self.spec.query_max_length,
            self.spec.query_prefix,
        ).to(resolve_device(device))
        self._check_query_encoder(query_encoder)

    def _check_query_encoder(self, swapped: str | None) -> None:
        q = self.query_encoder
        if q.dim != self.dim:
            raise IndexMismatchError(
                f"query encoder {swapped or self.spec.query_model} makes {q.dim}-d vectors but {self.index_dir} "
                f"holds {self.dim}-d ones; use a query encoder trained with this index's document encoder"
            )
        if q.normalize != self.spec.normalize or q.pooling != self.spec.pooling:
            raise IndexMismatchError(
                f"query encoder {swapped} uses pooling={q.pooling}, normalize={q.normalize} but the index was "
                f"built with pooling={self.spec.pooling}, normalize={self.spec.normalize}"
            )

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        """queries -> float32 [Q, dim] with the query tower."""
        return self.query_encoder.encode(queries, batch_size=self.batch_size)

    def doc_vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored document vectors of index rows: rows [...] int -> float32 [..., dim].

        These are the vectors FAISS or the vector database searched (the document tower is frozen after indexing), so
        `doc_vectors(rows) @ q` reproduces the scores of a flat index; R-ft computes p_R with
        gradients through the query tower against them. A row of -1 (no hit) gives a zero vector.
        """
        return self.vectors(np.asarray(rows))

    def search_vectors(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q [Q, dim] float32 -> (scores [Q, k], rows [Q, k]); straight to FAISS (or the vector
        database), then the optional exact re-ranking of `rerank` candidates for approximate indexes."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        k = clip_k(k, self.count)
        if not self.rerank:
            return self.index.search(q, k)
        _, candidates = self.index.search(q, max(k, min(self.rerank, self.count)))
        return rerank_exact(q, candidates, self.vectors, k)

    @functools.cached_property
    def ids(self) -> np.ndarray:
        """Passage id of every row [count], from the shards' id files (the order FAISS numbered them)."""
        emb_dir, shard_size = self.index_dir / EMBEDDINGS_DIR, int(self.manifest["shard_size"])
        ids: list[str] = []
        for i in range(int(self.manifest["n_shards"])):
            ids.extend(load_shard_ids(emb_dir, i, shard_rows(i, self.count, shard_size)))
        return np.array(ids, dtype=object)

    def search_ids(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q [Q, dim] -> (scores [Q, k], passage ids [Q, k]) without reading passage texts."""
        scores, rows = self.search_vectors(q, k)
        return scores, np.where(rows >= 0, self.ids[rows], None)  # -1: fewer than k found

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        scores, rows = self.search_vectors(self.encode_queries(queries), k)
        return [self._hits(r, s) for r, s in zip(rows, scores)]

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        return hits_from_rows(self.store, rows, scores)


def load_searcher(
    index_dir: str | Path,
    query_encoder: str | None = None,
    device: str = "auto",
    passages: str | Path | None = None,
    verify: bool = False,
    **kwargs: Any,
) -> Searcher:
    """Open a dense (FAISS or vector database), BM25 or hybrid index by what its manifest says (read and
    checked once).

    Args:
        index_dir: Directory written by `radit index`.
        query_encoder: Another query tower for a dense or qdrant index, or the dense side of a hybrid one
            (e.g. one fine-tuned by R-ft).
        device: Torch device of the query encoder.
        passages: The passages file, if not at the path the manifest records.
        verify: Check the full sha256 of the passages file even when its size and mtime are unchanged.
        **kwargs: Passed to the (dense) searcher (e.g. `batch_size`).
    """
    if is_hybrid_index(index_dir):
        manifest, dense_dir, bm25_dir = read_hybrid_manifest(index_dir)
        dense = DenseSearcher(dense_dir, query_encoder=query_encoder, device=device, passages=passages, verify=verify, **kwargs)
        return HybridSearcher(index_dir, manifest, dense, BM25Searcher(bm25_dir, passages=passages, verify=verify))
    checked = read_manifest(index_dir, passages, verify=verify)
    if checked[0]["backend"] == "bm25":
        for name, value in (("query-encoder", query_encoder), ("nprobe", kwargs.get("nprobe")), ("rerank", kwargs.get("rerank"))):
            if value is not None:
                raise ValueError(f"--{name} applies to dense and hybrid indexes only; {index_dir} is bm25")
        return BM25Searcher(index_dir, checked=checked, **kwargs)
    return DenseSearcher(index_dir, query_encoder=query_encoder, device=device, checked=checked, **kwargs)


def search_batched(searcher: Searcher, queries: list[str], k: int, batch_size: int = 256, progress: bool = True) -> list[list[Hit]]:
    results: list[list[Hit]] = []
    for start in progress_bar(range(0, len(queries), batch_size), enabled=progress, desc="search", unit="batch"):
        results.extend(searcher.search(queries[start : start + batch_size], k))
    return results


def format_hits(query: str, hits: list[Hit], width: int = 100) -> str:
    """Human-readable ranked list: rank, score, title and id, then the passage text, shortened."""
    lines = [f"Q: {query}"]
    for rank, h in enumerate(hits, 1):
        lines.append(f"{rank:>3}. [{h.score:.4f}] {h.title or h.doc_id} ({h.id})")
        text = textwrap.shorten(h.text, width=300, placeholder=" …")
        lines.append(textwrap.indent(textwrap.fill(text, width=width), "     "))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Run files: one JSON line per query with its ranked hits
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunRecord:
    """One line of a run file: a query and its ranked hits (parallel lists, best first)."""

    qid: str
    question: str
    passage_ids: list[str]
    scores: list[float]
    rows: list[int] | None
    """Index rows of the hits (for `DenseSearcher.doc_vectors`); None in run files written before rows were kept."""


def write_run(path: str | Path, qids: list[str], questions: list[str], results: list[list[Hit]]) -> None:
    """Run file: one JSON line per query with the ranked passage ids, index rows and scores."""
    with atomic_open(path) as f:
        for qid, question, hits in zip(qids, questions, results):
            rec = {
                "qid": qid,
                "question": question,
                "passage_ids": [h.id for h in hits],
                "rows": [h.row for h in hits],
                "scores": [h.score for h in hits],
            }
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def _run_record(rec: Any) -> RunRecord:
    """A parsed run-file line -> RunRecord; ValueError naming the problem."""
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    missing = [key for key in ("qid", "question", "passage_ids", "scores") if key not in rec]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    ids, scores, rows = rec["passage_ids"], rec["scores"], rec.get("rows")
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise ValueError("passage_ids must be a list of strings")
    if not isinstance(scores, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in scores):
        raise ValueError("scores must be a list of numbers")
    if rows is not None and (not isinstance(rows, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in rows)):
        raise ValueError("rows must be a list of integers")
    if len(scores) != len(ids) or (rows is not None and len(rows) != len(ids)):
        raise ValueError(f"passage_ids, scores{', rows' if rows is not None else ''} differ in length")
    return RunRecord(str(rec["qid"]), str(rec["question"]), ids, [float(s) for s in scores], rows)


def read_run(path: str | Path) -> list[RunRecord]:
    """The records of a run file written by `write_run` (`radit search --queries`, `radit eval-retrieval`).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: a bad line, as `path:line: problem; what to do`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no run file there; write one with `radit search --queries Q --output {path}`")
    records = []
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({e.msg}); fix or remove the line") from None
            try:
                records.append(_run_record(rec))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: {e}; fix the line or rewrite the run file with `radit search`") from None
    return records
