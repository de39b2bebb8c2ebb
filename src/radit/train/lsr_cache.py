"""Reading the LSR cache that `radit build-lsr-data` writes (`radit.train.lsr_data`): the pairs and
their frozen-LM scores as arrays, for the R-ft loop (`radit.train.r_ft`), one cache or several merged.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from radit.train.lsr_data import MANIFEST_FILE, PAIRS_FILE, SCORES_FILE, read_scores


@dataclasses.dataclass
class LSRCache:
    """A complete cache as arrays: what the R-ft loop trains on."""

    manifest: dict[str, Any]
    ids: list[str]
    kinds: np.ndarray
    """[N] str: corpus | task"""
    queries: list[str]
    rows: np.ndarray
    """[N, k] int64 index rows (-1 where a pair has fewer than k chunks)."""
    logprob: np.ndarray
    """[N, k] float64 sum of log p_LM(y | c ∘ x) per chunk (-inf where there is no chunk)."""
    tokens: np.ndarray
    """[N] int64 tokens of y."""
    answers: list[str]


def read_cache(path: str | Path) -> LSRCache:
    """The pairs and scores of a complete `radit build-lsr-data` output.

    Raises:
        FileNotFoundError: no cache there. ValueError: an incomplete or damaged one (one line, what to do).
    """
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FileNotFoundError(f"--data {path}: no LSR cache there (no {MANIFEST_FILE}); build it with `radit build-lsr-data`")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not manifest.get("complete"):
        raise ValueError(f"--data {path}: the cache is incomplete (scoring stopped); rerun `radit build-lsr-data "
                         f"--config {path / 'config.yaml'}` to finish it")
    with open(path / PAIRS_FILE, encoding="utf-8") as f:
        pairs = [json.loads(line) for line in f if line.strip()]
    scores = read_scores(path / SCORES_FILE, len(pairs))
    if len(scores) != len(pairs) or len(pairs) != manifest["pairs"]:
        raise ValueError(f"--data {path}: {len(pairs)} pairs and {len(scores)} score lines, the manifest says "
                         f"{manifest['pairs']}; rebuild it with `radit build-lsr-data --overwrite`")
    k = max((len(p["rows"]) for p in pairs), default=0)
    rows = np.full((len(pairs), k), -1, dtype=np.int64)
    logprob = np.full((len(pairs), k), -math.inf)
    for i, (p, s) in enumerate(zip(pairs, scores)):
        if len(s["logprob"]) != len(p["rows"]):
            raise ValueError(f"{path / SCORES_FILE}:{i + 1}: {len(s['logprob'])} scores for {len(p['rows'])} chunks; "
                             "rebuild it with `radit build-lsr-data --overwrite`")
        rows[i, : len(p["rows"])] = p["rows"]
        logprob[i, : len(p["rows"])] = s["logprob"]
    return LSRCache(manifest, [p["id"] for p in pairs], np.array([p["kind"] for p in pairs]),
                    [p["query"] for p in pairs], rows, logprob, np.array([s["tokens"] for s in scores], dtype=np.int64),
                    [p["target"] for p in pairs])


def merge_caches(caches: list[LSRCache], names: list[str]) -> LSRCache:
    """Several caches as one (pairs concatenated, k padded to the largest); they must have been scored
    by the same LM against the same index (each is still checked against the index by the caller).

    Raises:
        ValueError: caches of different LMs or indexes, naming the two.
    """
    first = caches[0].manifest
    for cache, name in zip(caches[1:], names[1:]):
        for key in ("lm", "index"):
            if cache.manifest[key] != first[key]:
                raise ValueError(f"--data {name} was scored with another {key} than {names[0]} "
                                 f"({cache.manifest[key]} vs {first[key]}); train on caches of one LM and one index")
    if len(caches) == 1:
        return caches[0]
    k = max(c.rows.shape[1] for c in caches)

    def pad(a: np.ndarray, value) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=value)

    return LSRCache(first, [i for c in caches for i in c.ids], np.concatenate([c.kinds for c in caches]),
                    [q for c in caches for q in c.queries], np.concatenate([pad(c.rows, -1) for c in caches]),
                    np.concatenate([pad(c.logprob, -math.inf) for c in caches]),
                    np.concatenate([c.tokens for c in caches]), [a for c in caches for a in c.answers])
