"""Atomic outputs never replace what radit did not write: a file output refuses a directory, a
directory output replaces only a directory carrying radit's marker. Through the CLI too."""

from __future__ import annotations

import json
import os

import pytest
from conftest import PASSAGES

from radit import cli
from radit.artifacts import OUTPUT_MARKER, atomic_open, atomic_path, atomic_write_text, check_output_target


def user_dir(path):
    """A directory of the user's own: a file and a subfolder that must survive."""
    (path / "sub").mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return path


def untouched(path) -> bool:
    return (path / "notes.txt").read_text() == "mine" and (path / "sub" / "data.bin").read_bytes() == b"\x00\x01"


def no_leftovers(parent) -> bool:
    return not [p for p in parent.iterdir() if ".tmp-" in p.name]


def test_file_output_at_an_existing_directory_is_refused_before_the_block_runs(tmp_path):
    target = user_dir(tmp_path / "out")
    ran = []
    with pytest.raises(IsADirectoryError, match=rf"{target} is a directory.*give a file path"):
        with atomic_open(target) as f:
            ran.append(True)
            f.write("x")
    assert not ran and untouched(target) and no_leftovers(tmp_path)


def test_file_output_at_the_current_directory_is_refused(tmp_path, monkeypatch):
    user_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(IsADirectoryError):
        atomic_write_text(".", "x")
    assert untouched(tmp_path) and no_leftovers(tmp_path)


def test_file_output_replaces_a_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(path) as f:
        f.write("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and no_leftovers(tmp_path)


def test_file_output_refuses_other_non_regular_files_and_a_file_parent(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        atomic_write_text(fifo, "x")
    (tmp_path / "plain").write_text("x")
    with pytest.raises(NotADirectoryError, match="plain is not a directory"):
        atomic_write_text(tmp_path / "plain" / "run.jsonl", "x")
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "plain")
    atomic_write_text(link, "y")  # a symlink to a regular file is replaced by the new file, as before
    assert link.read_text() == "y" and not link.is_symlink() and (tmp_path / "plain").read_text() == "x"


def test_directory_output_replaces_only_a_directory_radit_wrote(tmp_path):
    out = tmp_path / "model"
    with atomic_path(out, kind="dir") as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("v1")
    assert (out / "weights").read_text() == "v1" and (out / OUTPUT_MARKER).is_file()
    with atomic_path(out, kind="dir") as tmp:  # radit's own: replaced whole
        tmp.mkdir()
        (tmp / "other").write_text("v2")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "other"]

    mine = user_dir(tmp_path / "mine")
    with pytest.raises(ValueError, match=rf"{mine} is an existing directory that radit did not write"):
        with atomic_path(mine, kind="dir") as tmp:
            tmp.mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory radit wrote"):
        check_output_target(tmp_path / "file", kind="dir")
    assert untouched(mine) and (tmp_path / "file").read_text() == "x" and no_leftovers(tmp_path)


def test_failed_directory_output_keeps_the_old_one(tmp_path):
    out = tmp_path / "d"
    with atomic_path(out, kind="dir") as tmp:
        tmp.mkdir()
        (tmp / "f").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(out, kind="dir") as tmp:
        tmp.mkdir()
        raise RuntimeError("killed")
    assert (out / "f").read_text() == "old" and no_leftovers(tmp_path)


@pytest.fixture
def documents_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"id": f"d{i}", "title": t, "text": x}) + "\n" for i, (_, t, x) in enumerate(PASSAGES)))
    return path


def test_corpus_output_at_a_directory_is_an_error_and_deletes_nothing(tmp_path, documents_file, capsys, monkeypatch):
    out = user_dir(tmp_path / "existing")
    assert cli.main(["corpus", "--inputs", str(documents_file), "--output", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"radit corpus: error: {out} is a directory" in err and "Traceback" not in err
    assert untouched(out)

    monkeypatch.chdir(out)
    assert cli.main(["corpus", "--inputs", str(documents_file), "--output", ".", "-q"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert untouched(out) and no_leftovers(out)


def test_search_run_file_at_a_directory_is_an_error_and_deletes_nothing(tmp_path, documents_file, capsys):
    passages, index = tmp_path / "passages.jsonl", tmp_path / "index"
    assert cli.main(["corpus", "--inputs", str(documents_file), "--output", str(passages), "-q"]) == 0
    assert cli.main(["index", "--passages", str(passages), "--output", str(index), "--backend", "bm25", "-q"]) == 0
    queries = tmp_path / "q.jsonl"
    queries.write_text(json.dumps({"id": "q1", "question": "Who founded the Ming dynasty?"}) + "\n")
    out = user_dir(tmp_path / "runs")
    capsys.readouterr()
    assert cli.main(["search", "--index", str(index), "--queries", str(queries), "--output", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"radit search: error: {out} is a directory" in err and "Traceback" not in err
    assert untouched(out)
