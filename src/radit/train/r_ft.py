"""Retriever fine-tuning (R-ft, RA-DIT §2.4): one readable loop that teaches the query tower the LM's taste.

    radit train-retriever --config configs/r-ft-quickstart.yaml
    python -m radit.train.r_ft --data runs/lsr-data --output runs/r-ft     (the same, without the CLI)

For each cached pair (x, y) with its k chunks (`radit build-lsr-data`), minimises Eq. 5

    KL(p_R(c | x) ‖ p_LSR(c | x, y)),   p_R = softmax_c(E_q(x) · E_d(c) / T),   p_LSR = softmax_c(score_c / τ)

(`radit.train.losses`). x is re-encoded by the query tower *with gradients* at every step; E_d(c) are
the vectors stored in the index (`DenseSearcher.doc_vectors`), constants: the document tower is not
even loaded, the index files are only read, and the fine-tuned query tower is searched against the
same index afterwards. AdamW, linear warm-up then linear decay (DPR's schedule, which the paper's
dpr-scale code uses), clipping, dropout on.

Evaluations (at step 0, every --eval-every steps and at the end) measure

- dev answer-hit@k: --eval-questions questions of the bundled SQuAD-open dev split (the first ones,
  or with --eval-sample a seeded draw across its articles), searched in the index with the current
  query tower;
- dev MRR of the LM-preferred chunk: over --dev-pairs pairs held out of the cache, the reciprocal
  rank under p_R of the chunk with the highest LM score (how well the retriever agrees with the LM);
  and the KL loss on those pairs.

The saved query tower is the best evaluation's by dev answer-hit@1 (ties: MRR, then the later step).
The run directory (--output):

    config.yaml, metrics.jsonl, metrics.json, curve.png, checkpoints/ (resumable), best/ (while training)
    model/      the query encoder: HF weights + tokenizer + radit_encoder.json + README.md model card;
                `radit search/ask/eval --query-encoder runs/r-ft/model` uses it with the old index

A rerun of the same command resumes from the latest checkpoint (only --device, --checkpoint-every and
--overwrite may change); --overwrite starts over.

Data-parallel under torchrun or `accelerate launch` (the same command, e.g. `torchrun --nproc-per-node 8
-m radit.cli train-retriever ...`): a step trains on --batch-size pairs per process, the next
batch_size x processes pairs of the one seeded order, each process encoding its contiguous share with
gradients; the loss is the mean over all of them and the gradients are summed over the processes
(`radit.distributed.sum_gradients`), so 2 processes x batch 16 train as 1 process x batch 32. Rank 0
alone evaluates and writes; every process holds the index's document vectors.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radit import distributed
from radit.artifacts import atomic_path, atomic_write_json
from radit.config import TrainRetrieverConfig
from radit.config_io import save_yaml, to_dict
from radit.runtime import autocast, machine_info, resolve_device, resolve_dtype
from radit.train.checkpoint import (
    inspect_run_dir,
    latest_checkpoint,
    load_best,
    load_trainable,
    read_metrics,
    rng_state,
    save_best,
    save_checkpoint,
    start_run_dir,
    trainable_state,
    truncate_metrics,
)
from radit.train.losses import lsr_log_targets, lsr_loss, lsr_scores
from radit.train.lsr_cache import LSRCache, merge_caches, read_cache
from radit.train.lsr_data import index_identity
from radit.train.optim import adamw

log = logging.getLogger(__name__)

EVAL_QUESTIONS = "quickstart:squad-open/dev"
RESUMABLE_FIELDS = ("device", "checkpoint_every", "overwrite")
RUN_FILES = ("config.yaml", "metrics.jsonl", "metrics.json", "curve.png", "checkpoints", "best", "model")
_MARKER_NAME = "train-retriever"


# --------------------------------------------------------------------------- pieces of the loop


def lr_at(step: int, total: int, cfg: TrainRetrieverConfig) -> float:
    """Learning rate of optimizer step `step` (1-based): linear warm-up to `cfg.lr`, then linear decay to 0."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    return cfg.lr * max(0.0, (total - step + 1) / max(1, total - cfg.warmup_steps))


def lsr_targets(cache: LSRCache, cfg: TrainRetrieverConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_LSR [N, k] float64, mask [N, k] bool) for every cached pair, each pair kind in its own form."""
    mask = torch.from_numpy(cache.rows >= 0)
    logprob = torch.from_numpy(np.where(cache.rows >= 0, cache.logprob, 0.0))
    tokens = torch.from_numpy(cache.tokens)
    out = torch.empty(logprob.shape, dtype=torch.float64)
    for kind, form, tau in (("corpus", cfg.corpus_target, cfg.corpus_tau), ("task", cfg.task_target, cfg.task_tau)):
        sel = torch.from_numpy(cache.kinds == kind)
        if sel.any():
            out[sel] = lsr_log_targets(lsr_scores(logprob[sel], tokens[sel], form), tau, mask[sel])
    return out, mask


def dev_split(n: int, n_dev: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, dev) pair indices: `n_dev` drawn with `seed` (at most half the pairs), both sorted."""
    n_dev = min(n_dev, n // 2)
    perm = np.random.default_rng([seed, 3]).permutation(n)
    return np.sort(perm[n_dev:]), np.sort(perm[:n_dev])


def epoch_order(n_train: int, seed: int, epoch: int) -> np.ndarray:
    """The order of one epoch's pairs: a permutation of range(n_train) seeded by (seed, epoch). Steps
    take consecutive pieces of it, whatever the number of processes."""
    return np.random.default_rng([seed, 4, epoch]).permutation(n_train)


def query_scores(encoder, queries: list[str], doc_vectors: torch.Tensor, dtype: str) -> torch.Tensor:
    """s(x, c) = E_q(x) · E_d(c): queries [B] through the query tower (with gradients when enabled),
    doc_vectors [B, k, d] constants from the index -> [B, k] float32."""
    with autocast(encoder.device, dtype):
        q = encoder(**encoder.tokenize(queries))  # [B, d]
    return torch.einsum("bd,bkd->bk", q.float(), doc_vectors.to(q.device))


def preferred_chunk_mrr(scores: torch.Tensor, lm_logprob: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean reciprocal rank, under the retriever's `scores` [B, k], of each pair's LM-preferred chunk
    (the highest `lm_logprob` [B, k] among the `mask`ed ones)."""
    best = lm_logprob.masked_fill(~mask, -math.inf).argmax(-1)  # [B]
    s = scores.masked_fill(~mask, -math.inf)
    rank = 1 + (s > s.gather(1, best[:, None])).sum(-1)  # [B]
    return float((1.0 / rank.double()).mean())


def is_better(new: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Higher dev answer-hit@1, then higher dev MRR, then the later evaluation."""
    if best is None:
        return True
    for key in ("dev_hit@1", "dev_mrr"):
        if new.get(key) is not None and best.get(key) is not None and new[key] != best[key]:
            return new[key] > best[key]
    return True


@torch.no_grad()
def evaluate(encoder, searcher, questions, ks: Sequence[int], dev: dict[str, Any], temperature: float,
             cfg: TrainRetrieverConfig, dtype: str) -> dict[str, Any]:
    """Dev answer-hit@k (search with the current tower), dev MRR of the LM-preferred chunk and dev KL."""
    from radit.eval.metrics import answer_hit_at_k
    from radit.retriever.hits import hits_from_rows

    was_training = encoder.training
    encoder.eval()
    result: dict[str, Any] = {}
    try:
        if questions:
            q = encoder.encode([x.question for x in questions], batch_size=128, dtype=dtype)
            _, rows = searcher.search_vectors(q, max(ks))
            hit = {k: 0.0 for k in ks}
            for x, r in zip(questions, rows):
                texts = [h.text for h in hits_from_rows(searcher.store, r, np.zeros(len(r)))]
                for k, v in answer_hit_at_k(texts, x.gold_answers, ks).items():
                    hit[k] += v
            result.update({f"dev_hit@{k}": 100.0 * v / len(questions) for k, v in hit.items()})
        if dev["queries"]:
            scores = torch.cat([query_scores(encoder, dev["queries"][i : i + 128], dev["docs"][i : i + 128], dtype)
                                for i in range(0, len(dev["queries"]), 128)]).cpu()  # where the targets are
            result["dev_mrr"] = preferred_chunk_mrr(scores, dev["logprob"], dev["mask"])
            result["dev_loss"] = float(lsr_loss(scores, dev["log_p_lsr"], temperature, cfg.kl_direction, dev["mask"]))
    finally:
        encoder.train(was_training)
    return result


# --------------------------------------------------------------------------- the run directory


def plot_curve(metrics_path: Path, png: Path) -> None:
    """Train loss per step; dev answer-hit@1 and dev MRR per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(metrics_path)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax.plot([x["step"] for x in train], [x["loss"] for x in train], lw=1, label="train KL")
    dev = [x for x in evals if x.get("dev_loss") is not None]
    if dev:
        ax.plot([x["step"] for x in dev], [x["dev_loss"] for x in dev], "o-", label="dev KL")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    hits = [x for x in evals if x.get("dev_hit@1") is not None]
    if hits:
        ax2.plot([x["step"] for x in hits], [x["dev_hit@1"] for x in hits], "s-", label="dev answer-hit@1")
    mrr = [x for x in evals if x.get("dev_mrr") is not None]
    if mrr:
        ax2.plot([x["step"] for x in mrr], [100 * x["dev_mrr"] for x in mrr], "^-", label="dev MRR of LM-preferred chunk x 100")
    ax2.set_xlabel("step")
    if hits or mrr:
        ax2.legend()
    fig.suptitle(f"R-ft: {png.parent.name}")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def model_card(cfg: TrainRetrieverConfig, summary: dict[str, Any]) -> str:
    best = summary.get("best") or {}
    base = summary.get("base") or {}
    fmt = lambda x: "n/a" if x is None else f"{x:.4g}"  # noqa: E731
    return "\n".join([
        f"# {Path(cfg.output).name}: query encoder fine-tuned with LSR (RA-DIT R-ft)",
        "",
        f"Query tower `{summary['start_encoder']}` fine-tuned by `radit train-retriever` on LM-supervised retrieval "
        f"targets (RA-DIT, Lin et al. 2023, Eq. 4-5) from `{', '.join(cfg.data)}` (LM `{summary['lm']}`). The document tower "
        f"and the index `{summary['index']}` were not changed: search it with this query tower as it is.",
        "",
        f"- pairs: {summary['pairs']} ({summary['corpus_pairs']} corpus, {summary['task_pairs']} task), "
        f"{summary['dev_pairs']} held out",
        f"- loss: KL direction {cfg.kl_direction}; p_LSR of task pairs {cfg.task_target} (tau {cfg.task_tau}), of corpus "
        f"pairs {cfg.corpus_target} (tau {cfg.corpus_tau}); p_R temperature {summary['retrieval_temperature']}",
        f"- steps: {summary['steps']} x {cfg.batch_size} pairs x {summary.get('processes', 1)} process(es); lr {cfg.lr}, {cfg.warmup_steps} warm-up steps; dtype {summary['dtype']}",
        f"- dev ({'sampled' if cfg.eval_sample else 'first'} {cfg.eval_questions} questions of `{EVAL_QUESTIONS}`): answer-hit@1 {fmt(base.get('dev_hit@1'))} "
        f"-> {fmt(best.get('dev_hit@1'))}; MRR of the LM-preferred chunk {fmt(base.get('dev_mrr'))} -> "
        f"{fmt(best.get('dev_mrr'))} (saved: step {best.get('step')})",
        f"- machine: {json.dumps(summary['machine'])}; {summary['seconds']:.0f} s",
        "",
        "```",
        f"radit search --index {summary['index']} --query-encoder PATH \"your question\"",
        "```",
        "",
    ])


# --------------------------------------------------------------------------- the loop


def train_retriever(cfg: TrainRetrieverConfig) -> dict[str, Any]:
    """Fine-tune the query tower on the LSR cache; returns the final summary (also in metrics.json).

    Raises:
        FileNotFoundError, ValueError: a missing or incomplete cache, a cache made against another
            index (stale), an encoder that does not fit the index, an --output holding something
            else; all before anything is written.
    """
    from radit.retriever.search import DenseSearcher, load_searcher

    t_start = time.perf_counter()
    out = Path(cfg.output)

    # ---------------------------------------------------------------- setup: check every input first
    cache = merge_caches([read_cache(d) for d in cfg.data], cfg.data)
    data = ", ".join(cfg.data)
    index_dir = cfg.index or cache.manifest["index"]["path"]
    if not Path(index_dir).is_dir():
        raise FileNotFoundError(f"--index {index_dir}: no index there (the LSR cache was made against it); pass --index")
    now, then = index_identity(index_dir), cache.manifest["index"]
    stale = [k for k in ("count", "dim", "passages_sha256", "doc_encoder_fingerprint") if now.get(k) != then.get(k)]
    if stale:
        raise ValueError(f"--data {data}: the LSR cache was made against another index than {index_dir} "
                         f"({', '.join(f'{k}: {then.get(k)} vs {now.get(k)}' for k in stale)}); rebuild it with "
                         f"`radit build-lsr-data --index {index_dir} --overwrite`")
    if (cache.rows >= now["count"]).any():
        raise ValueError(f"--data {data}: chunk rows beyond the index's {now['count']} passages; rebuild the cache")
    action = inspect_run_dir(out, to_dict(cfg), _MARKER_NAME, RESUMABLE_FIELDS, cfg.overwrite, finished=("metrics.json", "model"))
    if action == "done":
        log.info("%s: this run has finished; returning its metrics (pass --overwrite to train again)", out)
        return json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    ckpt = latest_checkpoint(out) if action == "resume" else None

    distributed.init(cfg.device)  # under torchrun / accelerate launch: join the other processes; else nothing
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    searcher = load_searcher(index_dir, query_encoder=cfg.query_encoder, device=cfg.device)  # checks dim and pooling
    if not isinstance(searcher, DenseSearcher):
        raise ValueError(f"--index {index_dir} is not a dense index; R-ft needs stored document vectors")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    temperature = cfg.retrieval_temperature or searcher.retrieval_temperature
    encoder = searcher.query_encoder  # the trainable tower; searcher.search_vectors is only FAISS

    log_p_lsr, mask = lsr_targets(cache, cfg)
    train_idx, dev_idx = dev_split(len(cache.ids), cfg.dev_pairs, cfg.seed)
    if cfg.use != "all":
        train_idx = train_idx[cache.kinds[train_idx] == cfg.use]
    if len(train_idx) == 0:
        raise ValueError(f"--data {data}: no training pair left (it holds {len(cache.ids)}, --use {cfg.use}); "
                         "build more pairs")

    def docs(idx: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(searcher.doc_vectors(cache.rows[idx]), dtype=np.float32))

    dev = {"queries": [cache.queries[i] for i in dev_idx], "docs": docs(dev_idx), "logprob": torch.from_numpy(cache.logprob[dev_idx]),
           "mask": mask[dev_idx], "log_p_lsr": log_p_lsr[dev_idx]}
    questions = []
    if cfg.eval_questions and main:
        from radit.data.qa import dev_questions

        questions = dev_questions(EVAL_QUESTIONS, cfg.eval_questions, cfg.eval_sample)
    per_step = cfg.batch_size * world  # pairs per optimizer step, over all processes
    total = cfg.steps or math.ceil(len(train_idx) / per_step)

    torch.manual_seed(cfg.seed + rank)  # dropout: each process its own masks (rank 0 draws the one-process run's)
    encoder.train()
    params = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = adamw(params, lr_at(1, total, cfg), cfg.weight_decay)

    # ---------------------------------------------------------------- the run directory (first write)
    distributed.barrier()  # every process has inspected --output before rank 0 changes it
    if main:
        start_run_dir(out, cfg, _MARKER_NAME, RUN_FILES, overwrite=action == "overwrite")
        truncate_metrics(out / "metrics.jsonl", ckpt.step if ckpt else -1)

    step, epoch, offset, best, base, train_loss = 0, 0, 0, None, None, None
    if ckpt is not None:
        load_trainable(encoder, ckpt.weights())
        optimizer.load_state_dict(ckpt.optimizer_state())
        ckpt.restore_rng(rank, cfg.seed)
        step, epoch = ckpt.step, ckpt.state["epoch"]
        # The position is counted in pairs, so a run resumed on another number of processes goes on
        # from the first pair not yet trained on (checkpoints before "offset": one process, batch_index steps).
        offset = ckpt.state["offset"] if "offset" in ckpt.state else ckpt.state["batch_index"] * cfg.batch_size
        best, base, train_loss = ckpt.state.get("best"), ckpt.state.get("base"), ckpt.state.get("train_loss")
        log.info("resuming from %s (step %d)", ckpt.path, step)
        saved_world = ckpt.state.get("processes", 1)
        if saved_world != world and main:
            log.warning("%s was written by %d process(es), this run has %d: from step %d on, a step trains on %d pairs "
                        "instead of %d", ckpt.path, saved_world, world, step + 1, per_step, cfg.batch_size * saved_world)

    metrics_file = open(out / "metrics.jsonl", "a", encoding="utf-8") if main else None

    def run_eval(at_step: int) -> None:
        """Evaluate on rank 0 while the others wait (the tower is the same everywhere)."""
        nonlocal best, base
        if main:
            t_eval = time.perf_counter()
            result = {"kind": "eval", "step": at_step,
                      **evaluate(encoder, searcher, questions, cfg.eval_ks, dev, temperature, cfg, dtype),
                      "seconds": time.perf_counter() - t_eval}
            metrics_file.write(json.dumps(result) + "\n")
            metrics_file.flush()
            log.info("step %d: %s", at_step, ", ".join(f"{k} {v:.4g}" for k, v in result.items() if k.startswith("dev_")))
            if base is None:
                base = {k: v for k, v in result.items() if k.startswith("dev_")}
            if is_better(result, best):
                best = {k: v for k, v in result.items() if k == "step" or k.startswith("dev_")}
                save_best(out, trainable_state(encoder), best)
        distributed.barrier()

    # ---------------------------------------------------------------- fit
    bar = distributed.progress_bar(total=total, initial=step, desc="train-retriever", unit="step")
    try:
        if step == 0:
            run_eval(0)  # the starting tower: the baseline every later evaluation is compared with
        order = epoch_order(len(train_idx), cfg.seed, epoch)
        while step < total:
            if offset >= len(order):
                epoch, offset = epoch + 1, 0
                order = epoch_order(len(train_idx), cfg.seed, epoch)
            idx = train_idx[order[offset : offset + per_step]]  # this step's pairs, all processes together
            offset += len(idx)
            share = distributed.shard_range(len(idx))
            mine = idx[share.start : share.stop]  # this process's; the last step of an epoch may leave it none
            step += 1
            t0 = time.perf_counter()
            lr = lr_at(step, total, cfg)
            for g in optimizer.param_groups:
                g["lr"] = lr
            # Eq. 5 averaged over the step's pairs on every process: this share's KL sum / the step's pair
            # count; `sum_gradients` then adds the shares up to the one-process gradient.
            totals = torch.zeros(2, dtype=torch.float64)  # this share's KL sum and top-1 agreements
            if len(mine):
                scores = query_scores(encoder, [cache.queries[i] for i in mine], docs(mine), dtype)  # [b, k], grads to E_q
                share_mask, share_lsr = mask[mine].to(device), log_p_lsr[mine].to(device)
                loss = lsr_loss(scores, share_lsr, temperature, cfg.kl_direction, share_mask)  # mean over the share
                (loss * (len(mine) / len(idx))).backward()
                totals[0] = float(loss.detach()) * len(mine)
                totals[1] = int((scores.detach().masked_fill(~share_mask, -math.inf).argmax(-1) == share_lsr.argmax(-1)).sum())
            distributed.sum_gradients(params)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_loss, agree = (float(x) / len(idx) for x in distributed.all_reduce_sum(totals))
            seconds = time.perf_counter() - t0
            record = {"kind": "train", "step": step, "epoch": epoch, "loss": train_loss, "lr": lr,
                      "grad_norm": float(grad_norm), "top1_agreement": agree, "pairs": len(idx),
                      "pairs_per_s": len(idx) / seconds, "seconds": seconds}
            bar.update(1)
            bar.set_postfix(loss=f"{train_loss:.4f}", pairs_s=f"{len(idx) / seconds:.0f}", lr=f"{lr:.2e}")
            if main:
                metrics_file.write(json.dumps(record) + "\n")
            if step % cfg.eval_every == 0 or step == total:
                run_eval(step)
            if main:
                metrics_file.flush()
            if step % cfg.checkpoint_every == 0 and step < total:
                rngs = distributed.gather_object(rng_state())  # each process's dropout stream
                if main:
                    state = {"epoch": epoch, "offset": offset, "seed": cfg.seed, "best": best, "base": base,
                             "train_loss": train_loss, "processes": world}
                    save_checkpoint(out, step, trainable_state(encoder), optimizer.state_dict(), state, rng=rngs)
                distributed.barrier()
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()

    # ---------------------------------------------------------------- save the best evaluation's tower (rank 0)
    summary = None
    if main:
        if best is not None and best["step"] != step:
            load_trainable(encoder, load_best(out, best["step"]))
        encoder.eval()
        summary = {
            "model": str(out / "model"), "output": str(out), "index": str(index_dir), "lm": cache.manifest["lm"]["spec"],
            "start_encoder": cfg.query_encoder or searcher.spec.query_model, "steps": total, "best": best, "base": base,
            "train_loss": train_loss, "pairs": len(cache.ids), "trained_on": len(train_idx), "corpus_pairs": int((cache.kinds == "corpus").sum()),
            "task_pairs": int((cache.kinds == "task").sum()), "dev_pairs": len(dev_idx), "processes": world,
            "retrieval_temperature": temperature, "dtype": dtype, "resumed_from": ckpt.step if ckpt else None,
            "seconds": time.perf_counter() - t_start, "machine": machine_info(device),
        }
        with atomic_path(out / "model", kind="dir") as tmp:
            encoder.save(tmp)
            save_yaml(cfg, tmp / "radit_train_config.yaml")
            (tmp / "README.md").write_text(model_card(cfg, summary), encoding="utf-8")
        plot_curve(out / "metrics.jsonl", out / "curve.png")
        atomic_write_json(out / "metrics.json", summary)  # the run is finished once this exists
        shutil.rmtree(out / "best", ignore_errors=True)
    # Every process returns the summary, and only once rank 0 has written everything.
    return distributed.broadcast_object(summary)


def main(argv: Sequence[str] | None = None) -> int:
    """`radit train-retriever` without the CLI: --config FILE and any TrainRetrieverConfig flag."""
    import argparse

    from radit.config_io import add_arguments, build_config

    parser = argparse.ArgumentParser(prog="python -m radit.train.r_ft", description=TrainRetrieverConfig.__doc__)
    parser.add_argument("--config", help="YAML file of TrainRetrieverConfig options (flags override it)")
    add_arguments(parser, TrainRetrieverConfig)
    args = parser.parse_args(argv)
    config_path = args.config
    del args.config
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = train_retriever(build_config(TrainRetrieverConfig, args, config_path))
    print(json.dumps({k: summary[k] for k in ("model", "best", "base", "seconds")}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
