"""`radit build-lsr-data` scored by several processes: the same cache as one process, and resumable
after a kill on any number of processes.

The CLI runs in subprocesses (`torch.distributed.run --standalone` for several, gloo on CPU), each
with OMP_NUM_THREADS=1, on the tiny Llama (real SmolLM2 tokenizer) and a tiny BERT index, in fp32.
12 pairs x top-4 in parts of 2: 6 parts, 3 a process on 2 processes.

- pairs.jsonl is byte-identical: rank 0 alone builds it, as one process does;
- scores: the same pairs and token counts, and per-chunk log-probs (sums of a few fp32 log-probs of
  about -10 each) within LOGPROB_ATOL, room for another thread count's rounding. A part holds the
  same pairs on any number of processes, so it runs the same forwards: the differences measured
  were 0, between the one-thread subprocesses and against the in-process reference run alike. That
  the split kept the parts whole is checked directly: the same prefills (distinct chunks) in total.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from radit.config import LSRDataConfig
from radit.config_io import save_yaml

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LOGPROB_ATOL = 1e-4
PART_SIZE = 2


def build(cfg: LSRDataConfig, processes: int) -> dict:
    """`radit build-lsr-data` on `processes` processes (torchrun for more than one), checked to succeed; its manifest."""
    path = Path(cfg.output).with_suffix(".yaml")
    save_yaml(cfg, path)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and k != "TQDM_DISABLE"}
    env["OMP_NUM_THREADS"] = "1"  # several processes on a small machine, and the same arithmetic in each run
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else []
    run = subprocess.run([sys.executable, *launcher, "-m", "radit.cli", "build-lsr-data", "--config", str(path), "-q"],
                         env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return json.loads((Path(cfg.output) / "manifest.json").read_text())


def score_lines(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "scores.jsonl").read_text().splitlines()]


def assert_same_scores(folder: Path, reference: Path) -> None:
    """The same pairs as `reference`, and the same score lines: pair indices, token counts, log-probs within LOGPROB_ATOL."""
    from radit.train.lsr_cache import read_cache

    assert (folder / "pairs.jsonl").read_bytes() == (reference / "pairs.jsonl").read_bytes()
    a, b = score_lines(folder), score_lines(reference)
    assert [x["i"] for x in a] == [x["i"] for x in b] == list(range(len(b)))
    assert [x["tokens"] for x in a] == [x["tokens"] for x in b]
    got, want = read_cache(folder), read_cache(reference)
    np.testing.assert_allclose(got.logprob, want.logprob, rtol=0, atol=LOGPROB_ATOL)
    assert not list(folder.glob("scores.rank*"))  # merged, then removed


@pytest.fixture
def lsr_cfg(tmp_path, passages_file, tiny_encoder_dir, tiny_lm_dir) -> LSRDataConfig:
    from test_r_ft import QA, lsr_config

    from radit.config import EncoderConfig, IndexConfig
    from radit.retriever.index import build_index

    index = tmp_path / "index"
    enc = EncoderConfig(query_model=str(tiny_encoder_dir), pooling="mean", normalize=True, score_temperature=0.05)
    build_index(IndexConfig(passages=str(passages_file), output=str(index), encoder=enc, device="cpu", dtype="float32"))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "instruction": q, "output": a}) + "\n" for i, (q, a) in enumerate(QA)))
    return lsr_config(tmp_path, index, tiny_lm_dir, f"jsonl:{qa}", part_size=PART_SIZE)


def test_the_parts_are_the_same_on_any_number_of_processes():
    from radit.distributed import shard_range
    from radit.train.lsr_data import pending_parts

    one = pending_parts(list(range(23)), 4)
    assert one == [range(0, 4), range(4, 8), range(8, 12), range(12, 16), range(16, 20), range(20, 23)]
    for world in range(1, 9):
        shares = [[one[j] for j in shard_range(len(one), r, world)] for r in range(world)]
        assert [part for share in shares for part in share] == one
    # Resumed: each run of pairs left is cut from its first pair, so whole parts stay whole.
    assert pending_parts([2, 3, 4, 5, 10, 11, 12], 2) == [range(2, 4), range(4, 6), range(10, 12), range(12, 13)]
    assert pending_parts([], 2) == []


@pytest.mark.distributed
def test_two_processes_score_as_one(lsr_cfg):
    out = Path(lsr_cfg.output)
    one = build(dataclasses.replace(lsr_cfg, output=str(out.with_name("one"))), 1)
    two = build(dataclasses.replace(lsr_cfg, output=str(out.with_name("two"))), 2)
    assert_same_scores(out.with_name("two"), out.with_name("one"))
    a, b = two["scoring"], one["scoring"]
    assert (a["processes"], b["processes"]) == (2, 1)
    assert a["requests_by_rank"] == [6 * 4, 6 * 4] and b["requests_by_rank"] == [12 * 4]
    for key in ("requests", "slots", "distinct_chunks", "truncated"):
        assert a[key] == b[key], key  # every part reused the same chunks as on one process
    for key in ("pairs", "corpus_pairs", "task_pairs", "lm", "index", "sources", "complete"):
        assert two[key] == one[key], key
    assert {**two["settings"], "output": None} == {**one["settings"], "output": None}


def kill_two_processes(full: Path, folder: Path) -> None:
    """Make `folder` what a 2-process run of `full`'s settings leaves when killed: rank 0 (parts 0-2,
    pairs 0-5) after its first part and midway through writing the next, rank 1 (parts 3-5, pairs 6-11)
    after two parts: no scores.jsonl, an incomplete manifest."""
    shutil.copytree(full, folder)
    lines = (full / "scores.jsonl").read_text().splitlines(keepends=True)
    (folder / "scores.jsonl").unlink()
    (folder / "scores.rank0.jsonl").write_text("".join(lines[0:2]) + lines[2][:9])
    (folder / "scores.rank1.jsonl").write_text("".join(lines[6:10]))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["complete"] = False
    manifest["settings"]["output"] = str(folder)  # as if made there
    del manifest["scoring"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.distributed
def test_a_killed_two_process_run_resumes_on_two_three_or_one(lsr_cfg):
    from radit.train.lsr_cache import read_cache
    from radit.train.lsr_data import build_lsr_data

    out = Path(lsr_cfg.output)
    full = out.with_name("full")
    build_lsr_data(dataclasses.replace(lsr_cfg, output=str(full)))  # in-process: the reference
    left = 6 * 4  # pairs 2-5 and 10-11, top-4 each
    for processes in (2, 3):
        folder = out.with_name(f"resumed-on-{processes}")
        kill_two_processes(full, folder)
        with pytest.raises(ValueError, match="incomplete"):
            read_cache(folder)
        resumed = build(dataclasses.replace(lsr_cfg, output=str(folder)), processes)
        assert_same_scores(folder, full)
        assert resumed["complete"] and resumed["scoring"]["requests"] == left
        # The 3 parts left, split among the processes: [2, 3] [4, 5] | [10, 11], or one part each.
        assert resumed["scoring"]["requests_by_rank"] == ([16, 8] if processes == 2 else [8, 8, 8])
    # One process, in-process, finds the rank files: it scores the rest into its own, then merges.
    folder = out.with_name("resumed-on-1")
    kill_two_processes(full, folder)
    resumed = build_lsr_data(dataclasses.replace(lsr_cfg, output=str(folder)))
    assert resumed["scoring"]["requests"] == left and resumed["scoring"]["processes"] == 1
    assert (folder / "scores.jsonl").read_text() == (full / "scores.jsonl").read_text()  # same process, same threads
    assert not list(folder.glob("scores.rank*"))


def test_a_run_killed_within_its_first_line_resumes(lsr_cfg):
    from radit.train.lsr_data import build_lsr_data

    out = Path(lsr_cfg.output)
    build_lsr_data(lsr_cfg)
    full = (out / "scores.jsonl").read_text()
    (out / "scores.jsonl").write_text(full[:9])  # no complete line: the cut one must go before appending
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert build_lsr_data(lsr_cfg)["scoring"]["requests"] == 12 * 4
    assert (out / "scores.jsonl").read_text() == full
