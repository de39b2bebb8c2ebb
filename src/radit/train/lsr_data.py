"""R-ft's training data: pairs (x, y), their top-k chunks, and the frozen LM's score of y under each
chunk (RA-DIT §2.4, Eq. 4), computed once and cached (the paper precomputes them with the base LM).

    radit build-lsr-data --config configs/lsr-data-quickstart.yaml
    torchrun --nproc-per-node 4 -m radit.cli build-lsr-data --config configs/lsr-data-quickstart.yaml  # a process per GPU

Pairs:

- corpus pairs (the paper's 95 %): a random chunk of the index; x = its first `corpus_tokens` LM tokens,
  y = its last `corpus_tokens`; scored as `Background: {c}\\n\\n{x}` -> ` {y}`. The chunk x came
  from is left out of its top-k by default (it holds y verbatim; see `exclude_source_chunk`);
- task pairs (5 %): a question of an open-domain instruction source and its gold answer, scored with
  the QA template as at inference (`Background: {c}\\n\\nQuestion: {x}\\nAnswer:` -> ` {y}`). Questions
  of evaluated sets are dropped (the LM-ft leakage check).

Scoring: every (pair, chunk) needs log p_LM(y | c ∘ x). The chunk comes first in the prompt and
pairs share chunks, so the pairs are scored a part at a time: each distinct chunk of the part is
run once and its KV cache reused by every pair that retrieved it (`radit.lm.shared_prefix`).

Several processes (torchrun, accelerate launch) split the scoring, the slow part: rank 0 builds the
pairs and writes pairs.jsonl, then each process scores a contiguous run of whole parts
(`radit.distributed.shard_range` over the parts) into a file of its own, and rank 0 merges them into
scores.jsonl. A part holds the same pairs on any number of processes, so it reuses the same chunks
and gets the same scores as on one (`part_size` is thus also the unit of the split).

The output directory:

    pairs.jsonl     one line per pair: id, kind (corpus | task), source, query, target, rows (index
                    rows of its top-k), passage_ids, scores (retrieval scores)
    scores.jsonl    one line per scored pair, in pairs.jsonl order: i, logprob (sum of log p(y | c ∘ x)
                    per chunk), tokens (y's token count); appended a part at a time by one process
    scores.rank{r}.jsonl  while several processes score: process r's lines, a part at a time; merged
                    into scores.jsonl (and removed) once every pair is scored
    manifest.json   the settings, the LM, the index and the template the scores belong to, counts;
                    `complete: true` once every pair is scored
    config.yaml     the resolved config

A rerun with the same settings, on any number of processes, scores only the pairs that no score file
holds (lines are keyed by pair index i); a cache made with another LM, index, template or pair set is
refused (pass --overwrite).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from radit import distributed
from radit.artifacts import atomic_open, atomic_write_json, check_output_target, mark_output_dir, rank_part, rank_parts
from radit.augment import chunk_text
from radit.config import LSRDataConfig
from radit.config_io import save_yaml, to_dict
from radit.data.instructions import load_instructions
from radit.distributed import progress_bar
from radit.prompts import PromptTemplate, resolve_template, to_model_text
from radit.runtime import machine_info, resolve_device, resolve_dtype
from radit.train.lm_data import apply_cap, drop_leaked

log = logging.getLogger(__name__)

PAIRS_FILE = "pairs.jsonl"
SCORES_FILE = "scores.jsonl"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
MIN_CHUNK_TOKENS = 16
"""A chunk shorter than this (LM tokens) gives no corpus pair."""
TASK_CATEGORY = "open-qa"
CORPUS_TEMPLATE = PromptTemplate(name="continuation", version=1, question="{question}")
"""Corpus pairs: `Background: {c}\\n\\n{x}` followed by ` {y}`."""
_MARKER_NAME = "build-lsr-data"
_RESUMABLE = ("device", "overwrite", "part_size")
"""Settings a rerun may change and still resume: they change no score (beyond float rounding)."""


@dataclasses.dataclass
class Pair:
    """One R-ft training pair before retrieval."""

    id: str
    kind: str
    """corpus | task"""
    source: str
    query: str
    """x: what the query tower encodes and the LM reads after the chunk."""
    target: str
    """y: what the LM scores."""
    source_row: int | None = None
    """Corpus pairs: the index row of the chunk they were cut from."""


# --------------------------------------------------------------------------- pairs


def corpus_pairs(store, tokenizer, n: int, n_tokens: int, seed: int) -> list[Pair]:
    """`n` corpus pairs from random chunks of `store`: x = the first `n_tokens` LM tokens, y = the last.

    A chunk of fewer than 2 x `n_tokens` tokens is split in half; one under MIN_CHUNK_TOKENS is passed over.
    """
    if n == 0:
        return []
    order = np.random.default_rng([seed, 2]).permutation(len(store))
    pairs: list[Pair] = []
    for start in range(0, len(order), 256):
        rows = [int(r) for r in order[start : start + 256]]
        passages = store.get_many(rows)
        ids = tokenizer([p["text"] for p in passages], add_special_tokens=False)["input_ids"]
        for row, passage, toks in zip(rows, passages, ids):
            if len(toks) < MIN_CHUNK_TOKENS:
                continue
            cut = n_tokens if len(toks) >= 2 * n_tokens else len(toks) // 2
            x = tokenizer.decode(toks[:cut], skip_special_tokens=True).strip()
            y = tokenizer.decode(toks[-cut:], skip_special_tokens=True).strip()
            if x and y:
                pairs.append(Pair(f"corpus:{passage['id']}", "corpus", "corpus", x, y, source_row=row))
            if len(pairs) == n:
                return pairs
    log.warning("the index has only %d chunks of >= %d tokens; %d corpus pairs asked", len(pairs), MIN_CHUNK_TOKENS, n)
    return pairs


def task_pairs(cfg: LSRDataConfig, n: int) -> tuple[list[Pair], dict[str, Any]]:
    """`n` task pairs (question, gold answer) drawn at random from the open-domain examples of
    `cfg.sources`, evaluated questions removed. Returns the pairs and per-source counts."""
    if n == 0:
        return [], {}
    from radit.data.instructions import evaluated_questions

    evaluated = evaluated_questions(cfg.data_dir)
    pool, counts = [], {}
    for spec in cfg.sources:
        data = load_instructions(spec, cfg.data_dir, on_error=cfg.on_error)
        open_qa = [ex for ex in data.examples if ex.category == TASK_CATEGORY and ex.context is None]
        if not open_qa:
            raise ValueError(f"--sources {spec}: no open-domain QA example (category {TASK_CATEGORY!r}, no own passage); "
                             "task pairs need standalone questions, e.g. quickstart:squad-open/train, nq-open/dev")
        data.examples = open_qa
        leaked = drop_leaked(data, evaluated)
        counts[spec] = {"read": len(open_qa), "leaked": sum(leaked.values()), "skipped_bad": sum(data.stats.skipped.values())}
        pool.extend(data.examples)
    chosen = apply_cap(pool, n, cfg.seed, "lsr-task")  # a seeded sample in file order
    pairs = [Pair(f"task:{ex.source}:{ex.id}", "task", ex.source, ex.retrieval_query, ex.target) for ex in chosen]
    empty = [p.id for p in pairs if not p.target.strip()]
    if empty:
        raise ValueError(f"--sources: {len(empty)} task pair(s) have an empty answer (first: {empty[0]}); "
                         "fix the source or pass --on-error skip when reading it")
    if len(pairs) < n:
        log.warning("the task sources hold %d usable questions; %d task pairs asked", len(pairs), n)
    for p in pairs:
        counts[p.source]["used"] = counts[p.source].get("used", 0) + 1
    return pairs, counts


def split_counts(total: int, corpus_fraction: float) -> tuple[int, int]:
    """(corpus pairs, task pairs) of `total`."""
    n_corpus = round(total * corpus_fraction)
    return n_corpus, total - n_corpus


# --------------------------------------------------------------------------- retrieval


def retrieve_pairs(searcher, pairs: list[Pair], k: int, exclude_source: bool) -> list[dict[str, Any]]:
    """Each pair's top-k as a pairs.jsonl record (rows, passage ids, retrieval scores).

    With `exclude_source`, a corpus pair's own chunk is dropped from its list and the (k+1)-th hit
    takes its place.
    """
    from radit.retriever.search import search_batched

    fetch = min(k + 1, searcher.count) if exclude_source else min(k, searcher.count)
    found = search_batched(searcher, [p.query for p in pairs], fetch, batch_size=128)
    records = []
    for p, hits in zip(pairs, found):
        if exclude_source and p.source_row is not None:
            hits = [h for h in hits if h.row != p.source_row]
        hits = hits[:k]
        records.append({"id": p.id, "kind": p.kind, "source": p.source, "query": p.query, "target": p.target,
                        "rows": [h.row for h in hits], "passage_ids": [h.id for h in hits],
                        "scores": [h.score for h in hits]})
    return records


# --------------------------------------------------------------------------- scoring


def split_prompt(model_text: str, chunk: str) -> tuple[str, str]:
    """(prefix, suffix) of a prompt's model text, cut right after the chunk: the prefix depends on the
    chunk alone (template text before it + the chunk), so pairs that retrieved the chunk share it."""
    at = model_text.find(chunk)
    if at < 0:
        raise ValueError("the chunk text does not appear in the rendered prompt; the template alters it")
    return model_text[: at + len(chunk)], model_text[at + len(chunk) :]


def score_requests(records: list[dict[str, Any]], store, tokenizer, template: PromptTemplate) -> tuple[list[str], list[tuple[int, str, str]]]:
    """The distinct prefixes of `records`' chunks and one (prefix index, suffix, continuation) request per
    (pair, chunk), pair-major."""
    prefixes: list[str] = []
    where: dict[tuple[int, bool], int] = {}
    requests = []
    rows = sorted({r for rec in records for r in rec["rows"]})
    # Stripped: a chunk ending in whitespace would tokenise differently split from its suffix (shared_prefix.py).
    text = {r: chunk_text(SimpleNamespace(title=p.get("title") or "", text=p["text"])).strip()
            for r, p in zip(rows, store.get_many(rows))}
    for rec in records:
        t = CORPUS_TEMPLATE if rec["kind"] == "corpus" else template
        for row in rec["rows"]:
            prompt = to_model_text(t, t.render(rec["query"], background=text[row]), tokenizer)
            prefix, suffix = split_prompt(prompt, text[row])
            key = (row, t.chat)  # the prefix is the template's text before the chunk + the chunk
            if key not in where:
                where[key] = len(prefixes)
                prefixes.append(prefix)
            elif prefixes[where[key]] != prefix:
                raise ValueError("two templates put different text before the chunk; score them in separate runs")
            requests.append((where[key], suffix, t.continuation(rec["target"])))
    return prefixes, requests


def read_scores(path: Path, n_pairs: int) -> list[dict[str, Any]]:
    """The complete lines of scores.jsonl (a line cut by a kill is dropped), checked to be in order."""
    lines = _complete_lines(path)
    for n, rec in enumerate(lines):
        if rec.get("i") != n or n >= n_pairs:
            raise ValueError(f"{path}: line {n + 1} is out of order; pass --overwrite to score again")
    return lines


def _complete_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of `path` up to a last one cut by a kill (none if there is no file)."""
    lines: list[dict[str, Any]] = []
    if not path.is_file():
        return lines
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # cut by a kill
            lines.append(json.loads(line))
    return lines


# --------------------------------------------------------------------------- the stage


def _identity(cfg: LSRDataConfig, searcher, model, template: PromptTemplate) -> dict[str, Any]:
    from radit.models import weights_fingerprint

    m = searcher.manifest
    return {
        "lm": {"spec": cfg.model, "fingerprint": weights_fingerprint(model)},
        "index": {"path": str(Path(cfg.index).resolve()), "count": searcher.count, "dim": searcher.dim,
                  "passages_sha256": m["passages"]["sha256"],
                  "doc_encoder_fingerprint": m["encoder"].get("doc_encoder_fingerprint")},
        "query_encoder": {"spec": cfg.query_encoder or searcher.spec.query_model,
                          "fingerprint": searcher.query_encoder.fingerprint()},
        "template": template.to_dict(),
    }


def index_identity(index_dir: str | Path) -> dict[str, Any]:
    """What identifies an index's document vectors: count, dim, passages sha256, document-encoder fingerprint."""
    from radit.retriever.manifest import read_manifest

    m, _ = read_manifest(index_dir)
    return {"count": m["count"], "dim": m.get("dim"), "passages_sha256": m["passages"]["sha256"],
            "doc_encoder_fingerprint": m.get("encoder", {}).get("doc_encoder_fingerprint")}


@dataclasses.dataclass
class _Plan:
    """What rank 0 tells every process once --output is ready to score into."""

    manifest: dict[str, Any]
    todo: list[int]
    """The pairs no score file holds yet, in pairs.jsonl order."""
    sharded: bool
    """Score into per-rank files and merge them at the end: several processes, or rank files left by
    such a run. Else the one-process way: append to scores.jsonl."""


def build_lsr_data(cfg: LSRDataConfig) -> dict[str, Any]:
    """The `radit build-lsr-data` stage; returns the manifest (also written to manifest.json).

    Under torchrun every process returns it, once rank 0 has written the complete cache.

    Raises:
        FileNotFoundError, ValueError: a missing index or source, a BM25 index, an --output holding
            something else or a cache made with other settings; all before anything is written.
    """
    from radit.lm.model import load_lm
    from radit.lm.shared_prefix import shared_prefix_logprobs
    from radit.retriever.search import DenseSearcher, load_searcher

    distributed.init(cfg.device)  # under torchrun / accelerate launch: join the other processes; else nothing
    rank, world = distributed.rank(), distributed.world_size()
    t_start = time.perf_counter()
    out = Path(cfg.output)
    # Every process loads the index and the LM: each one scores.
    if not Path(cfg.index).is_dir():
        raise FileNotFoundError(f"--index {cfg.index}: no index there; build one with `radit index`")
    searcher = load_searcher(cfg.index, query_encoder=cfg.query_encoder, device=cfg.device)
    if not isinstance(searcher, DenseSearcher):
        raise ValueError(f"--index {cfg.index} is not a dense index; R-ft trains a query tower against stored "
                         "document vectors, so it needs a dense index (`radit index --backend dense`)")
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    template = resolve_template(cfg.template)
    if template.choices is not None:
        raise ValueError(f"--template {template.name} is a multiple-choice template; task pairs need an open-answer one (qa)")
    model, tokenizer = load_lm(cfg.model, device=cfg.device, dtype=dtype)

    # Rank 0 alone reads and writes --output. An error there is sent to the other processes too, so
    # that each stops with the same message rather than waiting for a plan that never comes.
    records: list[dict[str, Any]] = []
    plan: _Plan | ValueError | OSError | None = None
    if rank == 0:
        try:
            records, plan = _prepare_output(cfg, out, _identity(cfg, searcher, model, template), searcher, tokenizer,
                                            dtype, sharded=world > 1)
        except (ValueError, OSError) as e:
            plan = e
    plan = distributed.broadcast_object(plan)
    if isinstance(plan, Exception):
        raise plan
    assert plan is not None
    manifest = plan.manifest
    if manifest["complete"]:
        return manifest
    if rank != 0:
        with open(out / PAIRS_FILE, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]

    # ---------------------------------------------------------------- score, a part at a time
    # Each process takes a contiguous run of whole parts: a part holds the pairs it holds on one
    # process, so it reuses the same prefixes and gets the same scores, whatever the number of processes.
    parts = pending_parts(plan.todo, cfg.part_size)
    mine = [parts[j] for j in distributed.shard_range(len(parts))]
    store = searcher.store
    del searcher  # the query encoder is not needed any more
    my_requests = sum(len(records[i]["rows"]) for part in mine for i in part)
    already = 0 if world > 1 else sum(len(r["rows"]) for r in records) - my_requests  # one process: the whole cache's bar
    bar = progress_bar(total=already + my_requests, initial=already, desc="LSR scores", unit="pair")  # (pair, chunk) pairs
    stats = {"requests": 0, "truncated": 0, "distinct_chunks": 0, "slots": 0}
    t_score = time.perf_counter()
    with open(rank_part(out / SCORES_FILE, rank) if plan.sharded else out / SCORES_FILE, "a", encoding="utf-8") as f:
        for indices in mine:
            part = [records[i] for i in indices]
            prefixes, requests = score_requests(part, store, tokenizer, template)
            stats["distinct_chunks"] += len(prefixes)
            stats["slots"] += len(requests)
            part_stats: dict[str, int] = {}
            logprobs = shared_prefix_logprobs(model, tokenizer, prefixes, requests, dtype=dtype, naive=cfg.naive,
                                              stats=part_stats, on_progress=bar.update)
            stats["truncated"] += part_stats.get("truncated", 0)
            stats["requests"] += len(requests)
            bar.set_postfix(pairs_s=f"{stats['requests'] / (time.perf_counter() - t_score):.1f}")
            at = 0
            lines = []
            for i, rec in zip(indices, part):
                lps = logprobs[at : at + len(rec["rows"])]
                at += len(rec["rows"])
                lines.append(json.dumps({"i": i, "logprob": [float(lp.double().sum()) for lp in lps],
                                         "tokens": int(lps[0].numel()) if lps else 0}) + "\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
    bar.close()
    # Collectives: every process has closed its file before rank 0 merges them.
    by_rank = distributed.all_gather_object(stats["requests"])
    totals = distributed.all_reduce_sum(torch.tensor(list(stats.values()), dtype=torch.int64))
    stats = dict(zip(stats, (int(x) for x in totals)))
    seconds = time.perf_counter() - t_score  # after the collectives: the slowest process's time
    if rank == 0:
        if plan.sharded:
            merge_scores(out, len(records))
        n_new = stats.pop("requests")
        manifest.update({
            "complete": True, "scoring": {"requests": n_new, "seconds": round(seconds, 2),
                                          "pairs_per_s": round(n_new / seconds, 3) if seconds > 0 and n_new else None,
                                          "prefix_reuse": not cfg.naive, **stats, "processes": world,
                                          "requests_by_rank": by_rank},
            "seconds": round(time.perf_counter() - t_start, 2), "machine": machine_info(device),
        })
        atomic_write_json(out / MANIFEST_FILE, manifest)
    # Every process returns the manifest, and only once rank 0 has written everything.
    return distributed.broadcast_object(manifest)


def _prepare_output(cfg: LSRDataConfig, out: Path, identity: dict[str, Any], searcher, tokenizer, dtype: str,
                    sharded: bool) -> tuple[list[dict[str, Any]], _Plan]:
    """Rank 0's part before scoring: refuse a foreign cache, or resume one, or build the pairs and
    their top-k; write pairs.jsonl, config.yaml and an incomplete manifest; find what is left to score.

    Returns the pairs.jsonl records and the plan; its manifest is the old one if the cache is complete.
    """
    settings = {k: v for k, v in to_dict(cfg).items() if k not in _RESUMABLE}
    manifest_path = out / MANIFEST_FILE
    resume = False
    if out.exists():
        check_output_target(out, kind="dir")
        if manifest_path.is_file() and not cfg.overwrite:
            old = json.loads(manifest_path.read_text(encoding="utf-8"))
            changed = [k for k in ("lm", "index", "query_encoder", "template") if old.get(k) != identity[k]]
            changed += [f"settings.{k}" for k in settings if old.get("settings", {}).get(k) != settings[k]]
            if changed:
                raise ValueError(f"--output {out} holds an LSR cache made with other {', '.join(changed)}; "
                                 "pass --overwrite to score again or choose another --output")
            if old.get("complete"):
                log.info("%s: the cache is complete; nothing to do (pass --overwrite to score again)", out)
                return [], _Plan(old, [], False)
            resume = (out / PAIRS_FILE).is_file()

    # ---------------------------------------------------------------- pairs and their top-k
    if resume:
        with open(out / PAIRS_FILE, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        source_counts = json.loads(manifest_path.read_text(encoding="utf-8")).get("sources", {})
    else:
        n_corpus, n_task = split_counts(cfg.pairs, cfg.corpus_fraction)
        tasks, source_counts = task_pairs(cfg, n_task)
        corpus = corpus_pairs(searcher.store, tokenizer, n_corpus, cfg.corpus_tokens, cfg.seed)
        pairs = corpus + tasks
        random.Random(f"{cfg.seed}:lsr-order").shuffle(pairs)
        log.info("%d corpus + %d task pairs; retrieving their top-%d", len(corpus), len(tasks), cfg.k)
        records = retrieve_pairs(searcher, pairs, cfg.k, cfg.exclude_source_chunk)
        # Pairs whose top-1 chunk comes from the same document share more of their chunks: scored in the
        # same part, their chunks are prefilled once (600 quickstart pairs: 4,107 prefills instead of 4,818).
        records.sort(key=lambda r: (r["kind"], r["passage_ids"][0].rsplit("#", 1)[0] if r["passage_ids"] else ""))
        if cfg.overwrite and out.exists():
            for name in (PAIRS_FILE, MANIFEST_FILE, "config.yaml"):
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        mark_output_dir(out, _MARKER_NAME)
        with atomic_open(out / PAIRS_FILE) as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        for path in score_files(out):
            path.unlink()
    save_yaml(cfg, out / "config.yaml")
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION, **identity, "settings": settings, "dtype": dtype, "complete": False,
        "pairs": len(records), "corpus_pairs": sum(r["kind"] == "corpus" for r in records),
        "task_pairs": sum(r["kind"] == "task" for r in records), "sources": source_counts,
    }
    atomic_write_json(manifest_path, manifest)

    done = collect_scores(out, len(records))
    if done:
        log.info("resuming: %d of %d pairs already scored", len(done), len(records))
    todo = [i for i in range(len(records)) if i not in done]
    return records, _Plan(manifest, todo, sharded or any(p.name != SCORES_FILE for p in score_files(out)))


def pending_parts(todo: list[int], part_size: int) -> list[range]:
    """The pairs left to score (ascending indices), cut into parts of at most `part_size`.

    Each run of consecutive pairs is cut from its first pair on, so a fresh run has the parts of a
    one-process run on any number of processes, and a run resumed after a kill (which stops a
    process at the end of a part, or within its last one) scores the parts that were left.
    """
    parts: list[range] = []
    start = 0
    for j in range(1, len(todo) + 1):
        if j == len(todo) or todo[j] != todo[j - 1] + 1:  # the end of a run
            first, last = todo[start], todo[j - 1] + 1
            parts.extend(range(a, min(a + part_size, last)) for a in range(first, last, part_size))
            start = j
    return parts


def score_files(out: Path) -> list[Path]:
    """The score files in `out`: scores.jsonl (if any) and every per-rank file, of any number of processes."""
    return [p for p in [out / SCORES_FILE, *rank_parts(out / SCORES_FILE)] if p.is_file()]


def collect_scores(out: Path, n_pairs: int) -> dict[int, dict[str, Any]]:
    """Every score line written so far, by pair index: the in-order lines of scores.jsonl and the
    lines of the per-rank files, whichever processes wrote them.

    A line cut by a kill is dropped from its file, so that appending continues on a clean line boundary.
    """
    done: dict[int, dict[str, Any]] = {}
    for path in score_files(out):
        lines = read_scores(path, n_pairs) if path.name == SCORES_FILE else _complete_lines(path)
        for n, rec in enumerate(lines, 1):
            if not isinstance(rec.get("i"), int) or not 0 <= rec["i"] < n_pairs:
                raise ValueError(f"{path}: line {n} names pair {rec.get('i')!r} of {n_pairs}; "
                                 "pass --overwrite to score again")
            done.setdefault(rec["i"], rec)  # a pair twice (a merge cut short) has the same scores twice
        _rewrite_complete_lines(path, lines)
    return done


def merge_scores(out: Path, n_pairs: int) -> None:
    """Write every score line into scores.jsonl in pair order, then remove the per-rank files.

    Killed in between, the next run finds the same lines twice and merges again.
    """
    done = collect_scores(out, n_pairs)
    missing = [i for i in range(n_pairs) if i not in done]
    if missing:
        raise RuntimeError(f"{out}: {len(missing)} pairs unscored after scoring (first: {missing[0]})")
    with atomic_open(out / SCORES_FILE) as f:
        f.writelines(json.dumps(done[i]) + "\n" for i in range(n_pairs))
    for path in score_files(out):
        if path.name != SCORES_FILE:
            path.unlink()


def _rewrite_complete_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    """Drop a line cut by a kill, so appending continues on a clean line boundary."""
    size = sum(len(json.dumps(x)) + 1 for x in lines)
    if path.stat().st_size != size:
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(x) + "\n" for x in lines)
        shutil.move(tmp, path)
