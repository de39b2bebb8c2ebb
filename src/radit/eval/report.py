"""Side-by-side comparison of finished `radit eval` runs, with bootstrap intervals and paired differences.

    radit report --runs runs/eval/squad-open-replug-k3-0shot runs/ra-dit-eval/replug-k3-0shot --labels REPLUG RA-DIT --baseline REPLUG --output runs/eval/report

Writes into --output:

- `comparison.md`: one table per task, one row per run in the order given: configuration, LM,
  retriever, mode/k/shots, n, EM and F1 (accuracy for choice tasks) with a 95 % percentile bootstrap
  interval over the run's questions and, with --baseline, the paired bootstrap difference from that
  task's baseline run over the same questions (matched by id), marked (n.s.) when its interval holds 0;
- `comparison.json`: every number of the tables, unrounded;
- `comparison.png`: one panel per task and metric, a bar per run sorted by score with its interval,
  coloured by family (closed-book, REPLUG, LM-ft, R-ft, RA-DIT).

Per-question scores come from each run's predictions.jsonl (`em`/`f1`, or `correct` for choice tasks).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from radit.artifacts import atomic_path, atomic_write_json, atomic_write_text
from radit.config import ReportConfig
from radit.eval.metrics import bootstrap_interval, paired_bootstrap

FAMILY_COLORS = {"closed-book": "#9d9d9d", "REPLUG": "#4c78a8", "LM-ft": "#f28e2b", "R-ft": "#59a14f",
                 "RA-DIT": "#d62728"}
"""Each run family's bar colour, in legend order: no retrieval; the base LM and retriever; a fine-tuned
LM; a fine-tuned query encoder; both fine-tuned."""
METRIC_NAMES = {"em": "EM", "f1": "F1", "accuracy": "accuracy"}
_SCORE_FIELDS = {"em": "em", "f1": "f1", "accuracy": "correct"}  # metrics.json name -> predictions.jsonl field
LEVEL = 0.95


@dataclasses.dataclass
class Run:
    """One evaluated run as the report sees it; scores are per question in [0, 1], the rest x 100."""

    dir: Path
    info: dict[str, Any]
    """Its metrics.json."""
    scores: dict[str, dict[str, float]]
    """Question id -> {metric: score}, in the order the run answered them."""
    label: str = ""
    family: str = ""
    intervals: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    """Metric -> {"value", "low", "high"}."""
    baseline: Run | None = None
    """This task's baseline run (None: no baseline, or this run is it)."""
    diffs: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Metric -> paired_bootstrap's {"diff", "low", "high", "significant"} against `baseline`."""

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def metrics(self) -> list[str]:
        return list(self.info["metrics"])


# --------------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------------


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json; run (or finish) `radit eval --output {run_dir}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def read_scores(run_dir: Path, info: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-question scores of the `info["n"]` questions metrics.json summarises, by id (reads only).

    A run resumed with a larger --limit and killed again keeps more records than its metrics.json
    counts; the harness answers questions in task order, so its first n distinct ids are the ones
    summarised, which the means check.
    """
    path = Path(run_dir) / "predictions.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no predictions.jsonl; the intervals need each question's score: "
                                f"rerun `radit eval --output {run_dir}`")
    fields = {name: _SCORE_FIELDS[name] for name in info["metrics"]}
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    scores: dict[str, dict[str, float]] = {}
    for n, line in enumerate(lines, 1):
        if len(scores) == info["n"]:
            break
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if n == len(lines):  # a torn last line of a killed resumption: not one of the n
                break
            raise ValueError(f"{path}:{n}: invalid JSON ({e.msg})") from None
        if str(rec.get("id")) in scores:
            continue
        try:
            scores[str(rec["id"])] = {name: float(rec[field]) for name, field in fields.items()}
        except KeyError as e:
            raise ValueError(f"{path}:{n}: no {e.args[0]!r} field, which metrics.json's "
                             f"{sorted(info['metrics'])} needs") from None
    if not scores or len(scores) < info["n"]:
        raise ValueError(f"{run_dir}: predictions.jsonl holds {len(scores)} questions, metrics.json counts "
                         f"{info['n']}; rerun `radit eval --output {run_dir}`")
    for name, value in info["metrics"].items():
        mean = 100 * sum(s[name] for s in scores.values()) / len(scores)
        if abs(mean - value) > 1e-6 * max(1.0, abs(value)):
            raise ValueError(f"{run_dir}: predictions.jsonl gives {name} {mean:.3f} over its first {len(scores)} "
                             f"questions, metrics.json {value:.3f}; the files disagree: rerun `radit eval` on it "
                             "with --overwrite")
    return scores


def is_fine_tuned_lm(model: str | None, run_dir: Path) -> bool:
    """Whether `model` is a folder written by `radit train-lm` (it holds radit_train_config.yaml).

    A relative folder is relative to where `radit eval` ran: the current directory or, when the
    report runs elsewhere, one of the run directory's parents.
    """
    if not model:
        return False
    path = Path(model).expanduser()
    bases = [Path()] if path.is_absolute() else [Path.cwd(), *Path(run_dir).resolve().parents]
    return any((base / path / "radit_train_config.yaml").is_file() for base in bases)


def run_family(info: dict[str, Any], run_dir: Path) -> str:
    """closed-book; otherwise by what was fine-tuned: neither (REPLUG), the LM (LM-ft), the query
    encoder (R-ft), both (RA-DIT)."""
    if info["mode"] == "closed-book":
        return "closed-book"
    lm, retriever = is_fine_tuned_lm(info.get("model"), run_dir), bool(info.get("query_encoder"))
    return {(False, False): "REPLUG", (True, False): "LM-ft", (False, True): "R-ft", (True, True): "RA-DIT"}[lm, retriever]


def run_label(m: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
    """How a run's settings read: mode, k (with several chunks), shots, then the `extra` fields
    (e.g. template, scoring) when they tell runs apart."""
    k = "" if m["mode"] in ("closed-book", "top1") else f" k={m['k']}"
    return " ".join([f"{m['mode']}{k} {m['shots']}-shot", *(str(m.get(key, "")).split(" v")[0] for key in extra)])


def _varying(runs: list[dict[str, Any]]) -> tuple[str, ...]:
    """The settings beside mode/k/shots that differ between runs of one task."""
    keys = []
    for key in ("template", "scoring"):
        for task in {m["task"] for m in runs}:
            if len({m.get(key) for m in runs if m["task"] == task}) > 1:
                keys.append(key)
                break
    return tuple(keys)


def _default_labels(runs: list[Run]) -> list[str]:
    """Family and settings ("RA-DIT replug k=3 0-shot"); the run folder's name where two runs of a
    task would read the same."""
    extra = _varying([r.info for r in runs])
    labels = [run_label(r.info, extra) if r.family == "closed-book" else f"{r.family} {run_label(r.info, extra)}"
              for r in runs]
    seen = [(r.task, label) for r, label in zip(runs, labels)]
    return [f"{label} ({r.dir.name})" if seen.count((r.task, label)) > 1 else label for r, label in zip(runs, labels)]


# --------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------


def _paired(run: Run, base: Run, resamples: int, seed: int) -> dict[str, dict[str, Any]]:
    """`run` - `base` per metric over the same questions, in the baseline's order."""
    if set(run.scores) != set(base.scores):
        shared = len(set(run.scores) & set(base.scores))
        raise ValueError(f"{run.dir} ({run.label!r}) and the baseline {base.dir} ({base.label!r}) were evaluated on "
                         f"different questions of {run.task} ({shared} shared ids of {len(run.scores)} and "
                         f"{len(base.scores)}); paired differences need the same questions: evaluate both with "
                         "the same --limit/--sample, or leave out --baseline")
    ids = list(base.scores)
    out = {}
    for name in run.metrics:
        d = paired_bootstrap([base.scores[i][name] for i in ids], [run.scores[i][name] for i in ids], resamples, seed, LEVEL)
        out[name] = {**d, "diff": 100 * d["diff"], "low": 100 * d["low"], "high": 100 * d["high"]}
    return out


def compare(runs: list[Run], baseline: str | None, resamples: int, seed: int) -> None:
    """Fill each run's intervals, baseline and paired differences; errors before anything is written."""
    for run in runs:
        for name in run.metrics:
            ci = bootstrap_interval([s[name] for s in run.scores.values()], resamples, seed, LEVEL)
            run.intervals[name] = {"value": run.info["metrics"][name], "low": 100 * ci["low"], "high": 100 * ci["high"]}
    if baseline is None:
        return
    bases = {r.task: r for r in runs if r.label == baseline}
    if not bases:
        raise ValueError(f"--baseline {baseline!r} names no run; the labels are "
                         f"{', '.join(repr(label) for label in dict.fromkeys(r.label for r in runs))}")
    for run in runs:
        base = bases.get(run.task)
        if base is not None and base is not run:
            run.baseline, run.diffs = base, _paired(run, base, resamples, seed)


def to_json(runs: list[Run], baseline: str | None, resamples: int, seed: int, title: str | None) -> dict[str, Any]:
    keys = ("task", "model", "query_encoder", "index", "mode", "k", "shots", "template", "scoring", "n")
    return {
        "title": title, "level": LEVEL, "resamples": resamples, "seed": seed, "baseline": baseline,
        "runs": [{"run": str(r.dir), "label": r.label, "family": r.family, **{k: r.info.get(k) for k in keys},
                  "is_baseline": baseline is not None and r.label == baseline,
                  "metrics": r.intervals,
                  "vs_baseline": None if r.baseline is None else {"run": str(r.baseline.dir), "label": r.baseline.label,
                                                                  **r.diffs}}
                 for r in runs],
    }


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------


def _ci(c: dict[str, float]) -> str:
    return f"{c['value']:.1f} [{c['low']:.1f}, {c['high']:.1f}]"


def _diff(d: dict[str, Any]) -> str:
    # The mark follows the unrounded interval: no gain is claimed where the interval holds 0.
    return f"{d['diff']:+.1f} [{d['low']:+.1f}, {d['high']:+.1f}]" + ("" if d["significant"] else " (n.s.)")


def markdown(runs: list[Run], baseline: str | None, resamples: int, seed: int, title: str | None) -> str:
    extra = _varying([r.info for r in runs])
    lines = [f"# {title or 'Comparison of ' + str(len(runs)) + ' runs'}", ""]
    for task in dict.fromkeys(r.task for r in runs):
        rows = [r for r in runs if r.task == task]
        names = rows[0].metrics
        has_base = baseline is not None and any(r.label == baseline for r in rows)
        head = ["configuration", "LM", "retriever", "mode/k/shots", "n", *(f"{METRIC_NAMES[m]} [95% CI]" for m in names)]
        if has_base:
            head += [f"Δ{METRIC_NAMES[m]} vs {baseline} [95% CI]" for m in names]
        lines += [f"## {task}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rows:
            cells = [r.label, str(r.info.get("model") or "–"),
                     "–" if r.info["mode"] == "closed-book" else str(r.info.get("query_encoder") or r.info.get("index") or "–"),
                     run_label(r.info, extra), str(r.info["n"]), *(_ci(r.intervals[m]) for m in names)]
            if has_base:
                cells += [_diff(r.diffs[m]) if r.diffs else "(baseline)" for m in names]
            lines.append("| " + " | ".join(cells) + " |")
        note = (f"Scores x 100. [95% CI]: percentile bootstrap over the run's questions ({resamples:,} resamples, "
                f"seed {seed}).")
        if has_base:
            note += (f" Δ: run - {baseline}, a paired bootstrap over the same questions (matched by id); "
                     "(n.s.): the interval holds 0, so no difference is claimed.")
        elif baseline is not None:
            note += f" No run of {task} is labelled {baseline}: no differences."
        lines += ["", note, ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Chart
# --------------------------------------------------------------------------------------------------


def chart(runs: list[Run], path: Path, title: str | None = None) -> None:
    """One panel per task (rows) and metric (columns): a bar per run, best at top, with its interval,
    coloured by family (Agg canvas: no display needed)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    tasks = list(dict.fromkeys(r.task for r in runs))
    metrics = {t: next(r.metrics for r in runs if r.task == t) for t in tasks}
    ncols = max(len(m) for m in metrics.values())
    bottom = {j: max(i for i, t in enumerate(tasks) if len(metrics[t]) > j) for j in range(ncols)}
    # Inches: the label column grows with the longest label (8 pt text); a bar 0.3 high in every
    # panel, so a task's row of panels is as tall as its runs need, plus its title and axis.
    heights = [0.3 * sum(r.task == t for r in runs) + 0.9 for t in tasks]
    longest = max(len(r.label) for r in runs)
    fig = Figure(figsize=(ncols * (2.8 + 0.065 * longest), sum(heights) + 0.6), layout="constrained")
    axes = fig.subplots(len(tasks), ncols, squeeze=False, gridspec_kw={"height_ratios": heights})
    for i, task in enumerate(tasks):
        rows = [r for r in runs if r.task == task]
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(metrics[task]):
                ax.set_visible(False)
                continue
            name = metrics[task][j]
            # Ascending from the bottom, so the best is at the top; a tie keeps the order given.
            order = sorted(range(len(rows)), key=lambda k: (rows[k].intervals[name]["value"], -k))
            ci = [rows[k].intervals[name] for k in order]
            ys = range(len(order))
            ax.barh(ys, [c["value"] for c in ci], height=0.7, color=[FAMILY_COLORS[rows[k].family] for k in order],
                    # max(0, .): a constant score's interval is its value, up to rounding.
                    xerr=[[max(0.0, c["value"] - c["low"]) for c in ci], [max(0.0, c["high"] - c["value"]) for c in ci]],
                    error_kw={"ecolor": "#333333", "elinewidth": 0.9, "capsize": 2.5})
            top = max(max(c["high"] for c in ci), 1.0)
            for y, c in zip(ys, ci):
                ax.text(c["high"] + 0.02 * top, y, f"{c['value']:.1f}", va="center", fontsize=7.5)
            ax.set_xlim(0, top * 1.2)  # room for the value printed past the longest interval
            ax.set_ylim(-0.6, len(order) - 0.4)
            ax.set_yticks(ys, [rows[k].label for k in order], fontsize=8)
            ax.tick_params(axis="x", labelsize=7.5)
            ax.set_title(f"{task} · {METRIC_NAMES[name]} (n={rows[0].info['n']})", fontsize=9)
            ax.spines[["top", "right"]].set_visible(False)
            ax.grid(axis="x", alpha=0.3)
            ax.set_axisbelow(True)
            if i == bottom[j]:
                ax.set_xlabel("score x 100 (95% bootstrap interval)", fontsize=8)
    present = [f for f in FAMILY_COLORS if any(r.family == f for r in runs)]
    fig.legend(handles=[Patch(color=FAMILY_COLORS[f], label=f) for f in present], loc="outside lower center",
               ncols=len(present), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------


def make_report(run_dirs: list[Path], out: Path, *, labels: list[str] | None = None, families: list[str] | None = None,
                baseline: str | None = None, resamples: int = 2000, seed: int = 0, title: str | None = None,
                name: str = "comparison") -> Path:
    """Write `{name}.md`, `{name}.json` and `{name}.png` for the runs into `out`; returns the markdown path.

    Everything is read and computed before anything is written, so a bad input leaves `out` as it was.

    Args:
        run_dirs: `radit eval` run directories (metrics.json and predictions.jsonl each), one or more tasks.
        out: the report's folder.
        labels: each run's configuration name, in run_dirs order (default: family and settings,
            e.g. "RA-DIT replug k=3 0-shot"); unique within a task.
        families: each run's family, a key of FAMILY_COLORS (default: from mode, model and query
            encoder, see `run_family`).
        baseline: a label: for each task, the run with this label is the one the others' paired
            differences are taken against (a task without such a run gets none); None: no differences.
        resamples: bootstrap resamples of the questions, for every interval.
        seed: the bootstrap draws' seed.
        title: heading of the markdown and the chart.
        name: the files' stem.

    Raises:
        ValueError: labels or families of the wrong length, an unknown family, a label used twice in a
            task, a baseline label no run has, or a run whose question ids differ from its baseline's.
    """
    if not run_dirs:
        raise ValueError("make_report: give at least one run directory")
    runs = []
    for d in map(Path, run_dirs):
        info = read_run(d)
        runs.append(Run(d, info, read_scores(d, info)))
    for what, given in (("labels", labels), ("families", families)):
        if given is not None and len(given) != len(runs):
            raise ValueError(f"--{what}: {len(given)} given for {len(runs)} runs; give one per run, in --runs order")
    for run, family in zip(runs, families or [run_family(r.info, r.dir) for r in runs]):
        if family not in FAMILY_COLORS:
            raise ValueError(f"family {family!r} of {run.dir}: not one of {', '.join(FAMILY_COLORS)}")
        run.family = family
    for run, label in zip(runs, labels or _default_labels(runs)):
        run.label = label
    seen: set[tuple[str, str]] = set()
    for run in runs:
        if (run.task, run.label) in seen:
            raise ValueError(f"--labels: {run.label!r} names two runs of {run.task}; give each run of a task its own label")
        seen.add((run.task, run.label))
    compare(runs, baseline, resamples, seed)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    atomic_write_json(out / f"{name}.json", to_json(runs, baseline, resamples, seed, title))
    chart(runs, out / f"{name}.png", title)
    atomic_write_text(md, markdown(runs, baseline, resamples, seed, title))
    return md


def run_report(cfg: ReportConfig) -> Path:
    """The `radit report` stage."""
    return make_report([Path(r) for r in cfg.runs], Path(cfg.output), labels=cfg.labels or None, baseline=cfg.baseline,
                       resamples=cfg.resamples, seed=cfg.seed)
