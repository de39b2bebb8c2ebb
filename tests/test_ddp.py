"""Data-parallel invariance: `radit train-lm` and `radit train-retriever` started by torchrun or by
`accelerate launch --config_file configs/accelerate/ddp.yaml` on 2 CPU processes (gloo) train as 1
process with the doubled batch; and the `accelerate launch` presets are what accelerate reads.

Each test launches `python -m torch.distributed.run --standalone --nproc-per-node 2` or `python -m
accelerate.commands.launch --config_file configs/accelerate/ddp.yaml --num_processes 2` (the preset
kept as shipped, bf16 included: radit's --dtype float32 decides) in a subprocess, on tiny models in
fp32, and compares with in-process one-process runs:

- per-step train loss: relative 1e-5 for LM-ft (the same sums, added up in another order; measured
  1e-7), 1e-4 for R-ft (queries padded to another length go through other matrix shapes, and p_R's
  temperature 0.05 multiplies that float noise by 20; measured 5e-6);
- per-step gradient norm: relative 1e-4 (measured 0 and 3e-6);
- the saved weights: absolute 1e-5 after a few AdamW steps at lr 1e-3 (measured 1e-7: Adam divides
  by sqrt(v), so the noise of a near-zero gradient can move a weight by more than its own size);
- rank 0 alone writes: one metric line per step, one model, and one line of output per run.

The torchrun LM test's processes run `_lm_worker` (this file under torchrun): train, then delete the
finished run's model as if killed after its last checkpoint, and train again, which resumes on 2
processes. The other tests run the CLI module itself: `torchrun ... -m radit.cli train-retriever`,
`accelerate launch ... -m radit.cli train-lm`. On CPUs `accelerate launch` takes no --cpu: with it,
accelerate starts one process (its CPU launcher is multi-process under MPI only); without it, the GPU
presets go through torchrun and each process, finding no GPU, runs on the CPU with gloo.

FSDP: tests/test_fsdp.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from radit.config import TrainRetrieverConfig
from radit.config_io import save_yaml

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
LM_LOSS_RTOL, R_LOSS_RTOL, GRAD_NORM_RTOL, WEIGHT_ATOL = 1e-5, 1e-4, 1e-4, 1e-5
PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def _launch(*command: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and k != "TQDM_DISABLE"}
    env["OMP_NUM_THREADS"] = "1"  # two processes on a small machine; accelerate would pick a thread count of its own
    run = subprocess.run([sys.executable, "-m", *command], env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    return run


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone --nproc-per-node 2 ARGS`, checked to succeed."""
    return _launch("torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args)


def accelerate_launch(preset: str, *args: str, mixed_precision: str | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file configs/accelerate/PRESET.yaml --num_processes 2 ARGS` on this
    machine's CPUs (no --cpu, see above), on a free port, checked to succeed; `mixed_precision`
    overrides the preset's."""
    options = ["--config_file", str(PRESETS_DIR / f"{preset}.yaml"), "--num_processes", "2", "--main_process_port", "0"]
    if mixed_precision is not None:
        options += ["--mixed_precision", mixed_precision]
    return _launch("accelerate.commands.launch", *options, *args)


def metric_lines(run: Path, kind: str) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["kind"] == kind]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def assert_same_training(run: Path, reference: Path, loss_rtol: float) -> None:
    """The same steps with the same losses, gradient norms and token / pair counts, and the same saved model."""
    a, b = metric_lines(run, "train"), metric_lines(reference, "train")
    assert [x["step"] for x in a] == [x["step"] for x in b]
    for x, y in zip(a, b):
        for key in ("tokens", "target_tokens", "pairs", "top1_agreement", "epoch"):
            assert x.get(key) == y.get(key), (key, x["step"])
        assert x["loss"] == pytest.approx(y["loss"], rel=loss_rtol), x["step"]
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=GRAD_NORM_RTOL), x["step"]
    wa, wb = weights(run / "model"), weights(reference / "model")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=WEIGHT_ATOL, msg=name)


def assert_same_checkpoint(mine, theirs) -> None:
    """Two `radit.train.checkpoint.Checkpoint`s hold the same step, weights and AdamW state (moments,
    step counts, parameter groups and their weight decay), to WEIGHT_ATOL."""
    assert mine.step == theirs.step
    wa, wb = mine.weights(), theirs.weights()
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=WEIGHT_ATOL, msg=name)
    oa, ob = mine.optimizer_state(), theirs.optimizer_state()
    assert [g["params"] for g in oa["param_groups"]] == [g["params"] for g in ob["param_groups"]]
    assert [g["weight_decay"] for g in oa["param_groups"]] == [g["weight_decay"] for g in ob["param_groups"]]
    assert oa["state"].keys() == ob["state"].keys() == set(range(len(wa)))
    for i in oa["state"]:
        assert float(oa["state"][i]["step"]) == float(ob["state"][i]["step"]) == float(mine.step)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(oa["state"][i][key], ob["state"][i][key], rtol=0, atol=WEIGHT_ATOL, msg=f"{i} {key}")


def assert_same_hf_model(folder: Path, reference: Path) -> None:
    """Both folders load with `from_pretrained` and hold the same weights, to WEIGHT_ATOL."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    expected = AutoModelForCausalLM.from_pretrained(reference).state_dict()
    assert loaded.keys() == expected.keys()
    for name in loaded:
        torch.testing.assert_close(loaded[name], expected[name], rtol=0, atol=WEIGHT_ATOL, msg=name)


# --------------------------------------------------------------------------- LM-ft


def _lm_worker(config_yaml: str) -> None:
    """One process of `test_lm_ft_two_processes_train_as_one_with_the_doubled_batch`: the CLI twice."""
    from radit import distributed
    from radit.cli import main
    from radit.config_io import load_yaml

    assert main(["train-lm", "--config", config_yaml, "-q"]) == 0
    run = Path(load_yaml(config_yaml)["output"])
    if distributed.is_main():  # as if killed after the step-2 checkpoint, before model/ was in place
        shutil.rmtree(run / "model")
        (run / "metrics.json").unlink()
    distributed.barrier()
    assert main(["train-lm", "--config", config_yaml, "-q"]) == 0  # the same command resumes, on 2 processes


@pytest.mark.distributed
def test_lm_ft_two_processes_train_as_one_with_the_doubled_batch(tmp_path, tiny_lm_dir):
    from test_lm_ft import config

    from radit.train.lm_ft import train_lm

    common = dict(steps=3, checkpoint_every=2, pack=True)
    ddp = config(tmp_path, tiny_lm_dir, name="ddp", batch_size=2, **common)
    save_yaml(ddp, tmp_path / "ddp.yaml")
    launched = torchrun(__file__, str(tmp_path / "ddp.yaml"))

    one = train_lm(dataclasses.replace(ddp, output=str(tmp_path / "one"), batch_size=4))
    accumulated = train_lm(dataclasses.replace(ddp, output=str(tmp_path / "acc"), batch_size=2, grad_accum=2))
    run = Path(ddp.output)
    assert_same_training(run, Path(one["output"]), LM_LOSS_RTOL)
    assert_same_training(Path(accumulated["output"]), Path(one["output"]), LM_LOSS_RTOL)

    # The second launch resumed from step 2 on both processes, each with its own RNG states.
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["resumed_from"] == 2 and summary["processes"] == 2 and one["processes"] == 1
    assert sorted(p.name for p in (run / "checkpoints" / "step-00000002").glob("rng*.pt")) == ["rng-1.pt", "rng.pt"]
    assert [x["step"] for x in metric_lines(run, "eval")] == [3]
    # Rank 0 alone reports: one line per run, not one per process.
    assert launched.stdout.count("fine-tuned model ->") == 2


@pytest.mark.distributed
def test_lm_ft_under_accelerate_launch_with_the_ddp_preset(tmp_path, tiny_lm_dir):
    from test_lm_ft import config

    from radit.train.lm_ft import train_lm

    ddp = config(tmp_path, tiny_lm_dir, name="ddp", batch_size=2, steps=3, checkpoint_every=2, pack=True)
    save_yaml(ddp, tmp_path / "ddp.yaml")
    launched = accelerate_launch("ddp", "-m", "radit.cli", "train-lm", "--config", str(tmp_path / "ddp.yaml"), "-q")
    one = train_lm(dataclasses.replace(ddp, output=str(tmp_path / "one"), batch_size=4))

    run = Path(ddp.output)
    assert_same_training(run, Path(one["output"]), LM_LOSS_RTOL)  # in float32: --dtype, not the preset's bf16
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["processes"] == 2 and summary["dtype"] == "float32"
    assert sorted(p.name for p in (run / "checkpoints" / "step-00000002").glob("rng*.pt")) == ["rng-1.pt", "rng.pt"]
    assert launched.stdout.count("fine-tuned model ->") == 1


# --------------------------------------------------------------------------- R-ft


@pytest.fixture
def r_ft_data(tmp_path, passages_file, tiny_encoder_dir, tiny_lm_dir) -> tuple[Path, Path]:
    """(LSR cache, query tower without dropout): dropout masks differ with the batch split, the rest must not."""
    from test_r_ft import QA, lsr_config
    from transformers import AutoTokenizer, BertModel

    from radit.config import EncoderConfig, IndexConfig
    from radit.retriever.index import build_index
    from radit.train.lsr_data import build_lsr_data

    index = tmp_path / "index"
    enc = EncoderConfig(query_model=str(tiny_encoder_dir), pooling="mean", normalize=True, score_temperature=0.05)
    build_index(IndexConfig(passages=str(passages_file), output=str(index), encoder=enc, device="cpu", dtype="float32"))
    qa = tmp_path / "qa.jsonl"
    qa.write_text("".join(json.dumps({"id": f"q{i}", "instruction": q, "output": a}) + "\n" for i, (q, a) in enumerate(QA)))
    data = lsr_config(tmp_path, index, tiny_lm_dir, f"jsonl:{qa}")
    build_lsr_data(data)
    tower = tmp_path / "tower"
    BertModel.from_pretrained(tiny_encoder_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save_pretrained(tower)
    AutoTokenizer.from_pretrained(tiny_encoder_dir).save_pretrained(tower)
    return Path(data.output), tower


@pytest.mark.distributed
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate-ddp", "accelerate-fsdp"])
def test_r_ft_two_processes_train_as_one_with_the_doubled_batch(tmp_path, r_ft_data, launcher):
    from radit.train.r_ft import train_retriever

    cache, tower = r_ft_data
    # 12 pairs, 3 held out: 9 to train on, 4 a step; step 3 holds the epoch's last pair, which leaves
    # rank 1 nothing to encode; step 4 starts the next epoch.
    ddp = TrainRetrieverConfig(data=[str(cache)], query_encoder=str(tower), output=str(tmp_path / "ddp"), batch_size=2,
                               steps=4, lr=1e-3, dev_pairs=3, eval_every=2, eval_questions=0, checkpoint_every=2,
                               device="cpu", dtype="float32")
    save_yaml(ddp, tmp_path / "ddp.yaml")
    command = ("-m", "radit.cli", "train-retriever", "--config", str(tmp_path / "ddp.yaml"), "-q")
    launched = torchrun(*command) if launcher == "torchrun" else accelerate_launch(launcher.split("-")[1], *command)
    one = train_retriever(dataclasses.replace(ddp, output=str(tmp_path / "one"), batch_size=4))

    run = Path(ddp.output)
    assert [x["pairs"] for x in metric_lines(run, "train")] == [4, 4, 1, 4]
    assert_same_training(run, Path(one["output"]), R_LOSS_RTOL)
    a, b = metric_lines(run, "eval"), metric_lines(Path(one["output"]), "eval")
    assert [x["step"] for x in a] == [x["step"] for x in b] == [0, 2, 4]
    for x, y in zip(a, b):
        assert x["dev_mrr"] == y["dev_mrr"] and x["dev_loss"] == pytest.approx(y["dev_loss"], rel=R_LOSS_RTOL)
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["best"]["step"] == one["best"]["step"] and summary["processes"] == 2
    assert sorted(p.name for p in (run / "checkpoints" / "step-00000002").glob("rng*.pt")) == ["rng-1.pt", "rng.pt"]
    assert launched.stdout.count("fine-tuned query encoder ->") == 1


# --------------------------------------------------------------------------- accelerate launch presets

PRESETS = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero2": "DEEPSPEED", "deepspeed-zero3": "DEEPSPEED"}


@pytest.mark.parametrize("name", PRESETS)
def test_accelerate_presets_are_what_accelerate_launch_reads(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    assert sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")) == sorted(PRESETS)
    cfg = load_config_from_file(str(PRESETS_DIR / f"{name}.yaml"))  # what `accelerate launch --config_file` does; unknown keys raise
    assert isinstance(cfg, ClusterConfig) and cfg.compute_environment.value == "LOCAL_MACHINE"
    assert cfg.distributed_type == DistributedType(PRESETS[name])
    assert (cfg.mixed_precision, cfg.num_processes, cfg.num_machines, cfg.use_cpu) == ("bf16", 8, 1, False)
    # Nested keys become `accelerate launch` options (fsdp_config.x as --fsdp_x), where a misspelt one is lost.
    options = {action.dest for action in launch_command_parser()._actions}
    nested = {k if k.startswith("fsdp") else f"fsdp_{k}" for k in cfg.fsdp_config} | set(cfg.deepspeed_config)
    assert nested <= options, nested - options
    if name.startswith("deepspeed"):
        assert cfg.deepspeed_config["zero_stage"] == int(name[-1]) and cfg.deepspeed_config["gradient_accumulation_steps"] == 1


if __name__ == "__main__":
    _lm_worker(sys.argv[1])
