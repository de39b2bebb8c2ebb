"""DeepSpeed ZeRO invariance: `radit train-lm` started by `accelerate launch --config_file
configs/accelerate/deepspeed-zero{2,3}.yaml` on 2 CPU processes (DeepSpeed's CPU accelerator, gloo)
trains as 1 process with the doubled batch, and saves a plain Hugging Face model.

DeepSpeed is not a radit dependency: without it these tests are skipped. The presets run as shipped
but for `--mixed_precision no` (the run's --dtype is float32). radit fills the engine's micro-batch,
accumulation and clipping from its own flags (`lm_ft.configure_deepspeed`), marks each step's last
micro-batch as the accumulation boundary and scales the loss itself (already normalised by the step's
target tokens), so 2 processes x batch 2 x grad-accum 2 = 1 process x batch 4 x grad-accum 2.

Also: --weight-decay 0.1 (ZeRO-3 partitions the weights as they load; the decay groups must still
split matrices from vectors), the step-2 checkpoint holds the whole weights and AdamW state in the
one-process format, and it resumes under DeepSpeed on 2 processes and on 1 process without it.

Tolerances are test_ddp.py's: per-step train and dev loss relative 1e-5, gradient norm relative 1e-4,
weights and Adam moments absolute 1e-5 (measured on a 2-core x86 machine, torch 2.13, deepspeed
0.19.8, both stages: 9e-8, 1.9e-5, 1.1e-7 and 5.6e-7). Run it with deepspeed importable, e.g.
`pip install --target /tmp/ds-pkgs deepspeed hjson msgpack ninja py-cpuinfo einops --no-deps` and
`PYTHONPATH=/tmp/ds-pkgs pytest tests/test_deepspeed.py` (~55 s for both stages).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from test_ddp import (
    LM_LOSS_RTOL,
    accelerate_launch,
    assert_same_checkpoint,
    assert_same_hf_model,
    assert_same_training,
    metric_lines,
)

from radit.config_io import save_yaml

pytestmark = pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                                reason="deepspeed is not installed (not a radit dependency)")


@pytest.mark.distributed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_processes_train_as_one_with_the_doubled_batch(tmp_path, tiny_lm_dir, stage):
    from test_lm_ft import config

    from radit.train.checkpoint import latest_checkpoint
    from radit.train.lm_ft import train_lm

    # grad-accum 2: the engine must step at radit's boundaries; an evaluation at step 2 (ZeRO-3: on both processes).
    cfg = config(tmp_path, tiny_lm_dir, name="ds", batch_size=2, grad_accum=2, steps=3, eval_every=2, checkpoint_every=2, pack=True,
                 grad_clip=1.0, weight_decay=0.1)  # ZeRO-3 partitions the weights as they load: the decay groups hold
    save_yaml(cfg, tmp_path / "ds.yaml")
    launched = accelerate_launch(f"deepspeed-zero{stage}", "-m", "radit.cli", "train-lm", "--config",
                                 str(tmp_path / "ds.yaml"), "-q", mixed_precision="no")
    one = train_lm(dataclasses.replace(cfg, output=str(tmp_path / "one"), batch_size=4))

    run, reference = Path(cfg.output), Path(one["output"])
    assert_same_training(run, reference, LM_LOSS_RTOL)
    a, b = metric_lines(run, "eval"), metric_lines(reference, "eval")
    assert [x["step"] for x in a] == [x["step"] for x in b] == [2, 3]
    for x, y in zip(a, b):
        assert x["dev_loss"] == pytest.approx(y["dev_loss"], rel=LM_LOSS_RTOL)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["processes"] == 2
    assert launched.stdout.count("fine-tuned model ->") == 1  # rank 0 alone reports

    # The step-2 checkpoint holds the whole weights and AdamW state, in the one-process format ...
    mine, theirs = latest_checkpoint(run), latest_checkpoint(reference)
    assert mine.step == theirs.step == 2 and mine.state["processes"] == 2
    assert_same_checkpoint(mine, theirs)

    assert_same_hf_model(run / "model", reference / "model")

    # ... so the same command resumes it under DeepSpeed, and one process without it.
    for resume in ("deepspeed", "one process"):
        shutil.rmtree(run / "model")
        (run / "metrics.json").unlink()
        if resume == "deepspeed":
            accelerate_launch(f"deepspeed-zero{stage}", "-m", "radit.cli", "train-lm", "--config", str(tmp_path / "ds.yaml"),
                              "-q", mixed_precision="no")
            summary = json.loads((run / "metrics.json").read_text())
            assert summary["resumed_from"] == 2 and summary["processes"] == 2
            assert_same_training(run, reference, LM_LOSS_RTOL)
        else:
            summary = train_lm(cfg)
            assert summary["resumed_from"] == 2 and summary["processes"] == 1
            assert [x["step"] for x in metric_lines(run, "train")] == [1, 2, 3]
