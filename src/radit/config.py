"""Typed configuration: one dataclass per stage, grouped by concern, every field also a flag.

Each field is documented by the string literal under it (`--help` and the YAML presets show it);
cross-field checks live in `__post_init__` and raise `ValueError` naming the flag. Reading and
writing them (YAML, argparse, type checks) is `radit.config_io`'s job.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from radit.config_io import flat

# --------------------------------------------------------------------------------------------------
# Config groups
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CorpusConfig:
    """`radit corpus`: read documents, split them into passages, write a passages file."""

    inputs: list[str] = dataclasses.field(default_factory=list)
    """Document files: jsonl / json / tsv / csv / parquet records with `text` (and optional `id`,
    `title`), a SQuAD JSON file, or a Wikipedia vital-articles summaries.json. `.gz` is read too."""
    output: str = "runs/corpus/passages.jsonl"
    """Where the passages file is written (atomically: it appears only when complete)."""
    max_words: int = 200
    """Chunk length limit in whitespace words; long documents are cut into equal chunks under it
    (the paper: 200 words for Wikipedia, 100 for CommonCrawl)."""
    on_error: Literal["error", "skip"] = "error"
    """What a bad record does: `error` stops with file, line and field; `skip` drops it and counts it."""
    extra_fields: Literal["error", "ignore"] = "error"
    """Records with fields other than id/title/text: `error` stops, `ignore` drops those fields."""
    max_record_bytes: int = 4 * 1024 * 1024
    """A record (one jsonl line or csv row) larger than this is an error: usually a file without line
    breaks. Raise it for corpora of very long documents."""
    multiline_fields: bool = False
    """Let quoted tsv fields span line breaks (csv files always may, as standard CSV does). Off, a tsv
    row is one line, so an unmatched `"` is an error of its own row instead of swallowing the rows
    after it; DPR's psgs_w100.tsv never needs it."""

    def __post_init__(self) -> None:
        if self.max_words < 1:
            raise ValueError(f"--max-words must be >= 1, got {self.max_words}")
        if self.max_record_bytes < 1:
            raise ValueError(f"--max-record-bytes must be >= 1, got {self.max_record_bytes}")


@dataclasses.dataclass
class EncoderConfig:
    """The dual encoder: which weights each tower loads and how a text becomes a vector.

    `preset` fills every field left unset (None); a field you set always wins.
    """

    preset: str = "minilm"
    """Encoder preset: minilm (offline, all-MiniLM-L6-v2), dragon-plus (the paper's retriever,
    CC-BY-NC), e5-base-v2 (MIT). See radit.retriever.encoder.ENCODER_PRESETS."""
    query_model: str | None = None
    """Query tower: a local folder, a hub name or a packaged model name."""
    doc_model: str | None = None
    """Document tower; defaults to the query tower's weights."""
    pooling: Literal["mean", "cls"] | None = None
    """How token states become one vector."""
    normalize: bool | None = None
    """L2-normalise embeddings, so the score is a cosine."""
    query_prefix: str | None = None
    """Text put before every query (e5: 'query: ')."""
    doc_prefix: str | None = None
    """Text put before every passage (e5: 'passage: ')."""
    query_max_length: int | None = None
    """Query truncation length in tokens."""
    doc_max_length: int | None = None
    """Passage truncation length in tokens."""
    score_temperature: float | None = None
    """Temperature of p_R(c|x) = softmax(s/T) over the top-k (the paper: 1 with DRAGON+'s raw dot
    products; normalised encoders need a small one, e.g. 0.05)."""


@dataclasses.dataclass
class HybridConfig:
    """`radit index --backend hybrid`: fuse a dense and a BM25 index of the same passages (no re-indexing:
    the hybrid directory holds only a manifest naming the two). See radit.retriever.hybrid."""

    dense_index: str | None = None
    """The dense index (written by `radit index`) to fuse; --query-encoder at search time swaps its query tower."""
    bm25_index: str | None = None
    """The BM25 index (`radit index --backend bm25`) to fuse; built from the same passages file as --dense-index."""
    fusion: Literal["rrf", "weighted"] = "weighted"
    """weighted: w * dense + (1 - w) * BM25 over per-query min-max normalised scores; rrf: reciprocal-rank
    fusion, sum of 1/(rrf_k + rank). On SQuAD-open dev (MiniLM) weighted had 6 points more answer-hit@1."""
    fusion_weight: float | None = None
    """Weight w of the dense side (--fusion weighted only); default 0.5 (0.4 tuned on SQuAD-open dev with MiniLM)."""
    rrf_k: int = 60
    """Rank offset of reciprocal-rank fusion (--fusion rrf; 60 as in Cormack et al. 2009)."""
    fusion_depth: int = 100
    """Candidates each side retrieves per query before fusing (at least k)."""
    fusion_temperature: float | None = None
    """p_R temperature over the fused scores (Eq. 2); default per method (radit.retriever.hybrid.FUSION_TEMPERATURE)."""

    def __post_init__(self) -> None:
        if self.fusion_weight is not None:
            if self.fusion != "weighted":
                raise ValueError("--fusion-weight applies to --fusion weighted only")
            if not 0 <= self.fusion_weight <= 1:
                raise ValueError(f"--fusion-weight must be in [0, 1], got {self.fusion_weight}")
        for name in ("rrf_k", "fusion_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        t = self.fusion_temperature
        if t is not None and not (t > 0 and math.isfinite(t)):
            raise ValueError(f"--fusion-temperature must be a finite number > 0, got {t}")


@dataclasses.dataclass
class QdrantConfig:
    """`radit index --backend qdrant`: the Qdrant collection the document vectors are upserted into
    (point id = row, payload = passage id). See radit.retriever.qdrant."""

    url: str | None = None
    """A Qdrant server or cluster (http://host:6333; its API key, if any, is read from QDRANT_API_KEY).
    Unset: Qdrant's local mode, stored in --output/qdrant (no server; for corpora up to ~20k passages)."""
    collection: str = "radit"
    """Collection name. One that exists and was not filled by this index directory is replaced only
    with --overwrite."""
    batch_size: int = 256
    """Points per upsert request."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"--qdrant.batch-size must be >= 1, got {self.batch_size}")
        if not self.collection.strip():
            raise ValueError("--qdrant.collection must not be empty")


@dataclasses.dataclass
class IndexConfig:
    """`radit index`: embed passages and build a searchable index."""

    passages: str = "runs/corpus/passages.jsonl"
    """Passages file written by `radit corpus`."""
    output: str = "runs/index"
    """Index directory."""
    backend: Literal["dense", "bm25", "hybrid", "qdrant"] = "dense"
    """dense: dual encoder + FAISS; bm25: lexical baseline through bm25s; hybrid: fuse a dense and a BM25
    index (--dense-index, --bm25-index; --passages is theirs); qdrant: dual encoder + a Qdrant collection
    (--qdrant.url, --qdrant.collection; needs `pip install radit[qdrant]`)."""
    encoder: EncoderConfig = dataclasses.field(default_factory=EncoderConfig)
    """The dual encoder whose document tower embeds the passages (dense only)."""
    index_type: Literal["flat", "ivfpq", "hnsw"] = "flat"
    """FAISS index: flat (exact inner product, the default), ivfpq or hnsw for large corpora."""
    nlist: int = 0
    """IVF lists (ivfpq); 0 picks about 4*sqrt(N)."""
    pq_m: int = 0
    """PQ sub-quantisers (ivfpq); 0 picks dim/8 (must divide the dimension)."""
    pq_bits: int = 8
    """Bits per PQ code (ivfpq)."""
    nprobe: int = 32
    """IVF lists visited per query (ivfpq), stored in the manifest and used at search time."""
    rerank: int = 0
    """ivfpq/hnsw: re-score this many candidates per query exactly against the memory-mapped
    embedding shards and return the best k (0 = off). Recovers most of PQ's recall loss."""
    ivf_quantizer: Literal["flat", "hnsw"] = "flat"
    """ivfpq: how a vector finds its IVF lists. flat compares it with every list centroid (exact, fine to
    a few million vectors); hnsw walks a graph over the centroids (IVF{nlist}_HNSW32), so adding and
    searching stay fast with the tens of thousands of lists that 10M+ vectors want."""
    opq: bool = False
    """ivfpq: rotate the vectors (OPQ) before product quantisation, spreading their variance evenly over
    the sub-quantisers: the same code size, usually better recall."""
    mmap: bool = False
    """ivfpq: search faiss.index memory-mapped: its inverted lists stay on disk and the OS caches the
    ones queries touch, so an index larger than RAM can be served (recorded in the manifest)."""
    hnsw_m: int = 32
    """Neighbours per node (hnsw)."""
    ef_search: int = 128
    """Search breadth (hnsw)."""
    batch_size: int = 64
    """Passages per encoder forward."""
    shard_size: int = 16384
    """Passages per embedding shard; a rerun skips finished shards."""
    embedding_dtype: Literal["float32", "float16"] = "float32"
    """dtype of the embedding shards on disk."""
    device: str = "auto"
    """Torch device for the encoder: auto (cuda if available, else cpu), cpu, cuda, cuda:1, mps."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Encoder compute dtype (autocast). auto: bfloat16 on a CUDA GPU or a CPU with AMX-BF16 (1.45x
    faster indexing measured), float32 elsewhere (bf16 was 3.6x slower on a CPU without AMX)."""
    overwrite: bool = False
    """Delete an existing index in --output that was built from other passages or another encoder."""
    hybrid: HybridConfig = flat(HybridConfig)
    """The two indexes a hybrid one fuses, and how (--backend hybrid)."""
    qdrant: QdrantConfig = dataclasses.field(default_factory=QdrantConfig)
    """Where the vectors go (--backend qdrant)."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "shard_size", "pq_bits", "nprobe", "hnsw_m", "ef_search"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.rerank < 0:
            raise ValueError(f"--rerank must be >= 0, got {self.rerank}")
        if self.rerank and self.index_type == "flat":
            raise ValueError("--rerank applies to approximate indexes (--index-type ivfpq or hnsw); flat is exact")
        ivf_only = {"ivf_quantizer": "flat", "opq": False, "mmap": False}
        for name, default in ivf_only.items():
            if getattr(self, name) != default and self.index_type != "ivfpq":
                raise ValueError(f"--{name.replace('_', '-')} applies to --index-type ivfpq only")
        if self.backend != "dense" and self.index_type != "flat":
            raise ValueError("--index-type applies to --backend dense only")
        sides = self.hybrid.dense_index, self.hybrid.bm25_index
        if self.backend == "hybrid" and not all(sides):
            raise ValueError("--backend hybrid needs --dense-index DIR and --bm25-index DIR (the indexes to fuse)")
        if self.backend != "hybrid" and any(sides):
            raise ValueError("--dense-index and --bm25-index apply to --backend hybrid only")
        if self.backend != "qdrant" and self.qdrant != QdrantConfig():
            raise ValueError("--qdrant.* flags apply to --backend qdrant only")


@dataclasses.dataclass
class SearchConfig:
    """`radit search`: top-k passages for a query, or a run file for a query file."""

    index: str = "runs/index"
    """Index directory written by `radit index`."""
    query: list[str] = dataclasses.field(default_factory=list)
    """Questions to search (positional)."""
    queries: str | None = None
    """A jsonl/tsv/json file of questions (`question`, optional `id`): batch mode, writes --output."""
    output: str | None = None
    """Run file for batch mode (jsonl: qid, question, passage_ids, scores)."""
    k: int = 5
    """Passages returned per query."""
    query_encoder: str | None = None
    """A fine-tuned query encoder folder to use instead of the index's own (no re-indexing)."""
    device: str = "auto"
    """Torch device for the query encoder."""
    batch_size: int = 128
    """Queries per encoder forward in batch mode."""
    nprobe: int | None = None
    """ivfpq index: IVF lists visited per query, instead of the value it was built with (more: better
    recall, slower)."""
    rerank: int | None = None
    """ivfpq/hnsw index: candidates re-scored exactly per query, instead of the value it was built with
    (0 = off)."""
    on_error: Literal["error", "skip"] = "error"
    """A bad record in the question file: `error` stops with file, line and field; `skip` drops it
    and counts it."""
    verify: bool = False
    """Check the passages file against the index's full sha256 even when its size and modification
    time are unchanged (a changed size or mtime always triggers the full check)."""

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"--k must be >= 1, got {self.k}")
        if self.nprobe is not None and self.nprobe < 1:
            raise ValueError(f"--nprobe must be >= 1, got {self.nprobe}")
        if self.rerank is not None and self.rerank < 0:
            raise ValueError(f"--rerank must be >= 0, got {self.rerank}")
        if self.queries and not self.output:
            raise ValueError("--queries needs --output (the run file to write)")


@dataclasses.dataclass
class EvalRetrievalConfig:
    """`radit eval-retrieval`: answer-hit@k, recall@k and MRR of an index on a question set."""

    index: str = "runs/index"
    """Index directory (dense or bm25)."""
    questions: str = "quickstart:squad-open/test"
    """Question file (jsonl with `question`, `answers`, optional `positive_ids`) or a bundled split
    `quickstart:squad-open/{train,dev,test}`."""
    output: str = "runs/eval-retrieval"
    """Directory for run.jsonl and metrics.json."""
    ks: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10, 20])
    """Cut-offs for answer-hit@k and recall@k."""
    limit: int | None = None
    """Evaluate only the first N questions."""
    query_encoder: str | None = None
    """A fine-tuned query encoder to evaluate against the same index."""
    device: str = "auto"
    """Torch device for the query encoder."""
    batch_size: int = 128
    """Queries per encoder forward."""
    on_error: Literal["error", "skip"] = "error"
    """A bad record in the question file: `error` stops with file, line and field; `skip` drops it
    and counts it."""
    answers_are_regex: bool = False
    """The answers of records without an `answer_type` field are regular expressions (DPR's
    CuratedTREC): answer-hit@k searches the passages with them."""
    verify: bool = False
    """Check the passages file against the index's full sha256 even when its size and modification
    time are unchanged (a changed size or mtime always triggers the full check)."""

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"--ks must be positive integers, got {self.ks}")
        self.ks = sorted(set(self.ks))


@dataclasses.dataclass
class ModelsConfig:
    """`radit models`: list the packaged offline models, or resolve specs to local folders."""

    spec: list[str] = dataclasses.field(default_factory=list)
    """Model specs to resolve (positional); converts packaged GGUF models once."""


INFERENCE_MODES = ("replug", "top1", "concat", "closed-book")
SCORING_METHODS = ("nll", "nll_token", "nll_char", "nll_comp")


@dataclasses.dataclass
class InferenceConfig:
    """How the LM answers with its retrieved chunks (RA-DIT Eq. 2): one group shared by `radit ask`,
    `radit eval` and (next) the dev evaluation of training. On the command line its fields are plain
    flags (`--k 3`); in YAML they sit under `inference:`."""

    mode: Literal["replug", "top1", "concat", "closed-book"] = "replug"
    """replug: one prompt per chunk, outputs mixed by p_R (the paper's Eq. 2); top1: the best chunk
    only; concat: all k chunks in one Background (App. E.2); closed-book: no retrieval."""
    k: int = 10
    """Chunks retrieved per question (the paper: 10 at inference)."""
    retrieval_temperature: float | None = None
    """p_R temperature, softmax(s(x, c) / T) over the top-k. Default: the index's own (its encoder
    preset's, e.g. 0.05 for MiniLM, 1 for DRAGON+; 1 for BM25)."""
    scoring: Literal["nll", "nll_token", "nll_char", "nll_comp"] = "nll"
    """How a candidate answer is scored under each chunk before mixing (App. B)."""
    template: str | None = None
    """Prompt template: a name in radit.prompts.TEMPLATES, or a model folder holding its saved
    prompt_template.json (a fine-tuned checkpoint). Default: the task's own (qa for radit ask)."""
    max_new_tokens: int = 32
    """Greedy decoding budget per prompt (open-answer questions)."""
    token_level: bool = False
    """REPLUG's token-level ensemble instead of the paper's: mix the k next-token distributions with
    p_R at every decoding step (one answer), rather than decode per chunk and rescore the candidates."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """LM compute precision; auto: bf16 autocast on a CUDA GPU or a CPU with AMX-BF16, else float32."""

    def __post_init__(self) -> None:
        if self.mode not in INFERENCE_MODES:
            raise ValueError(f"--mode {self.mode!r} is unknown; valid: {', '.join(INFERENCE_MODES)}")
        if self.scoring not in SCORING_METHODS:
            raise ValueError(f"--scoring {self.scoring!r} is unknown; valid: {', '.join(SCORING_METHODS)}")
        for name in ("k", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        t = self.retrieval_temperature
        if t is not None and not (t > 0 and math.isfinite(t)):
            raise ValueError(f"--retrieval-temperature must be a finite number > 0, got {t}")


@dataclasses.dataclass
class AskConfig:
    """`radit ask`: answer questions with the LM and its top-k retrieved chunks (RA-DIT Eq. 2).

    The parallel retrieval-augmented ensemble: one prompt per chunk, answers mixed by p_R; prints the
    answer and what each chunk contributed."""

    index: str = "runs/index"
    """Index directory written by `radit index` (dense or bm25); not read with --mode closed-book."""
    query: list[str] = dataclasses.field(default_factory=list)
    """Questions to answer (positional)."""
    model: str = "smollm2-135m-instruct"
    """The LM: a local folder, a packaged model name or a hub name."""
    inference: InferenceConfig = flat(InferenceConfig)
    """How the LM answers with the retrieved chunks (mode, k, scoring, template, ...)."""
    query_encoder: str | None = None
    """A fine-tuned query encoder folder to search with instead of the index's own (dense only)."""
    device: str = "auto"
    """Torch device for the LM and the query encoder."""
    shots: int = 0
    """In-context demonstrations put before the question: the first N questions of --demos."""
    demos: str = "quickstart:squad-open/train"
    """Question file (or bundled split) the demonstrations come from (question and first answer)."""
    verify: bool = False
    """Check the passages file against the index's full sha256 even when its size and modification
    time are unchanged (a changed size or mtime always triggers the full check)."""

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ValueError(f"--shots must be >= 0, got {self.shots}")
        if self.inference.mode == "closed-book" and self.query_encoder:
            raise ValueError("--query-encoder needs retrieval; it does not apply to --mode closed-book")


@dataclasses.dataclass
class EvalConfig:
    """`radit eval`: answer a task's questions with the retrieval-augmented LM and score the answers."""

    task: str = "squad-open"
    """squad-open, nq-open, triviaqa, hotpotqa, mmlu, fever, or qa-file:PATH (any question file that
    `radit eval-retrieval --questions` reads)."""
    model: str = "smollm2-135m-instruct"
    """The LM: a folder, a packaged model name or a hub name."""
    index: str | None = None
    """Index directory written by `radit index`; needed unless --mode closed-book."""
    query_encoder: str | None = None
    """A fine-tuned query encoder folder to search the index with (dense indexes only)."""
    inference: InferenceConfig = flat(InferenceConfig)
    """How the LM answers with the retrieved chunks (mode, k, scoring, template, ...)."""
    shots: int = 0
    """In-context demonstrations (the paper: 0 and 5), drawn from a split that is not evaluated."""
    demos: str | None = None
    """A question file of demonstrations: required for qa-file tasks with --shots > 0, and replaces
    the demonstration pool of the other open-QA tasks."""
    limit: int | None = None
    """Evaluate only the first N questions (raising it later resumes the same run)."""
    sample: int | None = None
    """Evaluate N questions drawn at random (seed 0, kept in file order) instead of the first N: a
    fair subset of a task sorted by subject, such as MMLU. Not with --limit."""
    on_error: Literal["error", "skip"] = "error"
    """A bad record in a question file: `error` stops with file, line and field; `skip` drops it and
    counts it (qa-file tasks)."""
    answers_are_regex: bool = False
    """The answers of records without an `answer_type` field are regular expressions (DPR's
    CuratedTREC); they are scored by regex search of the prediction (qa-file tasks)."""
    output: str = "runs/eval/{task}-{mode}-k{k}-{shots}shot"
    """Run directory; {task}, {mode}, {k}, {shots} are filled in."""
    data_dir: str | None = None
    """Folder of the public evaluation sets (nq_open/, triviaqa/, hotpotqa/, mmlu/, fever/);
    default $RADIT_DATA, else ../shared/data."""
    device: str = "auto"
    """Torch device for the LM and the query encoder."""
    search_batch_size: int = 128
    """Questions per retrieval call."""
    batch_size: int = 8
    """Open-QA questions answered together: their prompts decode and are scored as one batch, with
    the same answers as one at a time (up to float rounding). Multiple-choice questions go one at a time."""
    verify: bool = False
    """Check the passages file against the index's full sha256 even when its size and modification
    time are unchanged (a changed size or mtime always triggers the full check)."""
    overwrite: bool = False
    """Delete the predictions in --output and start over (needed when it holds a run with other settings)."""

    def __post_init__(self) -> None:
        if self.search_batch_size < 1:
            raise ValueError(f"--search-batch-size must be >= 1, got {self.search_batch_size}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.shots < 0:
            raise ValueError(f"--shots must be >= 0, got {self.shots}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1 (or unset for all questions), got {self.limit}")
        if self.sample is not None and self.sample < 1:
            raise ValueError(f"--sample must be >= 1 (or unset for all questions), got {self.sample}")
        if self.sample is not None and self.limit is not None:
            raise ValueError("--sample and --limit both choose the questions; give one of them")
        mode = self.inference.mode
        if mode != "closed-book" and not self.index:
            raise ValueError(f"--index is needed for --mode {mode}; build one with `radit index`, "
                             "or evaluate without retrieval with --mode closed-book")
        if mode == "closed-book" and self.query_encoder:
            raise ValueError("--query-encoder needs retrieval; it does not apply to --mode closed-book")


@dataclasses.dataclass
class ReportConfig:
    """`radit report`: compare finished `radit eval` runs: tables with bootstrap intervals, and a chart."""

    runs: list[str] = dataclasses.field(default_factory=list)
    """Run directories written by `radit eval` (each holds metrics.json and predictions.jsonl)."""
    output: str = "runs/eval/report"
    """Directory for comparison.md, comparison.json and comparison.png."""
    labels: list[str] = dataclasses.field(default_factory=list)
    """Configuration name of each run, in --runs order (empty: family and settings, e.g. `RA-DIT replug
    k=3 0-shot`); unique within a task."""
    baseline: str | None = None
    """Label of the baseline: in each task, every run's EM/F1 difference from the run with this label,
    a paired bootstrap over the same questions (none: no difference columns)."""
    resamples: int = 2000
    """Bootstrap resamples of the questions behind every interval."""
    seed: int = 0
    """Seed of the bootstrap draws (fixed: a report reproduces its own intervals)."""

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("--runs: give at least one `radit eval` run directory")
        if self.labels and len(self.labels) != len(self.runs):
            raise ValueError(f"--labels: {len(self.labels)} given for {len(self.runs)} --runs; give one per run, in order")
        if self.resamples < 100:
            raise ValueError(f"--resamples must be >= 100 for a 95% interval's tails, got {self.resamples}")


# --------------------------------------------------------------------------------------------------
# LM fine-tuning (RA-IT, the paper's §2.3 and Eq. 3)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LMDataConfig:
    """`radit build-lm-data`: instruction examples -> retrieval-augmented training examples (RA-IT).

    Each open-domain example becomes k' examples `Background: c_j\\n\\n{prompt}` -> target, one per
    retrieved chunk; reading-comprehension and summarisation examples keep their own context as the
    Background. Deterministic given --seed."""

    sources: list[str] = dataclasses.field(default_factory=lambda: ["quickstart:squad-open/train"])
    """Instruction sources: registry names (radit.data.instructions.SOURCES: quickstart:squad-open/train,
    nq-open/dev, entityquestions/train, bigbench:{quoref,cosmosqa,drop,qasc,multirc,ropes,strategyqa,
    social_iqa,qa_wikidata,fever,xsum,topical_chat,...}), jsonl:PATH for a file of {"instruction",
    "input"?, "output"} records, or hf:NAME[:split] (a Hugging Face dataset, when the hub is reachable)."""
    weights: list[float] = dataclasses.field(default_factory=list)
    """Mixture weight of each source, in --sources order (empty: every example left after the cap,
    once). The output holds round(weight share x total) examples of each source; a source asked for
    more than it has is repeated."""
    cap: int = 7500
    """Most examples taken from one source (the paper's eta = 7,500)."""
    index: str | None = "runs/quickstart/index"
    """Index to retrieve the Background chunks from (open-domain sources); written by `radit index`."""
    query_encoder: str | None = None
    """A fine-tuned query encoder to retrieve with instead of the index's own."""
    k: int = 3
    """Retrieved chunks per open-domain example, each its own training example (the paper: k' = 3)."""
    template: str = "qa"
    """Prompt template of open-domain examples (the one evaluation uses)."""
    randomize_markers: bool = True
    """Draw the question/answer markers at random per example (App. C: Q:/Question:, A:/Answer:)."""
    max_length: int = 2048
    """Longest example in tokens of --tokenizer (Background cut first); an example whose target alone
    does not fit is skipped and counted, never truncated."""
    tokenizer: str = "smollm2-135m-instruct"
    """The tokenizer that counts tokens (the LM's: a folder, packaged name or hub name)."""
    output: str = "runs/lm-data/train.jsonl"
    """The training file: one JSON line per example (id, source, category, prompt, target, background:
    retrieved|own, passage_id, truncated); summary.json is written in the same folder."""
    data_dir: str | None = None
    """Folder of the public data sets (nq_open/, entityquestions/, instructions/), also read to keep
    every evaluated question out of the training file; default $RADIT_DATA, else ../shared/data."""
    on_error: Literal["error", "skip"] = "error"
    """A bad record in a source: `error` stops with file, line and field; `skip` drops and counts it."""
    seed: int = 0
    """Seed of the sampling, the marker draws and the shuffle."""
    device: str = "auto"
    """Torch device for the query encoder."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("--sources: give at least one instruction source")
        if self.weights and len(self.weights) != len(self.sources):
            raise ValueError(f"--weights: give one weight per source ({len(self.sources)}), got {len(self.weights)}")
        if any(not (w >= 0 and math.isfinite(w)) for w in self.weights) or (self.weights and not sum(self.weights) > 0):
            raise ValueError(f"--weights must be finite, >= 0 and not all 0, got {self.weights}")
        for name in ("cap", "k", "max_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass
class LoRAConfig:
    """LoRA adapters (peft) instead of full fine-tuning."""

    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """Scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names that get adapters (Llama-style attention projections by default)."""
    merge_on_save: bool = True
    """Save a merged full model (loads anywhere with from_pretrained) rather than the adapter alone."""


@dataclasses.dataclass
class TrainLMConfig:
    """`radit train-lm`: fine-tune a causal LM on retrieval-augmented examples (RA-IT, Eq. 3: the
    loss is -log p(y | c ∘ x) on the target tokens only).

    Defaults are the paper's 65B recipe (Table 8); small models want a larger learning rate and more
    steps: see configs/lm-ft-quickstart.yaml."""

    data: str = "runs/lm-data/train.jsonl"
    """Training file written by `radit build-lm-data`."""
    model: str = "smollm2-135m-instruct"
    """The LM to fine-tune: a folder, a packaged model name or a hub name."""
    output: str = "runs/lm-ft"
    """Run directory: checkpoints/, metrics.jsonl, loss.png, and model/ (the fine-tuned model)."""
    method: Literal["full", "lora"] = "full"
    """Full fine-tuning, or LoRA adapters (see --lora.*)."""
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    """LoRA settings (with --method lora)."""
    max_length: int = 2048
    """Tokens per training sequence (the paper: 2,048); examples are packed up to it."""
    pack: bool = True
    """Pack several examples into one sequence, with attention kept within each example (the paper,
    after OPT-IML); off: one padded example per row."""
    batch_size: int = 8
    """Sequences per micro-batch, on each process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step, on each process: a step trains on batch_size x grad_accum x
    processes sequences, so 2 processes x batch 2 train as 1 process x batch 4 or x batch 2 x grad-accum 2."""
    steps: int = 500
    """Optimizer steps (the paper: 500)."""
    lr: float = 1e-5
    """Peak learning rate (the paper: 1e-5)."""
    min_lr: float = 1e-7
    """Learning rate at the end of the cosine decay (the paper: 1e-7)."""
    warmup_steps: int = 200
    """Linear warm-up steps (the paper: 200)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute precision (autocast); auto: bf16 on a CUDA GPU or a CPU with AMX-BF16, else float32."""
    device: str = "auto"
    """Torch device; several GPUs: start the same command with `accelerate launch` or torchrun, one
    process per GPU (auto and cuda then mean each process's own)."""
    seed: int = 0
    """Seed of the data order and the initialisation of new parameters (LoRA)."""
    eval_every: int = 100
    """Steps between dev evaluations (the paper: 100); the best checkpoint by dev REPLUG EM is kept."""
    eval_questions: int = 50
    """Questions of the bundled SQuAD-open dev split scored at each evaluation (0: dev loss only)."""
    eval_sample: bool = False
    """Draw the --eval-questions at random (seed 0) from the whole dev split instead of taking the first
    N: the bundled split is sorted by article, and its first 100 questions all come from one of its 5."""
    eval_index: str | None = None
    """Index for the dev REPLUG evaluation (default: the one in the data file's summary)."""
    eval_k: int = 3
    """Chunks per dev question (REPLUG, Eq. 2)."""
    checkpoint_every: int = 100
    """Steps between resumable checkpoints (model, optimizer, scheduler, RNG states, data position)."""
    overwrite: bool = False
    """Start over even if --output holds checkpoints of a run with the same settings (else it resumes)."""

    def __post_init__(self) -> None:
        for name in ("max_length", "batch_size", "grad_accum", "steps", "eval_every", "eval_k", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_questions"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"--lr must be > 0 and --min-lr in [0, lr], got lr={self.lr}, min_lr={self.min_lr}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("--grad-clip and --weight-decay must be >= 0")


# --------------------------------------------------------------------------------------------------
# Retriever fine-tuning (R-ft: LM-supervised retrieval, the paper's §2.4 and Eq. 4-5)
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LSRDataConfig:
    """`radit build-lsr-data`: training pairs (x, y) with their top-k chunks and the frozen LM's
    log p_LM(y | c ∘ x) under each chunk: the cache R-ft (Eq. 4-5) trains on.

    Pairs are a mixture of corpus pairs (a random chunk: x = its first --corpus-tokens tokens, y = its
    last --corpus-tokens; the paper's 0.95) and task pairs (a question and its gold answer from the
    instruction sources; 0.05). Each distinct chunk's KV cache is computed once and reused by every pair
    that retrieved it. Resumable: a rerun continues with the pairs not yet scored."""

    index: str = "runs/quickstart/index"
    """Dense index (written by `radit index`) to retrieve the top-k chunks from; R-ft trains against
    its stored document vectors."""
    query_encoder: str | None = None
    """Retrieve with this query tower instead of the index's own."""
    model: str = "smollm2-135m-instruct"
    """The frozen LM that scores the chunks (the paper: the *base* LM, not the LM-ft one)."""
    output: str = "runs/lsr-data"
    """Directory: pairs.jsonl (pairs and their top-k), scores.jsonl (LM scores), manifest.json."""
    pairs: int = 2000
    """Training pairs in total (corpus + task)."""
    corpus_fraction: float = 0.95
    """Share of corpus pairs (the paper: 0.95 corpus, 0.05 task pairs)."""
    sources: list[str] = dataclasses.field(default_factory=lambda: ["quickstart:squad-open/train"])
    """Task-pair sources: open-domain QA sources of radit.data.instructions.SOURCES (e.g.
    quickstart:squad-open/train, nq-open/dev, entityquestions/train) or jsonl:PATH; never an evaluated split."""
    corpus_tokens: int = 50
    """Corpus pairs: x = the first N tokens of a chunk, y = the last N (the paper: 50). A chunk with
    fewer than 2N tokens is split in half; one under 16 tokens is not used."""
    exclude_source_chunk: bool = True
    """Corpus pairs: leave the chunk x was cut from out of its top-k (it holds y verbatim, so the LM
    would always pick it and the pair would teach nothing). The paper does not say."""
    k: int = 10
    """Chunks retrieved and scored per pair (the paper: 10)."""
    template: str = "qa"
    """Prompt template of task pairs (`Background: {chunk}\\n\\nQuestion: {x}\\nAnswer: y`); corpus
    pairs are `Background: {chunk}\\n\\n{x} y`."""
    part_size: int = 128
    """Pairs scored per part: a part's chunks are prefilled once; a killed run resumes after the
    last finished part; under torchrun, the unit of work dealt to the processes."""
    naive: bool = False
    """Score every (pair, chunk) with its own forward (no prefix reuse): the reference path."""
    data_dir: str | None = None
    """Folder of the public data sets (for sources outside the bundled data, and the leakage check);
    default $RADIT_DATA, else ../shared/data."""
    on_error: Literal["error", "skip"] = "error"
    """A bad record in a source: `error` stops with file, line and field; `skip` drops and counts it."""
    seed: int = 0
    """Seed of the chunk and question sampling."""
    device: str = "auto"
    """Torch device for the LM and the query encoder."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """LM compute precision; auto: bf16 autocast on a CUDA GPU or a CPU with AMX-BF16, else float32."""
    overwrite: bool = False
    """Start over even if --output holds a cache made with the same settings (else it resumes)."""

    def __post_init__(self) -> None:
        for name in ("pairs", "corpus_tokens", "k", "part_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.corpus_fraction <= 1:
            raise ValueError(f"--corpus-fraction must be in [0, 1], got {self.corpus_fraction}")
        if self.corpus_fraction < 1 and not self.sources:
            raise ValueError("--sources: give at least one task-pair source, or --corpus-fraction 1")


@dataclasses.dataclass
class TrainRetrieverConfig:
    """`radit train-retriever`: fine-tune the query tower on LSR targets (RA-DIT Eq. 4-5). The document
    tower and the index stay frozen, so the index is never rebuilt.

    loss = KL(p_R(c | x) ‖ p_LSR(c | x, y)) over each pair's k cached chunks, with
    p_R = softmax(E_q(x) · E_d(c) / T) (E_d(c) read from the index) and p_LSR = softmax(score / τ)."""

    data: list[str] = dataclasses.field(default_factory=lambda: ["runs/lsr-data"])
    """Cache directories written by `radit build-lsr-data` (one or more, scored by the same LM
    against the same index; their pairs are trained on together)."""
    index: str | None = None
    """The index the cache was built against (default: the one its manifest names); its document
    vectors are read, never written."""
    query_encoder: str | None = None
    """Query tower to start from (default: the index's own query encoder)."""
    output: str = "runs/r-ft"
    """Run directory: checkpoints/, metrics.jsonl, curve.png, and model/ (the query encoder)."""
    use: Literal["all", "corpus", "task"] = "all"
    """Which cached pairs to train on (the dev pairs are the same in every case): all of them, or one
    kind only, to measure what each kind brings."""
    task_target: Literal["prob", "logprob", "mean-logprob"] = "mean-logprob"
    """p_LSR of task pairs: prob = softmax(p_LM(y | c ∘ x) / τ), the paper's Eq. 4 (uniform when p is
    tiny under every chunk, as for a small LM: see docs/paper-fidelity.md); logprob = softmax(log
    p_LM(y | c ∘ x) / τ); mean-logprob = softmax(per-token mean log p / τ), the best on SQuAD-open dev."""
    task_tau: float = 0.1
    """τ of the task pairs' p_LSR (the paper: 0.01, with the prob form)."""
    corpus_target: Literal["prob", "logprob", "mean-logprob"] = "logprob"
    """p_LSR of corpus pairs (50-token continuations, whose probability underflows to ~e^-100)."""
    corpus_tau: float = 3.0
    """τ of the corpus pairs' p_LSR."""
    kl_direction: Literal["retriever-lsr", "lsr-retriever"] = "retriever-lsr"
    """retriever-lsr: KL(p_R ‖ p_LSR), Eq. 5 as printed; lsr-retriever: KL(p_LSR ‖ p_R), what Atlas
    and torch's kl_div(log p_R, p_LSR) compute."""
    retrieval_temperature: float | None = None
    """T of p_R; default: the index's (MiniLM 0.05, DRAGON+ 1)."""
    batch_size: int = 32
    """Pairs per process per optimizer step (the paper: 32 per GPU): under torchrun / accelerate launch
    a step trains on batch_size x processes pairs, so 2 processes x 16 train as 1 process x 32."""
    steps: int = 0
    """Optimizer steps; 0: one epoch over the pairs (the paper: one epoch)."""
    lr: float = 1e-5
    """Peak learning rate (the paper: 1e-5), linear warm-up then linear decay to 0."""
    warmup_steps: int = 0
    """Linear warm-up steps (the paper: 1,237, DRAGON's default)."""
    weight_decay: float = 0.0
    """AdamW weight decay (matrices only)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    dev_pairs: int = 100
    """Pairs held out of the cache for the dev MRR of the LM-preferred chunk."""
    eval_every: int = 50
    """Steps between evaluations; the best checkpoint (answer-hit@1, then MRR) is kept."""
    eval_questions: int = 500
    """Questions of the bundled SQuAD-open dev split searched at each evaluation (0: MRR only)."""
    eval_sample: bool = False
    """Draw the --eval-questions at random (seed 0) from the whole dev split instead of taking the first
    N: the bundled split is sorted by article, and its first 500 questions come from three of its 5."""
    eval_ks: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10, 20])
    """answer-hit@k cut-offs of the evaluation."""
    checkpoint_every: int = 50
    """Steps between resumable checkpoints."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Encoder compute precision (autocast); weights stay float32."""
    device: str = "auto"
    """Torch device of the query encoder (under torchrun / accelerate launch, auto and cuda mean each
    process's own GPU)."""
    seed: int = 0
    """Seed of the dev split and the data order."""
    overwrite: bool = False
    """Start over even if --output holds a run with the same settings (else it resumes)."""

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("--data: give at least one LSR cache directory (written by `radit build-lsr-data`)")
        for name in ("batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "warmup_steps", "dev_pairs", "eval_questions"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("task_tau", "corpus_tau", "lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {value}")
        t = self.retrieval_temperature
        if t is not None and not (t > 0 and math.isfinite(t)):
            raise ValueError(f"--retrieval-temperature must be a finite number > 0, got {t}")
        if not self.eval_ks or any(k < 1 for k in self.eval_ks):
            raise ValueError(f"--eval-ks must be integers >= 1, got {self.eval_ks}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("--grad-clip and --weight-decay must be >= 0")


# --------------------------------------------------------------------------------------------------
# The whole method in one run (the paper's Table 6): `radit pipeline` and `radit quickstart`
# --------------------------------------------------------------------------------------------------

CONFIGURATIONS = ("closed-book", "replug", "lm-ft", "r-ft", "ra-dit")


@dataclasses.dataclass
class PipelineEvalConfig:
    """The pipeline's last stage: the paper's Table 6 rows, each configuration answering the same test
    questions that no stage trained on."""

    tasks: list[str] = dataclasses.field(default_factory=lambda: ["squad-open"])
    """Tasks of `radit eval` (squad-open is bundled; nq-open, triviaqa, ... read --data-dir)."""
    limit: int | None = 200
    """Questions per task: the first N of its test split (unset: all)."""
    limits: list[int] = dataclasses.field(default_factory=list)
    """Questions of each task, in --eval.tasks order, where they should differ (empty: --eval.limit for all)."""
    configurations: list[Literal["closed-book", "replug", "lm-ft", "r-ft", "ra-dit"]] = dataclasses.field(
        default_factory=lambda: list(CONFIGURATIONS))
    """Rows of the report: closed-book (base LM, no retrieval), replug (base LM + base retriever, Eq. 2),
    lm-ft (fine-tuned LM + base retriever), r-ft (base LM + fine-tuned query tower), ra-dit (both)."""
    shots: int = 5
    """Demonstrations for the base-LM rows (closed-book, replug, r-ft); the paper's Table 6 is 5-shot."""
    ft_shots: int = 0
    """Demonstrations for the fine-tuned-LM rows (lm-ft, ra-dit), which were trained on 0-shot prompts."""
    inference: InferenceConfig = flat(InferenceConfig)
    """How every row answers (mode replug for the retrieval rows; k, scoring, ...)."""
    data_dir: str | None = None
    """Folder of the public evaluation sets; default $RADIT_DATA, else ../shared/data."""
    retrieval_questions: str | None = "quickstart:squad-open/test"
    """Question set (file or bundled split) of `radit eval-retrieval` with the base and the R-ft query
    tower: answer-hit@k in the report (unset: skipped)."""
    resamples: int = 2000
    """Bootstrap resamples of the report's intervals."""
    seed: int = 0
    """Seed of the bootstrap draws."""

    def __post_init__(self) -> None:
        if not self.tasks:
            raise ValueError("--eval.tasks: give at least one task")
        if not self.configurations or len(set(self.configurations)) != len(self.configurations):
            raise ValueError(f"--eval.configurations: give each of {', '.join(CONFIGURATIONS)} at most once")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--eval.limit must be >= 1 (or unset for all questions), got {self.limit}")
        if self.limits and (len(self.limits) != len(self.tasks) or min(self.limits) < 1):
            raise ValueError(f"--eval.limits: give one count >= 1 per task of --eval.tasks ({len(self.tasks)}), got {self.limits}")
        if self.shots < 0 or self.ft_shots < 0:
            raise ValueError("--eval.shots and --eval.ft-shots must be >= 0")
        if self.resamples < 100:
            raise ValueError(f"--eval.resamples must be >= 100, got {self.resamples}")
        if self.inference.mode == "closed-book":
            raise ValueError("--eval.mode closed-book: the closed-book row is its own configuration; "
                             "give the retrieval rows' mode (replug, top1, concat)")


@dataclasses.dataclass
class PipelineConfig:
    """`radit pipeline`: the whole of RA-DIT in one run directory. corpus -> index -> base evaluation ->
    LM-ft (RA-IT) -> LSR targets from the *base* LM -> R-ft -> evaluation of the five configurations ->
    report.md + report.png.

    Each stage group below is the config of the command of the same name; the pipeline fills in the
    paths between stages (outputs, inputs, the LM, the index), so a recipe sets only what a stage
    does. A stage is skipped when the run directory holds its finished outputs made with the same
    settings (and the same upstream stages); a stage whose settings changed runs again, with
    everything downstream of it; a killed stage continues where it stopped."""

    output: str = "runs/radit"
    """Run directory: one folder per stage, pipeline.json (each stage's settings key, state and
    time), report.md / report.png / report.json."""
    documents: list[str] = dataclasses.field(default_factory=list)
    """Document files for `radit corpus` (empty: the bundled quickstart corpus)."""
    limit_documents: int | None = None
    """Use only the first N documents (a smaller, faster corpus)."""
    lm: str = "smollm2-135m-instruct"
    """The LM every stage uses: fine-tuned by LM-ft, frozen scorer of LSR, base rows of the report."""
    device: str = "auto"
    """Torch device of every stage."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute precision of every stage; auto: bf16 autocast on a CUDA GPU or a CPU with AMX-BF16, else float32."""
    corpus: CorpusConfig = dataclasses.field(default_factory=CorpusConfig)
    """`radit corpus` settings (chunk length, bad records)."""
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    """`radit index` settings (encoder, index type, ...)."""
    lm_data: LMDataConfig = dataclasses.field(default_factory=LMDataConfig)
    """`radit build-lm-data` settings (sources, cap, k', ...)."""
    train_lm: TrainLMConfig = dataclasses.field(default_factory=TrainLMConfig)
    """`radit train-lm` settings (steps, lr, LoRA, ...)."""
    lsr_data: LSRDataConfig = dataclasses.field(default_factory=LSRDataConfig)
    """`radit build-lsr-data` settings (pairs, mixture, k, ...)."""
    train_retriever: TrainRetrieverConfig = dataclasses.field(default_factory=TrainRetrieverConfig)
    """`radit train-retriever` settings (targets, tau, steps, ...)."""
    eval: PipelineEvalConfig = dataclasses.field(default_factory=PipelineEvalConfig)
    """The final evaluation and report."""

    def __post_init__(self) -> None:
        if self.limit_documents is not None and self.limit_documents < 1:
            raise ValueError(f"--limit-documents must be >= 1, got {self.limit_documents}")
        if self.index.backend != "dense":
            raise ValueError(f"--index.backend {self.index.backend}: R-ft trains a dense query tower against the "
                             "index's document vectors; the pipeline builds a dense index")
        owned = {"corpus": ("inputs", "output"), "index": ("passages", "output", "overwrite"),
                 "lm_data": ("index", "tokenizer", "output"), "train_lm": ("data", "model", "output", "eval_index", "overwrite"),
                 "lsr_data": ("index", "model", "output", "overwrite"),
                 "train_retriever": ("data", "index", "output", "overwrite")}
        for group, names in owned.items():
            stage, default = getattr(self, group), type(getattr(self, group))()
            for name in names:
                if getattr(stage, name) != getattr(default, name):
                    raise ValueError(f"{group}.{name} is set by the pipeline (it connects the stages in --output); "
                                     f"remove it from the recipe (top-level `lm`, `documents` and `output` choose what it points to)")
            for name in ("device", "dtype"):
                if hasattr(stage, name) and getattr(stage, name) != getattr(default, name):
                    raise ValueError(f"{group}.{name}: the pipeline runs every stage with the top-level `{name}`; set that instead")


@dataclasses.dataclass
class QuickstartConfig:
    """`radit quickstart`: the main job. RA-DIT end to end on the bundled data with the packaged models,
    offline: the recipe configs/quickstart.yaml (or configs/quickstart-fast.yaml with --fast) run by
    `radit pipeline`; a rerun reuses every finished stage."""

    fast: bool = False
    """The fast preset: a smaller corpus, fewer training steps and questions (shows the direction of
    every gain, with wider intervals)."""
    output: str | None = None
    """Run directory (default: the recipe's, runs/quickstart or runs/quickstart-fast)."""
    device: str = "auto"
    """Torch device of every stage."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Compute precision of every stage; auto: bf16 autocast where it is fast (AMX-BF16 CPU, CUDA), else float32."""
