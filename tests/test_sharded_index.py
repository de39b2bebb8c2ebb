"""`radit index` on several processes: started by torchrun on 2 CPU processes (gloo), it writes the
one-process index, bit for bit; a rerun on another number of processes embeds only the missing
shards; a process that fails stops the others instead of leaving them waiting.

Both sides run as subprocesses with OMP_NUM_THREADS=1, so a shard is the same float sums whichever
process computes it: the shards, the FAISS index and the search scores are compared for equality,
not within a tolerance. The corpus is conftest's 20 passages in shards of 3: 7 shards, the last one
short, dealt 4 to rank 0 and 3 to rank 1.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_passages
from test_ddp import LAUNCHER_VARS

from radit.config import EncoderConfig, HybridConfig, IndexConfig, QdrantConfig
from radit.config_io import save_yaml
from radit.retriever.index import build_index
from radit.retriever.search import load_searcher

QUESTIONS = ["who founded the Ming dynasty?", "when was the Eiffel Tower completed?", "how many keys does a piano have?"]
SHARDS = 7  # 20 passages in shards of 3
TIMING = ("build_seconds",)  # the manifest fields that differ between two builds of the same index


def index_config(passages: Path, out: Path, encoder_dir: Path, **kw) -> IndexConfig:
    enc = EncoderConfig(query_model=str(encoder_dir), pooling="mean", normalize=True)
    return IndexConfig(passages=str(passages), output=str(out), encoder=enc, batch_size=2, shard_size=3, device="cpu",
                       dtype="float32", **kw)


def radit_index(cfg: IndexConfig, processes: int, check: bool = True) -> subprocess.CompletedProcess:
    """`radit index --config` in a subprocess: under torchrun when `processes` > 1, else plain python."""
    config_yaml = Path(cfg.output).with_suffix(".yaml")
    save_yaml(cfg, config_yaml)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")  # the same float sums in every process; quiet bars
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    run = subprocess.run([sys.executable, *launcher, "-m", "radit.cli", "index", "--config", str(config_yaml)],
                         env=env, capture_output=True, text=True, timeout=240)
    if check:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


def manifest(index: Path) -> dict:
    m = json.loads((index / "manifest.json").read_text())
    return {k: v for k, v in m.items() if k not in TIMING}


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def hits(index: Path) -> list[list[tuple[str, float]]]:
    return [[(h.id, h.score) for h in q] for q in load_searcher(index, device="cpu").search(QUESTIONS, k=5)]


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """(runs/{passages.jsonl, one, two}: the index built by 1 and by 2 processes, the 2-process run)."""
    runs = tmp_path_factory.mktemp("runs")
    passages = write_passages(runs / "passages.jsonl")
    two = radit_index(index_config(passages, runs / "two", tiny_encoder_dir), processes=2)
    radit_index(index_config(passages, runs / "one", tiny_encoder_dir), processes=1)
    return runs, two


@pytest.mark.distributed
def test_two_processes_build_the_one_process_index(built):
    runs, launched = built
    one, two = runs / "one", runs / "two"
    shards = file_bytes(one / "embeddings")
    assert len([name for name in shards if name.endswith(".npy")]) == SHARDS
    assert file_bytes(two / "embeddings") == shards  # vectors, ids and state.json, byte for byte
    for name in ("faiss.index", "passage_offsets.npy"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
    assert manifest(two) == manifest(one) and manifest(two)["n_shards"] == SHARDS
    assert hits(two) == hits(one)
    # Rank 0 alone logs.
    assert launched.stderr.count(f"2 processes embed {SHARDS} shards, round robin") == 1
    assert launched.stderr.count("index of 20 passages written to") == 1


@pytest.mark.distributed
def test_a_rerun_on_one_process_embeds_only_the_shard_missing_from_a_two_process_build(built, tmp_path, tiny_encoder_dir):
    runs, _ = built
    index = tmp_path / "index"
    shutil.copytree(runs / "two", index)  # copy2: the files keep their mtimes
    emb = index / "embeddings"
    lost = [emb / "shard_00005.npy", emb / "shard_00005.ids.json"]  # a shard rank 1 wrote
    for path in [*lost, index / "manifest.json"]:
        path.unlink()  # as if killed while embedding it
    kept = {p.name: p.stat().st_mtime_ns for p in emb.glob("shard_*")}

    run = radit_index(index_config(runs / "passages.jsonl", index, tiny_encoder_dir), processes=1)
    assert f"resuming: {SHARDS - 1} of {SHARDS} shards already embedded" in run.stderr
    assert {p.name: p.stat().st_mtime_ns for p in emb.glob("shard_*") if p not in lost} == kept
    assert file_bytes(emb) == file_bytes(runs / "two" / "embeddings")
    assert (index / "faiss.index").read_bytes() == (runs / "two" / "faiss.index").read_bytes()
    assert manifest(index) == manifest(runs / "two")


@pytest.mark.distributed
def test_qdrant_index_on_two_processes_holds_the_one_process_vectors(built, tmp_path, tiny_encoder_dir):
    pytest.importorskip("qdrant_client")
    runs, _ = built
    index = tmp_path / "qdrant"
    radit_index(index_config(runs / "passages.jsonl", index, tiny_encoder_dir, backend="qdrant",
                             qdrant=QdrantConfig(batch_size=4)), processes=2)
    shards, reference = file_bytes(index / "embeddings"), file_bytes(runs / "one" / "embeddings")
    assert shards.pop("state.json") != reference.pop("state.json")  # it names the backend
    assert shards == reference
    assert json.loads((index / "qdrant_upload.json").read_text())["shards"] == list(range(SHARDS))
    assert manifest(index)["qdrant"] == {"path": "qdrant", "collection": "radit", "distance": "dot"}
    got, want = hits(index), hits(runs / "one")  # Qdrant's local mode scores in numpy, FAISS in its own kernels
    assert [[i for i, _ in q] for q in got] == [[i for i, _ in q] for q in want]
    np.testing.assert_allclose([[s for _, s in q] for q in got], [[s for _, s in q] for q in want], atol=1e-5)


def _failing_worker(config_yaml: str, reports: str) -> None:
    """One process of `test_a_process_that_fails_stops_the_others`: rank 1 cannot write its shards.

    Each process records how `radit index` ended and exits 0, so that torchrun, which stops the
    others when one process exits with an error, cannot be what ended them.
    """
    from radit import cli, distributed
    from radit.retriever import index

    if distributed.rank() == 1:
        def disk_full(*args, **kwargs):
            raise OSError("no space left on device")

        index.write_shard = disk_full
    try:
        outcome = f"returned {cli.main(['index', '--config', config_yaml, '-q'])}"
    except Exception as e:
        outcome = f"{type(e).__name__}: {e}"
    Path(reports, f"rank-{distributed.rank()}.txt").write_text(outcome)


@pytest.mark.distributed
def test_a_process_that_fails_stops_the_others(built, tmp_path, tiny_encoder_dir):
    runs, _ = built
    cfg = index_config(runs / "passages.jsonl", tmp_path / "index", tiny_encoder_dir)
    save_yaml(cfg, tmp_path / "index.yaml")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
                          str(tmp_path / "index.yaml"), str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    assert (tmp_path / "rank-1.txt").read_text() == "OSError: no space left on device"
    assert (tmp_path / "rank-0.txt").read_text() == ("RuntimeError: embedding shards [0, 1] failed in process 1 (OSError: no "
                                                      "space left on device); this process stopped too")
    emb = tmp_path / "index" / "embeddings"
    assert sorted(p.name for p in emb.glob("shard_*")) == ["shard_00000.ids.json", "shard_00000.npy"]  # rank 0's first turn
    assert not (tmp_path / "index" / "manifest.json").exists()


@pytest.mark.parametrize("backend", ["bm25", "hybrid"])
def test_backends_without_an_encoder_refuse_a_launcher(tmp_path, monkeypatch, passages_file, backend):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets; refused before any process group is joined
    sides = HybridConfig()
    if backend == "hybrid":
        sides = HybridConfig(dense_index=str(tmp_path / "dense"), bm25_index=str(tmp_path / "bm25"))
    cfg = IndexConfig(passages=str(passages_file), output=str(tmp_path / "index"), backend=backend, hybrid=sides)
    with pytest.raises(ValueError, match=f"^--backend {backend} runs on one process .*without torchrun"):
        build_index(cfg)
    assert not (tmp_path / "index").exists()


def test_faiss_parameters_are_checked_before_anything_is_embedded(tmp_path, passages_file, tiny_encoder_dir):
    # Checked in every process before the first write, not by rank 0 after every process embedded.
    cfg = index_config(passages_file, tmp_path / "index", tiny_encoder_dir, index_type="ivfpq", nlist=50)
    with pytest.raises(ValueError, match="^--nlist 50 needs at least that many passages; the corpus has 20$"):
        build_index(cfg)
    assert not (tmp_path / "index").exists()


if __name__ == "__main__":
    _failing_worker(sys.argv[1], sys.argv[2])
