"""Indexing throughput of `radit index` (MiniLM) against sentence-transformers `encode`, same passages,
and of `radit index --dtype auto` against `--dtype float32`.

    python benchmarks/index_throughput.py [--n 2000] [--batch-size 64] [--device cpu] [--encoder all-minilm-l6-v2]
    python benchmarks/index_throughput.py --device cuda --batch-size 256     # -> results/index_throughput-{gpu}.json

Both sides embed the same passage strings (title + text) with the same batch size, max length (256)
and thread count, alternating runs; the best of `--repeats` is kept for each. Target: radit's fp32
passages/s >= 0.95 x sentence-transformers' (fp32). `--dtype auto` resolves to bfloat16 only where
bf16 is fast (a CPU with AMX-BF16, a bf16 GPU); elsewhere it is float32 and its ratio is ~1 by
construction: the output says which case the machine is. `--device` moves both sides to that device;
a run off the CPU (or with `--tag`) writes results/index_throughput-{tag}.json, the tag defaulting to
the GPU's name, so the CPU results file stays.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path

from common import device_slug, save

from radit.config import EncoderConfig, IndexConfig
from radit.corpus import PassageStore
from radit.data.qa import quickstart_documents
from radit.models import resolve_model
from radit.retriever.encoder import passage_input
from radit.retriever.index import build_index
from radit.runtime import resolve_device


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
    ap.add_argument("--device", default="cpu", help="torch device of both sides (cpu, cuda, auto, ...)")
    ap.add_argument("--encoder", default="all-minilm-l6-v2",
                    help="a sentence-transformers folder, packaged or hub name with mean pooling (the minilm preset)")
    ap.add_argument("--tag", default=None, help="results/index_throughput-{tag}.json; default: none on CPU, the GPU's name")
    args = ap.parse_args()
    device = resolve_device(args.device)
    tag = args.tag if args.tag is not None else ("" if device.type == "cpu" else device_slug(device))

    from sentence_transformers import SentenceTransformer

    work = Path(tempfile.mkdtemp(prefix="radit-bench-"))
    passages = passages_subset(args.n, work)
    texts = [passage_input(p) for p in PassageStore(passages)]
    st = SentenceTransformer(str(resolve_model(args.encoder)), device=str(device))
    st.max_seq_length = 256

    st_times: list[float] = []
    radit_times: dict[str, list[float]] = {"float32": [], "auto": []}
    for r in range(args.repeats):
        t = time.perf_counter()
        st.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, normalize_embeddings=True)
        st_times.append(time.perf_counter() - t)
        for dtype, times in radit_times.items():
            out = work / f"index-{dtype}-{r}"
            t = time.perf_counter()
            build_index(IndexConfig(passages=str(passages), output=str(out), batch_size=args.batch_size, device=str(device),
                                    dtype=dtype, encoder=EncoderConfig(query_model=args.encoder)))
            times.append(time.perf_counter() - t)
        print(f"repeat {r}: sentence-transformers {st_times[-1]:.1f}s, radit index float32 {radit_times['float32'][-1]:.1f}s, "
              f"auto {radit_times['auto'][-1]:.1f}s")
    manifest = json.loads((work / "index-float32-0" / "manifest.json").read_text())
    auto_dtype = json.loads((work / "index-auto-0" / "manifest.json").read_text())["dtype"]
    shutil.rmtree(work)

    st_rate = len(texts) / min(st_times)
    rate = {dtype: len(texts) / min(times) for dtype, times in radit_times.items()}
    ratio, auto_ratio = rate["float32"] / st_rate, rate["auto"] / rate["float32"]
    print(f"{len(texts)} passages: sentence-transformers {st_rate:.1f}/s, radit index {rate['float32']:.1f}/s, "
          f"ratio {ratio:.3f} (target >= 0.95)")
    if auto_dtype == "float32":
        auto_note = ("auto resolved to float32 (no fast bf16 on this machine: no AMX-BF16), the same computation, "
                     "so the ratio is ~1 and any difference is run-to-run noise")
    else:
        auto_note = f"auto resolved to {auto_dtype} (fast bf16 on this machine)"
    print(f"--dtype auto {rate['auto']:.1f}/s vs float32 {rate['float32']:.1f}/s: {auto_ratio:.3f}x; {auto_note}")
    save(
        "index_throughput" + (f"-{tag}" if tag else ""),
        {
            "device": str(device),
            "encoder": args.encoder,
            "passages": len(texts),
            "batch_size": args.batch_size,
            "sentence_transformers_passages_per_s": round(st_rate, 1),
            "radit_index_passages_per_s": round(rate["float32"], 1),
            "ratio": round(ratio, 3),
            "target": ">= 0.95",
            "radit_includes": "reading passages, embedding, shard writes, flat FAISS build, manifest (load time of the encoder included)",
            "auto_dtype": auto_dtype,
            "radit_index_auto_passages_per_s": round(rate["auto"], 1),
            "auto_vs_float32": round(auto_ratio, 3),
            "auto_note": auto_note,
            "seconds": {"sentence_transformers": st_times, "radit_float32": radit_times["float32"], "radit_auto": radit_times["auto"]},
            "index_count": manifest["count"],
        },
        device=str(device),
    )


if __name__ == "__main__":
    main()
