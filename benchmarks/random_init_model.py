"""A model folder with SRC's architecture and tokenizer and freshly initialised weights, for speed checks.

    python benchmarks/random_init_model.py SRC OUT [--seed 0]

SRC is a Hugging Face folder whose config (and tokenizer files) are all that is needed: its weight
files may be missing. OUT gets every file of SRC except the weights, then the weights of a model
built from the config with the library's own initialisation (`from_config`), saved as safetensors.

What it is for: measuring speed where the real weights cannot go, e.g. a borrowed GPU machine that
takes at most 64 MiB of files (the packaged SmolLM2 GGUF is 98 MB, MiniLM's safetensors 91 MB).
Throughput, memory and FLOP utilisation do not depend on the weights' values; losses, scores and
answers do, so a folder made here is for timing only. OUT holds a SOURCE file saying so, and a
results file made with it names the folder.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".onnx")


def random_init_model(src: Path, out: Path, seed: int = 0) -> Path:
    """Copy `src` without its weights to `out` and add weights initialised from its config."""
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or pick another OUT")
    shutil.copytree(src, out, ignore=lambda _dir, names: [n for n in names if n.endswith(WEIGHT_SUFFIXES)])
    config = AutoConfig.from_pretrained(src)
    causal = any(a.endswith("ForCausalLM") for a in (config.architectures or []))
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM if causal else AutoModel).from_config(config)
    model.save_pretrained(out)
    (out / "SOURCE").write_text(f"random initialisation (seed {seed}) of the config of {src}: for speed measurements only\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"-> {random_init_model(args.src, args.out, args.seed)}")


if __name__ == "__main__":
    main()
