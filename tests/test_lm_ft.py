"""LM fine-tuning (RA-IT): the schedule, the loop on a tiny Llama (full and LoRA), saving, exact resume
after SIGKILL, and bad input. All on CPU, fp32, in seconds."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PASSAGES, kill_when_logged

from radit.config import LoRAConfig, TrainLMConfig
from radit.config_io import from_dict, save_yaml
from radit.lm.model import load_lm
from radit.train.checkpoint import (
    latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from radit.train.lm_ft import dev_split, is_better, lr_at, read_examples, train_lm

QUESTIONS = {
    "ming": ("who founded the Ming dynasty?", " Zhu Yuanzhang"),
    "paris": ("what is the capital of France?", " Paris"),
    "oxygen": ("what is the atomic number of oxygen?", " 8"),
    "nile": ("where does the Nile flow into?", " the Mediterranean Sea"),
    "bowl": ("who won Super Bowl 50?", " the Denver Broncos"),
    "moon": ("who first walked on the Moon?", " Neil Armstrong"),
    "piano": ("who invented the piano?", " Bartolomeo Cristofori"),
    "dna": ("who described the structure of DNA?", " Watson and Crick"),
    "rome": ("who founded Rome?", " Romulus"),
    "tea": ("where did tea originate?", " southwest China"),
}


def write_examples(path: Path, n: int = 60, long_every: int = 0) -> Path:
    """n examples in the data builder's format: (passage, question) -> answer, cycling over the corpus;
    every `long_every`-th one with a Background far over any test max_length."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            doc, title, text = PASSAGES[i % len(PASSAGES)]
            question, answer = QUESTIONS[doc]
            background = f"{title}: {text}" + (" filler" * 200 if long_every and i % long_every == 0 else "")
            marker = ("Question: ", "Q: ")[i % 2]
            rec = {"id": f"{doc}-{i}", "source": "fixture", "category": "qa",
                   "prompt": f"Background: {background}\n\n{marker}{question}\nAnswer:", "target": answer,
                   "background": "retrieved", "passage_id": f"{doc}#{i % 2}", "truncated": False}
            f.write(json.dumps(rec) + "\n")
    return path


def config(tmp_path: Path, model_dir: Path, name: str = "run", **overrides) -> TrainLMConfig:
    data = tmp_path / "train.jsonl"
    if not data.exists():
        write_examples(data)
    base = dict(data=str(data), model=str(model_dir), output=str(tmp_path / name), max_length=128, batch_size=2,
                grad_accum=1, steps=3, lr=1e-3, min_lr=1e-4, warmup_steps=1, dtype="float32", device="cpu",
                eval_every=100, eval_questions=0, checkpoint_every=100)
    return TrainLMConfig(**{**base, **overrides})


def train_lines(run: Path, kind: str = "train") -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [x for x in lines if x["kind"] == kind]


# --------------------------------------------------------------------------- pure pieces


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainLMConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-5)
    assert lr_at(0, cfg) == 0.0
    assert lr_at(5, cfg) == pytest.approx(5e-4)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx((1e-3 + 1e-5) / 2)  # half-way through the cosine
    assert lr_at(100, cfg) == pytest.approx(1e-5)
    assert lr_at(150, cfg) == pytest.approx(1e-5)
    warm = [lr_at(s, cfg) for s in range(0, 11)]
    decay = [lr_at(s, cfg) for s in range(10, 101)]
    assert warm == sorted(warm) and decay == sorted(decay, reverse=True)
    no_warmup = TrainLMConfig(steps=10, warmup_steps=0, lr=1e-3, min_lr=0.0)
    assert 0 < lr_at(1, no_warmup) < 1e-3 and lr_at(10, no_warmup) == pytest.approx(0.0)


def test_is_better_em_then_loss_then_later():
    assert is_better({"dev_em": 10.0, "dev_loss": 3.0}, None)
    assert is_better({"dev_em": 20.0, "dev_loss": 9.0}, {"dev_em": 10.0, "dev_loss": 1.0})
    assert not is_better({"dev_em": 10.0, "dev_loss": 2.0}, {"dev_em": 20.0, "dev_loss": 3.0})
    assert is_better({"dev_em": 10.0, "dev_loss": 2.0}, {"dev_em": 10.0, "dev_loss": 3.0})  # tie: by loss
    assert not is_better({"dev_em": None, "dev_loss": 4.0}, {"dev_em": None, "dev_loss": 3.0})
    assert is_better({"dev_em": None, "dev_loss": None}, {"dev_em": None, "dev_loss": None})  # no signal: the later


def test_dev_split_groups_by_answer_and_is_seeded(tmp_path):
    examples = read_examples(write_examples(tmp_path / "d.jsonl", n=200))
    train, dev = dev_split(examples, seed=0)
    assert sorted(train + dev) == list(range(200)) and 4 <= len(dev) <= 40
    assert {examples[i]["target"] for i in train}.isdisjoint({examples[i]["target"] for i in dev})
    assert dev_split(examples, seed=0) == (train, dev)
    assert dev_split(examples[:49], seed=0)[1] == []  # under 50 examples: no dev set


def test_checkpoint_keeps_last_two_and_restores_rng(tmp_path):
    weights = {"w": torch.arange(4.0)}
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, weights, {"state": {}, "param_groups": []}, {"epoch": 0, "batch_index": step})
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000002", "step-00000003"]
    ckpt = latest_checkpoint(tmp_path)
    assert ckpt.step == 3 and ckpt.state["batch_index"] == 3 and torch.equal(ckpt.weights()["w"], weights["w"])
    (tmp_path / "checkpoints" / "latest").unlink()  # a kill before the pointer moved: the highest complete one
    assert latest_checkpoint(tmp_path).step == 3
    state = rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    set_rng_state(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert latest_checkpoint(tmp_path / "nothing") is None


# --------------------------------------------------------------------------- the loop


def test_full_ft_changes_every_parameter_and_saves_a_loadable_model(tmp_path, tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_lm(str(tiny_lm_dir), device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = config(tmp_path, tiny_lm_dir, eval_every=2, checkpoint_every=2)
    summary = train_lm(cfg, lm=(model, tokenizer))

    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not change"
    run = Path(cfg.output)
    for name in ("config.yaml", "metrics.jsonl", "metrics.json", "loss.png", "checkpoints/latest",
                 "checkpoints/step-00000002/optimizer.pt"):
        assert (run / name).is_file(), name
    assert not (run / "best").exists()  # the best weights live in model/ once it is written
    steps = train_lines(run)
    assert [x["step"] for x in steps] == [1, 2, 3]
    assert all(x["loss"] > 0 and x["tokens"] > 0 and x["grad_norm"] > 0 and x["tokens_per_s"] > 0 for x in steps)
    assert steps[0]["lr"] == pytest.approx(1e-3) and steps[-1]["lr"] == pytest.approx(1e-4)
    evals = train_lines(run, "eval")
    assert [x["step"] for x in evals] == [2, 3] and all(x["dev_loss"] > 0 and x["dev_em"] is None for x in evals)
    assert summary["dev_examples"] >= 1 and summary["examples"] + summary["dev_examples"] == 60
    assert summary["best"]["step"] in (2, 3) and json.loads((run / "metrics.json").read_text()) == summary

    # The saved folder: a plain HF model with its tokenizer, template, config and card.
    saved = run / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json", "prompt_template.json",
                 "radit_train_config.yaml", "README.md"):
        assert (saved / name).is_file(), name
    assert "train.jsonl" in (saved / "README.md").read_text()
    # The in-memory model holds the best evaluation's weights, exactly what was saved.
    loaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    ids = tokenizer(["Background: Paris is in France.\n\nQuestion: capital of France?\nAnswer:"], return_tensors="pt")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ids).logits, model(**ids).logits, atol=1e-5, rtol=1e-5)
    reloaded, _ = load_lm(str(saved), device="cpu")  # what `radit eval --model` does
    assert type(reloaded).__name__ == "LlamaForCausalLM"

    # A rerun of a finished run returns its summary without training.
    assert train_lm(cfg) == summary


def test_lora_changes_only_adapters_and_saves_the_adapter(tmp_path, tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_lm(str(tiny_lm_dir), device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = config(tmp_path, tiny_lm_dir, method="lora", lr=1e-2,
                 lora=LoRAConfig(r=4, alpha=8, dropout=0.0, merge_on_save=False))
    train_lm(cfg, lm=(model, tokenizer))  # wraps the model in place (peft injects its layers)

    lora_params = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora_params and all("lora_B" not in n or p.abs().sum() > 0 for n, p in lora_params.items())  # B starts at 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(p.detach(), before[base_name]), f"base weight {name} changed"
    saved = Path(cfg.output) / "model"
    assert (saved / "adapter_config.json").is_file() and (saved / "adapter_model.safetensors").is_file()
    assert not (saved / "model.safetensors").exists()
    # transformers loads base + adapter from the folder (peft integration); same logits.
    loaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    model.eval()
    ids = tokenizer(["Question: who founded Rome?\nAnswer:"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**ids).logits, model(**ids).logits, atol=1e-5, rtol=1e-5)


def test_lora_merged_on_save_loads_as_a_plain_model(tmp_path, tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_lm(str(tiny_lm_dir), device="cpu")
    cfg = config(tmp_path, tiny_lm_dir, method="lora", steps=2, lr=1e-2, lora=LoRAConfig(r=4, alpha=8, dropout=0.0))
    train_lm(cfg, lm=(model, tokenizer))
    saved = Path(cfg.output) / "model"
    assert (saved / "model.safetensors").is_file() and not (saved / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    ids = tokenizer(["Question: who founded Rome?\nAnswer:"], return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    with torch.no_grad():
        assert not torch.allclose(loaded(**ids).logits, base(**ids).logits, atol=1e-4)  # the adapters were merged in


@pytest.mark.parametrize("pack", [True, False])
def test_grad_accumulation_equals_one_big_batch(tmp_path, tiny_lm_dir, pack):
    big = config(tmp_path, tiny_lm_dir, name=f"big-{pack}", batch_size=4, grad_accum=1, steps=2, pack=pack, eval_every=2)
    acc = dataclasses.replace(big, output=str(tmp_path / f"acc-{pack}"), batch_size=2, grad_accum=2)
    train_lm(big)
    train_lm(acc)
    a, b = train_lines(Path(big.output)), train_lines(Path(acc.output))
    for x, y in zip(a, b):
        assert x["target_tokens"] == y["target_tokens"] and x["tokens"] == y["tokens"]
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
    # ... and so the same model after two steps.
    da, db = train_lines(Path(big.output), "eval"), train_lines(Path(acc.output), "eval")
    assert da[-1]["dev_loss"] == pytest.approx(db[-1]["dev_loss"], rel=1e-4)


def test_dev_em_with_an_index_and_data_summary(tmp_path, tiny_lm_dir, passages_file):
    from radit.config import IndexConfig
    from radit.retriever.index import build_index

    index = tmp_path / "index"
    build_index(IndexConfig(passages=str(passages_file), output=str(index), backend="bm25"))
    write_examples(tmp_path / "train.jsonl")
    # The data builder's summary names the index and the template the prompts were rendered with.
    (tmp_path / "summary.json").write_text(json.dumps({"index": str(index), "template": {"name": "qa-short", "version": 1}}))
    cfg = config(tmp_path, tiny_lm_dir, steps=2, eval_every=1, eval_questions=2, eval_k=2, eval_sample=True)
    summary = train_lm(cfg)
    assert "sampled 2 questions" in (Path(summary["model"]) / "README.md").read_text()
    evals = train_lines(Path(cfg.output), "eval")
    assert [x["step"] for x in evals] == [1, 2]
    assert all(x["dev_em"] is not None and x["dev_questions"] == 2 for x in evals)
    assert summary["best"]["dev_em"] is not None
    # The saved model carries the training data's template, so `radit eval --template MODEL` asks the same way.
    from radit.prompts import resolve_template

    assert resolve_template(str(Path(summary["model"]))).name == "qa-short"


_KILLED_RUN = """
import sys, time
import radit.train.lm_ft as lm_ft
from radit.config import TrainLMConfig
from radit.config_io import from_dict, load_yaml

saved = []
save = lm_ft.save_checkpoint
lr_at = lm_ft.lr_at
def save_checkpoint(*args, **kwargs):
    saved.append(save(*args, **kwargs))
def slow_lr_at(step, cfg):
    if saved:
        time.sleep(0.4)  # after the first checkpoint, slow enough to be killed between steps or mid-step
    return lr_at(step, cfg)
lm_ft.save_checkpoint, lm_ft.lr_at = save_checkpoint, slow_lr_at
lm_ft.train_lm(from_dict(TrainLMConfig, load_yaml(sys.argv[1])))
"""


def test_resume_after_sigkill_continues_the_same_trajectory(tmp_path, tiny_lm_dir):
    # LoRA with dropout: the resumed run must also restore the RNG state to draw the same masks.
    common = dict(method="lora", lr=1e-2, lora=LoRAConfig(r=4, alpha=8, dropout=0.2), steps=7, checkpoint_every=2, eval_every=3)
    killed = config(tmp_path, tiny_lm_dir, name="killed", **common)
    save_yaml(killed, tmp_path / "killed.yaml")
    run = Path(killed.output)
    kill_when_logged(_KILLED_RUN, tmp_path / "killed.yaml", run)
    assert latest_checkpoint(run).step == 2 and not (run / "model").exists()

    resumed = train_lm(killed)  # the same command again
    assert resumed["resumed_from"] == 2
    reference = train_lm(config(tmp_path, tiny_lm_dir, name="reference", **common))
    a, b = train_lines(run), train_lines(Path(reference["output"]))
    assert [x["step"] for x in a] == list(range(1, 8))
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6, abs=1e-7), x["step"]
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)
    assert [x["step"] for x in train_lines(run, "eval")] == [3, 6, 7]
    assert resumed["best"] == reference["best"]
    # A rerun with other settings is refused, naming the way out.
    with pytest.raises(ValueError, match="--overwrite"):
        train_lm(dataclasses.replace(killed, lr=5e-3))


def test_killed_while_saving_resumes_from_the_last_step_and_overwrite_starts_over(tmp_path, tiny_lm_dir):
    cfg = config(tmp_path, tiny_lm_dir, steps=2, checkpoint_every=2)
    first = train_lm(cfg)
    run = Path(cfg.output)
    shutil.rmtree(run / "model")  # as if killed after the last checkpoint, before model/ was renamed into place
    (run / "metrics.json").unlink()
    again = train_lm(cfg)
    assert again["resumed_from"] == 2 and again["train_loss"] == first["train_loss"] and (run / "model").is_dir()
    assert [x["step"] for x in train_lines(run)] == [1, 2]
    fresh = train_lm(dataclasses.replace(cfg, overwrite=True))
    assert fresh["resumed_from"] is None and fresh["train_loss"] == pytest.approx(first["train_loss"], rel=1e-6)
    assert [x["step"] for x in train_lines(run)] == [1, 2]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "no examples"),
        ('{"prompt": "Q: a\\nA:", "target": " b"}\n{not json\n', r"train\.jsonl:2: not valid JSON"),
        ('{"prompt": "Q: a\\nA:"}\n', r"train\.jsonl:1: `target` must be a non-empty string"),
        ('["prompt", "target"]\n', r"train\.jsonl:1: expected a JSON object"),
        ('{"prompt": "", "target": " b"}\n', r"train\.jsonl:1: `prompt`"),
    ],
)
def test_bad_data_file_is_a_one_line_error_and_writes_nothing(tmp_path, tiny_lm_dir, content, match):
    (tmp_path / "train.jsonl").write_text(content)
    cfg = config(tmp_path, tiny_lm_dir)
    with pytest.raises(ValueError, match=match):
        train_lm(cfg)
    assert not Path(cfg.output).exists()


def test_bad_inputs_fail_before_writing(tmp_path, tiny_lm_dir):
    cfg = config(tmp_path, tiny_lm_dir)
    with pytest.raises(FileNotFoundError, match="build-lm-data"):
        train_lm(dataclasses.replace(cfg, data=str(tmp_path / "missing.jsonl")))
    with pytest.raises(ValueError, match="context of 128"):
        train_lm(dataclasses.replace(cfg, max_length=256))
    with pytest.raises(ValueError, match="--eval-index"):
        train_lm(dataclasses.replace(cfg, eval_questions=2))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="did not write"):
        train_lm(dataclasses.replace(cfg, output=str(mine)))
    assert not Path(cfg.output).exists() and (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="unknown key"):
        from_dict(TrainLMConfig, {"data": "x", "learning_rate": 1e-3})
    with pytest.raises(ValueError, match="--lr"):
        TrainLMConfig(lr=1e-3, min_lr=1e-2)


def test_too_long_examples_are_skipped_and_counted_never_truncated(tmp_path, tiny_lm_dir):
    write_examples(tmp_path / "train.jsonl", n=40, long_every=4)  # 10 of 40 far over 128 tokens
    summary = train_lm(config(tmp_path, tiny_lm_dir, steps=1))
    assert summary["skipped_too_long"] == 10 and summary["examples"] == 30
    write_examples(tmp_path / "long.jsonl", n=4, long_every=1)
    with pytest.raises(ValueError, match="none of the 4 training examples fits"):
        train_lm(config(tmp_path, tiny_lm_dir, name="long", data=str(tmp_path / "long.jsonl")))
    assert not (tmp_path / "long").exists()


def test_lm_without_pad_token_trains(tmp_path, tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "no-pad"
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(folder)
    AutoModelForCausalLM.from_pretrained(tiny_lm_dir).save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    summary = train_lm(config(tmp_path, folder, steps=1))  # load_lm pads with eos
    assert summary["train_loss"] > 0


@pytest.mark.integration
def test_smollm2_two_steps(tmp_path):
    write_examples(tmp_path / "train.jsonl", n=4)
    cfg = config(tmp_path, Path("smollm2-135m-instruct"), steps=2, max_length=256, batch_size=2, lr=1e-5, min_lr=1e-6,
                 warmup_steps=0, eval_every=2)
    cfg = dataclasses.replace(cfg, model="smollm2-135m-instruct")
    summary = train_lm(cfg)
    steps = train_lines(Path(cfg.output))
    assert len(steps) == 2 and all(0 < x["loss"] < 20 for x in steps)
    assert (Path(summary["model"]) / "model.safetensors").is_file()
