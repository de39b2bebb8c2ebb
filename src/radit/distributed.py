"""Several processes, one per GPU, set up from the launcher's environment: the one module that touches `torch.distributed`.

    torchrun --nproc-per-node 2 -m radit.cli train-lm ...     # or: accelerate launch -m radit.cli train-lm ...

torchrun and `accelerate launch` start the processes and give each RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `init()` joins their process group from those variables (nccl on
CUDA, gloo on CPU). Every helper here is a no-op on one process (no such variables, no process
group), so library code calls them unconditionally. Until a group exists, rank and world size are
read from the environment, so rank 0 alone shows progress bars even before `init()` (or where
accelerate makes the group itself).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
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


def init(device: str | torch.device = "auto", timeout: timedelta | None = None) -> bool:
    """Join the launcher's process group; on one process, do nothing.

    Args:
        device: where this process computes (`radit.runtime.resolve_device`, which maps `auto` and
            `cuda` to `cuda:{LOCAL_RANK}` under a launcher). CUDA: nccl, after making that GPU the
            current one; anything else: gloo.
        timeout: how long collectives wait for the other processes (default: torch's).

    Returns:
        True when the process is in a group (a new one, or one that already existed, e.g.
        accelerate's), False on one process.

    Raises:
        RuntimeError: WORLD_SIZE > 1 but the rendezvous variables are missing (not started by a launcher).
    """
    if is_initialized():
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
    dist.init_process_group(backend, init_method="env://", **({"timeout": timeout} if timeout is not None else {}))
    return True


def shutdown() -> None:
    """Leave the process group, if any (before exit, so that nccl does not warn)."""
    if is_initialized():
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
