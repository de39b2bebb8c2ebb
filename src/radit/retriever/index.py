"""Embed passages into memory-mapped shards and build a FAISS (or BM25, or Qdrant) index with a manifest.

    radit index --passages runs/corpus/passages.jsonl --output runs/index
    radit index --backend qdrant --passages runs/corpus/passages.jsonl --output runs/index-qdrant [--qdrant.url URL]
    torchrun --nproc-per-node 8 -m radit.cli index --passages runs/corpus/passages.jsonl --output runs/index

Layout of an index directory:
    .radit-output         marks the directory as radit's (see radit.artifacts.OUTPUT_MARKER)
    manifest.json         written last; an index without it does not load (a killed run never
                          leaves an index that looks complete). See radit.retriever.manifest.
    config.yaml           the resolved config of the run: `radit index --config` on it resumes or repairs
    embeddings/           the document vectors in shards; a rerun skips finished ones (radit.retriever.shards)
    passage_offsets.npy   byte offset of each passage line, for random access at search time
    faiss.index           (dense) or bm25/ (bm25) or qdrant_upload.json and, in local mode, qdrant/
                          (qdrant: the vectors in a Qdrant collection, radit.retriever.qdrant)

A hybrid index (`--backend hybrid`) holds only the marker, config.yaml and a manifest naming the dense
and BM25 indexes it fuses (radit.retriever.hybrid).

Nothing in an existing --output is touched before every check has passed: the passages are read, the
encoder is loaded, and the directory's previous build is compared with this one. Another build there
(other passages, encoder, shard layout, dtype or backend) is replaced only with --overwrite, and a
non-empty directory that is not a radit index is never written into.

Several processes (dense and qdrant backends). Started by torchrun or `accelerate launch -m radit.cli
index ...`, one process per GPU (`--device auto` gives each its own), every process runs the checks;
then rank 0 alone prepares --output, every process embeds the shards dealt to it, and rank 0 alone
builds the FAISS index (or fills the Qdrant collection) and writes the manifest while the others
wait, so every process returns once the index is complete. A shard is the same batches through the
same encoder whichever process embeds it, so N processes build the one-process index (bit for bit
on CPU, tests/test_sharded_index.py); a rerun, on any number of processes, embeds only the shards
still missing. BM25 and hybrid indexes run no encoder and refuse a launcher: run them as one process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

import radit
from radit import distributed
from radit.artifacts import OUTPUT_MARKER, atomic_open, atomic_path, atomic_write_json, is_radit_output_dir, mark_output_dir
from radit.config import IndexConfig
from radit.config_io import save_yaml
from radit.corpus import PassageStore
from radit.retriever.bm25 import BM25_DIR, build_bm25
from radit.retriever.encoder import DualEncoder, Encoder, passage_input, resolve_encoder_spec
from radit.retriever.hybrid import hybrid_manifest, hybrid_state
from radit.retriever.manifest import FAISS_FILE, FORMAT_VERSION, MANIFEST, OFFSETS_FILE, IndexMismatchError, passages_record
from radit.retriever.qdrant import QDRANT_DIR, UPLOAD_FILE, check_collection, qdrant_record, release_local, upload
from radit.retriever.shards import EMBEDDINGS_DIR, STATE_FILE, ShardedVectors, shard_rows, unfinished_shards, write_shard
from radit.runtime import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

SINGLE_PROCESS_BACKENDS = ("bm25", "hybrid")
"""Backends with nothing to share between processes: no encoder runs (BM25 is one CPU pass)."""


def _embed_shard(store: PassageStore, encoder: Encoder, emb_dir: Path, i: int, cfg: IndexConfig, dtype: str,
                 progress: Callable[[int], object]) -> None:
    """Embed the passages of shard `i` in `dtype` and write the shard, passing `progress` the
    number of passages embedded after each block."""
    rows = range(i * cfg.shard_size, min(len(store), (i + 1) * cfg.shard_size))
    passages = store.get_many(rows)
    texts = [passage_input(p) for p in passages]
    emb = np.empty((len(texts), encoder.dim), dtype=np.float32)  # [rows, dim]
    for start in range(0, len(texts), cfg.batch_size * 16):
        block = texts[start : start + cfg.batch_size * 16]
        emb[start : start + len(block)] = encoder.encode(block, batch_size=cfg.batch_size, dtype=dtype)
        progress(len(block))
    write_shard(emb_dir, i, emb, [p["id"] for p in passages], cfg.embedding_dtype)


def embed_passages(store: PassageStore, encoder: Encoder, emb_dir: Path, cfg: IndexConfig, dtype: str) -> int:
    """Embed every passage into shards of `cfg.shard_size` rows, computing in `dtype` (concrete, not
    `auto`); returns the number of shards. Finished, readable shards of an earlier run are kept.

    Under a launcher every process calls this: the shards left are dealt round robin, one per process
    per turn, and each turn ends when every process has written its shard. Round robin rather than
    one contiguous range per process: the cost of a shard follows the length of its passages, which
    runs in stretches through a corpus (documents are chunked in order, sources concatenated), so
    interleaving keeps the processes finishing together. Turns let rank 0's bar count every
    process's passages (its own as it embeds them, the others' at the end of each turn) and stop
    every process at the turn where one failed; a turn waits for its slowest shard, a small cost
    with shards of thousands of passages. Whatever the number of processes, the shards are the same
    files: only which process writes each one changes.
    """
    n = len(store)
    n_shards = max(1, math.ceil(n / cfg.shard_size))
    # Rank 0's list, dealt by every process: a shard another process finishes while one is still
    # looking (or a file system slow to show it on another machine) must not change anyone's share.
    # (Listing cannot fail: an unreadable shard is an unfinished one.)
    todo = unfinished_shards(emb_dir, n, cfg.shard_size, encoder.dim) if distributed.is_main() else []
    todo = distributed.broadcast_object(todo)
    if len(todo) < n_shards:
        log.info("resuming: %d of %d shards already embedded", n_shards - len(todo), n_shards)
    world, rank = distributed.world_size(), distributed.rank()
    if world > 1:
        log.info("%d processes embed %d shards, round robin", world, len(todo))
    bar = distributed.progress_bar(total=n, desc="embed passages", unit="passage",
                                   initial=n - sum(shard_rows(i, n, cfg.shard_size) for i in todo))
    for start in range(0, len(todo), world):
        turn = todo[start : start + world]  # turn[r]: process r's shard
        with distributed.all_or_none(f"embedding shards {turn}"):
            if rank < len(turn):
                _embed_shard(store, encoder, emb_dir, turn[rank], cfg, dtype, bar.update)
        bar.update(sum(shard_rows(i, n, cfg.shard_size) for i in turn[1:]))  # counted on rank 0 alone
    bar.close()
    return n_shards


def make_faiss_index(dim: int, n: int, cfg: IndexConfig) -> tuple[faiss.Index, dict[str, Any]]:
    """An empty inner-product index of `cfg.index_type` and the parameters it was made with."""
    if cfg.index_type == "flat":
        return faiss.IndexFlatIP(dim), {}
    if cfg.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = cfg.ef_search
        return index, {"hnsw_m": cfg.hnsw_m, "ef_search": cfg.ef_search, "rerank": cfg.rerank}
    nlist = cfg.nlist or max(1, int(4 * math.sqrt(n)))
    if nlist > n:  # k-means needs a training point per list
        raise ValueError(f"--nlist {nlist} needs at least that many passages; the corpus has {n}")
    m = cfg.pq_m or dim // 8
    if dim % m:
        raise ValueError(f"--pq-m {m} must divide the embedding dimension {dim}")
    if cfg.opq and n < 256:  # OPQ trains an 8-bit product quantizer of its own: 256 centroids per sub-vector
        raise ValueError(f"--opq needs at least 256 passages to train its rotation; the corpus has {n}")
    # e.g. OPQ48,IVF8192_HNSW32,PQ48x8: rotation, coarse quantizer (flat or an HNSW graph over the
    # centroids), then product-quantised residuals.
    factory = ("OPQ{m}," if cfg.opq else "") + ("IVF{nlist}_HNSW32" if cfg.ivf_quantizer == "hnsw" else "IVF{nlist}")
    index = faiss.index_factory(dim, f"{factory},PQ{{m}}x{{bits}}".format(m=m, nlist=nlist, bits=cfg.pq_bits), faiss.METRIC_INNER_PRODUCT)
    return index, {"nlist": nlist, "pq_m": m, "pq_bits": cfg.pq_bits, "nprobe": cfg.nprobe, "rerank": cfg.rerank,
                   "ivf_quantizer": cfg.ivf_quantizer, "opq": cfg.opq, "mmap": cfg.mmap}


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


def build_faiss(shards: list[np.ndarray], dim: int, cfg: IndexConfig, add_batch: int = 65536,
                timings: dict[str, float] | None = None) -> tuple[faiss.Index, dict[str, Any]]:
    """The FAISS index of `cfg` over the rows of `shards` (memory-mapped float32/float16 arrays), in order.

    Approximate indexes are trained on a uniform sample of the rows; rows are then added `add_batch` at
    a time, so memory holds the index and one float32 batch, never a whole shard or the whole corpus.
    `timings`, if given, receives train_seconds and add_seconds.
    """
    n = sum(len(s) for s in shards)
    index, params = make_faiss_index(dim, n, cfg)
    t = time.perf_counter()
    if not index.is_trained:
        # faiss warns below 39 training points per centroid; 64 keeps k-means minutes, not hours, at 1M+.
        index.train(train_sample(shards, max(64 * params["nlist"], 2**cfg.pq_bits * 64)))
    t_train = time.perf_counter()
    bar = distributed.progress_bar(total=n, desc="add to index", unit="vector", unit_scale=True)
    for shard in shards:
        for start in range(0, len(shard), add_batch):
            block = np.ascontiguousarray(shard[start : start + add_batch], dtype=np.float32)
            index.add(block)
            bar.update(len(block))
    bar.close()
    if timings is not None:
        timings.update(train_seconds=t_train - t, add_seconds=time.perf_counter() - t_train)
    return index, params


def _build_state(out: Path) -> dict[str, Any] | None:
    """What the build in `out` was made from (None: nothing to compare, e.g. a build killed early)."""
    manifest_path, state_path = out / MANIFEST, out / EMBEDDINGS_DIR / STATE_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest["backend"] == "bm25":
            return {"backend": "bm25", "passages_sha256": manifest["passages"]["sha256"]}
        if manifest["backend"] == "hybrid":
            return hybrid_state(manifest)
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable (%s); comparing with the embeddings state only", manifest_path, e)
    try:
        # States written before `backend` and `dtype` were recorded are dense fp32 builds.
        return {"backend": "dense", "dtype": "float32", **json.loads(state_path.read_text(encoding="utf-8"))}
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as e:
        log.warning("%s: unreadable (%s); building over it", state_path, e)
        return None


def _describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            short = all(len(str(v)) <= 24 for v in (old.get(key), new.get(key)))
            parts.append(f"{key} {old.get(key)} -> {new.get(key)}" if short else key)
    return ", ".join(parts)


def check_output_dir(out: Path, state: dict[str, Any], overwrite: bool) -> list[Path]:
    """Raise unless `out` may receive a build of `state`; touches nothing.

    `out` may be absent, empty, or an index directory radit wrote (its marker, or from before the
    marker existed, its manifest or embeddings state). Another build there needs `overwrite`.

    Returns:
        The files and directories of a previous build that this one replaces (to delete, once every
        other check has passed too).
    """
    if not out.exists():
        if out.is_symlink():
            raise FileNotFoundError(f"--output {out} is a broken symlink; remove it or choose another --output")
        return []
    if not out.is_dir():
        raise NotADirectoryError(f"--output {out} is a file; an index is a directory: choose another --output")
    if not any(out.iterdir()):
        return []
    if not (is_radit_output_dir(out) or (out / MANIFEST).is_file() or (out / EMBEDDINGS_DIR / STATE_FILE).is_file()):
        raise ValueError(
            f"--output {out} is a non-empty directory that is not an index radit wrote (no {OUTPUT_MARKER} or "
            f"{MANIFEST}); nothing was written to it: choose another --output or empty it"
        )
    old = _build_state(out)
    if old is not None and old != state:
        what = "embeddings" if old["backend"] == "dense" else f"a {old['backend']} index"
        if not overwrite:
            raise IndexMismatchError(
                f"{out} holds {what} of another build (differs in: {_describe_change(old, state)}); nothing was "
                "changed: pass --overwrite to replace it, or choose another --output"
            )
        log.warning("--overwrite: replacing %s of another build in %s (%s)", what, out, _describe_change(old, state))
        return [out / EMBEDDINGS_DIR, out / FAISS_FILE, out / BM25_DIR, out / QDRANT_DIR, out / UPLOAD_FILE]
    return [out / BM25_DIR] if state["backend"] == "bm25" else []  # bm25/ is rebuilt whole


def _clear_output(out: Path, stale: list[Path]) -> None:
    """Make `out` a marked index directory without a manifest (it is written last) and delete `stale`."""
    out.mkdir(parents=True, exist_ok=True)
    mark_output_dir(out, "index")
    (out / MANIFEST).unlink(missing_ok=True)
    for path in stale:
        if path.name == QDRANT_DIR:
            release_local(path)  # this process's client of the local-mode folder
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def build_hybrid(cfg: IndexConfig) -> Path:
    """`radit index --backend hybrid`: a manifest naming a dense and a BM25 index of the same passages,
    written after both are checked (nothing is embedded or indexed)."""
    out = Path(cfg.output)
    manifest = hybrid_manifest(cfg.hybrid, out)
    stale = check_output_dir(out, hybrid_state(manifest), cfg.overwrite)
    # A dense or BM25 build replaced with --overwrite leaves nothing behind.
    _clear_output(out, [*stale, out / EMBEDDINGS_DIR, out / FAISS_FILE, out / BM25_DIR, out / QDRANT_DIR, out / UPLOAD_FILE,
                        out / OFFSETS_FILE])
    sides = dataclasses.replace(cfg.hybrid, dense_index=manifest["dense_index"]["absolute"], bm25_index=manifest["bm25_index"]["absolute"])
    save_yaml(dataclasses.replace(cfg, passages=manifest["passages"]["path"], output=str(out.resolve()), hybrid=sides), out / "config.yaml")
    atomic_write_json(out / MANIFEST, manifest)
    log.info("hybrid index (%s fusion of %s and %s) written to %s", cfg.hybrid.fusion, cfg.hybrid.dense_index, cfg.hybrid.bm25_index, out)
    return out


def build_index(cfg: IndexConfig) -> Path:
    """The `radit index` stage: passages -> embeddings shards -> FAISS index (or BM25, or a Qdrant
    collection) + manifest; or the manifest of a hybrid index over two built ones.

    Everything that can fail on bad input (the passages, the encoder, the output directory, the FAISS
    parameters) is checked before the first write to `cfg.output`, in every process of a launcher;
    see the module docstring for who writes what then.

    Returns:
        `cfg.output`, in every process once the manifest is written.
    """
    if cfg.backend in SINGLE_PROCESS_BACKENDS and distributed.world_size() > 1:
        raise ValueError(f"--backend {cfg.backend} runs on one process (it uses no GPU): start `radit index` without "
                         "torchrun / accelerate launch")
    if cfg.backend == "hybrid":
        return build_hybrid(cfg)
    distributed.init(cfg.device)  # under a launcher: join the others; else nothing
    out = Path(cfg.output)
    passages = Path(cfg.passages)
    t0 = time.time()
    with distributed.all_or_none("checking the inputs"):
        if not passages.is_file():
            raise FileNotFoundError(f"--passages {passages} does not exist or is not a file; write it with `radit corpus`")
        log.info("scanning %s", passages)
        offsets = PassageStore.scan_offsets(passages)  # int64 [count]
        if len(offsets) == 0:
            raise ValueError(f"--passages {passages} holds no passages")
        store = PassageStore(passages, offsets)
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "radit_version": radit.__version__,
            "backend": cfg.backend,
            "count": len(store),
            "passages": passages_record(passages),
        }
        if cfg.backend == "bm25":
            state: dict[str, Any] = {"backend": "bm25", "passages_sha256": manifest["passages"]["sha256"]}
        else:
            spec = resolve_encoder_spec(cfg.encoder)
            device = resolve_device(cfg.device)
            cfg = dataclasses.replace(cfg, dtype=resolve_dtype(cfg.dtype, device))  # once, recorded below
            dual = DualEncoder.load(spec, device)
            doc_fp = dual.doc.fingerprint()
            state = {
                "backend": cfg.backend,
                "passages_sha256": manifest["passages"]["sha256"],
                "doc_encoder": spec.doc_model,
                "doc_encoder_fingerprint": doc_fp,
                "pooling": spec.pooling,
                "normalize": spec.normalize,
                "doc_prefix": spec.doc_prefix,
                "doc_max_length": spec.doc_max_length,
                "shard_size": cfg.shard_size,
                "embedding_dtype": cfg.embedding_dtype,
                "dtype": cfg.dtype,
            }
            if cfg.backend == "dense":
                make_faiss_index(dual.doc.dim, len(store), cfg)  # bad --nlist / --pq-m fail now, not after embedding
        stale = check_output_dir(out, state, cfg.overwrite)
        if cfg.backend == "qdrant":
            where = qdrant_record(cfg.qdrant)
            if distributed.is_main():  # rank 0 alone: local mode locks its folder against a second process
                check_collection(out, where, cfg.overwrite)

    # Every check passed in every process: from here on `out` is changed, by rank 0 alone until the shards.
    emb_dir = out / EMBEDDINGS_DIR
    with distributed.all_or_none("preparing --output"):
        if distributed.is_main():
            _clear_output(out, stale)
            # Absolute paths: `radit index --config DIR/config.yaml` (the repair command errors suggest) works from anywhere.
            resolved = dataclasses.replace(cfg, passages=str(passages.resolve()), output=str(out.resolve()))
            save_yaml(resolved, out / "config.yaml")
            with atomic_open(out / OFFSETS_FILE, "wb") as f:
                np.save(f, offsets)
            if cfg.backend != "bm25":
                emb_dir.mkdir(exist_ok=True)
                atomic_write_json(emb_dir / STATE_FILE, state)
    if cfg.backend != "bm25":
        n_shards = embed_passages(store, dual.doc, emb_dir, cfg, cfg.dtype)  # every process its share
        manifest.update(dim=dual.doc.dim, n_shards=n_shards, shard_size=cfg.shard_size, embedding_dtype=cfg.embedding_dtype,
                        dtype=cfg.dtype, encoder={**dataclasses.asdict(spec), "doc_encoder_fingerprint": doc_fp})
    with distributed.all_or_none("building the index"):  # the other processes wait here for rank 0
        if distributed.is_main():
            if cfg.backend == "bm25":
                with atomic_path(out / BM25_DIR, kind="dir") as tmp:
                    build_bm25(store, tmp)
                manifest["index_type"] = "bm25"
            elif cfg.backend == "qdrant":
                upload(out, where, emb_dir, len(store), cfg.shard_size, dual.doc.dim, cfg.qdrant.batch_size)
                manifest["qdrant"] = where
            else:
                shards = ShardedVectors(emb_dir, len(store), cfg.shard_size, dual.doc.dim).shards
                index, params = build_faiss(shards, dual.doc.dim, cfg)
                with atomic_path(out / FAISS_FILE) as tmp:
                    faiss.write_index(index, str(tmp))
                manifest.update(index_type=cfg.index_type, index_params=params)
            manifest["build_seconds"] = round(time.time() - t0, 2)
            atomic_write_json(out / MANIFEST, manifest)
            log.info("index of %d passages written to %s in %.1fs", len(store), out, manifest["build_seconds"])
    return out
