"""Side-by-side comparison of finished `radit eval` runs: a markdown table and a grouped bar chart.

    radit report --runs runs/eval/nq-open-closed-book-k10-0shot runs/eval/nq-open-replug-k10-0shot --output runs/eval/report

Writes `comparison.md` (task, template, scoring, mode, k, shots, n, EM, F1 or accuracy; one row per
run, in the order given) and `comparison.png` (the primary metric of each run, EM or accuracy, grouped by task).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from radit.artifacts import atomic_path, atomic_write_text
from radit.config import ReportConfig


def read_run(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.json; run (or finish) `radit eval --output {run_dir}` first")
    return json.loads(path.read_text(encoding="utf-8"))


def run_label(m: dict[str, Any], extra: tuple[str, ...] = ()) -> str:
    """How a run is named in the chart: mode, k (with several chunks), shots, then the `extra` fields
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


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def markdown_table(runs: list[dict[str, Any]]) -> str:
    lines = ["| task | template | scoring | mode | k | shots | n | EM | F1 / accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for m in runs:
        scores = m["metrics"]
        k = {"closed-book": "–", "top1": "1"}.get(m["mode"], str(m["k"]))
        second = scores.get("f1", scores.get("accuracy"))
        lines.append(f"| {m['task']} | {m.get('template', '')} | {m.get('scoring', '')} | {m['mode']} | {k} | {m['shots']} "
                     f"| {m['n']} | {_fmt(scores.get('em'))} | {_fmt(second)} |")
    return "\n".join(lines) + "\n"


def bar_chart(runs: list[dict[str, Any]], path: Path) -> None:
    """Primary metric per run, one group of bars per task (Agg canvas: no display needed)."""
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(m["task"] for m in runs))
    extra = _varying(runs)
    labels = list(dict.fromkeys(run_label(m, extra) for m in runs))
    value = {(m["task"], run_label(m, extra)): m["metrics"][m["primary_metric"]] for m in runs}
    width = 0.8 / len(labels)
    fig = Figure(figsize=(4 + 0.4 * len(tasks) * len(labels), 3.5), layout="constrained")
    ax = fig.add_subplot()
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i, t in enumerate(tasks) if (t, label) in value]
        ys = [value[(t, label)] for t in tasks if (t, label) in value]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    metric_names = {m["task"]: "acc" if m["primary_metric"] == "accuracy" else "EM" for m in runs}
    ax.set_xticks(range(len(tasks)), [f"{t} ({metric_names[t]})" for t in tasks])
    ax.set_ylabel("score (x100)")
    ax.set_ylim(0, 105)  # scores are x100
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def make_report(run_dirs: list[Path], out: Path) -> Path:
    """Write `comparison.md` and `comparison.png` for the runs into `out`; returns the markdown path."""
    runs = [read_run(Path(d)) for d in run_dirs]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "comparison.md"
    atomic_write_text(md, markdown_table(runs))
    bar_chart(runs, out / "comparison.png")
    return md


def run_report(cfg: ReportConfig) -> Path:
    """The `radit report` stage."""
    return make_report([Path(r) for r in cfg.runs], Path(cfg.output))
