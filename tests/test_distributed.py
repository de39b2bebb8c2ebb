"""radit.distributed: no-ops on one process, balanced shards, a GPU per local rank, and two real gloo processes.

The two-process test runs this file under torchrun (`python -m torch.distributed.run`); `_worker` is
what each process does.
"""

from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import radit
from radit import distributed
from radit.runtime import resolve_device

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def one_process(monkeypatch):
    for var in LAUNCHER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not distributed.is_initialized()


# --------------------------------------------------------------------------- one process


def test_one_process_is_rank_0_of_1(one_process):
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    assert distributed.is_main()
    assert distributed.init("cpu") is False
    assert not distributed.is_initialized()
    distributed.shutdown()  # nothing to leave


def test_collectives_are_identities_on_one_process(one_process):
    obj = {"a": [1, 2]}
    distributed.barrier()
    assert distributed.gather_object(obj) == [obj]
    assert distributed.all_gather_object(obj) == [obj]
    assert distributed.broadcast_object(obj) is obj
    assert distributed.shard_range(5) == range(5)
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    distributed.sum_gradients([p])
    assert p.grad.tolist() == [1.0, 1.0]


def test_main_only_and_progress_bars_follow_the_rank(one_process, monkeypatch):
    calls = []
    record = distributed.main_only(calls.append)
    assert record("main") is None and calls == ["main"]
    with distributed.progress_bar(range(3), file=io.StringIO()) as bar:
        assert not bar.disable
    with distributed.progress_bar(range(3), enabled=False) as bar:
        assert bar.disable

    # Another rank before any process group exists: read from the launcher's variables.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main()
    record("rank 1")
    assert calls == ["main"]
    with distributed.progress_bar(range(3)) as bar:
        assert bar.disable


def test_init_refuses_a_world_without_rendezvous(one_process, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="RANK, MASTER_ADDR, MASTER_PORT unset"):
        distributed.init("cpu")
    assert not distributed.is_initialized()


def test_init_waits_hours_not_torchs_ten_minutes(one_process, monkeypatch):
    """Rank 0 builds FAISS or evaluates alone while the others wait at a collective: the group is made
    with radit's long timeout (torch's default, 10 minutes under nccl, would end such runs)."""
    made = {}
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: made.update(backend=backend, **kw))
    for var, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(var, value)
    assert distributed.init("cpu")
    assert made == {"backend": "gloo", "init_method": "env://", "timeout": distributed.COLLECTIVE_TIMEOUT}
    assert distributed.COLLECTIVE_TIMEOUT.total_seconds() >= 3600


def test_a_group_made_elsewhere_is_left_at_exit_once(one_process, monkeypatch):
    """accelerate makes its own group; init() then registers radit's shutdown for it, once."""
    registered = []
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    monkeypatch.setattr(distributed, "_leaving_at_exit", False)
    assert distributed.init("cpu") and distributed.init("cpu")
    assert registered == [distributed.shutdown]


def test_a_malformed_variable_is_named(one_process, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "one")
    with pytest.raises(ValueError, match="LOCAL_RANK='one'"):
        distributed.local_rank()


# --------------------------------------------------------------------------- shard_range


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 5, 7, 10, 101])
def test_shards_are_contiguous_balanced_and_cover_everything_once(n, world):
    shards = [distributed.shard_range(n, r, world) for r in range(world)]
    assert [i for s in shards for i in s] == list(range(n))  # in order, each index once
    assert all(s.step == 1 for s in shards)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the longer shards first


@pytest.mark.parametrize(("n", "rank", "world"), [(-1, 0, 1), (5, 2, 2), (5, -1, 2), (5, 0, 0)])
def test_shard_range_rejects_impossible_arguments(n, rank, world):
    with pytest.raises(ValueError, match="shard_range"):
        distributed.shard_range(n, rank, world)


# --------------------------------------------------------------------------- devices follow LOCAL_RANK


@pytest.fixture
def two_gpus(monkeypatch, one_process):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_one_process_keeps_plain_cuda(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")


def test_each_launched_process_gets_its_local_gpu(two_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")  # two machines of two GPUs
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is kept
    assert resolve_device("cpu") == torch.device("cpu")


def test_more_processes_than_gpus_is_an_error(two_gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match="LOCAL_RANK=2 but this machine shows 2 CUDA"):
        resolve_device("auto")


def test_launched_processes_without_cuda_stay_on_cpu(one_process, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == torch.device("cpu")


# --------------------------------------------------------------------------- one owner of torch.distributed


def _touches_torch_distributed(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and node.module and (
                node.module.startswith("torch.distributed") or (node.module == "torch" and any(a.name == "distributed" for a in node.names))):
            return True
        if isinstance(node, ast.Attribute) and node.attr == "distributed" and isinstance(node.value, ast.Name) and node.value.id == "torch":
            return True
    return False


def test_only_radit_distributed_touches_torch_distributed():
    root = Path(radit.__file__).parent
    owners = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                    if _touches_torch_distributed(ast.parse(p.read_text(encoding="utf-8"))))
    assert owners == ["distributed.py"]


# --------------------------------------------------------------------------- two real processes


def _worker(out: str) -> None:
    """One process of the torchrun launch in `test_two_gloo_processes`: exercise every helper, write what it saw."""
    assert distributed.init("cpu")
    r = distributed.rank()
    distributed.barrier()
    with distributed.progress_bar(range(2), file=io.StringIO()) as bar:
        bar_off = bar.disable
    # Gradients: one on both processes, one on rank 1 only (rank 0 had no example), one on neither.
    both, one, neither = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    both.grad = torch.full((2,), float(r + 1))
    if r == 1:
        one.grad = torch.tensor([5.0, 7.0])
    distributed.sum_gradients([both, one, neither])
    seen = {
        "rank": r, "world": distributed.world_size(), "local_rank": distributed.local_rank(), "main": distributed.is_main(),
        "device": str(resolve_device("auto")),
        "all": distributed.all_gather_object({"rank": r, "shard": list(distributed.shard_range(7))}),
        "gathered": distributed.gather_object(10 * r),
        "broadcast": distributed.broadcast_object(f"from rank {r}"),
        "main_only": distributed.main_only(lambda: "ran")(),
        "bar_off": bar_off,
        "sum": distributed.all_reduce_sum(torch.tensor([r, 10.0 * r])).tolist(),
        "grads": [both.grad.tolist(), one.grad.tolist(), neither.grad],
    }
    distributed.barrier()
    Path(out, f"rank{r}.json").write_text(json.dumps(seen))
    distributed.shutdown()


@pytest.mark.distributed
def test_two_gloo_processes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and k != "TQDM_DISABLE"}
    env["OMP_NUM_THREADS"] = "1"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    shards = [{"rank": 0, "shard": [0, 1, 2, 3]}, {"rank": 1, "shard": [4, 5, 6]}]
    for r, seen in enumerate(ranks):
        assert (seen["rank"], seen["world"], seen["local_rank"], seen["main"]) == (r, 2, r, r == 0)
        assert seen["device"] == "cpu"
        assert seen["all"] == shards
        assert seen["broadcast"] == "from rank 0"
        assert seen["bar_off"] is (r != 0)
        assert seen["sum"] == [1.0, 10.0]
        assert seen["grads"] == [[3.0, 3.0], [5.0, 7.0], None]  # summed; missing = zeros; missing everywhere = None
    assert [seen["gathered"] for seen in ranks] == [[0, 10], None]
    assert [seen["main_only"] for seen in ranks] == ["ran", None]


if __name__ == "__main__":
    _worker(sys.argv[1])
