"""R-ft (LSR, Eq. 4-5): the targets and the KL by hand in both directions and all three target forms,
the cache (pairs, resume, refusal of a stale one), and the loop on tiny models: gradients reach the
query tower only, the index files stay byte-identical, exact resume after SIGKILL, and the saved
tower loads in `radit search` against the old index."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import kill_when_logged

from radit.config import EncoderConfig, IndexConfig, LSRDataConfig, TrainRetrieverConfig
from radit.config_io import save_yaml
from radit.retriever.index import build_index
from radit.train.losses import lsr_log_targets, lsr_loss, lsr_scores

# --------------------------------------------------------------------------- Eq. 4 and Eq. 5 by hand


def test_lsr_target_forms_by_hand():
    logprob = torch.tensor([[-1.0, -2.0, -4.0]])
    tokens = torch.tensor([2])
    # prob: p = exp(sum log p); Eq. 4: softmax(p / tau)
    p = np.exp([-1.0, -2.0, -4.0])
    want = np.exp(p / 0.01) / np.exp(p / 0.01).sum()
    got = lsr_log_targets(lsr_scores(logprob, tokens, "prob"), 0.01).exp()
    np.testing.assert_allclose(got.numpy()[0], want, rtol=1e-12)
    # logprob: softmax(sum / tau)
    want = np.exp(np.array([-1.0, -2.0, -4.0]) / 0.5)
    np.testing.assert_allclose(lsr_log_targets(lsr_scores(logprob, tokens, "logprob"), 0.5).exp().numpy()[0],
                               want / want.sum(), rtol=1e-12)
    # mean-logprob: softmax(sum / n_tokens / tau)
    want = np.exp(np.array([-0.5, -1.0, -2.0]) / 0.5)
    np.testing.assert_allclose(lsr_log_targets(lsr_scores(logprob, tokens, "mean-logprob"), 0.5).exp().numpy()[0],
                               want / want.sum(), rtol=1e-12)
    with pytest.raises(ValueError, match="unknown LSR target form"):
        lsr_scores(logprob, tokens, "softmax")


def test_prob_form_goes_uniform_for_long_continuations():
    # The failure mode the docs describe: 50-token continuations have p ~ e^-100 under every chunk.
    logprob = torch.tensor([[-100.0, -120.0, -150.0]])
    uniform = lsr_log_targets(lsr_scores(logprob, torch.tensor([50]), "prob"), 0.01).exp()
    assert torch.allclose(uniform, torch.full((1, 3), 1 / 3, dtype=torch.float64))
    sharp = lsr_log_targets(lsr_scores(logprob, torch.tensor([50]), "mean-logprob"), 0.1).exp()
    assert sharp[0, 0] > 0.98


def test_masked_chunks_are_out_of_both_distributions():
    mask = torch.tensor([[True, True, False]])
    log_t = lsr_log_targets(torch.tensor([[1.0, 0.0, 5.0]]), 1.0, mask)
    assert log_t[0, 2] == -math.inf
    np.testing.assert_allclose(log_t.exp()[0, :2].numpy(), [math.e / (math.e + 1), 1 / (math.e + 1)], rtol=1e-12)
    scores = torch.tensor([[0.2, 0.1, 9.0]], requires_grad=True)
    for direction in ("retriever-lsr", "lsr-retriever"):
        loss = lsr_loss(scores, log_t, 0.5, direction, mask)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(scores.grad).all() and scores.grad[0, 2] == 0
        scores.grad = None


@pytest.mark.parametrize("direction", ["retriever-lsr", "lsr-retriever"])
def test_kl_by_hand_in_both_directions(direction):
    s = np.array([[0.9, 0.8, 0.5], [0.1, 0.3, 0.2]])
    t_lsr = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    T = 0.05
    p_r = np.exp(s / T) / np.exp(s / T).sum(1, keepdims=True)
    if direction == "retriever-lsr":  # KL(p_R || p_LSR), Eq. 5 as printed
        want = (p_r * np.log(p_r / t_lsr)).sum(1).mean()
    else:  # KL(p_LSR || p_R)
        want = (t_lsr * np.log(t_lsr / p_r)).sum(1).mean()
    got = lsr_loss(torch.tensor(s), torch.tensor(np.log(t_lsr)), T, direction)
    assert float(got) == pytest.approx(want, rel=1e-6)
    if direction == "lsr-retriever":  # what Atlas computes: F.kl_div(log p_R, p_LSR)
        atlas = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(s) / T, -1), torch.tensor(t_lsr), reduction="batchmean")
        assert float(got) == pytest.approx(float(atlas), rel=1e-6)
    with pytest.raises(ValueError, match="KL direction"):
        lsr_loss(torch.tensor(s), torch.tensor(np.log(t_lsr)), T, "both")


def test_the_loss_pulls_p_r_towards_the_lm_preferred_chunk():
    s = torch.tensor([[0.5, 0.5, 0.5]], requires_grad=True)
    log_t = torch.log(torch.tensor([[0.8, 0.1, 0.1]], dtype=torch.float64))
    for direction in ("retriever-lsr", "lsr-retriever"):
        lsr_loss(s, log_t, 0.05, direction).backward()
        assert s.grad[0, 0] < 0 < s.grad[0, 1]  # gradient descent raises chunk 0's score
        s.grad = None


# --------------------------------------------------------------------------- tiny end to end

QA = [("who founded the Ming dynasty?", "Zhu Yuanzhang"), ("what is the capital of France?", "Paris"),
      ("what is the atomic number of oxygen?", "8"), ("who won Super Bowl 50?", "the Denver Broncos"),
      ("who first walked on the Moon?", "Neil Armstrong"), ("who invented the piano?", "Bartolomeo Cristofori"),
      ("who founded Rome?", "Romulus"), ("where did tea originate?", "southwest China")]


@pytest.fixture
def tiny_index(tmp_path, passages_file, tiny_encoder_dir) -> Path:
    out = tmp_path / "index"
    enc = EncoderConfig(query_model=str(tiny_encoder_dir), pooling="mean", normalize=True, score_temperature=0.05)
    build_index(IndexConfig(passages=str(passages_file), output=str(out), encoder=enc, device="cpu", dtype="float32"))
    return out


@pytest.fixture
def qa_source(tmp_path) -> str:
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "instruction": q, "output": a}) + "\n" for i, (q, a) in enumerate(QA)))
    return f"jsonl:{path}"


def lsr_config(tmp_path, tiny_index, tiny_lm_dir, qa_source, **overrides) -> LSRDataConfig:
    base = dict(index=str(tiny_index), model=str(tiny_lm_dir), output=str(tmp_path / "lsr"), pairs=12,
                corpus_fraction=0.5, sources=[qa_source], corpus_tokens=6, k=4, part_size=5, device="cpu",
                dtype="float32", data_dir=str(tmp_path / "no-data"))
    return LSRDataConfig(**{**base, **overrides})


def r_ft_config(tmp_path, data, name="r-ft", **overrides) -> TrainRetrieverConfig:
    base = dict(data=[str(d) for d in data] if isinstance(data, list) else [str(data)], output=str(tmp_path / name), batch_size=4, steps=4, lr=1e-3, dev_pairs=2,
                eval_every=2, eval_questions=0, checkpoint_every=2, device="cpu", dtype="float32")
    return TrainRetrieverConfig(**{**base, **overrides})


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_lsr_data_writes_pairs_scores_and_a_manifest(tmp_path, tiny_index, tiny_lm_dir, qa_source):
    from radit.train.lsr_cache import read_cache

    cfg = lsr_config(tmp_path, tiny_index, tiny_lm_dir, qa_source)
    manifest = build_lsr_data_quiet(cfg)
    assert manifest["complete"] and manifest["pairs"] == 12
    assert manifest["corpus_pairs"] == 6 and manifest["task_pairs"] == 6
    cache = read_cache(cfg.output)
    assert cache.rows.shape == (12, 4) and (cache.rows >= 0).all()
    assert np.isfinite(cache.logprob).all() and (cache.logprob < 0).all()
    # A corpus pair's own chunk is never among its top-k (it holds y verbatim).
    pairs = [json.loads(x) for x in (Path(cfg.output) / "pairs.jsonl").read_text().splitlines()]
    for p in pairs:
        if p["kind"] == "corpus":
            assert p["id"].removeprefix("corpus:") not in p["passage_ids"]
    # The scores equal the naive path's (one full forward per (pair, chunk)).
    naive = build_lsr_data_quiet(dataclasses.replace(cfg, output=str(tmp_path / "naive"), naive=True))
    assert naive["pairs"] == 12
    np.testing.assert_allclose(read_cache(tmp_path / "naive").logprob, cache.logprob, rtol=1e-4, atol=1e-4)
    # Another LM or index is refused; the same command again returns at once.
    assert build_lsr_data_quiet(cfg)["complete"]
    with pytest.raises(ValueError, match="other settings.k|--overwrite"):
        build_lsr_data_quiet(dataclasses.replace(cfg, k=3))


def build_lsr_data_quiet(cfg):
    from radit.train.lsr_data import build_lsr_data

    return build_lsr_data(cfg)


def test_a_killed_scoring_run_resumes_after_its_last_part(tmp_path, tiny_index, tiny_lm_dir, qa_source):
    from radit.train.lsr_cache import read_cache

    cfg = lsr_config(tmp_path, tiny_index, tiny_lm_dir, qa_source)
    full = build_lsr_data_quiet(dataclasses.replace(cfg, output=str(tmp_path / "full")))
    build_lsr_data_quiet(cfg)
    out = Path(cfg.output)
    # Simulate a kill after the first part, mid-way through writing the second line of part two.
    lines = (out / "scores.jsonl").read_text().splitlines(keepends=True)
    (out / "scores.jsonl").write_text("".join(lines[:5]) + lines[5][:7])
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="incomplete"):
        read_cache(out)
    resumed = build_lsr_data_quiet(cfg)
    assert resumed["complete"] and resumed["scoring"]["requests"] == (12 - 5) * 4
    assert (out / "scores.jsonl").read_text() == (tmp_path / "full" / "scores.jsonl").read_text()
    assert full["pairs"] == resumed["pairs"]


def test_gradient_reaches_the_query_tower_and_never_the_documents(tmp_path, tiny_index, tiny_lm_dir, qa_source):
    from radit.retriever.search import load_searcher
    from radit.train.r_ft import query_scores

    searcher = load_searcher(tiny_index, device="cpu")
    enc = searcher.query_encoder
    rows = np.array([[0, 1, 2], [3, 4, 5]])
    docs = torch.from_numpy(searcher.doc_vectors(rows).copy())
    queries = ["who founded the Ming dynasty?", "capital of France"]
    # The scores are the index's own: the same as searching it with the encoded queries (no dropout).
    q = enc.encode(queries)
    with torch.no_grad():
        np.testing.assert_allclose(query_scores(enc, queries, docs, "float32").numpy(),
                                   np.einsum("bd,bkd->bk", q, docs.numpy()), rtol=1e-4, atol=1e-5)
    enc.train()
    scores = query_scores(enc, queries, docs, "float32")
    loss = lsr_loss(scores, torch.log_softmax(torch.randn(2, 3, dtype=torch.float64), -1), 0.05)
    loss.backward()
    grads = {n: p.grad for n, p in enc.named_parameters() if ".pooler." not in n}  # mean pooling: no pooler
    assert all(g is not None for g in grads.values()) and sum(float(g.abs().sum()) for g in grads.values()) > 0
    assert not docs.requires_grad and docs.grad is None


def test_train_retriever_keeps_the_index_and_saves_a_tower_search_loads(tmp_path, tiny_index, tiny_lm_dir, qa_source, capsys):
    from radit.cli import main
    from radit.retriever.search import load_searcher
    from radit.train.r_ft import train_retriever

    data = lsr_config(tmp_path, tiny_index, tiny_lm_dir, qa_source)
    build_lsr_data_quiet(data)
    before = digest(tiny_index)
    # No dev pairs and no dev questions: nothing to select by, so the last step is saved.
    summary = train_retriever(r_ft_config(tmp_path, data.output, eval_questions=0, dev_pairs=0))
    assert digest(tiny_index) == before  # R-ft never writes the index
    run = Path(summary["output"])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == [1, 2, 3, 4]
    assert [x["step"] for x in lines if x["kind"] == "eval"] == [0, 2, 4]
    assert (run / "curve.png").stat().st_size > 0 and (run / "model" / "radit_encoder.json").is_file()
    assert summary["best"]["step"] == 4
    # The saved tower differs from the start and searches the old index.
    start = load_searcher(tiny_index, device="cpu")
    tuned = load_searcher(tiny_index, query_encoder=str(run / "model"), device="cpu")
    assert tuned.query_encoder.fingerprint() != start.query_encoder.fingerprint()
    assert len(tuned.search(["who founded Rome?"], 3)[0]) == 3
    assert main(["search", "--index", str(tiny_index), "--query-encoder", str(run / "model"), "-q", "who founded Rome?"]) == 0
    assert "Rome" in capsys.readouterr().out
    # The same command again returns the finished run's summary.
    assert train_retriever(r_ft_config(tmp_path, data.output, eval_questions=0, dev_pairs=0))["model"] == summary["model"]


def test_a_stale_cache_and_a_foreign_encoder_are_one_line_errors(tmp_path, tiny_index, tiny_lm_dir, qa_source,
                                                                  passages_file, wide_encoder_dir, other_tiny_encoder_dir):
    from radit.cli import main
    from radit.train.r_ft import train_retriever

    data = lsr_config(tmp_path, tiny_index, tiny_lm_dir, qa_source)
    build_lsr_data_quiet(data)
    # An index built by another document tower: the cache's rows and scores mean nothing there.
    other = tmp_path / "other-index"
    enc = EncoderConfig(query_model=str(other_tiny_encoder_dir), pooling="mean", normalize=True)
    build_index(IndexConfig(passages=str(passages_file), output=str(other), encoder=enc, device="cpu", dtype="float32"))
    with pytest.raises(ValueError, match="another index.*doc_encoder_fingerprint.*--overwrite"):
        train_retriever(r_ft_config(tmp_path, data.output, index=str(other)))
    assert not (tmp_path / "r-ft").exists()
    # A query tower of another width.
    assert main(["train-retriever", "--data", data.output, "--output", str(tmp_path / "w"), "--query-encoder",
                 str(wide_encoder_dir), "--device", "cpu", "--eval-questions", "0"]) == 2
    assert not (tmp_path / "w").exists()
    # No cache at all, and an incomplete one.
    with pytest.raises(FileNotFoundError, match="build-lsr-data"):
        train_retriever(r_ft_config(tmp_path, tmp_path / "nothing"))
    # An empty answer in a task source.
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "who?", "output": ""}) + "\n")
    with pytest.raises(ValueError):
        build_lsr_data_quiet(lsr_config(tmp_path, tiny_index, tiny_lm_dir, f"jsonl:{bad}", output=str(tmp_path / "l2")))


_KILLED_RUN = """
import sys, time
import radit.train.r_ft as r_ft
from radit.config import TrainRetrieverConfig
from radit.config_io import from_dict, load_yaml

saved = []
save, lr_at = r_ft.save_checkpoint, r_ft.lr_at
def save_checkpoint(*args, **kwargs):
    saved.append(save(*args, **kwargs))
def slow_lr_at(*args):
    if saved:
        time.sleep(0.5)
    return lr_at(*args)
r_ft.save_checkpoint, r_ft.lr_at = save_checkpoint, slow_lr_at
r_ft.train_retriever(from_dict(TrainRetrieverConfig, load_yaml(sys.argv[1])))
"""


def test_resume_after_sigkill_continues_the_same_trajectory(tmp_path, tiny_index, tiny_lm_dir, qa_source):
    from radit.train.checkpoint import latest_checkpoint
    from radit.train.r_ft import train_retriever

    data = lsr_config(tmp_path, tiny_index, tiny_lm_dir, qa_source, pairs=20)
    build_lsr_data_quiet(data)
    common = dict(steps=7, batch_size=3, checkpoint_every=2, eval_every=3)  # more than one epoch: 18 train pairs
    killed = r_ft_config(tmp_path, data.output, name="killed", **common)
    save_yaml(killed, tmp_path / "killed.yaml")
    run = Path(killed.output)
    kill_when_logged(_KILLED_RUN, tmp_path / "killed.yaml", run)
    assert latest_checkpoint(run).step == 2 and not (run / "model").exists()
    resumed = train_retriever(killed)
    assert resumed["resumed_from"] == 2
    reference = train_retriever(r_ft_config(tmp_path, data.output, name="reference", **common))

    def lines(path):
        return [json.loads(x) for x in (Path(path) / "metrics.jsonl").read_text().splitlines()]

    a = [x for x in lines(run) if x["kind"] == "train"]
    b = [x for x in lines(reference["output"]) if x["kind"] == "train"]
    assert [x["step"] for x in a] == list(range(1, 8))
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6, abs=1e-8), x["step"]
    assert [x["step"] for x in lines(run) if x["kind"] == "eval"] == [0, 3, 6, 7]
    assert resumed["best"] == reference["best"]
    with pytest.raises(ValueError, match="--overwrite"):
        train_retriever(dataclasses.replace(killed, lr=5e-3))


def test_two_caches_train_together_and_must_share_lm_and_index(tmp_path, tiny_index, tiny_lm_dir, qa_source):
    from radit.train.lsr_cache import merge_caches, read_cache
    from radit.train.r_ft import train_retriever

    one = lsr_config(tmp_path, tiny_index, tiny_lm_dir, qa_source)
    two = dataclasses.replace(one, output=str(tmp_path / "lsr2"), seed=1, pairs=6, corpus_fraction=0.0, k=3)
    build_lsr_data_quiet(one)
    build_lsr_data_quiet(two)
    merged = merge_caches([read_cache(one.output), read_cache(two.output)], [one.output, two.output])
    assert len(merged.ids) == 18 and merged.rows.shape == (18, 4)
    assert (merged.rows[12:, 3] == -1).all() and np.isneginf(merged.logprob[12:, 3]).all()  # k=3 padded to 4
    summary = train_retriever(r_ft_config(tmp_path, [one.output, two.output], dev_pairs=0))
    assert summary["pairs"] == 18 and summary["trained_on"] == 18
    task_only = train_retriever(r_ft_config(tmp_path, [one.output, two.output], name="task-only", dev_pairs=0, use="task"))
    assert task_only["trained_on"] == task_only["task_pairs"] == 12  # 6 + 6: --use keeps one kind
    foreign = read_cache(two.output)
    foreign.manifest = {**foreign.manifest, "lm": {"spec": "other", "fingerprint": "0"}}
    with pytest.raises(ValueError, match="another lm"):
        merge_caches([read_cache(one.output), foreign], [one.output, two.output])
