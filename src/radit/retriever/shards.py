"""The embedding shards of a dense index: their file names, writing one, and reading rows back.

Layout under `<index>/embeddings/`:
    state.json                which passages/encoder/shard size/dtype the shards belong to
    shard_00000.npy           the document vectors of rows [0, shard_size), float32 or float16
    shard_00000.ids.json      their passage ids; written after the vectors, so it marks a finished shard

A shard's files are the same whichever process wrote them: under torchrun each process embeds the
shards dealt to it into this one directory (radit.retriever.index). This module is the only one
that knows the file names. The shards stay on disk after the build:
exact re-ranking and R-ft (p_R against the frozen document tower) read rows from them by memory map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from radit.artifacts import atomic_open
from radit.retriever.manifest import rebuild_hint

EMBEDDINGS_DIR = "embeddings"
STATE_FILE = "state.json"


def shard_paths(emb_dir: Path, i: int) -> tuple[Path, Path]:
    """(vectors .npy, ids .json) of shard `i`."""
    return emb_dir / f"shard_{i:05d}.npy", emb_dir / f"shard_{i:05d}.ids.json"


def shard_rows(i: int, count: int, shard_size: int) -> int:
    """How many rows shard `i` of a `count`-row index holds (the last one may be short)."""
    return min(shard_size, count - i * shard_size)


def write_shard(emb_dir: Path, i: int, vectors: np.ndarray, ids: list[str], dtype: str) -> None:
    """vectors [rows, dim] float32 -> shard `i` stored as `dtype`, then its ids (the completion mark)."""
    npy, ids_file = shard_paths(emb_dir, i)
    with atomic_open(npy, "wb") as f:
        np.save(f, vectors.astype(dtype))
    with atomic_open(ids_file) as f:
        json.dump(ids, f)


def _hint(emb_dir: Path) -> str:
    return f"{rebuild_hint(emb_dir.parent)} (finished shards are reused, this one is embedded again)"


def load_shard(emb_dir: Path, i: int, rows: int, dim: int) -> np.ndarray:
    """Shard `i` memory-mapped, checked to be [rows, dim] -> float32/float16 [rows, dim].

    Raises:
        FileNotFoundError: the shard file is missing.
        ValueError: it is not a readable .npy file of that shape.
    """
    npy, _ = shard_paths(emb_dir, i)
    if not npy.is_file():
        raise FileNotFoundError(f"{npy}: embedding shard {i} is missing; {_hint(emb_dir)}")
    try:
        shard = np.load(npy, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{npy}: not a readable .npy file ({e}); {_hint(emb_dir)}") from None
    if shard.shape != (rows, dim) or shard.dtype.kind != "f":
        raise ValueError(
            f"{npy}: holds {shard.dtype} {list(shard.shape)}, expected float [{rows}, {dim}]; "
            f"{_hint(emb_dir)}"
        )
    return shard


def shard_done(emb_dir: Path, i: int, rows: int, dim: int) -> bool:
    """Whether shard `i` is finished and readable (a rerun of the build skips it)."""
    if not shard_paths(emb_dir, i)[1].is_file():
        return False
    try:
        load_shard(emb_dir, i, rows, dim)
    except (FileNotFoundError, ValueError):
        return False
    return True


def unfinished_shards(emb_dir: Path, count: int, shard_size: int, dim: int) -> list[int]:
    """The shards of a `count`-row index that are not finished and readable, in order: what a
    (re)run of the build embeds; all of them in a new directory."""
    n_shards = max(1, -(-count // shard_size))
    return [i for i in range(n_shards) if not shard_done(emb_dir, i, shard_rows(i, count, shard_size), dim)]


def load_shard_ids(emb_dir: Path, i: int, rows: int) -> list[str]:
    """The passage ids of shard `i`'s rows, checked to be `rows` strings."""
    _, ids_file = shard_paths(emb_dir, i)
    if not ids_file.is_file():
        raise FileNotFoundError(f"{ids_file}: ids of embedding shard {i} are missing; {_hint(emb_dir)}")
    try:
        ids = json.loads(ids_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{ids_file}: not valid JSON ({e}); delete it, then {_hint(emb_dir)}") from None
    if not isinstance(ids, list) or len(ids) != rows or not all(isinstance(x, str) for x in ids):
        raise ValueError(f"{ids_file}: expected a list of {rows} passage ids; delete it, then {_hint(emb_dir)}")
    return ids


class ShardedVectors:
    """The stored document vectors, gathered by global row number from the memory-mapped shards.

    Opening maps every shard and checks its shape; no vector is read until it is asked for.
    """

    def __init__(self, emb_dir: Path, count: int, shard_size: int, dim: int):
        n_shards = -(-count // shard_size)
        self.shards = [load_shard(emb_dir, i, shard_rows(i, count, shard_size), dim) for i in range(n_shards)]
        self.count, self.shard_size, self.dim = count, shard_size, dim

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """rows [...] int -> float32 [..., dim]; rows < 0 (no hit) give zero vectors."""
        rows, flat, out, valid = vector_rows(rows, self.count, self.dim)
        shard, offset = np.divmod(flat[valid], self.shard_size)
        dest = np.flatnonzero(valid)
        for s in np.unique(shard):
            sel = shard == s
            out[dest[sel]] = self.shards[s][offset[sel]]
        return out.reshape(*rows.shape, self.dim)


def vector_rows(rows: np.ndarray, count: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What a vector lookup by index row starts from: (rows, rows flattened, zero vectors [n, dim] to
    fill, mask of the rows >= 0: a -1 row is "no hit" and keeps its zero vector). A row past `count` is an error."""
    rows = np.asarray(rows)
    flat = rows.reshape(-1)
    if flat.size and flat.max() >= count:
        raise IndexError(f"row {int(flat.max())} is out of range: the index holds {count} passages")
    return rows, flat, np.zeros((len(flat), dim), dtype=np.float32), flat >= 0
