"""The index layer on bad input: a refused rebuild changes nothing, damaged index files give
`path: problem; what to do` (never a traceback), the passages file is checked in full when it may
have changed, and a failed eval-retrieval leaves its output directory as it was."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import PASSAGES

import radit.retriever.manifest as manifest_module
from radit import cli
from radit.artifacts import OUTPUT_MARKER
from radit.config import EncoderConfig, IndexConfig
from radit.retriever.index import build_index
from radit.retriever.manifest import IndexMismatchError, passages_fingerprint, read_manifest
from radit.retriever.search import load_searcher

QUESTIONS = ["who founded the Ming dynasty?", "how many keys does a piano have?"]


def index_cfg(passages: Path, out: Path, encoder_dir: Path | str, **kw) -> IndexConfig:
    enc = EncoderConfig(query_model=str(encoder_dir), pooling="mean", normalize=True)
    return IndexConfig(passages=str(passages), output=str(out), encoder=enc, batch_size=4, shard_size=8, device="cpu", **kw)


def dir_digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def ranked(searcher) -> list[list[tuple[str, float]]]:
    return [[(h.id, round(h.score, 6)) for h in hits] for hits in searcher.search(QUESTIONS, k=5)]


@pytest.fixture
def other_passages(tmp_path) -> Path:
    path = tmp_path / "other.jsonl"
    rows = [{"id": f"o#{i}", "doc_id": "o", "title": "", "text": text} for i, (_, _, text) in enumerate(PASSAGES[:9])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------------
# Rebuilding into an existing --output
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["dense", "bm25"])
def test_refused_rebuild_with_other_passages_changes_nothing(
    tmp_path, passages_file, other_passages, tiny_encoder_dir, backend, capsys
):
    live = tmp_path / "live"
    build_index(index_cfg(passages_file, live, tiny_encoder_dir, backend=backend))
    (live / "sentinel.txt").write_text("keep me")
    before, results = dir_digest(live), ranked(load_searcher(live, device="cpu"))

    with pytest.raises(IndexMismatchError, match=r"another build \(differs in: .*passages_sha256.*--overwrite"):
        build_index(index_cfg(other_passages, live, tiny_encoder_dir, backend=backend))
    args = ["index", "--passages", str(other_passages), "--output", str(live), "--backend", backend, "-q"]
    if backend == "dense":
        args += ["--encoder.query-model", str(tiny_encoder_dir), "--shard-size", "8", "--device", "cpu"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert f"radit index: error: {live} holds" in err and "--overwrite" in err and "Traceback" not in err

    assert dir_digest(live) == before
    assert ranked(load_searcher(live, device="cpu")) == results

    build_index(index_cfg(other_passages, live, tiny_encoder_dir, backend=backend, overwrite=True))
    assert read_manifest(live)[0]["count"] == 9 and (live / "sentinel.txt").read_text() == "keep me"


def test_rebuild_with_an_encoder_that_does_not_load_changes_nothing(tmp_path, passages_file, tiny_encoder_dir):
    live = build_index(index_cfg(passages_file, tmp_path / "live", tiny_encoder_dir))
    before = dir_digest(live)
    with pytest.raises(FileNotFoundError):
        build_index(index_cfg(passages_file, live, tmp_path / "no-such-encoder", overwrite=True))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_index(index_cfg(tmp_path / "missing.jsonl", live, tiny_encoder_dir, overwrite=True))
    assert dir_digest(live) == before


def test_switching_backend_needs_overwrite(tmp_path, passages_file, tiny_encoder_dir):
    live = build_index(index_cfg(passages_file, tmp_path / "live", tiny_encoder_dir))
    before = dir_digest(live)
    with pytest.raises(IndexMismatchError, match="backend dense -> bm25"):
        build_index(index_cfg(passages_file, live, tiny_encoder_dir, backend="bm25"))
    assert dir_digest(live) == before
    build_index(index_cfg(passages_file, live, tiny_encoder_dir, backend="bm25", overwrite=True))
    assert not (live / "embeddings").exists() and not (live / "faiss.index").exists()
    assert load_searcher(live).search(["piano keys"], 1)[0][0].id == "piano#1"


def test_output_that_is_not_a_radit_index_is_never_written_into(tmp_path, passages_file, tiny_encoder_dir):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own config\n")
    with pytest.raises(ValueError, match=rf"{mine} is a non-empty directory that is not an index radit wrote"):
        build_index(index_cfg(passages_file, mine, tiny_encoder_dir, overwrite=True))
    assert dir_digest(mine) == {"config.yaml": hashlib.sha256(b"my own config\n").hexdigest()}
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        build_index(index_cfg(passages_file, tmp_path / "file", tiny_encoder_dir))

    empty = tmp_path / "empty"
    empty.mkdir()
    assert (build_index(index_cfg(passages_file, empty, tiny_encoder_dir)) / OUTPUT_MARKER).is_file()


def test_index_from_before_the_marker_is_still_rebuilt_in_place(tmp_path, passages_file, tiny_encoder_dir):
    live = build_index(index_cfg(passages_file, tmp_path / "live", tiny_encoder_dir, backend="bm25"))
    (live / OUTPUT_MARKER).unlink()
    (live / "bm25" / OUTPUT_MARKER).unlink()
    build_index(index_cfg(passages_file, live, tiny_encoder_dir, backend="bm25"))
    assert (live / OUTPUT_MARKER).is_file() and load_searcher(live).count == 20


# --------------------------------------------------------------------------------------------------
# Damaged index files: `radit search` exits 2 with `path: problem; what to do`
# --------------------------------------------------------------------------------------------------


def _edit_manifest(index: Path, edit) -> None:
    m = json.loads((index / "manifest.json").read_text())
    edit(m)
    (index / "manifest.json").write_text(json.dumps(m))


def _truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


SHARD, OFFSETS = Path("embeddings") / "shard_00001.npy", "passage_offsets.npy"
DAMAGE = {
    "truncated faiss.index": (lambda i: _truncate(i / "faiss.index"), "faiss.index: cannot be read by FAISS"),
    "missing faiss.index": (lambda i: (i / "faiss.index").unlink(), "faiss.index: missing"),
    "manifest not JSON": (lambda i: (i / "manifest.json").write_text("{not json"), "manifest.json: not valid JSON"),
    "manifest key missing": (lambda i: _edit_manifest(i, lambda m: m.pop("dim")), "manifest.json: the manifest has no 'dim' entry"),
    "manifest wrong type": (lambda i: _edit_manifest(i, lambda m: m.update(count="20")), "manifest.json: 'count' is '20'"),
    "manifest dim != faiss": (lambda i: _edit_manifest(i, lambda m: m.update(dim=16)), "faiss.index: holds 32-d vectors"),
    "missing shard": (lambda i: (i / SHARD).unlink(), "shard_00001.npy: embedding shard 1 is missing"),
    "truncated shard": (lambda i: _truncate(i / SHARD, 60), "shard_00001.npy: not a readable .npy file"),
    "missing offsets": (lambda i: (i / OFFSETS).unlink(), "passage_offsets.npy: missing"),
    "garbage offsets": (lambda i: (i / OFFSETS).write_bytes(b"garbage"), "passage_offsets.npy: not a readable .npy file"),
    "short offsets": (lambda i: np.save(i / OFFSETS, np.load(i / OFFSETS)[:-1]), "expected 20 byte offsets"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_dense_index_gives_a_message_not_a_traceback(tmp_path, passages_file, tiny_encoder_dir, capsys, case):
    index = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    damage, message = DAMAGE[case]
    damage(index)
    capsys.readouterr()
    assert cli.main(["search", "--index", str(index), "tea", "--k", "2", "--device", "cpu", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("radit search: error: ") and "Traceback" not in err
    assert message in err, err
    assert str(index) in err and "rebuild" in err  # names the file and says what to do


def test_the_rebuild_command_in_the_message_repairs_the_index(tmp_path, passages_file, tiny_encoder_dir, capsys):
    index = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    results = ranked(load_searcher(index, device="cpu"))
    _truncate(index / "faiss.index")
    _truncate(index / "embeddings" / "shard_00001.npy", 60)
    (index / "manifest.json").write_text("{not json")
    assert cli.main(["search", "--index", str(index), "tea", "--device", "cpu", "-q"]) == 2
    command = re.search(r"`radit (index --config [^`]+)`", capsys.readouterr().err).group(1)
    assert cli.main([*shlex.split(command), "-q"]) == 0
    assert ranked(load_searcher(index, device="cpu")) == results


def test_damaged_bm25_index_gives_a_message(tmp_path, passages_file, capsys):
    index = build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "idx"), backend="bm25"))
    (index / "bm25" / "params.index.json").write_text("{oops")
    assert cli.main(["search", "--index", str(index), "tea", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{index / 'bm25'}: cannot be loaded" in err and "rebuild" in err and "Traceback" not in err
    shutil.rmtree(index / "bm25")
    assert cli.main(["search", "--index", str(index), "tea", "-q"]) == 2
    assert f"{index / 'bm25'}: missing" in capsys.readouterr().err


def test_index_path_that_is_a_file_or_a_symlink_loop(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert cli.main(["search", "--index", str(tmp_path / "file"), "tea", "-q"]) == 2
    assert "file: is a file, not an index directory" in capsys.readouterr().err
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert cli.main(["search", "--index", str(tmp_path / "a"), "tea", "-q"]) == 2
    assert "is a symlink loop" in capsys.readouterr().err
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    assert cli.main(["search", "--index", str(tmp_path / "dangling"), "tea", "-q"]) == 2
    assert "which does not exist" in capsys.readouterr().err


def test_missing_ids_file_is_named(tmp_path, passages_file, tiny_encoder_dir):
    index = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    (index / "embeddings" / "shard_00002.ids.json").write_text('["only one"]')
    with pytest.raises(ValueError, match=r"shard_00002.ids.json: expected a list of 4 passage ids"):
        _ = load_searcher(index, device="cpu").ids


def test_corrupt_shard_is_reembedded_by_a_rerun(tmp_path, passages_file, tiny_encoder_dir):
    cfg = index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir)
    index = build_index(cfg)
    good = (index / "embeddings" / "shard_00001.npy").read_bytes()
    _truncate(index / "embeddings" / "shard_00001.npy", 60)
    build_index(cfg)
    assert (index / "embeddings" / "shard_00001.npy").read_bytes() == good


# --------------------------------------------------------------------------------------------------
# Passages identity
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def small_window(monkeypatch):
    """Fingerprint 64 bytes at each end, so the 2.4 kB test corpus has a middle the fast check skips."""
    monkeypatch.setattr(manifest_module, "FINGERPRINT_WINDOW", 64)


def _edit_middle(path: Path, keep_mtime: bool) -> None:
    st = path.stat()
    data = path.read_bytes()
    assert data.count(b"Earth's") == 1 and 64 < data.index(b"Earth's") < len(data) - 64
    path.write_bytes(data.replace(b"Earth's", b"Eorth's"))  # same size, middle of the file
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def count_full_hashes(monkeypatch) -> list[Path]:
    calls: list[Path] = []
    real = manifest_module.file_sha256

    def counting(path, *a, **kw):
        calls.append(Path(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(manifest_module, "file_sha256", counting)
    return calls


def test_same_size_edit_in_the_middle_is_caught_when_mtime_changed_or_with_verify(tmp_path, passages_file, small_window, monkeypatch):
    index = build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "idx"), backend="bm25"))
    record = read_manifest(index)[0]["passages"]
    assert record["fingerprint_window"] == 64 and record["size"] == passages_file.stat().st_size and "mtime_ns" in record
    hashes = count_full_hashes(monkeypatch)
    read_manifest(index)
    assert hashes == []  # unchanged size and mtime: the fast check only

    _edit_middle(passages_file, keep_mtime=True)
    read_manifest(index)  # the fast check cannot see it: that is what --verify is for
    with pytest.raises(IndexMismatchError, match="content differs in the middle"):
        read_manifest(index, verify=True)
    with pytest.raises(IndexMismatchError, match="content differs in the middle"):
        load_searcher(index, verify=True)

    os.utime(passages_file)  # an edit that changed the mtime, as editors and copies do
    with pytest.raises(IndexMismatchError, match="not the one this index was built from"):
        load_searcher(index)


def test_touched_passages_file_is_hashed_once(tmp_path, passages_file, small_window, monkeypatch):
    index = build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "idx"), backend="bm25"))
    hashes = count_full_hashes(monkeypatch)
    st = passages_file.stat()
    os.utime(passages_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    read_manifest(index)
    read_manifest(index)
    assert hashes == [passages_file]  # the successful full check is remembered
    assert load_searcher(index).count == 20


def test_manifest_without_mtime_still_loads_with_one_full_hash(tmp_path, passages_file, monkeypatch):
    index = build_index(IndexConfig(passages=str(passages_file), output=str(tmp_path / "idx"), backend="bm25"))

    def legacy(m):  # as radit wrote it before size/mtime were recorded
        for key in ("size", "mtime_ns", "fingerprint_window"):
            m["passages"].pop(key)
        m["passages"]["fingerprint"] = passages_fingerprint(passages_file, 4 << 20)

    _edit_manifest(index, legacy)
    hashes = count_full_hashes(monkeypatch)
    assert load_searcher(index).count == 20
    read_manifest(index)
    assert len(hashes) == 1


# --------------------------------------------------------------------------------------------------
# eval-retrieval validates before it writes
# --------------------------------------------------------------------------------------------------


def test_failed_eval_retrieval_leaves_output_untouched(tmp_path, passages_file, tiny_encoder_dir, wide_encoder_dir, capsys):
    index = build_index(index_cfg(passages_file, tmp_path / "idx", tiny_encoder_dir))
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "q1", "question": "Who founded the Ming dynasty?", "answers": ["Zhu Yuanzhang"]}) + "\n")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "sentinel.txt").write_text("keep")
    args = ["eval-retrieval", "--index", str(index), "--questions", str(questions), "--output", str(out), "--device", "cpu", "-q"]
    assert cli.main([*args, "--query-encoder", str(wide_encoder_dir)]) == 2
    assert "48-d" in capsys.readouterr().err
    assert cli.main([*args[:4], str(tmp_path / "missing.jsonl"), *args[5:]]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["sentinel.txt"]

    assert cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json", "run.jsonl", "sentinel.txt"]
