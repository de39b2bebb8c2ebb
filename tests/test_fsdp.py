"""FSDP (version 2) invariance: `radit train-lm` started by `accelerate launch --config_file
configs/accelerate/fsdp.yaml` on 2 CPU processes (gloo) trains as 1 process with the doubled batch,
saves the same model, and writes checkpoints that resume on 2 processes and on 1.

accelerate turns FSDP on for GPUs only (on CPUs `AcceleratorState` settles on MULTI_CPU, whole
copies), while torch's `fully_shard` runs on gloo. So the worker (this file under `accelerate launch`)
switches the accelerator it gets to FSDP with the plugin that the preset's environment describes,
as accelerate does on GPUs; the rest (accelerate's `fsdp2_prepare_model`, no_sync, gradient
clipping over DTensors, torch.distributed.checkpoint's gathering and broadcasting) is the GPU path.
The preset's bf16 is overridden with `--mixed_precision no`, and the run's --dtype is float32.

Tolerances are test_ddp.py's: per-step train and dev loss relative 1e-5, gradient norm relative
1e-4, saved weights absolute 1e-5, and the same 1e-5 for the checkpoint's Adam moments (measured on a
2-core x86 machine, torch 2.13: full fine-tuning 0, 7e-6, 1e-7 and 1.3e-7; LoRA 2e-7, 1e-7, 3e-8).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
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


def _fsdp_worker(config_yaml: str) -> None:
    """One process of `test_fsdp_two_processes_train_as_one_with_the_doubled_batch`: the CLI twice, under FSDP."""
    from accelerate import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    from radit import distributed
    from radit.cli import main
    from radit.config_io import load_yaml
    from radit.train import lm_ft

    make = lm_ft._make_accelerator

    def make_fsdp(cfg, dtype):
        accelerator = make(cfg, dtype)
        if accelerator.distributed_type == DistributedType.FSDP:  # the second run: accelerate's state lives on
            return accelerator
        assert accelerator.distributed_type == DistributedType.MULTI_CPU  # what accelerate makes of FSDP on CPUs
        # As AcceleratorState does on GPUs: both states (the next AcceleratorState() copies PartialState's).
        accelerator.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # from the preset, via accelerate launch's environment
        lm_ft.check_data_parallel(accelerator.distributed_type, accelerator.state.fsdp_plugin.fsdp_version)
        return accelerator

    lm_ft._make_accelerator = make_fsdp
    assert main(["train-lm", "--config", config_yaml, "-q"]) == 0
    run = Path(load_yaml(config_yaml)["output"])
    if distributed.is_main():  # as if killed after the step-2 checkpoint, before model/ was in place
        shutil.copytree(run, run.with_name(run.name + "-finished"))
        shutil.rmtree(run / "model")
        (run / "metrics.json").unlink()
    distributed.barrier()
    assert main(["train-lm", "--config", config_yaml, "-q"]) == 0  # the same command resumes, on 2 processes


@pytest.mark.distributed
@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_two_processes_train_as_one_with_the_doubled_batch(tmp_path, tiny_lm_dir, method):
    from test_lm_ft import config

    from radit.config import LoRAConfig
    from radit.train.checkpoint import latest_checkpoint
    from radit.train.lm_ft import train_lm

    # Evaluations at steps 2 and 3 (a sharded forward on both processes), checkpoints at step 2. LoRA:
    # without dropout (its masks differ with the batch split), merged into the saved model.
    lora = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"], merge_on_save=True)
    cfg = config(tmp_path, tiny_lm_dir, name="fsdp", batch_size=2, steps=3, eval_every=2, checkpoint_every=2, pack=True,
                 method=method, lora=lora)
    save_yaml(cfg, tmp_path / "fsdp.yaml")
    launched = accelerate_launch("fsdp", __file__, str(tmp_path / "fsdp.yaml"), mixed_precision="no")
    one = train_lm(dataclasses.replace(cfg, output=str(tmp_path / "one"), batch_size=4))

    run, finished, reference = Path(cfg.output), tmp_path / "fsdp-finished", Path(one["output"])
    for trained in (finished, run):  # uninterrupted, and resumed from step 2 on 2 processes
        assert_same_training(trained, reference, LM_LOSS_RTOL)
        a, b = metric_lines(trained, "eval"), metric_lines(reference, "eval")
        assert [x["step"] for x in a] == [x["step"] for x in b] == [2, 3]
        for x, y in zip(a, b):
            assert x["dev_loss"] == pytest.approx(y["dev_loss"], rel=LM_LOSS_RTOL)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["resumed_from"] == 2 and summary["processes"] == 2
    assert summary["best"]["step"] == one["best"]["step"]
    assert launched.stdout.count("fine-tuned model ->") == 2  # rank 0 alone reports

    # The saved model is a plain Hugging Face folder: it loads, and holds the one-process run's weights.
    assert_same_hf_model(run / "model", reference / "model")

    # The step-2 checkpoint holds the whole weights and optimizer state, in the one-process format ...
    mine, theirs = latest_checkpoint(finished), latest_checkpoint(reference)
    assert mine.step == theirs.step == 2 and mine.state["processes"] == 2
    assert_same_checkpoint(mine, theirs)

    # ... so one process resumes it (each step then takes 1 micro-batch instead of 2, with a warning).
    two_process_step_3 = metric_lines(run, "train")[2]
    shutil.rmtree(run)
    finished.rename(run)  # --output is part of the run's settings
    shutil.rmtree(run / "model")
    (run / "metrics.json").unlink()
    resumed = train_lm(cfg)
    assert resumed["resumed_from"] == 2 and resumed["processes"] == 1
    assert [x["step"] for x in metric_lines(run, "train")] == [1, 2, 3]
    assert metric_lines(run, "train")[2]["tokens"] < two_process_step_3["tokens"]


def test_train_lm_takes_fsdp_2_and_refuses_what_it_cannot_run():
    from accelerate.utils import DistributedType

    from radit.train.lm_ft import check_data_parallel

    for ok in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.DEEPSPEED):
        check_data_parallel(ok)  # DeepSpeed: tests/test_deepspeed.py
    check_data_parallel(DistributedType.FSDP, 2)
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        check_data_parallel(DistributedType.FSDP, 1)
    with pytest.raises(ValueError, match="configs/accelerate/fsdp.yaml"):
        check_data_parallel(DistributedType.MEGATRON_LM)


if __name__ == "__main__":
    _fsdp_worker(sys.argv[1])
