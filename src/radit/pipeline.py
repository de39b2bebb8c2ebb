"""The whole of RA-DIT in one run directory: `radit pipeline --config RECIPE` and `radit quickstart`.

    corpus -> index -> base evaluation (closed-book, REPLUG) -> LM-ft data -> LM-ft -> LSR targets
    from the *base* LM -> R-ft -> evaluation of LM-ft, R-ft and RA-DIT -> report

Every stage is one of radit's commands, called with its own typed config; the pipeline only connects
their files and keeps a ledger of what finished:

    run/
      passages.jsonl  index/  lm-data/  lm-ft/  lsr-data/  r-ft/
      eval/{task}/{configuration}/      one `radit eval` run per row of the report
      report.md  report.png  report.json
      pipeline.json                     per stage: settings key, state, seconds
      config.yaml                       the recipe as run

A stage's key hashes its own settings and the keys of the stages it reads from. A rerun skips a stage
whose key is unchanged and whose state is `done`; it reruns a stage whose key changed (the stage's own
outputs are replaced, and so, through the keys, are those of every stage downstream); and it calls a
stage left `started` (killed, crashed) again, which continues from its own checkpoints, parts or
predictions.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radit.artifacts import OUTPUT_MARKER, atomic_open, atomic_write_json, atomic_write_text, check_output_target, mark_output_dir
from radit.config import EvalConfig, EvalRetrievalConfig, PipelineConfig
from radit.config_io import save_yaml
from radit.eval.tasks import task_slug

log = logging.getLogger(__name__)

LEDGER = "pipeline.json"
RECIPES = Path(__file__).parent / "configs"  # the recipes: a link to the checkout's configs/, a copy in a wheel
REPORT = "report"

# What each configuration of the report is made of: (fine-tuned LM?, fine-tuned query tower?).
ROWS = {"closed-book": (False, False), "replug": (False, False), "lm-ft": (True, False), "r-ft": (False, True), "ra-dit": (True, True)}
LABELS = {"closed-book": "closed-book", "replug": "REPLUG", "lm-ft": "LM-ft", "r-ft": "R-ft", "ra-dit": "RA-DIT"}


@dataclasses.dataclass
class Stage:
    """One step of the pipeline: a command's function and its config, and the stages it reads from."""

    name: str
    config: Any
    run: Callable[[Any], Any]
    needs: tuple[str, ...] = ()
    outputs: tuple[Path, ...] = ()
    """Files or folders whose presence (besides a `done` ledger entry) lets a rerun skip the stage."""
    resumable: frozenset[str] = frozenset()
    """Settings the stage's command continues across (e.g. eval's --limit: a larger one answers only the
    new questions); a change to these alone continues the stage instead of rebuilding it."""


# --------------------------------------------------------------------------- the plan


def run_paths(out: Path) -> dict[str, Path]:
    return {"passages": out / "passages.jsonl", "index": out / "index", "lm_data": out / "lm-data" / "train.jsonl",
            "lm_ft": out / "lm-ft", "lsr_data": out / "lsr-data", "r_ft": out / "r-ft", "eval": out / "eval",
            "retrieval": out / "eval-retrieval"}


def _documents(cfg: PipelineConfig, out: Path) -> list[str]:
    """The corpus files: the recipe's, or the bundled corpus (its first N documents with --limit-documents)."""
    if cfg.documents and cfg.limit_documents is None:
        return list(cfg.documents)
    if cfg.documents:
        raise ValueError("--limit-documents applies to the bundled corpus; cut your own --documents files instead")
    from radit.data.qa import quickstart_documents

    bundled = quickstart_documents()
    if cfg.limit_documents is None:
        return [str(bundled)]
    subset = out / f"documents.first{cfg.limit_documents}.jsonl"
    if not subset.is_file():
        with gzip.open(bundled, "rt", encoding="utf-8") as f, atomic_open(subset) as g:
            g.writelines(itertools.islice(f, cfg.limit_documents))
    return [str(subset)]


def eval_config(cfg: PipelineConfig, out: Path, task: str, row: str) -> EvalConfig:
    """The `radit eval` settings of one row of the report."""
    paths = run_paths(out)
    ft_lm, ft_retriever = ROWS[row]
    model = str(paths["lm_ft"] / "model") if ft_lm else cfg.lm
    inference = cfg.eval.inference
    if row == "closed-book":
        inference = dataclasses.replace(inference, mode="closed-book")
    if ft_lm:  # the template the LM was trained with, saved in its folder
        inference = dataclasses.replace(inference, template=model)
    inference = dataclasses.replace(inference, dtype=cfg.dtype)
    return EvalConfig(
        task=task, model=model, index=None if row == "closed-book" else str(paths["index"]),
        query_encoder=str(paths["r_ft"] / "model") if ft_retriever else None, inference=inference,
        shots=cfg.eval.ft_shots if ft_lm else cfg.eval.shots,
        limit=cfg.eval.limits[cfg.eval.tasks.index(task)] if cfg.eval.limits else cfg.eval.limit,
        output=str(paths["eval"] / task_slug(task) / row), data_dir=cfg.eval.data_dir, device=cfg.device)


def plan(cfg: PipelineConfig, out: Path) -> list[Stage]:
    """The stages in the order they run, each with the config its command takes."""
    from radit.corpus import build_passages
    from radit.eval.harness import RESUMABLE_FIELDS, run_eval
    from radit.eval.retrieval import evaluate_retrieval
    from radit.retriever.index import build_index
    from radit.train.lm_data import build_lm_data
    from radit.train.lm_ft import train_lm
    from radit.train.lsr_data import build_lsr_data
    from radit.train.r_ft import train_retriever

    p = run_paths(out)
    run = dict(device=cfg.device, dtype=cfg.dtype)
    corpus = dataclasses.replace(cfg.corpus, inputs=_documents(cfg, out), output=str(p["passages"]))
    index = dataclasses.replace(cfg.index, passages=str(p["passages"]), output=str(p["index"]), **run)
    lm_data = dataclasses.replace(cfg.lm_data, index=str(p["index"]), tokenizer=cfg.lm, output=str(p["lm_data"]),
                                  device=cfg.device)
    train = dataclasses.replace(cfg.train_lm, data=str(p["lm_data"]), model=cfg.lm, output=str(p["lm_ft"]),
                                eval_index=str(p["index"]), **run)
    lsr = dataclasses.replace(cfg.lsr_data, index=str(p["index"]), model=cfg.lm, output=str(p["lsr_data"]), **run)
    r_ft = dataclasses.replace(cfg.train_retriever, data=[str(p["lsr_data"])], index=str(p["index"]),
                               output=str(p["r_ft"]), **run)

    def evals(rows: tuple[str, ...]) -> list[Stage]:
        needs = {"closed-book": (), "replug": ("index",), "lm-ft": ("index", "train-lm"),
                 "r-ft": ("index", "train-retriever"), "ra-dit": ("index", "train-lm", "train-retriever")}
        return [Stage(f"eval/{task_slug(task)}/{row}", eval_config(cfg, out, task, row), run_eval, needs[row],
                      (p["eval"] / task_slug(task) / row / "metrics.json",), RESUMABLE_FIELDS)
                for task in cfg.eval.tasks for row in rows if row in cfg.eval.configurations]

    def retrieval(tower: str) -> list[Stage]:
        uses_r_ft = any(ROWS[row][1] for row in cfg.eval.configurations)
        if not cfg.eval.retrieval_questions or (tower == "r-ft" and not uses_r_ft):
            return []
        config = EvalRetrievalConfig(index=str(p["index"]), questions=cfg.eval.retrieval_questions,
                                     output=str(p["retrieval"] / tower), device=cfg.device,
                                     query_encoder=str(p["r_ft"] / "model") if tower == "r-ft" else None)
        needs = ("index", "train-retriever") if tower == "r-ft" else ("index",)
        return [Stage(f"retrieval/{tower}", config, evaluate_retrieval, needs, (p["retrieval"] / tower / "metrics.json",))]

    return [
        Stage("corpus", corpus, build_passages, (), (p["passages"],)),
        Stage("index", index, build_index, ("corpus",), (p["index"] / "manifest.json",)),
        *retrieval("base"),
        *evals(("closed-book", "replug")),
        Stage("lm-data", lm_data, build_lm_data, ("index",), (p["lm_data"],)),
        Stage("train-lm", train, train_lm, ("lm-data",), (p["lm_ft"] / "model",)),
        Stage("lsr-data", lsr, build_lsr_data, ("index",), (p["lsr_data"] / "manifest.json",)),
        Stage("train-retriever", r_ft, train_retriever, ("lsr-data",), (p["r_ft"] / "model",)),
        *retrieval("r-ft"),
        *evals(("lm-ft", "r-ft", "ra-dit")),
    ]


def needed(stages: list[Stage]) -> list[Stage]:
    """The stages the requested configurations need (closed-book and REPLUG alone train nothing)."""
    want = {s.name for s in stages if s.name.startswith(("eval/", "retrieval/"))}
    keep: set[str] = set()
    by_name = {s.name: s for s in stages}

    def visit(name: str) -> None:
        if name not in keep:
            keep.add(name)
            for dep in by_name[name].needs:
                visit(dep)

    for name in want:
        visit(name)
    visit("index")
    return [s for s in stages if s.name in keep]


def stage_settings(config: Any, prefix: str = "") -> dict[str, Any]:
    """The fields of a stage config that differ from their defaults, flattened (`encoder.preset`).

    Only these enter the stage's key, so a field that a later radit adds (with a default) leaves the
    keys of existing runs, and thus their finished stages, as they are."""
    settings: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "overwrite":
            continue
        if dataclasses.is_dataclass(value):
            settings.update(stage_settings(value, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if value != default:
            settings[prefix + f.name] = value
    return settings


def stage_key(stage: Stage, keys: dict[str, str], settings: dict[str, Any] | None = None) -> str:
    """A hash of the stage's settings (those off their defaults; or `settings`) and of the keys of the
    stages it reads from."""
    settings = stage_settings(stage.config) if settings is None else settings
    blob = json.dumps({"settings": settings, "needs": {n: keys[n] for n in stage.needs}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def continues_across(stage: Stage, entry: dict[str, Any], settings: dict[str, Any], keys: dict[str, str]) -> bool:
    """Whether a stage whose key changed can continue where it stopped: the stages it reads from are
    unchanged (its old settings with today's upstream keys give its old key) and only settings it
    resumes across (`Stage.resumable`) differ."""
    old = entry.get("settings", {})
    diff = {k for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
    return (bool(diff) and all(k.split(".")[-1] in stage.resumable for k in diff)
            and stage_key(stage, keys, old) == entry.get("key"))


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k, 'default')!r} -> {new.get(k, 'default')!r}" for k in keys[:4]) or "an upstream stage"


# --------------------------------------------------------------------------- running it


def _read_ledger(out: Path) -> dict[str, Any]:
    path = out / LEDGER
    if not path.is_file():
        return {"stages": {}}
    try:
        ledger = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(ledger.get("stages"), dict):
            raise ValueError
        return ledger
    except ValueError:
        raise ValueError(f"{path}: not a pipeline ledger radit wrote (invalid JSON or no 'stages'); delete it to "
                         "rerun every stage, or choose another --output") from None


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def _start(out: Path) -> None:
    """Make `out` the pipeline's run directory: absent, empty, or one a pipeline wrote."""
    check_output_target(out, kind="dir")
    if out.is_dir() and any(out.iterdir()):
        marker = json.loads((out / OUTPUT_MARKER).read_text(encoding="utf-8") or "{}").get("output")
        if marker != "pipeline":
            raise ValueError(f"--output {out} holds radit's {marker!r} output, not a pipeline run; choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    mark_output_dir(out, "pipeline")


def run_pipeline(cfg: PipelineConfig, runners: dict[str, Callable[[Any], Any]] | None = None) -> dict[str, Any]:
    """Run (or continue) every stage of the recipe; returns the report's numbers (report.json).

    Args:
        cfg: the recipe.
        runners: replaces a stage's function by name (tests: e.g. an eval with an already loaded LM).
    """
    out = Path(cfg.output)
    _start(out)
    ledger = _read_ledger(out)  # a broken ledger stops the run before anything is written
    save_yaml(cfg, out / "config.yaml")
    stages = needed(plan(cfg, out))
    keys: dict[str, str] = {}
    t_all = time.perf_counter()
    for i, stage in enumerate(stages, 1):
        key = keys[stage.name] = stage_key(stage, keys)
        entry = ledger["stages"].get(stage.name)
        head = f"[{i}/{len(stages)}] {stage.name}"
        if entry and entry.get("key") == key and entry.get("state") == "done" and all(o.exists() for o in stage.outputs):
            log.info("%s: done earlier (%s), skipped", head, _fmt_seconds(entry.get("seconds", 0.0)))
            continue
        changed = entry is not None and entry.get("key") != key
        config = stage.config
        settings = json.loads(json.dumps(stage_settings(config), default=str))
        if changed and continues_across(stage, entry, settings, keys):
            log.info("%s: %s, continuing", head, _changes(entry.get("settings", {}), settings))
            entry, changed = {**entry, "key": key}, False
        elif changed:
            log.info("%s: changed since the last run (%s), rebuilding", head, _changes(entry.get("settings", {}), settings))
            if hasattr(config, "overwrite"):
                config = dataclasses.replace(config, overwrite=True)
        else:
            log.info("%s: %s", head, "continuing" if entry else "running")
        seconds = (entry or {}).get("seconds", 0.0) if not changed else 0.0
        ledger["stages"][stage.name] = {"key": key, "state": "started", "seconds": seconds, "settings": settings}
        atomic_write_json(out / LEDGER, ledger)
        t0 = time.perf_counter()
        (runners or {}).get(stage.name, stage.run)(config)
        seconds += time.perf_counter() - t0
        ledger["stages"][stage.name] = {"key": key, "state": "done", "seconds": round(seconds, 2), "settings": settings}
        atomic_write_json(out / LEDGER, ledger)
        log.info("%s: done in %s", head, _fmt_seconds(time.perf_counter() - t0))
    report = write_report(cfg, out, ledger)
    log.info("pipeline finished in %s (this call); report -> %s", _fmt_seconds(time.perf_counter() - t_all), out / f"{REPORT}.md")
    return report


def write_report(cfg: PipelineConfig, out: Path, ledger: dict[str, Any]) -> dict[str, Any]:
    """report.md / report.png / report.json over the evaluated rows, REPLUG the paired baseline."""
    from radit.eval.report import make_report

    rows = [r for r in ROWS if r in cfg.eval.configurations]
    run_dirs = [run_paths(out)["eval"] / task_slug(task) / row for task in cfg.eval.tasks for row in rows]
    labels = [LABELS[row] for _ in cfg.eval.tasks for row in rows]
    families = labels
    baseline = LABELS["replug"] if "replug" in rows else None
    md = make_report(run_dirs, out, labels=labels, families=families, baseline=baseline,
                     resamples=cfg.eval.resamples, seed=cfg.eval.seed, title=f"RA-DIT ablation (Table 6), {cfg.lm}",
                     name=REPORT)
    stage_times = {name: e.get("seconds", 0.0) for name, e in ledger["stages"].items()}
    report = json.loads(md.with_suffix(".json").read_text(encoding="utf-8"))
    report["stage_seconds"] = stage_times
    report["total_seconds"] = round(sum(stage_times.values()), 2)
    report["retrieval"] = {tower: json.loads((run_paths(out)["retrieval"] / tower / "metrics.json").read_text(encoding="utf-8"))
                           for tower in ("base", "r-ft") if (run_paths(out)["retrieval"] / tower / "metrics.json").is_file()}
    report["ordering"] = ordering_checks(report)
    atomic_write_json(md.with_suffix(".json"), report)
    _append(md, report["ordering"], report["retrieval"], stage_times)
    return report


def ordering_checks(report: dict[str, Any]) -> dict[str, list[str]]:
    """Per task, the paper's Table 6 ordering read off the report: is RA-DIT the best row, and does each
    fine-tuned row beat REPLUG by more than its paired interval allows to be chance."""
    checks: dict[str, list[str]] = {}
    for task in dict.fromkeys(r["task"] for r in report["runs"]):
        runs = {r["label"]: r for r in report["runs"] if r["task"] == task}
        lines = []
        for metric in ("em", "f1", "accuracy"):
            scored = {label: r["metrics"][metric]["value"] for label, r in runs.items() if metric in r["metrics"]}
            if "RA-DIT" in scored and len(scored) > 1:
                best = max(scored, key=scored.get)
                runner_up = max((v, k) for k, v in scored.items() if k != "RA-DIT")
                verdict = "yes" if best == "RA-DIT" and scored["RA-DIT"] > runner_up[0] else "no"
                lines.append(f"RA-DIT the best row on {metric.upper() if metric != 'accuracy' else metric}: {verdict} "
                             f"({scored['RA-DIT']:.1f}; best other: {runner_up[1]} {runner_up[0]:.1f})")
        for label in ("LM-ft", "R-ft", "RA-DIT"):
            vs = (runs.get(label) or {}).get("vs_baseline")
            if not vs:
                continue
            for metric in ("em", "f1", "accuracy"):
                if metric in vs:
                    d = vs[metric]
                    above = "yes" if d["significant"] and d["diff"] > 0 else "no" if d["significant"] else "not significant"
                    lines.append(f"{label} above {vs['label']} on {metric.upper() if metric != 'accuracy' else metric}: "
                                 f"{above} ({d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}])")
        if "RA-DIT" in runs and "LM-ft" in runs:
            metric = "em" if "em" in runs["RA-DIT"]["metrics"] else "accuracy"
            gap = runs["RA-DIT"]["metrics"][metric]["value"] - runs["LM-ft"]["metrics"][metric]["value"]
            lines.append(f"RA-DIT - LM-ft on {metric.upper() if metric == 'em' else metric}: {gap:+.1f} (what R-ft adds to the tuned LM)")
        checks[task] = lines
    return checks


def _append(md: Path, ordering: dict[str, list[str]], retrieval: dict[str, Any], stage_times: dict[str, float]) -> None:
    """The ordering checks, the retrieval table and the time each stage took (summed over the calls that
    ran it) under the report's tables."""
    lines = ["", "## The paper's ordering (Table 6), read off the intervals above", ""]
    for task, checks in ordering.items():
        lines += [f"- {task}:", *[f"  - {c}" for c in checks]]
    if retrieval:
        some = next(iter(retrieval.values()))
        hits = [k for k in some["metrics"] if k.startswith("answer_hit@")]
        lines += ["", f"## Retrieval: answer-hit@k, {some['n']} questions of {some.get('questions', '')}", "",
                  "| query tower | " + " | ".join(hits) + " |", "|---|" + "---|" * len(hits)]
        names = {"base": "base (the index's own)", "r-ft": "R-ft (LSR, Eq. 4-5)"}
        lines += [f"| {names[t]} | " + " | ".join(f"{m['metrics'][h]:.1f}" for h in hits) + " |" for t, m in retrieval.items()]
    lines += ["", "## Time per stage", "", "| stage | time |", "|---|---|"]
    lines += [f"| {name} | {_fmt_seconds(s)} |" for name, s in stage_times.items()]
    lines.append(f"| total | {_fmt_seconds(sum(stage_times.values()))} |")
    text = md.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    atomic_write_text(md, text)


def recipe_path(name: str) -> Path:
    """A recipe shipped with radit: configs/ of the checkout, packaged as radit/configs (`radit quickstart` runs
    `quickstart.yaml`)."""
    path = RECIPES / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the recipe is missing from this installation; run a recipe file with "
                                f"`radit pipeline --config FILE` (the repository's configs/ holds them)")
    return path
