"""The language model, one module per job; import from the module that owns a name.

- `radit.lm.model`: load a causal LM and its tokenizer (`load_lm`), and what callers ask of it.
- `radit.lm.inputs`: text -> model inputs; (prompt, continuation) pairs cut at one boundary for
  scoring and training (`encode_pairs`), prompts alone for decoding.
- `radit.lm.prefill`: run a batch of prompts once and keep their KV cache.
- `radit.lm.scoring`: log p(y | c ∘ x) per token, batched (`continuation_logprobs`,
  `candidate_logprobs`, the differentiable `pair_logprobs`), and the paper's answer scores.
- `radit.lm.shared_prefix`: log p(y | prefix ∘ suffix) for many requests that share a few prefixes,
  each prefix's KV cache computed once (LSR scoring: a chunk shared by the queries that retrieved it).
- `radit.lm.generate`: greedy decoding, per prompt or REPLUG's token-level ensemble.
"""
