"""Hybrid retrieval: a dense and a BM25 index of the same passages, fused per query behind the
`Searcher` interface.

    radit index --backend bm25 --passages runs/quickstart/passages.jsonl --output runs/quickstart/bm25
    radit index --backend hybrid --dense-index runs/quickstart/index --bm25-index runs/quickstart/bm25 \\
        --output runs/quickstart/hybrid [--fusion-weight 0.4 | --fusion rrf]
    radit search --index runs/quickstart/hybrid "who founded the Ming dynasty?"

A hybrid index directory holds no vectors or postings of its own: its manifest names the two indexes
and the fusion settings, and `radit.retriever.search.load_searcher` opens both sides (the dense one
with its `--query-encoder` swap) and a `HybridSearcher` over them. Both sides must have been built
from the same passages file (the same sha256): both number the passages in file order, so a row is
the same passage on either side, and the fused hits keep it (`Hit.row`, `DenseSearcher.doc_vectors`).

Fusion runs over the union of each side's top `depth` candidates (`depth` = max(--fusion-depth, k)):

- rrf: score = sum over sides of 1 / (rrf_k + rank); a side that did not return a candidate adds 0.
- weighted: score = w * minmax(dense) + (1 - w) * minmax(BM25), each side min-max normalised over its
  own top-`depth` scores for that query. A candidate one side did not return gets that side's minimum,
  0 after normalisation: its true score is at most the side's depth-th, so 0 is the nearest value
  known without scoring it against the whole index. A side whose candidates all score the same (BM25
  for a query with no indexed term) adds 0 to every candidate rather than an arbitrary constant.

BM25 hits of score 0 (no query term in the passage) are not candidates: bm25s pads its top-`depth`
with such passages in arbitrary order, and rrf would credit them by rank.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

import radit
from radit.config import HybridConfig
from radit.retriever.bm25 import BM25Searcher
from radit.retriever.hits import Hit, clip_k, hits_from_rows
from radit.retriever.manifest import FORMAT_VERSION, MANIFEST, IndexMismatchError, load_manifest, rebuild_hint

FUSION_METHODS = ("rrf", "weighted")
DEFAULT_WEIGHT = 0.5
"""Weight of the dense side when --fusion-weight is not given. Tuned on SQuAD-open dev (MiniLM + BM25,
benchmarks/hybrid_retrieval.py) the best was 0.4, with 0.5 within 0.2 points of answer-hit@1; 0.5
assumes neither side is the stronger one, which depends on the corpus and the encoder."""

FUSION_TEMPERATURE = {"rrf": 0.0015, "weighted": 0.2}
"""p_R temperature over fused scores by method (Eq. 2: p_R = softmax(score / T) over the top-k).
Fused scores have their own scale: rrf scores of neighbouring ranks differ by about 1/(rrf_k + rank)^2
per side (~2.5e-4 at rrf_k = 60), weighted ones lie in [0, 1]. Each T makes p_R over the top-10 as
peaked as MiniLM's at its own T = 0.05 (mean top-1 weight 0.50 on SQuAD-open dev; measured by
benchmarks/hybrid_retrieval.py: T of 0.00153 for rrf, 0.218 for weighted)."""


# --------------------------------------------------------------------------------------------------
# Fusion: pure functions over each side's ranked candidates
# --------------------------------------------------------------------------------------------------


def rrf_contributions(rows: np.ndarray, rrf_k: int = 60) -> np.ndarray:
    """rows [Q, C] ranked best first (-1 = none) -> 1 / (rrf_k + rank) [Q, C], rank from 1; 0 where -1."""
    rank = np.arange(1, rows.shape[1] + 1, dtype=np.float64)
    return np.where(rows >= 0, 1.0 / (rrf_k + rank), 0.0)


def minmax_contributions(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """scores, rows [Q, C] -> scores min-max normalised per query to [0, 1] over the valid rows [Q, C];
    0 where the row is -1 or all of the query's valid scores are equal."""
    scores = np.asarray(scores, dtype=np.float64)
    valid = rows >= 0
    lo = np.where(valid, scores, np.inf).min(1, keepdims=True)  # [Q, 1]
    hi = np.where(valid, scores, -np.inf).max(1, keepdims=True)
    span = hi - lo
    ok = valid & (span > 0)
    return np.where(ok, (scores - np.where(ok, lo, 0.0)) / np.where(ok, span, 1.0), 0.0)


def sum_by_row(rows: list[np.ndarray], values: list[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, add up what each list gives a row and keep the best k.

    rows[i], values[i] [Q, C_i] (row -1: none) -> (scores [Q, k] float64, rows [Q, k] int64), best
    first, ties to the smaller row; a query with fewer than k candidates is padded with -inf / -1.
    """
    r = np.concatenate(rows, 1).astype(np.int64)  # [Q, C]
    v = np.concatenate(values, 1).astype(np.float64)
    n_queries = r.shape[0]
    keep = r >= 0
    n = int(r.max()) + 1 if keep.any() else 1
    # One key per (query, row): np.unique sorts them by query, then row, and sums the duplicates.
    q = np.broadcast_to(np.arange(n_queries)[:, None], r.shape)
    keys, inverse = np.unique(q[keep] * n + r[keep], return_inverse=True)
    total = np.bincount(inverse, weights=v[keep], minlength=len(keys))
    kq, kr = np.divmod(keys, n)
    pos = np.arange(len(keys)) - np.searchsorted(kq, np.arange(n_queries))[kq]  # place within its query
    width = max(k, int(pos.max()) + 1 if len(pos) else 0)
    scores = np.full((n_queries, width), -np.inf)
    out_rows = np.full((n_queries, width), -1, dtype=np.int64)
    scores[kq, pos], out_rows[kq, pos] = total, kr
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # stable: ties keep row order
    return np.take_along_axis(scores, top, 1), np.take_along_axis(out_rows, top, 1)


def fuse(
    dense: tuple[np.ndarray, np.ndarray],
    bm25: tuple[np.ndarray, np.ndarray],
    k: int,
    method: str,
    weight: float = DEFAULT_WEIGHT,
    rrf_k: int = 60,
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse two ranked candidate lists (see the module docstring).

    Args:
        dense, bm25: (scores [Q, C], rows [Q, C]) of each side, best first; row -1 = no candidate.
        k: Fused hits kept per query.
        method: rrf or weighted.
        weight: Weight of the dense side (weighted).
        rrf_k: Rank offset (rrf).

    Returns:
        (scores [Q, k], rows [Q, k]), best first; -inf / -1 where fewer than k candidates.
    """
    (dense_scores, dense_rows), (bm25_scores, bm25_rows) = dense, bm25
    if method == "rrf":
        values = [rrf_contributions(dense_rows, rrf_k), rrf_contributions(bm25_rows, rrf_k)]
    elif method == "weighted":
        values = [weight * minmax_contributions(dense_scores, dense_rows), (1 - weight) * minmax_contributions(bm25_scores, bm25_rows)]
    else:
        raise ValueError(f"fusion method {method!r} is unknown; valid: {', '.join(FUSION_METHODS)}")
    return sum_by_row([dense_rows, bm25_rows], values, k)


# --------------------------------------------------------------------------------------------------
# The searcher
# --------------------------------------------------------------------------------------------------


class HybridSearcher:
    """Dense + BM25 search over the same passages, fused per query (`radit index --backend hybrid`).

    Built by `load_searcher` from the hybrid manifest (`read_hybrid_manifest`) and the two opened sides:
    `dense` is a `radit.retriever.search.DenseSearcher` (not imported: search.py builds on this module).
    """

    def __init__(self, index_dir: str | Path, manifest: dict[str, Any], dense: Any, bm25: BM25Searcher):
        self.index_dir = Path(index_dir)
        self.manifest = manifest
        self.dense, self.bm25 = dense, bm25
        fusion = manifest["fusion"]
        self.method: str = fusion["method"]
        self.weight = DEFAULT_WEIGHT if fusion.get("weight") is None else float(fusion["weight"])
        self.rrf_k = int(fusion.get("rrf_k") or 60)
        self.depth = int(fusion["depth"])
        self.count = dense.count
        self.store = dense.store
        self.retrieval_temperature = float(fusion["temperature"])
        how = "set by --fusion-temperature" if fusion.get("temperature_source") == "--fusion-temperature" else "default"
        self.retrieval_temperature_source = f"hybrid index manifest ({index_dir}): {self.method} fusion temperature ({how})"

    def candidates(self, queries: list[str], depth: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """Each side's top-`depth` (scores [Q, depth], rows [Q, depth]), the input of `fuse`; BM25 rows
        of score 0 are -1 (not candidates)."""
        dense = self.dense.search_vectors(self.dense.encode_queries(queries), depth)
        bm25_scores, bm25_rows = self.bm25.search_rows(queries, depth)
        return dense, (bm25_scores, np.where(bm25_scores > 0, bm25_rows, -1))

    def search(self, queries: list[str], k: int) -> list[list[Hit]]:
        k = clip_k(k, self.count)
        dense, bm25 = self.candidates(queries, min(max(self.depth, k), self.count))
        scores, rows = fuse(dense, bm25, k, self.method, self.weight, self.rrf_k)
        return [hits_from_rows(self.store, r, s) for r, s in zip(rows, scores)]


# --------------------------------------------------------------------------------------------------
# The hybrid manifest: written by `radit index --backend hybrid`, read by `load_searcher`
# --------------------------------------------------------------------------------------------------


def check_sides(dense_dir: Path, bm25_dir: Path, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The manifests of a dense and a BM25 index built from the same passages, or a one-line error.

    `where` starts each message (the flag or the hybrid index the paths came from)."""
    dense, bm25 = load_manifest(dense_dir), load_manifest(bm25_dir)
    for path, manifest, backend, flag in ((dense_dir, dense, "dense", "--dense-index"), (bm25_dir, bm25, "bm25", "--bm25-index")):
        if manifest["backend"] != backend:
            raise IndexMismatchError(f"{where}{flag} {path} is a {manifest['backend']} index, not {backend}; give a {backend} index")
    if dense["count"] != bm25["count"] or dense["passages"]["sha256"] != bm25["passages"]["sha256"]:
        raise IndexMismatchError(
            f"{where}dense index {dense_dir} ({dense['count']} passages of {dense['passages']['path']}) and BM25 index "
            f"{bm25_dir} ({bm25['count']} of {bm25['passages']['path']}) were built from different passages; "
            "rebuild one from the other's passages file"
        )
    return dense, bm25


def _side_record(path: Path, out: Path) -> dict[str, str]:
    """Where a side is: relative to the hybrid index's parent (survives moving the run tree as a whole)
    and absolute (survives moving the hybrid index alone)."""
    return {"path": os.path.relpath(path.absolute(), out.absolute().parent), "absolute": str(path.resolve())}


def hybrid_manifest(cfg: HybridConfig, out: Path) -> dict[str, Any]:
    """The manifest of a hybrid index at `out` over `cfg`'s two indexes (checked); writes nothing."""
    dense_dir, bm25_dir = Path(cfg.dense_index or ""), Path(cfg.bm25_index or "")
    for path, flag in ((dense_dir, "--dense-index"), (bm25_dir, "--bm25-index")):
        if os.path.lexists(out) and path.exists() and out.resolve() == path.resolve():
            raise ValueError(f"--output {out} is the {flag} itself; give the hybrid index a directory of its own")
    dense, _ = check_sides(dense_dir, bm25_dir, "")
    temperature = cfg.fusion_temperature or FUSION_TEMPERATURE[cfg.fusion]
    return {
        "format_version": FORMAT_VERSION,
        "radit_version": radit.__version__,
        "backend": "hybrid",
        "count": dense["count"],
        "passages": dense["passages"],
        "dense_index": {**_side_record(dense_dir, out), "encoder": dense["encoder"].get("query_model"), "index_type": dense["index_type"]},
        "bm25_index": _side_record(bm25_dir, out),
        "fusion": {
            "method": cfg.fusion,
            "weight": (DEFAULT_WEIGHT if cfg.fusion_weight is None else cfg.fusion_weight) if cfg.fusion == "weighted" else None,
            "rrf_k": cfg.rrf_k if cfg.fusion == "rrf" else None,
            "depth": cfg.fusion_depth,
            "temperature": temperature,
            "temperature_source": "--fusion-temperature" if cfg.fusion_temperature else "default",
        },
    }


def hybrid_state(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a hybrid build is made from, to compare with the build already in an output directory."""
    return {"backend": "hybrid", "dense_index": manifest["dense_index"]["absolute"],
            "bm25_index": manifest["bm25_index"]["absolute"], **manifest["fusion"]}


def is_hybrid_index(index_dir: str | Path) -> bool:
    """Whether `index_dir` holds a hybrid manifest (anything unreadable: no, and the caller's usual
    checks say what is wrong)."""
    try:
        return json.loads((Path(index_dir) / MANIFEST).read_text(encoding="utf-8"))["backend"] == "hybrid"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _resolve_side(index_dir: Path, record: dict[str, str], what: str) -> Path:
    relative = index_dir.absolute().parent / record["path"]
    for path in (relative, Path(record["absolute"])):
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"{index_dir}: its {what} is neither at {relative} nor at {record['absolute']}; rebuild the hybrid "
        f"index with `radit index --backend hybrid --dense-index DIR --bm25-index DIR --output {index_dir} --overwrite`"
    )


def read_hybrid_manifest(index_dir: str | Path) -> tuple[dict[str, Any], Path, Path]:
    """The manifest of a hybrid index and its dense and BM25 index directories, checked against each other."""
    index_dir = Path(index_dir)
    path = index_dir / MANIFEST
    damaged = f"{path}: the hybrid manifest is damaged ({{}}); {rebuild_hint(index_dir)}"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(f"{path}: index format {manifest.get('format_version')} is not {FORMAT_VERSION}; {rebuild_hint(index_dir)}")
    try:
        sides = [_resolve_side(index_dir, manifest[key], what) for key, what in (("dense_index", "dense index"), ("bm25_index", "BM25 index"))]
        fusion = manifest["fusion"]
        if fusion["method"] not in FUSION_METHODS:
            raise ValueError(f"unknown fusion method {fusion['method']!r}")
        depth, temperature = fusion["depth"], fusion["temperature"]
        if not (isinstance(depth, int) and depth >= 1 and isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"depth {depth!r}, temperature {temperature!r}")
        sha256 = manifest["passages"]["sha256"]
    except KeyError as e:
        raise IndexMismatchError(damaged.format(f"no {e} entry")) from None
    except (TypeError, ValueError) as e:
        raise IndexMismatchError(damaged.format(e)) from None
    dense, _ = check_sides(sides[0], sides[1], f"{index_dir}: ")
    if dense["passages"]["sha256"] != sha256:
        raise IndexMismatchError(
            f"{index_dir}: its indexes {sides[0]} and {sides[1]} were rebuilt from other passages since the hybrid "
            f"index was made; {rebuild_hint(index_dir)}"
        )
    return manifest, sides[0], sides[1]
