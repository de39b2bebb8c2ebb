"""Several processes, one per GPU, set up from the launcher's environment: the one module that touches `torch.distributed`.

    torchrun --nproc-per-node 2 -m radit.cli train-lm ...     # or: accelerate launch -m radit.cli train-lm ...

torchrun and `accelerate launch` start the processes and give each RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `init()` joins their process group from those variables (nccl on
CUDA, gloo on CPU). Every helper here is a no-op on one process (no such variables, no process
group), so library code calls them unconditionally. Until a group exists, rank and world size are
read from the environment, so rank 0 alone shows progress bars even before `init()` (or where
accelerate makes the group itself).

Also here, so that no other module imports torch.distributed: `all_or_none` (an error in one process
raised in all) and what a model sharded by FSDP2 needs to be saved and loaded whole (`is_sharded`,
`full_model_state`, `full_optimizer_state`, `load_full_state`).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from radit.runtime import resolve_device

T = TypeVar("T")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer; it is set by torchrun / accelerate launch") from None


def is_initialized() -> bool:
    """Whether this process belongs to a process group (made by `init()` or by accelerate)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes: the group's size, else WORLD_SIZE, else 1."""
    return dist.get_world_size() if is_initialized() else _env_int("WORLD_SIZE", 1)


def rank() -> int:
    """This process's global rank: the group's, else RANK, else 0."""
    return dist.get_rank() if is_initialized() else _env_int("RANK", 0)


_this_rank = rank  # shard_range's argument `rank` hides the function


def local_rank() -> int:
    """This process's rank on its machine (LOCAL_RANK, else 0): the index of its GPU."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """Whether this is rank 0, the process that logs and saves."""
    return rank() == 0


COLLECTIVE_TIMEOUT = timedelta(hours=12)
"""How long a process waits for the others at a collective. radit's stages have rank 0 work alone
while the others wait: building the FAISS index (hours for IVF-PQ or HNSW over tens of millions of
passages), dev evaluations inside the training loops, merging per-rank files. torch's default (10
minutes under nccl) would end those runs. A process that dies still ends the run at once: the
launcher (torchrun, accelerate launch) then stops the others."""


def init(device: str | torch.device = "auto", timeout: timedelta = COLLECTIVE_TIMEOUT) -> bool:
    """Join the launcher's process group; on one process, do nothing.

    Args:
        device: where this process computes (`radit.runtime.resolve_device`, which maps `auto` and
            `cuda` to `cuda:{LOCAL_RANK}` under a launcher). CUDA: nccl, after making that GPU the
            current one; anything else: gloo.
        timeout: how long collectives wait for the other processes (`COLLECTIVE_TIMEOUT`).

    Returns:
        True when the process is in a group (a new one, or one that already existed, e.g.
        accelerate's), False on one process.

    Raises:
        RuntimeError: WORLD_SIZE > 1 but the rendezvous variables are missing (not started by a launcher).
    """
    if is_initialized():
        _leave_at_exit()  # a group accelerate made is left at exit too
        return True
    if world_size() <= 1:
        return False
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world_size()} but {', '.join(missing)} unset: start the processes with "
                           "torchrun or accelerate launch, or unset WORLD_SIZE for one process")
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    backend = "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    dist.init_process_group(backend, init_method="env://", timeout=timeout)
    _leave_at_exit()
    return True


_leaving_at_exit = False


def _leave_at_exit() -> None:
    """Destroy the process group before the interpreter exits, once per process. A group still alive
    at exit makes nccl warn, and a gloo one occasionally aborted a finished process ("terminate called
    without an active exception") in the tests that start `accelerate launch`."""
    global _leaving_at_exit
    if not _leaving_at_exit:
        atexit.register(shutdown)
        _leaving_at_exit = True


def shutdown() -> None:
    """Leave the process group, if any, once every process is here: no collective is in flight on
    either side when the groups are torn down (before exit, so that nccl does not warn)."""
    if is_initialized():
        barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here."""
    if not is_initialized():
        return
    if dist.get_backend() == "nccl":
        # Named, or nccl guesses the GPU and warns that the guess may hang.
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def gather_object(obj: T, dst: int = 0) -> list[T] | None:
    """Every process's `obj` (picklable), in rank order, on rank `dst`; None on the others. `[obj]` on one process."""
    if not is_initialized():
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def all_gather_object(obj: T) -> list[T]:
    """Every process's `obj` (picklable), in rank order, on every process. `[obj]` on one process."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` (picklable) on every process; what the others pass is ignored. `obj` on one process."""
    if not is_initialized():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextlib.contextmanager
def all_or_none(step: str) -> Iterator[None]:
    """Run the block in every process, then wait until every process has finished it; if it failed
    in any, raise in all of them: the failed one its own error, the others one naming that process.

    Without this, a process whose block failed leaves the others waiting at the next collective until
    the launcher notices the exit (torchrun does; a process group made in Python waits for the
    timeout). On one process: the block, with nothing to wait for.

    Args:
        step: what the block does, for the others' error ("{step} failed in process R (...)").
    """
    error: Exception | None = None
    try:
        yield
    except Exception as e:  # every error: the other processes must hear of it, whatever it is
        error = e
    reports = all_gather_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    failed = [(r, report) for r, report in enumerate(reports) if report is not None]
    if failed:
        r, report = failed[0]
        raise RuntimeError(f"{step} failed in process {r} ({report}); this process stopped too")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the processes, in place, and returned; itself on one process.

    Any device: a CPU tensor goes through this process's GPU and back under nccl (which only reduces
    GPU memory), so small statistics can stay on the CPU.
    """
    if not is_initialized():
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        on_gpu = tensor.to(torch.cuda.current_device())
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        return tensor.copy_(on_gpu)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum each parameter's `.grad` over the processes, in place; nothing on one process.

    What DistributedDataParallel does after backward, minus two things: no averaging (the caller
    divides its loss by the global batch, so the sum is the one-process gradient) and no overlap with
    backward (one all-reduce per parameter once backward is done: fine for a query tower, whose
    backward is short). A gradient some processes lack counts as zeros there (a process with no
    example this step); one that every process lacks stays None, so the optimizer skips that
    parameter as it would on one process (e.g. a pooler that mean pooling never calls).
    """
    if not is_initialized():
        return
    params = list(params)
    if not params:
        return
    holders = all_reduce_sum(torch.tensor([float(p.grad is not None) for p in params], device=params[0].device))
    pending = []
    for p, n in zip(params, holders.tolist()):
        if n == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        pending.append(dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, async_op=True))
    for work in pending:
        work.wait()


def shard_range(n: int, rank: int | None = None, world: int | None = None) -> range:
    """The contiguous part of `range(n)` that process `rank` of `world` takes (defaults: this process's).

    Sizes differ by at most one, the first `n % world` shards one longer; the shards in rank order
    cover 0..n-1 exactly once, so per-rank outputs concatenated in rank order are in input order.
    """
    rank = _this_rank() if rank is None else rank
    world = world_size() if world is None else world
    if n < 0 or world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard_range needs n >= 0 and 0 <= rank < world, got n={n}, rank={rank}, world={world}")
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def main_only(fn: Callable[..., T]) -> Callable[..., T | None]:
    """`fn` for rank 0 alone: elsewhere calling it does nothing and returns None.

    As a decorator, or inline: `main_only(log.info)("wrote %s", path)`.
    """

    @functools.wraps(fn)
    def on_main(*args, **kwargs):
        return fn(*args, **kwargs) if is_main() else None

    return on_main


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar (same arguments) shown by rank 0 only, and only when `enabled`.

    `disable` is passed only to turn the bar off: an explicit `disable=False` would override
    TQDM_DISABLE, which `radit -q` sets. That variable is read here, at each bar, because tqdm reads it
    once, when it is imported, which may be before `radit -q` set it.
    """
    if not (enabled and is_main()) or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true"):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


# --------------------------------------------------------------------------- models sharded by FSDP2
# FSDP2 (`fully_shard`) leaves each process a slice of every parameter (a DTensor) and of its optimizer
# state. These gather the whole of both onto rank 0's CPU and broadcast them back, so that what is
# saved is what an unsharded model saves. torch.distributed.tensor and .checkpoint are imported
# inside them: only a sharded run needs them.


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether `module`'s parameters are split over the processes (FSDP2 makes them DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def full_model_state(module: torch.nn.Module, trainable_only: bool = True) -> dict[str, torch.Tensor] | None:
    """The whole of a sharded module's parameters on rank 0's CPU, by name; None on the other processes.

    Every process must call it: each sends its slices. The names are `module.named_parameters()`'s
    (tied weights once, under their first name), as an unsharded module's would be.

    Args:
        module: a module that `is_sharded`.
        trainable_only: only the parameters that require grad (the frozen ones are not gathered).
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(module, options=_full_state(cpu_offload=True, ignore_frozen_params=trainable_only))
    if not is_main():
        return None
    return {name: full[name] for name, p in module.named_parameters() if p.requires_grad or not trainable_only}


def full_optimizer_state(module: torch.nn.Module, optimizer) -> dict[str, Any] | None:
    """The whole `optimizer.state_dict()` of a sharded module on rank 0's CPU; None on the other processes.

    In torch's format, the parameters numbered in `optimizer.param_groups` order (torch.distributed
    names them), so that `Optimizer.load_state_dict` of an unsharded copy takes it. Every process
    must call it: each sends its slices.

    Args:
        module: a module that `is_sharded`.
        optimizer: its optimizer (torch's, or a wrapper of one such as accelerate's AcceleratedOptimizer).
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    full = get_optimizer_state_dict(module, _plain_optimizer(optimizer), options=_full_state(cpu_offload=True))
    if not is_main():
        return None
    number = {name: i for i, name in enumerate(name for g in full["param_groups"] for name in g["params"])}
    return {"state": {number[name]: s for name, s in full["state"].items()},
            "param_groups": [{**g, "params": [number[name] for name in g["params"]]} for g in full["param_groups"]]}


def load_full_state(module: torch.nn.Module, optimizer, weights: Mapping[str, torch.Tensor],
                    optimizer_state: Mapping[str, Any] | None) -> None:
    """Load rank 0's whole `weights` and `optimizer_state` into a sharded module and its optimizer:
    broadcast from rank 0, each process keeps its slices.

    Every process must call it; what the others pass is ignored (`{}` and None will do). Nothing is
    checked here: the caller makes sure, on every process, that `weights` fit the module (a mismatch
    found by rank 0 alone would leave the others waiting).

    Args:
        module: a module that `is_sharded`.
        optimizer: its optimizer (torch's, or a wrapper of one such as accelerate's AcceleratedOptimizer).
        weights: parameters by name, as `full_model_state` gives them; those left out (frozen ones)
            keep their values.
        optimizer_state: as `full_optimizer_state` gives it (torch's numbered format).
    """
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(module, dict(weights), options=_full_state(broadcast_from_rank0=True, strict=False))
    by_name: dict[str, Any] = {}
    if is_main():
        assert optimizer_state is not None
        names = {id(p): name for name, p in module.named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        by_name = {"state": {order[i]: s for i, s in optimizer_state["state"].items()},
                   "param_groups": [{**g, "params": [order[i] for i in g["params"]]}
                                    for g in optimizer_state["param_groups"]]}
    set_optimizer_state_dict(module, _plain_optimizer(optimizer), by_name, options=_full_state(broadcast_from_rank0=True))


def _full_state(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def _plain_optimizer(optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps torch's


# --------------------------------------------------------------------------- DeepSpeed ZeRO


def _torch_optimizer(optimizer):
    """torch's optimizer inside accelerate's wrapper of DeepSpeed's ZeRO optimizer."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _link_deepspeed_optimizer_state(optimizer) -> None:
    """Make AdamW's state exist for every flat partition (zeros before the first step) and relink
    DeepSpeed's per-parameter views of it: ZeRO 1-2 (0.19.8) links them once, after the first
    group's first step, before the other groups have any state ("exp_avg not found in optimizer
    state fragment")."""
    chain = [optimizer]
    while hasattr(chain[-1], "optimizer"):
        chain.append(chain[-1].optimizer)
    inner = chain[-1]
    flats = [flat for group in inner.param_groups for flat in group["params"]]
    for zero in chain:  # ZeRO-3 keeps the flat partitions the state is read from here
        flats += list(getattr(zero, "fp32_partitioned_groups_flat", []))
    for flat in flats:
        if "exp_avg" not in inner.state.get(flat, {}):
            inner.state[flat] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(flat),
                                 "exp_avg_sq": torch.zeros_like(flat)}
    for zero in chain:
        if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1-2; ZeRO-3 reads the state afresh
            zero._hp_optimizer_states_linked = False
            zero._lazy_init_hp_params_optimizer_state()


def deepspeed_full_state(module: torch.nn.Module, optimizer, groups: Sequence[Sequence[torch.nn.Parameter]],
                         with_optimizer: bool = True) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
    """The whole trainable weights and AdamW state of a DeepSpeed ZeRO (1-3) module on rank 0's CPU,
    in `full_model_state` / `full_optimizer_state`'s formats; (None, None) on the other processes.

    Every process must call it: each sends its partitions.

    Args:
        module: the engine's module.
        optimizer: the engine's optimizer (or accelerate's wrapper of it).
        groups: the parameters of torch's optimizer as it was built, group by group: the numbering.
        with_optimizer: False: the weights alone (the optimizer state is None). They are the
            optimizer's float32 copy, whatever the precision the model computes in.
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    _link_deepspeed_optimizer_state(optimizer)
    names = {id(p): name for name, p in module.named_parameters()}
    inner = _torch_optimizer(optimizer)
    step = float(next(iter(inner.state.values()))["step"]) if inner.state else 0.0
    weights, state, i = {}, {}, 0
    for group in groups:
        for p in group:
            full = {"param": safe_get_full_fp32_param(p)}  # collectives: every process, same order
            if with_optimizer:
                full.update({key: safe_get_full_optimizer_state(p, key) for key in ("exp_avg", "exp_avg_sq")})
            if is_main():
                weights[names[id(p)]] = full["param"].detach().cpu().clone()
            if is_main() and with_optimizer:
                state[i] = {"step": torch.tensor(step), **{k: full[k].detach().cpu().clone() for k in ("exp_avg", "exp_avg_sq")}}
            i += 1
    if not is_main():
        return None, None
    if not with_optimizer:
        return weights, None
    param_groups, start = [], 0
    for group, hyper in zip(groups, inner.param_groups):
        param_groups.append({**{k: v for k, v in hyper.items() if k != "params"}, "params": list(range(start, start + len(group)))})
        start += len(group)
    return weights, {"state": state, "param_groups": param_groups}


def load_deepspeed_state(module: torch.nn.Module, optimizer, groups: Sequence[Sequence[torch.nn.Parameter]],
                         weights: Mapping[str, torch.Tensor] | None, optimizer_state: Mapping[str, Any] | None) -> None:
    """Load rank 0's whole `weights` and `optimizer_state` (`deepspeed_full_state`'s formats, or a
    one-process checkpoint's) into a DeepSpeed ZeRO module and its optimizer; every process calls
    it, what the others pass is ignored. Arguments as `deepspeed_full_state`'s."""
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    weights, optimizer_state = broadcast_object((weights, optimizer_state))
    _link_deepspeed_optimizer_state(optimizer)
    names = {id(p): name for name, p in module.named_parameters()}
    inner = _torch_optimizer(optimizer)
    i = 0
    for group in groups:
        for p in group:
            value, saved = weights[names[id(p)]], optimizer_state["state"][i]
            safe_set_full_fp32_param(p, value)  # the optimizer's fp32 copy ...
            for key in ("exp_avg", "exp_avg_sq"):
                safe_set_full_optimizer_state(p, saved[key], key)
            # ... and the weight the forward reads (ZeRO-3: whole while gathered, then rank 0's is partitioned)
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                p.data.copy_(value.to(p.device, p.dtype).view_as(p))
            i += 1
    step = float(optimizer_state["state"][0]["step"]) if optimizer_state["state"] else 0.0
    for s in inner.state.values():
        s["step"] = torch.tensor(step) if torch.is_tensor(s.get("step")) else step
