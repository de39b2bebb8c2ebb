"""Build the quickstart data bundled in `src/radit/data/quickstart/` from the public files in ../shared/data.

    python scripts/make_quickstart_data.py                      # --shared ../shared/data --out src/radit/data/quickstart
    python scripts/make_quickstart_data.py --shared /work/shared/data

Writes, deterministically (rerunning gives byte-identical files):

- `documents.jsonl.gz`: the retrieval corpus, `{"id", "title", "text"}` per line. Every SQuAD v1.1 dev
  paragraph is one document, id `squad:{article title}:{paragraph index}` (the title as spelt in the
  SQuAD file, e.g. `Super_Bowl_50`; the `title` field has `_` turned into spaces), followed by every
  non-empty Wikipedia vital-article extract, id `wiki:{title}`. SQuAD first, then Wikipedia, each in
  file order. Gzip is written with mtime 0 and no file name so that its bytes do not depend on when
  or where it was built.
- `squad_open_{train,dev,test}.jsonl`: SQuAD-open questions `{"id", "question", "answers", "title",
  "positive_ids"}`, split by article so that no test article is trained on: the 48 article titles,
  sorted, are shuffled with `random.Random(0)`; test = the first 10, dev = the next 5, train = the rest.
- `README.md`: what the files are, counts, the split rule, this command and the licences.

Only the standard library is used, so the script runs without the project installed.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SPLITS = {"test": 10, "dev": 5}  # articles per held-out split, in this order; train takes the rest
SEED = 0
GZIP_QUESTIONS_OVER = 1 << 20  # question files larger than 1 MiB are gzipped (none are, at 48 articles)
_to_json = json.JSONEncoder(ensure_ascii=False).encode


def squad_documents(squad: dict) -> list[dict]:
    docs = []
    for article in squad["data"]:
        title = article["title"]
        for p, para in enumerate(article["paragraphs"]):
            docs.append({"id": f"squad:{title}:{p}", "title": title.replace("_", " "), "text": para["context"]})
    return docs


def wiki_documents(summaries: dict) -> tuple[list[dict], list[str]]:
    """Documents of the non-empty extracts, and the titles of the empty ones."""
    docs, empty = [], []
    for key, article in summaries.items():
        title = article.get("title") or key
        extract = (article.get("extract") or "").strip()
        if extract:
            docs.append({"id": f"wiki:{title}", "title": title, "text": extract})
        else:
            empty.append(title)
    return docs, empty


def split_articles(titles: list[str]) -> dict[str, list[str]]:
    order = sorted(titles)
    random.Random(SEED).shuffle(order)
    splits, start = {}, 0
    for name, n in SPLITS.items():
        splits[name] = sorted(order[start : start + n])
        start += n
    splits["train"] = sorted(order[start:])
    return splits


def squad_questions(squad: dict) -> dict[str, list[dict]]:
    """Questions per article title, in file order; answers are the distinct stripped texts in order."""
    by_article: dict[str, list[dict]] = {}
    for article in squad["data"]:
        title = article["title"]
        rows = by_article.setdefault(title, [])
        for p, para in enumerate(article["paragraphs"]):
            for qa in para["qas"]:
                answers = list(dict.fromkeys(a["text"].strip() for a in qa["answers"] if a["text"].strip()))
                if not answers:
                    raise SystemExit(f"SQuAD question {qa['id']} has no answer text; is this the v1.1 file?")
                rows.append({
                    "id": qa["id"], "question": qa["question"].strip(), "answers": answers,
                    "title": title, "positive_ids": [f"squad:{title}:{p}"],
                })
    return by_article


def write_gzip_jsonl(path: Path, records: list[dict]) -> None:
    data = "".join(_to_json(r) + "\n" for r in records).encode("utf-8")
    buf = io.BytesIO()
    # filename="" and mtime=0 keep the build time and path out of the gzip header: byte-reproducible.
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as g:
        g.write(data)
    path.write_bytes(buf.getvalue())


def write_questions(out: Path, split: str, records: list[dict]) -> Path:
    data = "".join(_to_json(r) + "\n" for r in records).encode("utf-8")
    path = out / f"squad_open_{split}.jsonl"
    stale = path.with_name(path.name + ".gz") if len(data) <= GZIP_QUESTIONS_OVER else path
    stale.unlink(missing_ok=True)
    if len(data) > GZIP_QUESTIONS_OVER:
        path = path.with_name(path.name + ".gz")
        write_gzip_jsonl(path, records)
    else:
        path.write_bytes(data)
    return path


README = """\
# Quickstart data

Small, offline data bundled with radit so that `radit quickstart` and the tests need no download.
Built by `scripts/make_quickstart_data.py` from public files; do not edit by hand. To regenerate
(byte-identical output), from the repository root with the shared data at `../shared/data`:

    python scripts/make_quickstart_data.py --shared ../shared/data --out src/radit/data/quickstart

## Files

| file | what | records |
|---|---|---|
| `documents.jsonl.gz` | the retrieval corpus, one `{{"id", "title", "text"}}` per line (gzip) | {n_docs:,} documents |
{question_rows}

`documents.jsonl.gz` holds, in this order:

- every paragraph of SQuAD v1.1 dev ({n_articles} articles, {n_squad:,} paragraphs) as one document, id
  `squad:{{article title}}:{{paragraph index}}` with the article title as spelt in the SQuAD file
  (`squad:Super_Bowl_50:0`) and `title` with `_` turned into spaces (`Super Bowl 50`);
- every Wikipedia vital-article (level 4) lead section from `wiki_vital/summaries.json`
  ({n_wiki:,} documents, id `wiki:{{title}}`, text = the extract; {n_empty} empty extracts skipped). They
  are realistic distractors: the SQuAD paragraphs hold the answers.

The question files hold SQuAD-open: the SQuAD v1.1 dev questions without their paragraph, one
`{{"id", "question", "answers", "title", "positive_ids"}}` per line. `id` is the SQuAD question id,
`answers` the distinct answer texts in their original order, `title` the article, and `positive_ids`
the id of the paragraph the question was written on (every answer occurs in it). Read them with
`radit.data.qa.load_questions("quickstart:squad-open/test")`. A question file over 1 MiB is gzipped
to keep the bundle small; the reader takes either form.

## Split

By article, so that no test (or dev) article is trained on: the {n_articles} article titles are sorted,
shuffled with `random.Random({seed})`, and the first {n_test} are test, the next {n_dev} dev, the rest train.

{split_table}

## Sources and licences

- SQuAD v1.1 dev (`squad/dev-v1.1.json`): Rajpurkar, Zhang, Lopyrev and Liang, "SQuAD: 100,000+ Questions
  for Machine Comprehension of Text", EMNLP 2016, https://rajpurkar.github.io/SQuAD-explorer/.
  Licence CC BY-SA 4.0. Its paragraphs are Wikipedia text.
- Wikipedia vital-article extracts (`wiki_vital/summaries.json`): text by the Wikipedia contributors,
  https://en.wikipedia.org/wiki/Wikipedia:Vital_articles/Level/4. Licence CC BY-SA 4.0.

The files here are derived from both and are distributed under the same licence, CC BY-SA 4.0
(https://creativecommons.org/licenses/by-sa/4.0/), with the attribution above; this licence covers
these data files only, not radit's code.
"""


def write_readme(out: Path, counts: dict, question_files: dict[str, Path], splits: dict[str, list[str]], n_questions: dict[str, int]) -> None:
    question_rows = "\n".join(
        f"| `{question_files[s].name}` | SQuAD-open {s} questions (jsonl{', gzip' if question_files[s].suffix == '.gz' else ''}) "
        f"| {n_questions[s]:,} questions from {len(splits[s])} articles |"
        for s in ("train", "dev", "test")
    )
    split_table = "| split | articles | questions | titles |\n|---|---|---|---|\n" + "\n".join(
        f"| {s} | {len(splits[s])} | {n_questions[s]:,} | {'; '.join(t.replace('_', ' ') for t in splits[s])} |"
        for s in ("train", "dev", "test")
    )
    text = README.format(
        question_rows=question_rows, split_table=split_table, seed=SEED,
        n_test=SPLITS["test"], n_dev=SPLITS["dev"], **counts,
    )
    (out / "README.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="the shared public-data folder (holds squad/ and wiki_vital/)")
    parser.add_argument("--out", type=Path, default=REPO / "src" / "radit" / "data" / "quickstart", help="output folder")
    args = parser.parse_args(argv)

    squad_path = args.shared / "squad" / "dev-v1.1.json"
    wiki_path = args.shared / "wiki_vital" / "summaries.json"
    for path in (squad_path, wiki_path):
        if not path.is_file():
            parser.error(f"{path} not found; pass --shared DIR, the folder that holds squad/ and wiki_vital/")
    squad = json.loads(squad_path.read_text(encoding="utf-8"))
    summaries = json.loads(wiki_path.read_text(encoding="utf-8"))
    args.out.mkdir(parents=True, exist_ok=True)

    squad_docs = squad_documents(squad)
    wiki_docs, empty = wiki_documents(summaries)
    docs = squad_docs + wiki_docs
    ids = [d["id"] for d in docs]
    if len(set(ids)) != len(ids):
        raise SystemExit("duplicate document ids; check the inputs")
    write_gzip_jsonl(args.out / "documents.jsonl.gz", docs)
    print(f"documents.jsonl.gz: {len(squad_docs):,} SQuAD paragraphs + {len(wiki_docs):,} Wikipedia extracts "
          f"= {len(docs):,} documents ({len(empty)} empty extracts skipped)")

    by_article = squad_questions(squad)
    splits = split_articles(list(by_article))
    files, n_questions = {}, {}
    for split in ("train", "dev", "test"):
        records = [q for title in by_article if title in splits[split] for q in by_article[title]]  # file order
        files[split] = write_questions(args.out, split, records)
        n_questions[split] = len(records)
        print(f"{files[split].name}: {len(splits[split])} articles, {len(records):,} questions")

    counts = {
        "n_docs": len(docs), "n_articles": len(squad["data"]), "n_squad": len(squad_docs),
        "n_wiki": len(wiki_docs), "n_empty": len(empty),
    }
    write_readme(args.out, counts, files, splits, n_questions)
    print(f"README.md written; all files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
