"""LM fine-tuning (RA-IT, RA-DIT §2.3): one readable loop, setup -> fit -> validate -> save.

    radit train-lm --config configs/lm-ft-quickstart.yaml
    python -m radit.train.lm_ft --config configs/lm-ft-quickstart.yaml --steps 10   (the same, without the CLI)

Minimises Eq. 3, -log p_LM(y | c ∘ x) on the target tokens only (`radit.train.losses`), over the
examples of `radit build-lm-data` (one JSON line each: `prompt` = the rendered `Background: c\\n\\n...
Answer:` text, `target` = the continuation, e.g. " Paris"). Full fine-tuning or LoRA (peft), AdamW,
linear warm-up then cosine decay (`lr_at`), gradient accumulation, clipping, examples packed with
attention kept within each one (`radit.train.packing`), under `accelerate` (mixed precision from
--dtype).

Data-parallel under `accelerate launch` or torchrun (the same command, e.g. `accelerate launch
--config_file configs/accelerate/ddp.yaml -m radit.cli train-lm ...`): a step takes the next
grad_accum x processes micro-batches of --batch-size rows of the one seeded order, process r the
r-th, r + processes-th, ...; the loss is normalised by the target tokens of the whole step, so 2
processes x batch 2 train as 1 process x batch 4 (tests/test_ddp.py). Rank 0 alone writes.

FSDP (version 2, configs/accelerate/fsdp.yaml) shards the weights and the optimizer state over the
processes; the same loop runs, with three differences: every process evaluates (a forward needs all
of them), checkpoints gather the whole trainable weights and optimizer state onto rank 0, so they
resume on any number of processes (`radit.train.checkpoint`), and rank 0 saves model/ from a fresh
CPU copy of --model that it loads the gathered weights into (tests/test_fsdp.py). accelerate runs
FSDP on GPUs only: on CPUs that preset trains data-parallel, with whole copies.

DeepSpeed ZeRO (configs/accelerate/deepspeed-zero2.yaml, -zero3.yaml) runs the same loop through the
engine: radit fills the engine's micro-batch, accumulation steps and clipping from --batch-size,
--grad-accum and --grad-clip (`configure_deepspeed`), marks each step's last micro-batch as the
accumulation boundary, and backpropagates its own step-normalised loss unscaled; the engine then
reduces, clips and steps. Checkpoints gather the whole weights and AdamW state onto rank 0 in the
one-process format (`radit.distributed.deepspeed_full_state`), so they resume with or without
DeepSpeed; under ZeRO-3 every process evaluates and rank 0 saves model/ from a CPU copy of --model,
as under FSDP (tests/test_deepspeed.py, which runs where deepspeed is installed; it trains on CPUs
too, with gloo).

Dev evaluation, every --eval-every steps and at the end (the paper's early stopping):

- dev loss: Eq. 3 on a held-out 2% (at most 200) of the training file, drawn by a seeded split of
  the examples grouped by (source, target), so the k' examples of one question (same answer, other
  chunks) are all on the same side; files under 50 examples hold out none;
- dev EM: REPLUG (Eq. 2), 0-shot, template qa, k = --eval-k, on --eval-questions questions of the
  bundled SQuAD-open dev split (the first ones, or with --eval-sample a seeded draw across its
  articles), with chunks retrieved once at setup from --eval-index (default:
  the `index` named in the data file's summary.json).

The saved model is the best evaluation's by dev EM (ties, or no questions: by dev loss; neither: the
last step). The run directory (--output) gets:

    config.yaml        the resolved config, written once all inputs are checked
    metrics.jsonl      one line per step (kind "train": step, loss, lr, tokens, tokens_per_s,
                       grad_norm, ...) and per evaluation (kind "eval": dev_loss, dev_em, ...)
    checkpoints/       the last 2 resumable checkpoints and `latest` (`radit.train.checkpoint`)
    best/              while training: the best evaluation's trainable weights (best.json says which
                       step); removed once model/ holds them
    model/             the fine-tuned model: a Hugging Face folder (safetensors, tokenizer,
                       prompt_template.json, radit_train_config.yaml, README.md model card);
                       with --method lora and --no-lora.merge-on-save, the adapter instead
    loss.png           the loss curve
    metrics.json       the final summary, also returned by `train_lm`

A rerun of the same command resumes from the latest checkpoint (only --device, --checkpoint-every and
--overwrite may change), and returns at once if the run has finished; --overwrite starts over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from radit.artifacts import (
    atomic_path,
    atomic_write_json,
    file_sha256,
)
from radit.config import InferenceConfig, TrainLMConfig
from radit.config_io import save_yaml, to_dict
from radit.distributed import (
    COLLECTIVE_TIMEOUT,
    broadcast_object,
    deepspeed_full_state,
    gather_object,
    load_deepspeed_state,
    progress_bar,
    world_size,
)
from radit.distributed import (
    init as init_distributed,
)
from radit.lm.inputs import IGNORE_INDEX, pad_id
from radit.lm.model import load_lm, logits_to_keep_supported, model_device
from radit.lm.scoring import target_logprobs
from radit.prompts import to_model_text
from radit.runtime import machine_info, resolve_device, resolve_dtype
from radit.train.checkpoint import (
    gather_optimizer_state,
    gather_trainable_state,
    inspect_run_dir,
    latest_checkpoint,
    load_best,
    load_trainable,
    load_training_state,
    read_metrics,
    rng_state,
    save_best,
    save_checkpoint,
    start_run_dir,
    truncate_metrics,
)
from radit.train.losses import count_targets, nll_from_logprobs
from radit.train.optim import adamw
from radit.train.packing import collate_rows, encode_examples, plan_epoch

log = logging.getLogger(__name__)

RESUMABLE_FIELDS = ("device", "checkpoint_every", "overwrite")
"""Settings a rerun may change and still resume: they change no step's result."""
EVAL_QUESTIONS = "quickstart:squad-open/dev"
EVAL_TEMPLATE = "qa"
DEV_EVERY = 50
"""One training example in this many is held out for the dev loss ..."""
DEV_MAX = 200
"""... and at most this many."""
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.json", "loss.png", "checkpoints", "best", "model")
"""What a run writes in its directory (and --overwrite removes)."""
_MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}
_MARKER_NAME = "train-lm"


# --------------------------------------------------------------------------- pieces of the loop


def lr_at(step: int, cfg: TrainLMConfig) -> float:
    """Learning rate of optimizer step `step` (1-based): linear warm-up from 0 to `cfg.lr` over
    `cfg.warmup_steps` steps, then cosine decay to `cfg.min_lr` at step `cfg.steps` (Table 8)."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def read_examples(path: str | Path) -> list[dict[str, Any]]:
    """The training file's records (`prompt` and `target` strings required), or a one-line error.

    Raises:
        FileNotFoundError: no such file.
        ValueError: `path:line: problem` for the first bad line, or an empty file. Skipping bad
            records is the data builder's job; a training file must be clean.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file; build it with `radit build-lm-data`")
    examples = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}); the training file has one JSON object per line") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected a JSON object with `prompt` and `target`, got {type(rec).__name__}")
            for key in ("prompt", "target"):
                if not isinstance(rec.get(key), str) or not rec[key]:
                    raise ValueError(f"{where}: `{key}` must be a non-empty string, got {rec.get(key)!r}")
            examples.append(rec)
    if not examples:
        raise ValueError(f"--data {path}: the file holds no examples; build it with `radit build-lm-data`")
    return examples


def dev_split(examples: Sequence[dict[str, Any]], seed: int) -> tuple[list[int], list[int]]:
    """(train, dev) example indices: 1 in DEV_EVERY examples (at most DEV_MAX) held out, whole
    (source, target) groups at a time, drawn by `seed`; both lists in file order."""
    import numpy as np

    n_dev = min(DEV_MAX, len(examples) // DEV_EVERY)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault((str(ex.get("source", "")), ex["target"]), []).append(i)
    keys = list(groups)
    dev: list[int] = []
    for g in np.random.default_rng([seed, 1]).permutation(len(keys)):
        if len(dev) >= n_dev:
            break
        dev.extend(groups[keys[g]])
    dev_set = set(dev)
    return [i for i in range(len(examples)) if i not in dev_set], sorted(dev)


def _unwrap(model) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model  # peft


def batch_logprobs(model, batch) -> torch.Tensor:
    """[B, W] float32 log p(target) at every position of a `PackedBatch` or `PairBatch`, 0 elsewhere.

    Differentiable. Only the columns where some row has a target go through the LM head
    (`logits_to_keep`): answers are a few tokens of a long Background prompt, and [B, W, V] logits
    would be most of the memory.
    """
    device = model_device(model)
    batch = batch.to(device)
    targets = batch.targets
    cols = (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)  # [K]
    out = torch.zeros(targets.shape, dtype=torch.float32, device=device)
    if cols.numel() == 0:
        return out
    if logits_to_keep_supported(_unwrap(model)):
        logits = model(**batch.model_inputs(), use_cache=False, logits_to_keep=cols).logits  # [B, K, V]
    else:
        logits = model(**batch.model_inputs(), use_cache=False).logits[:, cols]  # [B, K, V]
    return out.index_copy(1, cols, target_logprobs(logits, targets[:, cols]))


def micro_batch_stream(lengths: Sequence[int | None], cfg: TrainLMConfig, epoch: int, index: int) -> Iterator[tuple[int, int, list[list[int]]]]:
    """(epoch, index, rows) of every micro-batch from position (epoch, index) on, epoch after epoch."""
    while True:
        plan = plan_epoch(lengths, cfg.max_length, cfg.batch_size, cfg.pack, cfg.seed, epoch)
        for i in range(index, len(plan)):
            yield epoch, i, plan[i]
        epoch, index = epoch + 1, 0


def is_better(new: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Early stopping's order: higher dev EM, then lower dev loss, then the later evaluation."""
    if best is None:
        return True
    if new.get("dev_em") is not None and best.get("dev_em") is not None and new["dev_em"] != best["dev_em"]:
        return new["dev_em"] > best["dev_em"]
    if new.get("dev_loss") is not None and best.get("dev_loss") is not None and new["dev_loss"] != best["dev_loss"]:
        return new["dev_loss"] < best["dev_loss"]
    return True


def _data_summary(cfg: TrainLMConfig) -> dict[str, Any]:
    """The summary.json that `radit build-lm-data` wrote beside the training file ({} if none)."""
    path = Path(cfg.data).parent / "summary.json"
    with contextlib.suppress(ValueError, OSError):
        summary = json.loads(path.read_text(encoding="utf-8"))
        return summary if isinstance(summary, dict) else {}
    return {}


def _eval_index(cfg: TrainLMConfig) -> str | None:
    if cfg.eval_index:
        return cfg.eval_index
    index = _data_summary(cfg).get("index")
    return str(index) if index else None


def _data_template(cfg: TrainLMConfig):
    """The template the training prompts were rendered with (the data summary's; else qa): the dev
    evaluation asks with it and the saved model carries it."""
    from radit.prompts import resolve_template

    template = _data_summary(cfg).get("template")
    name = template.get("name") if isinstance(template, dict) else template
    return resolve_template(name or EVAL_TEMPLATE)


DEV_QUESTION_BATCH = 8
"""Dev questions answered together (`radit.augment.answer_generative_batch`), as `radit eval --batch-size`."""


@torch.no_grad()
def evaluate(model, tokenizer, dev_batches, questions, hits, settings: InferenceConfig, template=None) -> dict[str, Any]:
    """Dev loss (per target token) on `dev_batches` and dev REPLUG EM x 100 on `questions`, asked with
    `template` (default: qa)."""
    from radit.augment import answer_generative_batch
    from radit.eval.metrics import exact_match
    from radit.prompts import get_template

    was_training = model.training
    model.eval()  # LoRA dropout off
    result: dict[str, Any] = {"dev_loss": None, "dev_em": None}
    try:
        if dev_batches:
            nll = sum(float(-batch_logprobs(model, b).sum()) for b in dev_batches)
            result["dev_loss"] = nll / sum(count_targets(b.targets) for b in dev_batches)
        if questions:
            template = template or get_template(EVAL_TEMPLATE)
            ems = []
            for i in range(0, len(questions), DEV_QUESTION_BATCH):
                batch = questions[i : i + DEV_QUESTION_BATCH]
                preds = answer_generative_batch(model, tokenizer, [q.question for q in batch],
                                                hits[i : i + DEV_QUESTION_BATCH], template, settings)
                ems += [exact_match(p.answer, q.gold_answers) for p, q in zip(preds, batch)]
            result["dev_em"] = 100.0 * sum(ems) / len(ems)
    finally:
        model.train(was_training)
    return result


# --------------------------------------------------------------------------- the run directory


def plot_loss(metrics_path: Path, png: Path) -> None:
    """Train loss per step, dev loss and dev EM per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([x["step"] for x in train], [x["loss"] for x in train], lw=1, label="train loss")
    dev = [x for x in evals if x.get("dev_loss") is not None]
    if dev:
        ax.plot([x["step"] for x in dev], [x["dev_loss"] for x in dev], "o-", label="dev loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / target token)")
    ems = [x for x in evals if x.get("dev_em") is not None]
    if ems:
        ax2 = ax.twinx()
        ax2.plot([x["step"] for x in ems], [x["dev_em"] for x in ems], "s--", color="tab:green", label="dev EM")
        ax2.set_ylabel("dev EM")
        ax2.legend(loc="upper right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def model_card(cfg: TrainLMConfig, summary: dict[str, Any]) -> str:
    best = summary.get("best") or {}
    adapter = cfg.method == "lora" and not cfg.lora.merge_on_save
    load = ("from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained(\"PATH\")"
            if adapter else "from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained(\"PATH\")")
    return "\n".join([
        f"# {Path(cfg.output).name}: {cfg.model} fine-tuned with RA-IT (RA-DIT LM-ft)",
        "",
        f"Fine-tuned from `{cfg.model}` by `radit train-lm` on retrieval-augmented examples (RA-DIT, Lin et al. 2023, "
        "Eq. 3: loss on the answer tokens only, each answer ended by the tokenizer's eos).",
        "",
        f"- data: `{cfg.data}` ({summary['examples']} training examples, {summary['dev_examples']} held out for the dev loss, "
        f"{summary['skipped_too_long']} skipped as longer than {cfg.max_length} tokens)",
        f"- method: {cfg.method}" + (f" (r={cfg.lora.r}, alpha={cfg.lora.alpha}, {'merged' if not adapter else 'adapter only'})"
                                     if cfg.method == "lora" else ""),
        f"- steps: {cfg.steps} x {cfg.batch_size} rows x {cfg.grad_accum} accumulation x {summary.get('processes', 1)} "
        f"process(es), {cfg.max_length} tokens per row"
        f"{' (packed)' if cfg.pack else ''}; lr {cfg.lr} -> {cfg.min_lr}, {cfg.warmup_steps} warm-up steps; dtype {summary['dtype']}",
        f"- saved: step {best.get('step', cfg.steps)} (dev EM {_fmt(best.get('dev_em'))}, dev loss {_fmt(best.get('dev_loss'))}); "
        f"final train loss {_fmt(summary.get('train_loss'))}",
        (f"- dev EM: REPLUG, k={cfg.eval_k}, 0-shot, template `{EVAL_TEMPLATE}`, {'sampled' if cfg.eval_sample else 'first'} {cfg.eval_questions} questions of "
         f"`{EVAL_QUESTIONS}`" if cfg.eval_questions else "- dev EM: not run (--eval-questions 0)"),
        f"- machine: {json.dumps(summary['machine'])}; {summary['seconds']:.0f} s",
        "",
        "Prompt format: `prompt_template.json` (evaluate with `radit eval --model PATH --template PATH`). "
        "The full training config is `radit_train_config.yaml`.",
        "",
        "```python",
        load,
        "```",
        "",
    ])


def with_method(model, cfg: TrainLMConfig):
    """`model` ready for --method: itself for full fine-tuning, wrapped with fresh LoRA adapters for lora."""
    if cfg.method != "lora":
        return model
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))


def save_model(model, tokenizer, cfg: TrainLMConfig, summary: dict[str, Any]) -> Path:
    """Write output/model/ atomically: the (merged) model or the LoRA adapter, tokenizer, template, config, card."""
    path = Path(cfg.output) / "model"
    with atomic_path(path, kind="dir") as tmp:
        if cfg.method == "lora" and cfg.lora.merge_on_save:
            model = model.merge_and_unload()  # W + (alpha / r) B A: a plain model that loads anywhere
        model.save_pretrained(tmp)  # safetensors (for a peft model: adapter_config.json + adapter_model.safetensors)
        tokenizer.save_pretrained(tmp)
        _data_template(cfg).save(tmp)
        save_yaml(cfg, tmp / "radit_train_config.yaml")
        (tmp / "README.md").write_text(model_card(cfg, summary), encoding="utf-8")
    return path


def _make_accelerator(cfg: TrainLMConfig, dtype: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedType

    device = resolve_device(cfg.device)
    if world_size() <= 1:
        # accelerate's state is a process-wide singleton that refuses a second, different setup (another
        # dtype, cpu vs cuda); one process may train several times (tests, notebooks), so start afresh.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        if device.type == "cuda" and device.index is not None:
            torch.cuda.set_device(device)
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"  # accelerate launch, deepspeed-*.yaml
    from accelerate.utils import InitProcessGroupKwargs

    # Rank 0 evaluates alone (DDP) while the others wait: radit's long timeout, not torch's 10 minutes.
    group = {"timeout": COLLECTIVE_TIMEOUT}
    if deepspeed and not torch.cuda.is_available():
        # accelerate turns DeepSpeed on only without cpu=True, and then, finding no GPU, picks no backend
        # and counts 1 process: gloo, the backend of DeepSpeed's CPU accelerator, makes it count them.
        group["backend"] = "gloo"
    handlers = [InitProcessGroupKwargs(**group)]
    # Gradient accumulation is done by hand (normalised by the step's target tokens), so accelerate's is off.
    accelerator = Accelerator(cpu=device.type == "cpu" and not deepspeed, mixed_precision=_MIXED_PRECISION[dtype],
                              gradient_accumulation_steps=1, kwargs_handlers=handlers)
    fsdp_plugin = getattr(accelerator.state, "fsdp_plugin", None)  # set under FSDP only
    check_data_parallel(accelerator.distributed_type, getattr(fsdp_plugin, "fsdp_version", None))
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config, cfg, accelerator.num_processes)
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"  # what accelerate launch sets for fsdp.yaml
    if fsdp_asked and accelerator.distributed_type != DistributedType.FSDP and accelerator.is_main_process:
        log.warning("accelerate runs FSDP on GPUs only: on %s every process trains a whole copy (data-parallel)", device)
    return accelerator


@contextlib.contextmanager
def _unpartitioned(deepspeed_plugin=None) -> Iterator[None]:
    """Models loaded inside are whole: under ZeRO-3 (`deepspeed_plugin` given) transformers would
    partition them over the processes as they load (zero.Init), which takes every process."""
    if deepspeed_plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        deepspeed_plugin.set_deepspeed_weakref()


def configure_deepspeed(ds_config: dict[str, Any], cfg: TrainLMConfig, processes: int) -> None:
    """Fill the DeepSpeed config of an `accelerate launch` preset from the run's settings, in place:
    the engine's batch arithmetic, accumulation and clipping are radit's --batch-size, --grad-accum and
    --grad-clip (the loop still tells the engine where each step ends, and scales the loss itself)."""
    ds_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds_config["gradient_accumulation_steps"] = cfg.grad_accum
    ds_config["train_batch_size"] = cfg.batch_size * cfg.grad_accum * processes
    ds_config["gradient_clipping"] = cfg.grad_clip  # 0: off, as --grad-clip 0


def check_data_parallel(distributed_type, fsdp_version: int | None = None) -> None:
    """Refuse the accelerate modes the loop does not handle: FSDP version 1 (its flattened
    parameters; version 2 is handled) and Megatron-LM. DeepSpeed (ZeRO 1-3) runs.

    Raises:
        ValueError: `distributed_type` (an `accelerate.DistributedType`) is one of those.
    """
    from accelerate.utils import DistributedType

    if distributed_type == DistributedType.FSDP and fsdp_version != 2:
        raise ValueError(f"train-lm runs FSDP version 2 (fully_shard), not {fsdp_version}: set fsdp_version: 2 as "
                         "configs/accelerate/fsdp.yaml does, or pass --fsdp_version 2 to accelerate launch")
    if distributed_type == DistributedType.MEGATRON_LM:
        raise ValueError(f"train-lm does not run under accelerate's {distributed_type.value}: use configs/accelerate/"
                         "ddp.yaml (data-parallel; LoRA fits there) or configs/accelerate/fsdp.yaml (weights and "
                         "optimizer state sharded)")


# --------------------------------------------------------------------------- the loop


def train_lm(cfg: TrainLMConfig, lm: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Fine-tune the LM on the training file (RA-IT); returns the final summary (also in metrics.json).

    Args:
        cfg: the run's settings.
        lm: an already-loaded (model, tokenizer) of `cfg.model` to train in place (tests, notebooks);
            default: `load_lm(cfg.model)`. Under FSDP the saved model's frozen weights are read from
            `cfg.model` again.

    Raises:
        FileNotFoundError, ValueError: a missing or malformed data file (file:line), no example that
            fits --max-length, an --output holding something else, an unusable evaluation index, ...;
            all raised before anything is written.
    """
    t_start = time.perf_counter()
    out = Path(cfg.output)

    # ---------------------------------------------------------------- setup: check every input first
    examples = read_examples(cfg.data)
    action = inspect_run_dir(out, to_dict(cfg), _MARKER_NAME, RESUMABLE_FIELDS, cfg.overwrite, finished=("metrics.json", "model"))
    if action == "done":
        log.info("%s: this run has finished; returning its metrics (pass --overwrite to train again)", out)
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    data_sha = file_sha256(cfg.data)
    ckpt = latest_checkpoint(out) if action == "resume" else None
    if ckpt is not None and ckpt.state.get("data_sha256") != data_sha:
        raise ValueError(f"--data {cfg.data} changed since the checkpoint in {ckpt.path}; pass --overwrite to start over "
                         "or choose another --output")

    dtype = resolve_dtype(cfg.dtype, resolve_device(cfg.device))
    accelerator = _make_accelerator(cfg, dtype)
    init_distributed(cfg.device)  # the group accelerate made (if any) is left at exit
    device, world, rank, main = accelerator.device, accelerator.num_processes, accelerator.process_index, accelerator.is_main_process

    questions, hits, temperature = [], [], None
    if cfg.eval_questions:
        from radit.data.qa import dev_questions
        from radit.retriever.search import load_searcher, search_batched

        index = _eval_index(cfg)
        if index is None:
            raise ValueError(f"--eval-questions {cfg.eval_questions} needs an index to retrieve from: pass --eval-index "
                             f"(the data file's summary.json names none), or --eval-questions 0 for the dev loss alone")
        questions = dev_questions(EVAL_QUESTIONS, cfg.eval_questions, cfg.eval_sample)
        searcher = load_searcher(index, device=cfg.device)
        hits = search_batched(searcher, [q.question for q in questions], cfg.eval_k, progress=False)  # once, frozen
        temperature = searcher.retrieval_temperature
        del searcher
    template = _data_template(cfg)
    settings = InferenceConfig(mode="replug", k=cfg.eval_k, retrieval_temperature=temperature, template=template.name, dtype=dtype)

    from accelerate.utils import DistributedType, set_seed

    set_seed(cfg.seed)  # python, numpy, torch: the LoRA initialisation
    model, tokenizer = lm if lm is not None else load_lm(cfg.model, device=str(device), dtype="float32")
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and cfg.max_length > context:
        raise ValueError(f"--max-length {cfg.max_length} exceeds {cfg.model}'s context of {context} tokens; lower it")
    train_idx, dev_idx = dev_split(examples, cfg.seed)
    # A chat template's prompts are read as the model's chat turn, as at inference (and as build-lm-data counted them).
    prompts = [to_model_text(template, ex["prompt"], tokenizer) for ex in examples]
    pairs, skipped = encode_examples(tokenizer, [prompts[i] for i in train_idx],
                                     [examples[i]["target"] for i in train_idx], cfg.max_length)
    dev_pairs, dev_skipped = encode_examples(tokenizer, [prompts[i] for i in dev_idx],
                                             [examples[i]["target"] for i in dev_idx], cfg.max_length)
    if skipped + dev_skipped:
        log.warning("%s: %d example(s) longer than --max-length %d tokens skipped (never truncated)",
                    cfg.data, skipped + dev_skipped, cfg.max_length)
    lengths = [None if x is None else len(x.prompt) + len(x.continuation) for x in pairs]
    if all(n is None for n in lengths):
        raise ValueError(f"--data {cfg.data}: none of the {len(pairs)} training examples fits --max-length {cfg.max_length}; raise it")
    pad = pad_id(tokenizer)
    dev_lengths = [None if x is None else len(x.prompt) + len(x.continuation) for x in dev_pairs]
    dev_batches = [collate_rows([[dev_pairs[i] for i in row] for row in mb], pad, cfg.pack, cfg.max_length)
                   for mb in plan_epoch(dev_lengths, cfg.max_length, cfg.batch_size, cfg.pack, cfg.seed, 0, shuffle=False)]

    model = with_method(model, cfg)
    model.train()
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr_at(1, cfg), cfg.weight_decay)
    groups = [list(g["params"]) for g in optimizer.param_groups]  # the checkpoints' numbering, under DeepSpeed
    # Under DDP: rank 0's weights on every process; under FSDP: each process keeps its slice of them,
    # as new parameter objects (hence `params` is taken after).
    model, optimizer = accelerator.prepare(model, optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    unwrapped = accelerator.unwrap_model(model)  # FSDP2's model is its own unwrapped one, still sharded
    # Under DeepSpeed `model` is the engine: it reduces the gradients, clips and steps (see fit).
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    zero3 = deepspeed and accelerator.state.deepspeed_plugin.zero_stage == 3
    sharded = accelerator.distributed_type == DistributedType.FSDP or zero3

    def gather_weights() -> dict[str, torch.Tensor] | None:
        """The trainable weights on rank 0 (None elsewhere); every process calls it."""
        if not deepspeed:
            return gather_trainable_state(unwrapped)  # under FSDP every process sends its slices
        return deepspeed_full_state(unwrapped, optimizer, groups, with_optimizer=False)[0]
    if rank:
        set_seed(cfg.seed + rank)  # dropout: each process its own masks (rank 0 draws the one-process run's)

    # ---------------------------------------------------------------- the run directory (first write)
    accelerator.wait_for_everyone()  # every process has inspected --output before rank 0 changes it
    if main:
        start_run_dir(out, cfg, _MARKER_NAME, RUN_FILES, overwrite=action == "overwrite")
        truncate_metrics(out / "metrics.jsonl", ckpt.step if ckpt else 0)

    step, epoch, index, best, total_tokens, train_loss = 0, 0, 0, None, 0, None
    if ckpt is not None:
        if deepspeed:  # rank 0 reads the files; each process keeps its partitions
            load_deepspeed_state(unwrapped, optimizer, groups, ckpt.weights() if main else None,
                                 ckpt.optimizer_state() if main else None)
        else:
            load_training_state(unwrapped, optimizer, ckpt)
        ckpt.restore_rng(rank, cfg.seed)
        # The position is counted in micro-batches, which do not depend on the number of processes.
        step, epoch, index = ckpt.step, ckpt.state["epoch"], ckpt.state["batch_index"]
        best, total_tokens, train_loss = ckpt.state.get("best"), ckpt.state.get("tokens", 0), ckpt.state.get("train_loss")
        log.info("resuming from %s (step %d)", ckpt.path, step)
        saved_world = ckpt.state.get("processes", 1)
        if saved_world != world and main:
            log.warning("%s was written by %d process(es), this run has %d: from step %d on, a step trains on %d "
                        "micro-batches instead of %d", ckpt.path, saved_world, world, step + 1, cfg.grad_accum * world,
                        cfg.grad_accum * saved_world)
    selecting = bool(dev_batches or questions)  # else the last step is the model
    n_dev = sum(x is not None for x in dev_pairs)

    # ---------------------------------------------------------------- fit
    stream = micro_batch_stream(lengths, cfg, epoch, index)
    metrics_file = open(out / "metrics.jsonl", "a", encoding="utf-8") if main else None
    bar = progress_bar(total=cfg.steps, initial=step, enabled=main, desc="train-lm", unit="step")
    try:
        while step < cfg.steps:
            step += 1
            t0 = time.perf_counter()
            # One optimizer step takes grad_accum micro-batches per process; process r gets r, r + world, ...
            taken = [next(stream) for _ in range(cfg.grad_accum * world)]
            epoch, index = taken[-1][0], taken[-1][1] + 1
            mine = [collate_rows([[pairs[i] for i in row] for row in mb], pad, cfg.pack, cfg.max_length) for _, _, mb in taken[rank::world]]
            tokens = sum(lengths[i] for _, _, mb in taken for row in mb for i in row)
            # Eq. 3 normalised by the target tokens of the whole step, on every process (losses.py): the
            # micro-batch gradients then add up to the one-big-batch gradient.
            n_step = accelerator.reduce(torch.tensor(float(sum(count_targets(b.targets) for b in mine)), device=device), "sum")
            lr = lr_at(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            nll = torch.zeros((), device=device)
            for i, b in enumerate(mine):
                last = i == len(mine) - 1
                if deepspeed:  # the engine reduces the gradients at the step's last micro-batch, as no_sync does
                    model.set_gradient_accumulation_boundary(last)
                sync = contextlib.nullcontext() if last or deepspeed else accelerator.no_sync(model)
                with sync:
                    loss = nll_from_logprobs(batch_logprobs(model, b), b.targets.to(device), n_step)
                    if deepspeed:  # the loss is normalised over the whole step already: no 1 / grad_accum
                        model.backward(loss * world, scale_wrt_gas=False)
                    else:
                        accelerator.backward(loss * world)  # DDP averages gradients over processes; undo it
                nll += loss.detach()
            if deepspeed:
                model.step()  # clips to --grad-clip (configure_deepspeed), steps AdamW, zeroes the gradients
                grad_norm = model.get_global_grad_norm()
            else:
                grad_norm = accelerator.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
                if hasattr(grad_norm, "full_tensor"):  # FSDP: a DTensor, replicated on every process
                    grad_norm = grad_norm.full_tensor()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            train_loss = float(accelerator.reduce(nll, "sum"))
            total_tokens += tokens
            seconds = time.perf_counter() - t0
            record = {"kind": "train", "step": step, "epoch": epoch, "loss": train_loss, "lr": lr, "tokens": tokens,
                      "tokens_per_s": tokens / seconds, "grad_norm": float(grad_norm), "target_tokens": int(n_step),
                      "seconds": seconds}
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tokens / seconds:.0f}", lr=f"{lr:.2e}")
            if main:
                metrics_file.write(json.dumps(record) + "\n")

            if step % cfg.eval_every == 0 or step == cfg.steps:
                better = False
                if main or sharded:  # a sharded forward needs every process: all run the same evaluation
                    t_eval = time.perf_counter()
                    result = evaluate(unwrapped, tokenizer, dev_batches, questions, hits, settings, template)
                    result = {"kind": "eval", "step": step, **result, "dev_questions": len(questions),
                              "dev_examples": n_dev, "seconds": time.perf_counter() - t_eval}
                    better = selecting and is_better(result, best)
                if main:
                    metrics_file.write(json.dumps(result) + "\n")
                    log.info("step %d: dev loss %s, dev EM %s", step, result["dev_loss"], result["dev_em"])
                if broadcast_object(better):
                    best = {k: result[k] for k in ("step", "dev_em", "dev_loss")} if main else best
                    weights = gather_weights()
                    if main:
                        save_best(out, weights, best)
                accelerator.wait_for_everyone()
            if main:
                metrics_file.flush()

            if step % cfg.checkpoint_every == 0:
                rngs = gather_object(rng_state())  # each process's dropout stream
                if deepspeed:  # the partitions gathered onto rank 0, in the one-process format
                    weights, optimizer_state = deepspeed_full_state(unwrapped, optimizer, groups)
                else:
                    weights, optimizer_state = gather_trainable_state(unwrapped), gather_optimizer_state(unwrapped, optimizer)
                if main:
                    state = {"epoch": epoch, "batch_index": index, "seed": cfg.seed, "best": best, "tokens": total_tokens,
                             "train_loss": train_loss, "data_sha256": data_sha, "processes": world}
                    save_checkpoint(out, step, weights, optimizer_state, state, rng=rngs)
                accelerator.wait_for_everyone()
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()

    # ---------------------------------------------------------------- save the best evaluation's model
    summary: dict[str, Any] | None = None
    last = gather_weights() if sharded else None  # every process sends its slices (even if best/ wins)
    if main:
        if sharded:  # rank 0 has no whole model: a CPU copy of --model takes the gathered weights
            with _unpartitioned(accelerator.state.deepspeed_plugin if zero3 else None):
                final = with_method(load_lm(cfg.model, device="cpu", dtype="float32")[0], cfg)
            load_trainable(final, last)
        else:
            final = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
        if selecting and best is not None and best["step"] != step:
            load_trainable(final, load_best(out, best["step"]))
        seconds = time.perf_counter() - t_start
        summary = {
            "model": str(out / "model"), "output": str(out), "method": cfg.method, "steps": cfg.steps,
            "best": best if selecting else None, "train_loss": train_loss,
            "examples": sum(n is not None for n in lengths), "dev_examples": n_dev,
            "skipped_too_long": skipped + dev_skipped, "tokens": total_tokens, "dtype": dtype, "processes": world,
            "resumed_from": ckpt.step if ckpt else None, "seconds": seconds, "machine": machine_info(device),
        }
        save_model(final, tokenizer, cfg, summary)
        plot_loss(out / "metrics.jsonl", out / "loss.png")
        atomic_write_json(out / "metrics.json", summary)  # the run is finished once this exists
        shutil.rmtree(out / "best", ignore_errors=True)  # model/ holds these weights now
    # Every process returns the summary, and only once rank 0 has written everything.
    return broadcast_object(summary)


def main(argv: Sequence[str] | None = None) -> int:
    """`radit train-lm` without the CLI: --config FILE and any TrainLMConfig flag."""
    import argparse

    from radit.config_io import add_arguments, build_config

    parser = argparse.ArgumentParser(prog="python -m radit.train.lm_ft", description=TrainLMConfig.__doc__)
    parser.add_argument("--config", help="YAML file of TrainLMConfig options (flags override it)")
    add_arguments(parser, TrainLMConfig)
    args = parser.parse_args(argv)
    config_path = args.config
    del args.config
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = build_config(TrainLMConfig, args, config_path)
    summary = train_lm(cfg)
    print(json.dumps({k: summary[k] for k in ("model", "best", "train_loss", "seconds")}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

