"""A Qdrant collection as the vector store of a dense index, for corpora that live in a vector database.

    radit index --backend qdrant --passages runs/corpus/passages.jsonl --output runs/index-qdrant \\
        [--qdrant.url http://localhost:6333] [--qdrant.collection wiki]
    radit search --index runs/index-qdrant "who founded the Ming dynasty?" [--query-encoder runs/r-ft/model]

The build embeds the passages exactly as `--backend dense` does (the same resumable shards under
embeddings/), then upserts each shard as points: id = row (the passage's line in the passages file, the
row FAISS would give it), vector, payload {"passage_id": ...}. The distance is DOT, the inner product of
Eq. 1, so scores are a flat FAISS index's (a normalising encoder makes them cosines by itself). After
each shard, qdrant_upload.json records it, so a killed upload resumes; that file is also how a rerun
knows the collection is this directory's: one it did not fill is replaced only with --overwrite.

Without --qdrant.url the collection lives in Qdrant's local mode under <index>/qdrant: no server,
exact search in numpy, one process at a time (Qdrant locks the folder), meant for small corpora and
tests. With a URL it is a server or cluster (API key from QDRANT_API_KEY), which searches its HNSW
graph: approximate, like `--index-type hnsw`.

At search time `DenseSearcher` (radit.retriever.search) keeps everything of a dense index (query tower,
its `--query-encoder` swap and checks, passages, p_R temperature) and searches a `QdrantIndex` in place
of the FAISS index: `search(q, k)` and `vectors(rows)`, the `VectorStore` interface of
radit.retriever.hits. Weaviate or Milvus would be one more module like this one: an `upload` and such a
class, named in `VECTOR_DATABASES` (search.py) and `build_index` (index.py).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from radit.artifacts import atomic_write_json
from radit.config import QdrantConfig
from radit.distributed import progress_bar
from radit.retriever.manifest import IndexMismatchError, rebuild_hint
from radit.retriever.shards import ShardedVectors, load_shard_ids, vector_rows

log = logging.getLogger(__name__)

QDRANT_DIR = "qdrant"
"""Local-mode storage inside the index directory (when no --qdrant.url is given)."""
UPLOAD_FILE = "qdrant_upload.json"
"""Which collection this directory fills and which embedding shards are in it."""
RETRIEVE_BATCH = 1024
"""Points per `retrieve` request of `QdrantIndex.vectors`."""


class QdrantMissingError(ModuleNotFoundError, ValueError):
    """qdrant-client is not installed (a ValueError too, so the CLI prints it as one line)."""


class QdrantError(ValueError):
    """Qdrant could not be reached, or refused a request; one line naming the collection and where it is."""


def _client_module() -> Any:
    try:
        import qdrant_client
    except ImportError:
        raise QdrantMissingError("the qdrant backend needs qdrant-client: pip install radit[qdrant]") from None
    return qdrant_client


def qdrant_record(cfg: QdrantConfig) -> dict[str, str]:
    """The manifest's `qdrant` entry: the server URL, or the local-mode folder relative to the index
    directory (so the directory can move), and the collection."""
    where = {"url": cfg.url} if cfg.url else {"path": QDRANT_DIR}
    return {**where, "collection": cfg.collection, "distance": "dot"}


def describe(where: dict[str, str], index_dir: Path) -> str:
    place = where["url"] if "url" in where else f"{index_dir / where['path']} (local mode)"
    return f"Qdrant collection {where['collection']!r} at {place}"


_LOCAL_CLIENTS: dict[str, Any] = {}
# Qdrant's local mode locks its folder against every other client, even one in the same process; one
# shared client per folder lets a build and several searchers of one index live in one process.


def connect(where: dict[str, str], index_dir: Path) -> Any:
    """A QdrantClient for a manifest's `qdrant` entry (local ones shared within the process)."""
    qdrant_client = _client_module()
    if "url" in where:
        return qdrant_client.QdrantClient(url=where["url"], api_key=os.environ.get("QDRANT_API_KEY") or None)
    path = str((index_dir / where["path"]).resolve())
    if path not in _LOCAL_CLIENTS:
        try:
            _LOCAL_CLIENTS[path] = qdrant_client.QdrantClient(path=path)
        except RuntimeError as e:  # the folder's lock is held by another process
            raise QdrantError(f"{path}: {e}; local mode serves one process at a time, use a server (--qdrant.url) "
                              "to share it") from None
    return _LOCAL_CLIENTS[path]


def release_local(path: Path) -> None:
    """Close this process's client of a local-mode folder (before the folder is deleted)."""
    client = _LOCAL_CLIENTS.pop(str(path.resolve()), None)
    if client is not None:
        client.close()


@atexit.register
def _close_local_clients() -> None:
    # Closed here, not by the clients' __del__ at interpreter teardown, which fails once imports do.
    while _LOCAL_CLIENTS:
        _LOCAL_CLIENTS.popitem()[1].close()


@contextlib.contextmanager
def _requests(where: dict[str, str], index_dir: Path):
    """Turn the client's transport and HTTP errors into one-line QdrantErrors."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    try:
        yield
    except (ResponseHandlingException, UnexpectedResponse) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise QdrantError(f"{describe(where, index_dir)}: request failed ({reason}); check that the server runs "
                          "and the URL and QDRANT_API_KEY are right") from None


def _uploaded_shards(out: Path, where: dict[str, str]) -> set[int] | None:
    """The shards already in `where`'s collection by this directory's record; None: the collection is
    not this directory's (no record, or one of another collection)."""
    try:
        record = json.loads((out / UPLOAD_FILE).read_text(encoding="utf-8"))
        return set(record["shards"]) if record["qdrant"] == where else None
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        log.warning("%s: unreadable (%s); upserting every shard again", out / UPLOAD_FILE, e)
        return set()


def check_collection(out: Path, where: dict[str, str], overwrite: bool) -> None:
    """Raise unless a build in `out` may fill `where`'s collection: it does not exist, this directory
    filled it (or part of it) before, or `overwrite`. Writes nothing, creates no local folder."""
    _client_module()  # a missing qdrant-client fails here, before the passages are embedded
    if overwrite or _uploaded_shards(out, where) is not None:
        return
    if "path" in where and not (out / where["path"]).is_dir():
        return
    client = connect(where, out)
    with _requests(where, out):
        exists = client.collection_exists(where["collection"])
    if exists:
        raise IndexMismatchError(f"{describe(where, out)} exists and was not filled by {out}; nothing was changed: "
                                 "pass --overwrite to replace it, or choose another --qdrant.collection")


def _overwrite_hint(index_dir: Path) -> str:
    return f"rebuild it with `radit index --config {index_dir / 'config.yaml'} --overwrite`"


def _params_problem(client: Any, name: str, dim: int) -> str | None:
    """What keeps collection `name` from holding this index's vectors (None: nothing)."""
    params = client.get_collection(name).config.params.vectors
    size, distance = getattr(params, "size", None), str(getattr(params, "distance", None))
    if size != dim or "dot" not in distance.lower():
        return f"holds vectors of size {size} and distance {distance}, this index needs {dim}-d ones and dot products"
    return None


def upload(out: Path, where: dict[str, str], emb_dir: Path, count: int, shard_size: int, dim: int,
           batch_size: int = 256) -> None:
    """Upsert the embedding shards not yet in `where`'s collection (created when missing, replaced when
    it is not this directory's: `check_collection` has allowed that), recording each finished shard.

    Points: id = row, vector = the stored document vector, payload {"passage_id": ...}.
    """
    models = _client_module().models
    name = where["collection"]
    client = connect(where, out)
    done = _uploaded_shards(out, where)
    with _requests(where, out):
        exists = client.collection_exists(name)
        if exists and done is None:
            log.warning("--overwrite: replacing %s", describe(where, out))
            client.delete_collection(name)
            exists = False
        elif exists and (problem := _params_problem(client, name, dim)):  # this directory's, changed since
            log.warning("%s %s; filling it again", describe(where, out), problem)
            client.delete_collection(name)
            exists = False
        done = done if exists else set()
        # The record goes first: a build killed right after creating the collection still owns it.
        atomic_write_json(out / UPLOAD_FILE, {"qdrant": where, "shards": sorted(done)})
        if not exists:
            client.create_collection(name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.DOT))
        shards = ShardedVectors(emb_dir, count, shard_size, dim).shards
        if done:
            log.info("resuming: %d of %d shards already in %s", len(done), len(shards), describe(where, out))
        bar = progress_bar(total=count, desc="upsert to qdrant", unit="passage", initial=sum(len(shards[i]) for i in done))
        for i, shard in enumerate(shards):
            if i in done:
                continue
            ids = load_shard_ids(emb_dir, i, len(shard))
            for start in range(0, len(shard), batch_size):
                block = np.asarray(shard[start : start + batch_size], dtype=np.float32)  # [b, dim]
                first = i * shard_size + start
                points = models.Batch(ids=list(range(first, first + len(block))), vectors=block.tolist(),
                                      payloads=[{"passage_id": x} for x in ids[start : start + len(block)]])
                client.upsert(name, points=points, wait=True)
                bar.update(len(block))
            done.add(i)
            atomic_write_json(out / UPLOAD_FILE, {"qdrant": where, "shards": sorted(done)})
        bar.close()
        held = client.count(name, exact=True).count
    if held != count:
        raise IndexMismatchError(f"{describe(where, out)} holds {held} points after the upload, expected {count} "
                                 f"(another writer?); {_overwrite_hint(out)}")


class QdrantIndex:
    """The document vectors of a qdrant index, searched in Qdrant; `DenseSearcher` searches it in place
    of a FAISS index (the `VectorStore` interface: `search`, `vectors`)."""

    def __init__(self, index_dir: Path, manifest: dict[str, Any]):
        self.where: dict[str, str] = manifest["qdrant"]
        self.index_dir = Path(index_dir)
        self.collection = self.where["collection"]
        self.count, self.dim = int(manifest["count"]), int(manifest["dim"])
        if "path" in self.where and not (self.index_dir / self.where["path"]).is_dir():
            raise FileNotFoundError(f"{self.index_dir / self.where['path']}: the local Qdrant storage is missing; "
                                    f"{rebuild_hint(self.index_dir)}")
        self.client = connect(self.where, self.index_dir)
        self.models = _client_module().models
        with self._requests():
            if not self.client.collection_exists(self.collection):
                raise IndexMismatchError(f"{describe(self.where, self.index_dir)} does not exist; {rebuild_hint(self.index_dir)}")
            problem = _params_problem(self.client, self.collection, self.dim)
            if problem:
                raise IndexMismatchError(f"{describe(self.where, self.index_dir)} {problem}; {_overwrite_hint(self.index_dir)}")
            held = self.client.count(self.collection, exact=True).count
        if held != self.count:
            raise IndexMismatchError(f"{describe(self.where, self.index_dir)} holds {held} points, the manifest says "
                                     f"{self.count}; {rebuild_hint(self.index_dir)}")

    def _requests(self):
        return _requests(self.where, self.index_dir)

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """q [Q, dim] float32 -> (scores [Q, k] float32, rows [Q, k] int64), best first; -inf / -1 where
        Qdrant returned fewer than k (what FAISS's `Index.search` returns)."""
        requests = [self.models.QueryRequest(query=v.tolist(), limit=k, with_payload=False) for v in q]
        with self._requests():
            responses = self.client.query_batch_points(self.collection, requests=requests)
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        rows = np.full((len(q), k), -1, dtype=np.int64)
        for i, response in enumerate(responses):
            for j, point in enumerate(response.points[:k]):
                rows[i, j], scores[i, j] = point.id, point.score
        return scores, rows

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """rows [...] int -> float32 [..., dim], fetched from Qdrant; rows < 0 (no hit) give zero vectors."""
        rows, flat, out, valid = vector_rows(rows, self.count, self.dim)
        wanted = np.unique(flat[valid])  # sorted; retrieve once per distinct row
        found: dict[int, Any] = {}
        with self._requests():
            for start in range(0, len(wanted), RETRIEVE_BATCH):
                ids = wanted[start : start + RETRIEVE_BATCH].tolist()
                for point in self.client.retrieve(self.collection, ids=ids, with_vectors=True, with_payload=False):
                    found[int(point.id)] = point.vector
        missing = [int(r) for r in wanted if int(r) not in found]
        if missing:
            raise IndexMismatchError(f"{describe(self.where, self.index_dir)} has no point for rows {missing[:5]}; "
                                     f"{rebuild_hint(self.index_dir)}")
        if len(wanted):
            table = np.array([found[int(r)] for r in wanted], dtype=np.float32)  # [distinct, dim]
            out[valid] = table[np.searchsorted(wanted, flat[valid])]
        return out.reshape(*rows.shape, self.dim)
