"""Indexing throughput of `radit index` (MiniLM) against sentence-transformers `encode`, same passages.

    python benchmarks/index_throughput.py [--n 2000] [--batch-size 64]

Both sides embed the same passage strings (title + text) with the same batch size, max length (256)
and thread count, in fp32, alternating runs; the best of `--repeats` is kept for each. Target: radit's
passages/s >= 0.95 x sentence-transformers'.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import save

from radit.config import IndexConfig
from radit.corpus import PassageStore
from radit.data.qa import quickstart_documents
from radit.retriever.encoder import passage_input
from radit.retriever.index import build_index
from radit.models import resolve_model


def passages_subset(n: int, workdir: Path) -> Path:
    from radit.config import CorpusConfig
    from radit.corpus import build_passages

    full = workdir / "all.jsonl"
    build_passages(CorpusConfig(inputs=[str(quickstart_documents())], output=str(full)))
    # Every 3rd passage: a mix of SQuAD paragraphs and Wikipedia extracts of realistic lengths.
    subset = workdir / "passages.jsonl"
    with open(full) as f, open(subset, "w") as g:
        g.writelines(itertools.islice(itertools.islice(f, 0, None, 3), n))
    return subset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    work = Path(tempfile.mkdtemp(prefix="radit-bench-"))
    passages = passages_subset(args.n, work)
    texts = [passage_input(p) for p in PassageStore(passages)]
    st = SentenceTransformer(str(resolve_model("all-minilm-l6-v2")), device="cpu")
    st.max_seq_length = 256

    st_times, radit_times = [], []
    for r in range(args.repeats):
        t = time.perf_counter()
        st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True)
        st_times.append(time.perf_counter() - t)
        out = work / f"index{r}"
        t = time.perf_counter()
        build_index(IndexConfig(passages=str(passages), output=str(out), batch_size=args.batch_size, device="cpu"))
        radit_times.append(time.perf_counter() - t)
        print(f"repeat {r}: sentence-transformers {st_times[-1]:.1f}s, radit index {radit_times[-1]:.1f}s")
    manifest = json.loads((work / "index0" / "manifest.json").read_text())
    shutil.rmtree(work)

    st_rate, radit_rate = len(texts) / min(st_times), len(texts) / min(radit_times)
    ratio = radit_rate / st_rate
    print(f"{len(texts)} passages: sentence-transformers {st_rate:.1f}/s, radit index {radit_rate:.1f}/s, ratio {ratio:.3f} (target >= 0.95)")
    save(
        "index_throughput",
        {
            "passages": len(texts),
            "batch_size": args.batch_size,
            "sentence_transformers_passages_per_s": round(st_rate, 1),
            "radit_index_passages_per_s": round(radit_rate, 1),
            "ratio": round(ratio, 3),
            "target": ">= 0.95",
            "radit_includes": "reading passages, embedding, shard writes, flat FAISS build, manifest (load time of the encoder included)",
            "seconds": {"sentence_transformers": st_times, "radit": radit_times},
            "index_count": manifest["count"],
        },
    )


if __name__ == "__main__":
    main()
