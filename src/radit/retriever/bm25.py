"""The lexical baseline: build a BM25 index with bm25s and search it behind the `Searcher` interface.

    radit index --backend bm25 --passages runs/corpus/passages.jsonl --output runs/index-bm25

The index lives in `<index>/bm25/` (bm25s' own files plus its vocabulary and stopwords).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from radit.corpus import PassageStore
from radit.distributed import progress_bar
from radit.retriever.encoder import passage_input
from radit.retriever.hits import Hit, clip_k, hits_from_rows
from radit.retriever.manifest import IndexMismatchError, open_passages, read_manifest, rebuild_hint

BM25_DIR = "bm25"

BM25_TEMPERATURE = 1.0
"""p_R temperature over BM25 scores. They are unnormalised and spread over several units between
the top hits, so T = 1 already gives sharp weights (a cosine encoder needs T of ~0.05 for the same)."""


def _tokenizer():
    import Stemmer
    from bm25s.tokenization import Tokenizer

    return Tokenizer(stopwords="en", stemmer=Stemmer.Stemmer("english"))


def build_bm25(store: PassageStore, out: Path) -> None:
    """Index title + text of every passage into the directory `out` with bm25s (Lucene BM25,
    English stopwords, Snowball stems)."""
    import bm25s

    tokenizer = _tokenizer()
    tokens = tokenizer.tokenize(
        [passage_input(p) for p in progress_bar(store, total=len(store), desc="read passages")], return_as="ids", show_progress=False
    )
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    retriever.save(str(out), show_progress=False)
    tokenizer.save_vocab(str(out))
    tokenizer.save_stopwords(str(out))


class BM25Searcher:
    """BM25 top-k over an index written by `radit index --backend bm25`."""

    def __init__(
        self,
        index_dir: str | Path,
        passages: str | Path | None = None,
        verify: bool = False,
        *,
        checked: tuple[dict[str, Any], Path] | None = None,
        **_: Any,
    ):
        """`checked` is the result of `read_manifest` when the caller has it already (read once)."""
        import bm25s

        self.index_dir = Path(index_dir)
        self.manifest, passages_path = checked or read_manifest(index_dir, passages, verify=verify)
        if self.manifest["backend"] != "bm25":
            raise IndexMismatchError(f"{index_dir} is a {self.manifest['backend']} index, not bm25")
        self.count = int(self.manifest["count"])
        self.retrieval_temperature = BM25_TEMPERATURE
        self.retrieval_temperature_source = "default for a BM25 index (no encoder temperature)"
        self.store = open_passages(self.index_dir, self.manifest, passages_path)
        bm25_dir = self.index_dir / BM25_DIR
        if not bm25_dir.is_dir():
            raise FileNotFoundError(f"{bm25_dir}: missing; {rebuild_hint(self.index_dir)}")
        try:
            self.retriever = bm25s.BM25.load(str(bm25_dir))
            self.tokenizer = _tokenizer()
            self.tokenizer.load_vocab(str(bm25_dir))
            self.tokenizer.load_stopwords(str(bm25_dir))
        except (OSError, ValueError, KeyError) as e:
            problem = f"cannot be loaded ({type(e).__name__}: {e})"
            raise IndexMismatchError(f"{bm25_dir}: {problem}; {rebuild_hint(self.index_dir)}") from None
        n_docs = self.retriever.scores.get("num_docs")
        if n_docs is not None and n_docs != self.count:
            problem = f"holds {n_docs} passages, the manifest says {self.count}"
            raise IndexMismatchError(f"{bm25_dir}: {problem}; {rebuild_hint(self.index_dir)}")

    def search_rows(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries -> (scores [Q, k], rows [Q, k]), best first, without reading passage texts."""
        tokens = self.tokenizer.tokenize(queries, update_vocab=False, return_as="ids", show_progress=False)
        rows, scores = self.retriever.retrieve(tokens, k=clip_k(k, self.count), show_progress=False, n_threads=0)
        return scores, rows

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        scores, rows = self.search_rows(queries, k)
        return [hits_from_rows(self.store, r, sc) for r, sc in zip(rows, scores)]
