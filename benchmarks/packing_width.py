"""Step times of `radit train-lm` with packed batches padded to `max_length` (what it does) or to their longest row.

    python benchmarks/packing_width.py --device cuda [--steps 16] [--batch-size 8] [--max-length 2048]
    python benchmarks/packing_width.py --device cpu --steps 4 --batch-size 2 --max-length 512 --model DIR

Each variant trains in a process of its own (kernel caches start empty in each), `--steps` steps of
`radit.train.lm_ft.train_lm` on SQuAD-open training questions with their gold paragraph as Background
(as benchmarks/gpu_check.py). `longest` pads each micro-batch to its longest row (radit before
2026-11-27, by patching `collate_packed` to ignore the width the loop passes); `max-length` pads
every micro-batch to `--max-length`, one tensor shape for the run. Prints and saves every step's
seconds, the median step and the tokens/s over the steps after the first.

On a GPU a new shape costs a kernel build (cuDNN attention plans): with `longest` the steps that
meet a new width take seconds. On CPU the difference is the pad tokens alone.

Writes results/packing_width-{device}.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import device_slug, save

VARIANTS = ("longest", "max-length")


def training_file(path: Path) -> None:
    """SQuAD-open training questions, each with its gold paragraph as Background (as gpu_check.py)."""
    from gpu_check import bundled_passages, gold_examples

    store, gold_rows = bundled_passages(path.parent)
    path.write_text("".join(json.dumps(ex) + "\n" for ex in gold_examples(store, gold_rows)), encoding="utf-8")


def run_variant(args) -> None:
    """One variant, in this process: train, print one JSON line of step times."""
    from matmul_peak import speed_config, timed_steps

    import radit.train.packing as packing

    if args.variant == "longest":
        collate = packing.collate_packed
        packing.collate_packed = lambda rows, pad, width=None: collate(rows, pad)
    cfg = speed_config(args.data, args.model, args.output, args.steps, args.batch_size, args.max_length, args.dtype, args.device)
    steps = timed_steps(cfg, skip=0)
    print(json.dumps({"variant": args.variant, "seconds": [s["seconds"] for s in steps], "tokens": [s["tokens"] for s in steps]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one variant's process
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        return run_variant(args)
    if args.steps < 2:
        ap.error("--steps must be >= 2: the first step is a warm-up")

    from radit.runtime import resolve_device

    device = resolve_device(args.device)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "train.jsonl"
        training_file(data)
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--variant", variant, "--data", str(data), "--output", str(Path(tmp) / variant),
                   "--device", str(device), "--dtype", args.dtype, "--model", args.model, "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            seconds, tokens = run["seconds"], run["tokens"]
            results[variant] = {"seconds": [round(s, 4) for s in seconds], "median_step_s": statistics.median(seconds[1:]),
                                "tokens_per_s_after_first": sum(tokens[1:]) / sum(seconds[1:])}
            print(f"{variant:>10}: median step {results[variant]['median_step_s']:.3f} s, "
                  f"{results[variant]['tokens_per_s_after_first']:.0f} tokens/s over steps 2-{args.steps}; "
                  f"steps: {' '.join(f'{s:.2f}' for s in seconds)}")
    ratio = results["max-length"]["tokens_per_s_after_first"] / results["longest"]["tokens_per_s_after_first"]
    print(f"max-length / longest: {ratio:.2f}x tokens/s")
    save(f"packing_width-{device_slug(device)}", {"device": str(device), "dtype": args.dtype, "model": args.model,
                                                  "steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length,
                                                  **results, "max_length_over_longest": ratio}, device=str(device))


if __name__ == "__main__":
    main()
