"""What every benchmark shares: the machine it ran on and a results file beside the script."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def save(name: str, results: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        # As run from the repository root, whatever the working directory was.
        "command": "python " + " ".join([os.path.relpath(os.path.abspath(sys.argv[0]), RESULTS.parent.parent)] + sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        **results,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"-> {path}")
    return path
