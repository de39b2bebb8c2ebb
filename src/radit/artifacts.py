"""Files that stages exchange: atomic writes, checksums, JSON lines.

Every output of radit appears under its final name only when it is complete: it is written to a
temporary sibling and renamed (`os.replace` is atomic on POSIX within one filesystem), so a run
killed at any point leaves either the old file, no file, or a `*.tmp-*` leftover that nothing loads.

An output never replaces what radit did not write: a file output refuses a directory (or any other
non-regular file) at its path, and a directory output replaces only a directory carrying radit's
marker file (OUTPUT_MARKER).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Literal

OUTPUT_MARKER = ".radit-output"
"""File that marks a directory as written by radit. A directory output replaces an existing directory
only when it carries this marker, so pointing an output at a folder of your own never deletes it."""

OutputKind = Literal["file", "dir"]


def mark_output_dir(path: str | Path, what: str) -> None:
    """Mark `path` (a directory) as radit's own output, so that a later run may replace it."""
    record = {"written_by": "radit", "output": what}
    (Path(path) / OUTPUT_MARKER).write_text(json.dumps(record) + "\n", encoding="utf-8")


def is_radit_output_dir(path: str | Path) -> bool:
    """Whether `path` is a directory that radit wrote (it carries OUTPUT_MARKER)."""
    path = Path(path)
    return path.is_dir() and not path.is_symlink() and (path / OUTPUT_MARKER).is_file()


def check_output_target(path: str | Path, kind: OutputKind = "file") -> None:
    """Raise unless an output of `kind` may be written at `path`; touches nothing.

    A file output may replace a regular file (or a symlink to one) only. A directory output may
    replace only a directory that radit wrote (see OUTPUT_MARKER). Call it before a long computation
    whose result is written at the end, so that a wrong `--output` fails in a second, not an hour.

    Raises:
        IsADirectoryError: a file output at an existing directory.
        NotADirectoryError: a parent of `path` is a file.
        ValueError: anything else that stands at `path` and must not be replaced.
    """
    path = Path(path)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{path}: {parent} is not a directory; choose an output path under a directory")
            break
    if not os.path.lexists(path):
        return
    if kind == "file":
        if path.is_dir():
            raise IsADirectoryError(
                f"{path} is a directory, but this output is a file; give a file path "
                f"(e.g. {path / 'out.jsonl'}) or remove the directory yourself"
            )
        if path.exists() and not path.is_file():
            raise ValueError(f"{path} exists and is not a regular file; choose another output path")
    elif kind == "dir":
        if path.is_symlink() or not path.is_dir():
            raise ValueError(f"{path} exists and is not a directory radit wrote; remove it or choose another output path")
        if not is_radit_output_dir(path):
            raise ValueError(
                f"{path} is an existing directory that radit did not write (no {OUTPUT_MARKER} marker), so it is "
                "not replaced; remove it yourself or choose another output path"
            )
    else:
        raise ValueError(f"output kind must be 'file' or 'dir', got {kind!r}")


@contextlib.contextmanager
def atomic_path(path: str | Path, kind: OutputKind = "file") -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it to `path` if the block succeeds, else delete it.

    Args:
        path: Where the output appears.
        kind: `"file"` or `"dir"`: what the output is, and so what may already stand at `path` (see
            `check_output_target`, which runs before the block, so nothing is written when the target
            is refused). A `"dir"` output gets OUTPUT_MARKER, so a later run may replace it.
    """
    path = Path(path)
    check_output_target(path, kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name or 'out'}.tmp-", dir=path.parent))
    target = tmp / "out"
    try:
        yield target
        if kind == "dir" and target.is_dir():
            mark_output_dir(target, path.name)
        check_output_target(path, kind)  # again: something may have appeared there meanwhile
        if kind == "dir" and path.is_dir():
            # Move the old directory aside first: `os.replace` cannot replace a non-empty one, and a
            # kill between the two renames leaves the old output in `tmp`, not a half-deleted one.
            os.replace(path, tmp / "old")
            try:
                os.replace(target, path)
            except BaseException:
                os.replace(tmp / "old", path)
                raise
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """`open()` whose file appears under `path` only if the block finishes without an exception.

    `path` must not be a directory or other non-regular file (see `check_output_target`).
    """
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    n = 0
    with atomic_open(path) as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def rank_part(path: str | Path, rank: int) -> Path:
    """The part of the file `path` that process `rank` writes when several processes share its work:
    `out/scores.jsonl` -> `out/scores.rank3.jsonl`. Rank 0 merges the parts into `path` afterwards."""
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def rank_parts(path: str | Path) -> list[Path]:
    """The `rank_part`s of `path` that exist (a running or killed multi-process run's), in rank order."""
    path = Path(path)
    name = re.compile(rf"{re.escape(path.stem)}\.rank(\d+){re.escape(path.suffix)}")
    found = [(int(m[1]), p) for p in path.parent.glob(f"{path.stem}.rank*{path.suffix}") if (m := name.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def open_text(path: str | Path) -> IO[str]:
    """Open a text file, transparently gunzipping `*.gz`."""
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
