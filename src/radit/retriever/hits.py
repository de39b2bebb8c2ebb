"""What a search returns: `Hit`s, the `Searcher` interface that dense and BM25 indexes share, and the
`VectorStore` a dense searcher searches when its vectors live in a vector database."""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

import numpy as np

from radit.corpus import PassageStore

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Hit:
    """One retrieved passage; `row` is its row in the index (and in the dense index's stored vectors)."""

    row: int
    id: str
    doc_id: str
    title: str
    text: str
    score: float


class Searcher(Protocol):
    count: int
    """Passages in the index."""
    retrieval_temperature: float
    """T of p_R(c|x) = softmax(s(x, c) / T) over this searcher's scores."""
    retrieval_temperature_source: str
    """Where `retrieval_temperature` came from, for run reports."""

    def search(self, queries: list[str], k: int) -> list[list[Hit]]: ...


class VectorStore(Protocol):
    """Where a dense index's document vectors are searched in place of FAISS: a vector database
    (radit.retriever.qdrant). Another database is one more class with these two methods."""

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q [Q, dim] float32 -> (scores [Q, k], rows [Q, k]) by inner product, best first; -1 rows
        where fewer than k were found (what FAISS's `Index.search` returns)."""
        ...

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """rows [...] int -> the stored document vectors float32 [..., dim]; zero where a row is -1."""
        ...


def hits_from_rows(store: PassageStore, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
    """Hits for one query's ranked rows [k] and scores [k]; a row of -1 (approximate index, fewer
    than k found) is dropped."""
    pairs = [(int(r), float(s)) for r, s in zip(rows, scores) if r >= 0]
    passages = store.get_many([r for r, _ in pairs])
    return [Hit(r, p["id"], p["doc_id"], p.get("title", ""), p["text"], s) for (r, s), p in zip(pairs, passages)]


def clip_k(k: int, count: int) -> int:
    """`k`, or the corpus size when it is smaller (with a warning)."""
    if k > count:
        log.warning("k=%d is larger than the corpus (%d passages); returning %d", k, count, count)
    return min(k, count)
