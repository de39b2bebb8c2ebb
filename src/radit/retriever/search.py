"""Top-k search over a dense (FAISS) or BM25 index, one interface for both.

    radit search --index runs/index "who founded the Ming dynasty?"
    radit search --index runs/index --queries questions.jsonl --output run.jsonl --k 10
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import textwrap
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np
from tqdm.auto import tqdm

from radit.artifacts import atomic_open
from radit.corpus import PassageStore
from radit.retriever.encoder import Encoder, EncoderSpec
from radit.retriever.index import IndexMismatchError, ShardedVectors, encoder_spec_of, read_manifest, rerank_exact
from radit.runtime import resolve_device

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Hit:
    """One retrieved passage."""

    row: int
    id: str
    doc_id: str
    title: str
    text: str
    score: float


class Searcher(Protocol):
    count: int

    def search(self, queries: list[str], k: int) -> list[list[Hit]]: ...


def hits_from_rows(store: PassageStore, rows, scores) -> list[Hit]:
    """Hits for one query's ranked rows; a row of -1 (approximate index, fewer than k found) is dropped."""
    pairs = [(int(r), float(s)) for r, s in zip(rows, scores) if r >= 0]
    passages = store.get_many([r for r, _ in pairs])
    return [Hit(r, p["id"], p["doc_id"], p.get("title", ""), p["text"], s) for (r, s), p in zip(pairs, passages)]


def _clip_k(k: int, count: int) -> int:
    if k > count:
        log.warning("k=%d is larger than the corpus (%d passages); returning %d", k, count, count)
    return min(k, count)


class DenseSearcher:
    """FAISS inner-product search with a query encoder; rows map to passages through the store."""

    def __init__(
        self,
        index_dir: str | Path,
        query_encoder: str | None = None,
        device: str = "auto",
        passages: str | Path | None = None,
        batch_size: int = 128,
    ):
        self.index_dir = Path(index_dir)
        self.manifest, passages_path = read_manifest(index_dir, passages)
        if self.manifest["backend"] != "dense":
            raise IndexMismatchError(f"{index_dir} is a {self.manifest['backend']} index, not dense")
        self.spec: EncoderSpec = encoder_spec_of(self.manifest)
        self.count = int(self.manifest["count"])
        self.store = PassageStore(passages_path, np.load(self.index_dir / "passage_offsets.npy"))
        self.index = faiss.read_index(str(self.index_dir / "faiss.index"))
        if self.index.ntotal != self.count:
            raise IndexMismatchError(f"{index_dir}: faiss.index holds {self.index.ntotal} vectors, manifest says {self.count}")
        params = self.manifest.get("index_params", {})
        if "nprobe" in params:
            faiss.extract_index_ivf(self.index).nprobe = params["nprobe"]
        self.rerank = int(params.get("rerank", 0))
        if self.rerank:
            self.vectors = ShardedVectors(self.index_dir / "embeddings", int(self.manifest["n_shards"]), int(self.manifest["shard_size"]))
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
        if q.dim != self.manifest["dim"]:
            raise IndexMismatchError(
                f"query encoder {swapped or self.spec.query_model} makes {q.dim}-d vectors but {self.index_dir} "
                f"holds {self.manifest['dim']}-d ones; use a query encoder trained with this index's document encoder"
            )
        if q.normalize != self.spec.normalize or q.pooling != self.spec.pooling:
            raise IndexMismatchError(
                f"query encoder {swapped} uses pooling={q.pooling}, normalize={q.normalize} but the index was "
                f"built with pooling={self.spec.pooling}, normalize={self.spec.normalize}"
            )

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.query_encoder.encode(queries, batch_size=self.batch_size)

    def search_vectors(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q [Q, dim] float32 -> (scores [Q, k], rows [Q, k]); straight to FAISS, then the optional
        exact re-ranking of `rerank` candidates for approximate indexes."""
        q = np.ascontiguousarray(q, dtype=np.float32)
        k = _clip_k(k, self.count)
        if not self.rerank:
            return self.index.search(q, k)
        _, candidates = self.index.search(q, max(k, min(self.rerank, self.count)))
        return rerank_exact(q, candidates, self.vectors, k)

    @functools.cached_property
    def ids(self) -> np.ndarray:
        """Passage id of every row, from the shards' id files (the order FAISS numbered them)."""
        ids: list[str] = []
        for i in range(int(self.manifest["n_shards"])):
            ids.extend(json.loads((self.index_dir / "embeddings" / f"shard_{i:05d}.ids.json").read_text()))
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


# --------------------------------------------------------------------------------------------------
# BM25
# --------------------------------------------------------------------------------------------------


def _bm25_tokenizer():
    import Stemmer
    from bm25s.tokenization import Tokenizer

    return Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))


def build_bm25(store: PassageStore, out: Path) -> None:
    """Index title + text of every passage with bm25s (Lucene BM25, English stopwords, Snowball stems)."""
    import bm25s

    from radit.retriever.encoder import passage_input

    tokenizer = _bm25_tokenizer()
    tokens = tokenizer.tokenize(
        [passage_input(p) for p in tqdm(store, total=len(store), desc="read passages")], return_as="ids", show_progress=False
    )
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    retriever.save(str(out), show_progress=False)
    tokenizer.save_vocab(str(out))
    tokenizer.save_stopwords(str(out))


class BM25Searcher:
    """The lexical baseline behind the same `search` interface."""

    def __init__(self, index_dir: str | Path, passages: str | Path | None = None, **_: Any):
        import bm25s

        self.index_dir = Path(index_dir)
        self.manifest, passages_path = read_manifest(index_dir, passages)
        self.count = int(self.manifest["count"])
        self.store = PassageStore(passages_path, np.load(self.index_dir / "passage_offsets.npy"))
        self.retriever = bm25s.BM25.load(str(self.index_dir / "bm25"))
        self.tokenizer = _bm25_tokenizer()
        self.tokenizer.load_vocab(str(self.index_dir / "bm25"))
        self.tokenizer.load_stopwords(str(self.index_dir / "bm25"))

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        k = _clip_k(k, self.count)
        tokens = self.tokenizer.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False)
        rows, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        return [hits_from_rows(self.store, r, sc) for r, sc in zip(rows, scores)]


def load_searcher(index_dir: str | Path, query_encoder: str | None = None, device: str = "auto", **kwargs: Any) -> Searcher:
    """Open a dense or BM25 index by what its manifest says."""
    manifest, _ = read_manifest(index_dir, kwargs.get("passages"))
    if manifest["backend"] == "bm25":
        if query_encoder:
            raise ValueError("--query-encoder applies to dense indexes only; this index is bm25")
        return BM25Searcher(index_dir, **kwargs)
    return DenseSearcher(index_dir, query_encoder=query_encoder, device=device, **kwargs)


def search_batched(searcher: Searcher, queries: list[str], k: int, batch_size: int = 256, progress: bool = True) -> list[list[Hit]]:
    results: list[list[Hit]] = []
    for start in tqdm(range(0, len(queries), batch_size), disable=not progress, desc="search", unit="batch"):
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


def write_run(path: str | Path, qids: list[str], questions: list[str], results: list[list[Hit]]) -> None:
    """Run file: one JSON line per query with the ranked passage ids and scores."""
    with atomic_open(path) as f:
        for qid, question, hits in zip(qids, questions, results):
            rec = {"qid": qid, "question": question, "passage_ids": [h.id for h in hits], "scores": [h.score for h in hits]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
