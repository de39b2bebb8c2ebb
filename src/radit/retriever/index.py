"""Embed passages into memory-mapped shards and build a FAISS (or BM25) index with a manifest.

    radit index --passages runs/corpus/passages.jsonl --output runs/index

Layout of an index directory:
    manifest.json         written last; an index without it does not load (a killed run never
                          leaves an index that looks complete)
    config.yaml           the resolved config of the run
    embeddings/state.json which passages/encoder/shard size the shards belong to
    embeddings/shard_00000.npy, shard_00000.ids.json, ...   finished shards; a rerun skips them
    passage_offsets.npy   byte offset of each passage line, for random access at search time
    faiss.index           (dense) or bm25/ (bm25)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm.auto import tqdm

import radit
from radit.artifacts import atomic_open, atomic_path, atomic_write_json, file_sha256
from radit.config import IndexConfig, save_yaml
from radit.corpus import PassageStore
from radit.retriever.encoder import DualEncoder, EncoderSpec, passage_input, resolve_encoder_spec
from radit.runtime import resolve_device

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class IndexMismatchError(ValueError):
    """An index directory that is incomplete or does not match what it is used with."""


def passages_fingerprint(path: str | Path, window: int = 4 << 20) -> str:
    """Cheap identity of a passages file: its size plus the sha256 of its first and last 4 MiB.

    Checked on every load; the full sha256 is recorded in the manifest too (`radit index` computes it).
    """
    import hashlib

    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(window))
        if size > window:
            f.seek(max(window, size - window))
            h.update(f.read(window))
    return h.hexdigest()


def _shard_paths(emb_dir: Path, i: int) -> tuple[Path, Path]:
    return emb_dir / f"shard_{i:05d}.npy", emb_dir / f"shard_{i:05d}.ids.json"


def _prepare_dir(out: Path, state: dict[str, Any], overwrite: bool) -> None:
    """Invalidate the old manifest, then keep finished shards only if they belong to this build."""
    (out / MANIFEST).unlink(missing_ok=True)
    emb_dir = out / "embeddings"
    state_file = emb_dir / "state.json"
    if state_file.is_file():
        old = json.loads(state_file.read_text())
        if old != state:
            changed = sorted(k for k in state if old.get(k) != state[k])
            if not overwrite:
                raise IndexMismatchError(
                    f"{out} holds embeddings of another build (differs in: {', '.join(changed)}); "
                    "pass --overwrite to delete them, or choose another --output"
                )
            log.warning("--overwrite: deleting embeddings of another build in %s (differs in %s)", emb_dir, changed)
            shutil.rmtree(emb_dir)
    emb_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state_file, state)


def embed_passages(store: PassageStore, encoder, emb_dir: Path, cfg: IndexConfig) -> int:
    """Embed every passage into shards of `cfg.shard_size` rows; returns the number of shards."""
    n = len(store)
    n_shards = max(1, math.ceil(n / cfg.shard_size))
    done = [i for i in range(n_shards) if _shard_paths(emb_dir, i)[1].is_file()]
    if done:
        log.info("resuming: %d of %d shards already embedded", len(done), n_shards)
    bar = tqdm(total=n, desc="embed passages", unit="passage", initial=min(n, len(done) * cfg.shard_size))
    for i in range(n_shards):
        npy, ids_file = _shard_paths(emb_dir, i)
        if ids_file.is_file():
            continue
        rows = range(i * cfg.shard_size, min(n, (i + 1) * cfg.shard_size))
        passages = store.get_many(rows)
        texts = [passage_input(p) for p in passages]
        emb = np.empty((len(texts), encoder.dim), dtype=np.float32)
        for start in range(0, len(texts), cfg.batch_size * 16):
            block = texts[start : start + cfg.batch_size * 16]
            emb[start : start + len(block)] = encoder.encode(block, batch_size=cfg.batch_size, dtype=cfg.dtype)
            bar.update(len(block))
        with atomic_open(npy, "wb") as f:
            np.save(f, emb.astype(cfg.embedding_dtype))
        # The ids file is the shard's completion mark, so it is written after the vectors.
        with atomic_open(ids_file) as f:
            json.dump([p["id"] for p in passages], f)
    bar.close()
    return n_shards


def iter_shards(emb_dir: Path, n_shards: int):
    for i in range(n_shards):
        yield np.load(_shard_paths(emb_dir, i)[0], mmap_mode="r")


class ShardedVectors:
    """Rows of the memory-mapped embedding shards, gathered by global row number (for exact re-ranking)."""

    def __init__(self, emb_dir: Path, n_shards: int, shard_size: int):
        self.shards = list(iter_shards(emb_dir, n_shards))
        self.shard_size = shard_size

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """rows [...] int -> float32 [..., dim]; rows < 0 give zero vectors."""
        flat = rows.reshape(-1)
        out = np.zeros((len(flat), self.shards[0].shape[1]), dtype=np.float32)
        valid = flat >= 0
        shard, offset = np.divmod(flat[valid], self.shard_size)
        dest = np.flatnonzero(valid)
        for s in np.unique(shard):
            sel = shard == s
            out[dest[sel]] = self.shards[s][offset[sel]]
        return out.reshape(*rows.shape, -1)


def rerank_exact(q: np.ndarray, rows: np.ndarray, vectors, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-score approximate candidates exactly and keep the best k.

    q [Q, d]; rows [Q, C] candidate rows (-1 = none); vectors(rows) -> [Q, C, d] -> (scores [Q, k], rows [Q, k]).
    """
    scores = np.einsum("qd,qcd->qc", q, vectors(rows))
    scores[rows < 0] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, 1), np.take_along_axis(rows, top, 1)


def make_faiss_index(dim: int, n: int, cfg: IndexConfig) -> tuple[faiss.Index, dict[str, Any]]:
    """An empty inner-product index of `cfg.index_type` and the parameters it was made with."""
    if cfg.index_type == "flat":
        return faiss.IndexFlatIP(dim), {}
    if cfg.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = cfg.ef_search
        return index, {"hnsw_m": cfg.hnsw_m, "ef_search": cfg.ef_search, "rerank": cfg.rerank}
    nlist = cfg.nlist or max(1, int(4 * math.sqrt(n)))
    m = cfg.pq_m or dim // 8
    if dim % m:
        raise ValueError(f"--pq-m {m} must divide the embedding dimension {dim}")
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{m}x{cfg.pq_bits}", faiss.METRIC_INNER_PRODUCT)
    return index, {"nlist": nlist, "pq_m": m, "pq_bits": cfg.pq_bits, "nprobe": cfg.nprobe, "rerank": cfg.rerank}


def train_sample(shards: list[np.ndarray], size: int, seed: int = 0) -> np.ndarray:
    """Up to `size` rows drawn uniformly from all shards, for IVF/PQ training."""
    counts = np.array([len(s) for s in shards])
    total = int(counts.sum())
    rows = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = []
    for i, shard in enumerate(shards):
        sel = rows[(rows >= starts[i]) & (rows < starts[i + 1])] - starts[i]
        if len(sel):
            parts.append(np.asarray(shard[sel], dtype=np.float32))
    return np.concatenate(parts)


def build_faiss(shards: list[np.ndarray], dim: int, cfg: IndexConfig) -> tuple[faiss.Index, dict[str, Any]]:
    n = sum(len(s) for s in shards)
    index, params = make_faiss_index(dim, n, cfg)
    if not index.is_trained:
        # faiss warns below 39 training points per centroid; 64 keeps k-means minutes, not hours, at 1M+.
        sample = train_sample(shards, max(64 * params["nlist"], 2**cfg.pq_bits * 64))
        if len(sample) < params["nlist"]:
            raise ValueError(f"--nlist {params['nlist']} needs at least that many passages; the corpus has {n}")
        index.train(sample)
    for shard in tqdm(shards, desc="add to index", unit="shard"):
        index.add(np.ascontiguousarray(shard, dtype=np.float32))
    return index, params


def build_index(cfg: IndexConfig) -> Path:
    """The `radit index` stage: passages -> embeddings shards -> FAISS index (or BM25) + manifest."""
    out = Path(cfg.output)
    passages = Path(cfg.passages)
    if not passages.is_file():
        raise FileNotFoundError(f"--passages {passages} does not exist; write it with `radit corpus`")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    save_yaml(cfg, out / "config.yaml")
    t0 = time.time()
    log.info("scanning %s", passages)
    offsets = PassageStore.scan_offsets(passages)
    if len(offsets) == 0:
        raise ValueError(f"--passages {passages} holds no passages")
    with atomic_open(out / "passage_offsets.npy", "wb") as f:
        np.save(f, offsets)
    store = PassageStore(passages, offsets)
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "radit_version": radit.__version__,
        "backend": cfg.backend,
        "count": len(store),
        "passages": {
            "path": str(passages.resolve()),
            "fingerprint": passages_fingerprint(passages),
            "sha256": file_sha256(passages),
        },
    }
    if cfg.backend == "bm25":
        from radit.retriever.search import build_bm25

        with atomic_path(out / "bm25") as tmp:
            build_bm25(store, tmp)
        manifest["index_type"] = "bm25"
    else:
        spec = resolve_encoder_spec(cfg.encoder)
        device = resolve_device(cfg.device)
        dual = DualEncoder.load(spec, device)
        doc_fp = dual.doc.fingerprint()
        state = {
            "passages_sha256": manifest["passages"]["sha256"],
            "doc_encoder": spec.doc_model,
            "doc_encoder_fingerprint": doc_fp,
            "pooling": spec.pooling,
            "normalize": spec.normalize,
            "doc_prefix": spec.doc_prefix,
            "doc_max_length": spec.doc_max_length,
            "shard_size": cfg.shard_size,
            "embedding_dtype": cfg.embedding_dtype,
        }
        _prepare_dir(out, state, cfg.overwrite)
        n_shards = embed_passages(store, dual.doc, out / "embeddings", cfg)
        shards = list(iter_shards(out / "embeddings", n_shards))
        index, params = build_faiss(shards, dual.doc.dim, cfg)
        with atomic_path(out / "faiss.index") as tmp:
            faiss.write_index(index, str(tmp))
        manifest.update(
            index_type=cfg.index_type,
            index_params=params,
            dim=dual.doc.dim,
            n_shards=n_shards,
            shard_size=cfg.shard_size,
            encoder={**dataclasses.asdict(spec), "doc_encoder_fingerprint": doc_fp},
        )
    manifest["build_seconds"] = round(time.time() - t0, 2)
    atomic_write_json(out / MANIFEST, manifest)
    log.info("index of %d passages written to %s in %.1fs", len(store), out, manifest["build_seconds"])
    return out


def read_manifest(index_dir: str | Path, passages: str | Path | None = None) -> tuple[dict[str, Any], Path]:
    """The manifest of a complete index and the passages file it belongs to (checked)."""
    index_dir = Path(index_dir)
    if not index_dir.is_dir():
        raise FileNotFoundError(f"index {index_dir} does not exist; build it with `radit index --output {index_dir}`")
    if not (index_dir / MANIFEST).is_file():
        raise IndexMismatchError(
            f"{index_dir} is not a complete index (no {MANIFEST}: the build did not finish); "
            f"rerun `radit index --output {index_dir}` to resume it"
        )
    manifest = json.loads((index_dir / MANIFEST).read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(f"{index_dir}: index format {manifest.get('format_version')} is not {FORMAT_VERSION}; rebuild it")
    path = Path(passages or manifest["passages"]["path"])
    if not path.is_file():
        raise FileNotFoundError(f"{index_dir}: its passages file {path} is missing; pass --passages to point at it")
    if passages_fingerprint(path) != manifest["passages"]["fingerprint"]:
        raise IndexMismatchError(
            f"{index_dir}: passages file {path} is not the one this index was built from "
            "(size or content differs); rebuild the index or point at the original passages"
        )
    return manifest, path


def encoder_spec_of(manifest: dict[str, Any]) -> EncoderSpec:
    fields = {f.name for f in dataclasses.fields(EncoderSpec)}
    return EncoderSpec(**{k: v for k, v in manifest["encoder"].items() if k in fields})
