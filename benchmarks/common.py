"""What every benchmark shares: the machine it ran on and a results file beside the script.

Every results file names the machine (`radit.runtime.machine_info`: CPU model, cores, AMX-BF16 and
the dtype `--dtype auto` picks there), since speed ratios on one CPU do not carry over to another.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import sys
import time
from pathlib import Path

from radit.runtime import machine_info

RESULTS = Path(__file__).parent / "results"


def machine(device: str = "cpu") -> dict:
    """`machine_info(device)` plus the Python version."""
    return {**machine_info(device), "python": platform.python_version()}


def describe(info: dict) -> str:
    """One line for the console: CPU, cores, bf16 capability and what `auto` resolves to."""
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (f"machine: {info['cpu']}, {info['cores']} cores{gpu}, amx_bf16={info['amx_bf16']}, "
            f"avx512_bf16={info['avx512_bf16']}, --dtype auto -> {info['auto_dtype']} (torch {info['torch']})")


def device_slug(device) -> str:
    """`nvidia-h100-80gb-hbm3` for a GPU, else the device type: a results file's name for the device."""
    import torch

    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def save(name: str, results: dict, device: str = "cpu") -> Path:
    """Write `results` with the command, date and machine to results/<name>.json; print the machine."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    info = machine(device)
    record = {
        # As run from the repository root, whatever the working directory was.
        "command": "python " + " ".join([os.path.relpath(os.path.abspath(sys.argv[0]), RESULTS.parent.parent)] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": info,
        **results,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(describe(info))
    print(f"-> {path}")
    return path
