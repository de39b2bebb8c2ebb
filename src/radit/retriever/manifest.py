"""An index directory's manifest and the checks every load runs before it trusts the files.

`manifest.json` is written last by `radit index`; it names the passages file the index was built
from (its size, mtime, a cheap fingerprint and the full sha256), the backend, and for a dense (or
qdrant) index the encoder, dimension and shard layout. Loading checks the passages file against it:

- always: the size, and the sha256 of the first and last `fingerprint_window` bytes (fast);
- the full sha256 when the file's size or mtime is not the one recorded (a copied or touched file),
  or when the caller asks (`verify=True`). A successful full check is remembered in
  `passages_verified.json`, so a copied file is hashed once, not on every load.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from radit.artifacts import atomic_write_json, file_sha256
from radit.corpus import PassageStore
from radit.retriever.encoder import EncoderSpec

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
OFFSETS_FILE = "passage_offsets.npy"
FAISS_FILE = "faiss.index"
VERIFIED_FILE = "passages_verified.json"

FINGERPRINT_WINDOW = 4 << 20
"""Bytes hashed at each end of the passages file by the fast check; recorded in the manifest."""
_LEGACY_WINDOW = 4 << 20  # what manifests without `fingerprint_window` were made with

# Keys a manifest must hold, by backend; a missing one means a damaged file, not an old format.
_REQUIRED: dict[str, dict[str, type]] = {
    "any": {"format_version": int, "backend": str, "count": int, "passages": dict},
    "dense": {"index_type": str, "dim": int, "n_shards": int, "shard_size": int, "encoder": dict},
    "bm25": {},
    "qdrant": {"dim": int, "n_shards": int, "shard_size": int, "encoder": dict, "qdrant": dict},
}
_REQUIRED_PASSAGES = {"path": str, "fingerprint": str, "sha256": str}
_JSON_NAMES = {int: "integer", str: "string", dict: "object"}


class IndexMismatchError(ValueError):
    """An index directory that is incomplete or does not match what it is used with."""


def rebuild_hint(index_dir: Path) -> str:
    """What to run to repair `index_dir`: its own saved config rebuilds it (finished shards are reused)."""
    return f"rebuild it with `radit index --config {Path(index_dir) / 'config.yaml'}`"


def passages_fingerprint(path: str | Path, window: int | None = None) -> str:
    """Cheap identity of a passages file: its size plus the sha256 of its first and last `window` bytes."""
    window = FINGERPRINT_WINDOW if window is None else window
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(window))
        if size > window:
            f.seek(max(window, size - window))
            h.update(f.read(window))
    return h.hexdigest()


def passages_record(path: Path) -> dict[str, Any]:
    """The manifest's `passages` entry for `path`: what later loads check it against."""
    st = path.stat()
    return {
        "path": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "fingerprint": passages_fingerprint(path),
        "fingerprint_window": FINGERPRINT_WINDOW,
        "sha256": file_sha256(path),
    }


def check_index_dir(index_dir: str | Path) -> Path:
    """`index_dir` as a Path, or an error that says what stands there instead of an index directory."""
    index_dir = Path(index_dir)
    try:
        mode = os.stat(index_dir).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{index_dir}: is a symlink loop; point --index at the directory written by `radit index`") from None
        if os.path.islink(index_dir):
            raise FileNotFoundError(
                f"{index_dir}: is a symlink to {os.readlink(index_dir)}, which does not exist; fix the link or rebuild the index"
            ) from None
        raise FileNotFoundError(f"index {index_dir} does not exist; build it with `radit index --output {index_dir}`") from None
    if not stat.S_ISDIR(mode):
        raise NotADirectoryError(f"{index_dir}: is a file, not an index directory; give the directory written by `radit index`")
    return index_dir


def _check_keys(path: Path, record: dict[str, Any], required: dict[str, type], what: str, index_dir: Path) -> None:
    """Raise unless `record` holds every key of `required` with a value of its type."""
    for key, kind in required.items():
        if key not in record:
            raise IndexMismatchError(f"{path}: the manifest has no {what}{key!r} entry; it is damaged: {rebuild_hint(index_dir)}")
        if not isinstance(record[key], kind) or (kind is int and isinstance(record[key], bool)):
            raise IndexMismatchError(
                f"{path}: {what}{key!r} is {record[key]!r}, expected a JSON {_JSON_NAMES[kind]}; "
                f"the manifest is damaged: {rebuild_hint(index_dir)}"
            )


def load_manifest(index_dir: str | Path) -> dict[str, Any]:
    """The manifest of a complete index, checked for the keys its backend needs (passages unchecked)."""
    index_dir = check_index_dir(index_dir)
    path = index_dir / MANIFEST
    if not path.is_file():
        resume = f"--config {index_dir / 'config.yaml'}" if (index_dir / "config.yaml").is_file() else f"--output {index_dir}"
        raise IndexMismatchError(
            f"{index_dir} is not a complete index (no {MANIFEST}: the build did not finish); "
            f"rerun `radit index {resume}` to resume it"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise IndexMismatchError(f"{path}: not valid JSON ({e}); the manifest is damaged: {rebuild_hint(index_dir)}") from None
    if not isinstance(manifest, dict):
        raise IndexMismatchError(f"{path}: not a JSON object; the manifest is damaged: {rebuild_hint(index_dir)}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatchError(f"{path}: index format {manifest.get('format_version')} is not {FORMAT_VERSION}; rebuild the index")
    _check_keys(path, manifest, _REQUIRED["any"], "", index_dir)
    if manifest["backend"] == "hybrid":  # its manifest is read by radit.retriever.hybrid
        raise IndexMismatchError(f"{index_dir} is a hybrid index (a fusion of two others), not a dense or BM25 one; "
                                 "open it with radit.retriever.search.load_searcher")
    if manifest["backend"] not in ("dense", "bm25", "qdrant"):
        raise IndexMismatchError(f"{path}: unknown backend {manifest['backend']!r}; {rebuild_hint(index_dir)}")
    _check_keys(path, manifest, _REQUIRED[manifest["backend"]], "", index_dir)
    _check_keys(path, manifest["passages"], _REQUIRED_PASSAGES, "passages.", index_dir)
    if manifest["count"] < 1:
        raise IndexMismatchError(f"{path}: count is {manifest['count']}; {rebuild_hint(index_dir)}")
    return manifest


def _known_stats(index_dir: Path, record: dict[str, Any], path: Path) -> set[tuple[int, int]]:
    """(size, mtime_ns) pairs of `path` whose content is known to hash to the manifest's sha256."""
    known = set()
    if "mtime_ns" in record and Path(record["path"]) == path.resolve():
        known.add((record["size"], record["mtime_ns"]))
    try:
        seen = json.loads((index_dir / VERIFIED_FILE).read_text(encoding="utf-8"))
        if seen["sha256"] == record["sha256"] and seen["path"] == str(path.resolve()):
            known.add((seen["size"], seen["mtime_ns"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no (readable) record of an earlier full check: hash again
    return known


def check_passages(index_dir: Path, manifest: dict[str, Any], path: Path, verify: bool = False) -> None:
    """Raise unless `path` is the passages file the index was built from (see the module docstring)."""
    record = manifest["passages"]
    if not path.is_file():
        problem = "is not a file" if path.exists() else "is missing"
        raise FileNotFoundError(f"{index_dir}: its passages file {path} {problem}; pass --passages to point at it")
    st = path.stat()
    mismatch = (
        f"{index_dir}: passages file {path} is not the one this index was built from ({{}}); "
        "rebuild the index or point at the original passages"
    )
    if "size" in record and st.st_size != record["size"]:
        raise IndexMismatchError(mismatch.format(f"{st.st_size} bytes, the index's has {record['size']}"))
    if passages_fingerprint(path, record.get("fingerprint_window", _LEGACY_WINDOW)) != record["fingerprint"]:
        raise IndexMismatchError(mismatch.format("size or content differs"))
    if not verify and (st.st_size, st.st_mtime_ns) in _known_stats(index_dir, record, path):
        return
    why = "--verify" if verify else "its modification time changed since the index was built"
    log.info("checking the full sha256 of %s (%.1f MiB; %s)", path, st.st_size / 2**20, why)
    if file_sha256(path) != record["sha256"]:
        raise IndexMismatchError(mismatch.format("same size and ends, but the content differs in the middle"))
    try:  # remember it, so that the next load is fast again; best effort (the index may be read-only)
        seen = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": record["sha256"]}
        atomic_write_json(index_dir / VERIFIED_FILE, seen)
    except OSError as e:
        log.debug("could not record the passages check in %s: %s", index_dir, e)


def read_manifest(index_dir: str | Path, passages: str | Path | None = None, verify: bool = False) -> tuple[dict[str, Any], Path]:
    """The manifest of a complete index and the passages file it belongs to (checked).

    Args:
        index_dir: Directory written by `radit index`.
        passages: The passages file, if not at the path the manifest records.
        verify: Compare the full sha256 of the passages file even when its size and mtime are unchanged.
    """
    index_dir = check_index_dir(index_dir)
    manifest = load_manifest(index_dir)
    path = Path(passages or manifest["passages"]["path"])
    check_passages(index_dir, manifest, path, verify)
    return manifest, path


def open_passages(index_dir: Path, manifest: dict[str, Any], path: Path) -> PassageStore:
    """The passages of an index by row, through its stored line offsets (checked against the manifest)."""
    offsets_path = index_dir / OFFSETS_FILE
    if not offsets_path.is_file():
        raise FileNotFoundError(f"{offsets_path}: missing; {rebuild_hint(index_dir)}")
    try:
        offsets = np.load(offsets_path, mmap_mode="r")  # int64 [count]
    except (ValueError, OSError, EOFError) as e:
        raise IndexMismatchError(f"{offsets_path}: not a readable .npy file ({e}); {rebuild_hint(index_dir)}") from None
    size = path.stat().st_size
    fits = offsets.ndim == 1 and offsets.dtype.kind in "iu" and len(offsets) == manifest["count"]
    if not fits or offsets[-1] >= size:  # count >= 1 (load_manifest), so offsets[-1] exists when it fits
        raise IndexMismatchError(
            f"{offsets_path}: holds {offsets.dtype} {list(offsets.shape)}, expected {manifest['count']} byte offsets "
            f"into {path}; {rebuild_hint(index_dir)}"
        )
    return PassageStore(path, offsets)


def encoder_spec_of(manifest: dict[str, Any]) -> EncoderSpec:
    """The dual-encoder settings a dense index was built with."""
    fields = {f.name for f in dataclasses.fields(EncoderSpec)}
    return EncoderSpec(**{k: v for k, v in manifest["encoder"].items() if k in fields})
