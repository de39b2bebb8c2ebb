"""Where and in which precision tensors live: device and dtype from strings, never hard-coded.

`--dtype auto` (the default of every stage that runs a model) asks the machine: bf16 autocast where it
is fast, fp32 elsewhere. Measured on 2-core cloud CPUs (reported in issue 7): with AMX-BF16 (Xeon Sapphire Rapids and
later) bf16 autocast made MiniLM indexing 1.45x and a SmolLM2 forward+backward 2.4x faster at the
same loss; on CPUs without AMX (AVX512-BF16 alone, e.g. AMD EPYC) it was 2-3.6x *slower*.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_CHOICES = ("auto", *DTYPES)
"""What a `dtype` option accepts: `auto` or a concrete dtype name."""


def resolve_device(spec: str = "auto") -> torch.device:
    """`auto` picks cuda, then mps, then cpu; anything else is passed to torch.device.

    Under a launcher that starts several processes (torchrun / `accelerate launch` set WORLD_SIZE > 1),
    `auto` and a bare `cuda` mean this process's own GPU, `cuda:{LOCAL_RANK}`: else every process
    would compute on GPU 0. An explicit index (`cuda:1`) is kept as given.
    """
    if spec == "auto":
        if torch.cuda.is_available():
            return _process_gpu()
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: CUDA is not available on this machine; use --device cpu or auto")
    if device.type == "cuda" and device.index is None:
        return _process_gpu()
    return device


def _process_gpu() -> torch.device:
    # The launcher's variables are read here, not through radit.distributed, which imports this module.
    if int(os.environ.get("WORLD_SIZE") or 1) <= 1:
        return torch.device("cuda")
    local = int(os.environ.get("LOCAL_RANK") or 0)
    count = torch.cuda.device_count()
    if local >= count:
        raise ValueError(f"LOCAL_RANK={local} but this machine shows {count} CUDA device(s): start at most {count} "
                         "processes per machine (torchrun --nproc-per-node), or set CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", local)


def cpu_capabilities() -> dict:
    """`torch.cpu.get_capabilities()` as a plain dict ({} on builds without it)."""
    get = getattr(torch.cpu, "get_capabilities", None)
    return dict(get()) if get is not None else {}


def bf16_is_fast(device: torch.device | str) -> bool:
    """Whether bf16 autocast speeds `device` up: a CUDA device that supports bf16, or a CPU with AMX-BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(cpu_capabilities().get("amx_bf16", False))
    return False


def resolve_dtype(spec: str, device: torch.device | str) -> str:
    """A concrete dtype name for `spec`: `auto` -> `bfloat16` where `bf16_is_fast(device)`, else `float32`."""
    if spec == "auto":
        return "bfloat16" if bf16_is_fast(device) else "float32"
    if spec not in DTYPES:
        raise ValueError(f"dtype {spec!r} is not one of {', '.join(DTYPE_CHOICES)}")
    return spec


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision for `dtype` != float32 (weights stay fp32); a no-op for float32.

    `dtype` must be concrete (`resolve_dtype` first): `auto` is an error here, so that a caller that
    forgot to resolve it fails loudly instead of silently running in one precision.
    """
    if dtype == "float32":
        return contextlib.nullcontext()
    if dtype not in DTYPES:
        raise ValueError(f"autocast needs a concrete dtype ({', '.join(DTYPES)}), got {dtype!r}; resolve it with resolve_dtype")
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def machine_info(device: torch.device | str = "cpu") -> dict:
    """What a benchmark result must name: the CPU (or GPU: name, memory, compute capability, CUDA
    version), its core count and its bf16 capability."""
    caps = cpu_capabilities()
    cpu = caps.get("cpu_name") or platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "amx_bf16": bool(caps.get("amx_bf16", False)),
        "avx512_bf16": bool(caps.get("avx512_bf16", False)),
        "torch": torch.__version__,
        "auto_dtype": resolve_dtype("auto", "cpu"),
    }
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
        info["auto_dtype"] = resolve_dtype("auto", device)
    return info
