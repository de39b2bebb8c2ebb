"""LM-ft training throughput: `radit train-lm` against TRL's `SFTTrainer` with completion-only loss, in one run.

    python benchmarks/lm_ft_speed.py --data runs/lm-data/train.jsonl [--steps 12] [--batch-size 4] [--max-length 512]

Both train the same model (SmolLM2-135M-Instruct) on the same examples (`radit build-lm-data`'s
prompt/target pairs, eos after each target), with the same micro-batch size (rows per step), sequence
length, optimizer (AdamW, same lr), precision (fp32 unless --dtype) and thread count. radit packs
examples into its rows (attention kept within each example); TRL's default pads one example per row.
Throughput is counted in real (non-padding) tokens per second over the steps after --warmup, so
packing shows up as more tokens per step. Needs `pip install trl` (not a radit dependency).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from common import save

from radit.config import TrainLMConfig
from radit.lm.model import load_lm
from radit.runtime import resolve_dtype
from radit.train.lm_ft import train_lm


def radit_run(args, workdir: Path) -> dict:
    cfg = TrainLMConfig(data=args.data, model=args.model, output=str(workdir / "radit"), steps=args.steps,
                        batch_size=args.batch_size, max_length=args.max_length, lr=5e-5, min_lr=5e-5, warmup_steps=0,
                        eval_questions=0, eval_every=10**6, checkpoint_every=10**6, dtype=args.dtype, device="cpu")
    train_lm(cfg)
    steps = [json.loads(line) for line in open(workdir / "radit" / "metrics.jsonl") if '"train"' in line]
    timed = steps[args.warmup:]
    tokens, seconds = sum(s["tokens"] for s in timed), sum(s["seconds"] for s in timed)
    return {"tokens_per_s": tokens / seconds, "s_per_step": seconds / len(timed), "tokens_per_step": tokens / len(timed),
            "median_s_per_step": statistics.median(s["seconds"] for s in timed)}


def trl_run(args, examples: list[dict], workdir: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_lm(args.model, device="cpu", dtype="float32")
    eos = tokenizer.eos_token
    data = Dataset.from_list([{"prompt": ex["prompt"], "completion": ex["target"] + eos} for ex in examples])
    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    bf16 = resolve_dtype(args.dtype, "cpu") == "bfloat16"
    config = SFTConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=args.batch_size, max_length=args.max_length,
                       max_steps=args.steps, learning_rate=5e-5, lr_scheduler_type="constant", warmup_steps=0,
                       completion_only_loss=True, packing=False, logging_steps=10**6, save_strategy="no", report_to=[],
                       use_cpu=True, bf16=bf16, dataloader_num_workers=0, seed=0)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer)
    trainer.add_callback(Clock())
    # Real tokens per example as TRL tokenised them (prompt + completion); rows are drawn at random, so a
    # step holds batch_size x the mean on average.
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    trainer.train()
    timed = times[args.warmup:]
    tokens_per_step = args.batch_size * statistics.mean(lengths)
    return {"tokens_per_s": tokens_per_step * len(timed) / sum(timed), "s_per_step": sum(timed) / len(timed),
            "tokens_per_step": tokens_per_step, "median_s_per_step": statistics.median(timed)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="runs/lm-data/train.jsonl")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--dtype", default="float32", choices=["float32", "auto"])
    args = ap.parse_args()

    examples = [json.loads(line) for line in open(args.data, encoding="utf-8")]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # radit's data file holds all examples; TRL gets the same ones.
        radit = radit_run(args, workdir)
        trl = trl_run(args, examples, workdir)
    ratio = radit["tokens_per_s"] / trl["tokens_per_s"]
    print(f"radit train-lm {radit['tokens_per_s']:.0f} tokens/s ({radit['tokens_per_step']:.0f} tokens, "
          f"{radit['s_per_step']:.2f} s per step) vs TRL SFTTrainer {trl['tokens_per_s']:.0f} tokens/s "
          f"({trl['tokens_per_step']:.0f} tokens, {trl['s_per_step']:.2f} s per step): {ratio:.2f}x (target >= 1.2)")
    save(f"lm_ft_speed-{args.dtype}", {"model": args.model, "data": args.data, "steps": args.steps, "warmup": args.warmup,
                                      "batch_size": args.batch_size, "max_length": args.max_length, "dtype": args.dtype,
                                      "radit": radit, "trl": trl, "ratio": round(ratio, 3)})


if __name__ == "__main__":
    main()
