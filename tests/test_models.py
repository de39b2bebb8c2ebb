"""Model resolution: local folders, packaged offline models (GGUF converted once), clear failures."""

from __future__ import annotations

import pytest
import torch

from radit.models import ModelNotFoundError, resolve_model, weights_fingerprint


def test_unknown_spec_lists_every_source_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model("nobody/no-such-model")
    msg = str(err.value)
    assert "local folder" in msg and "packaged models" in msg and "Hugging Face hub nobody/no-such-model" in msg
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_local_folder_and_packaged_encoder(tiny_encoder_dir):
    assert resolve_model(str(tiny_encoder_dir)) == tiny_encoder_dir
    path = resolve_model("all-MiniLM-L6-v2")  # names are case-insensitive
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_weights_fingerprint_tracks_values(tiny_encoder_dir):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_encoder_dir)
    before = weights_fingerprint(model)
    assert weights_fingerprint(AutoModel.from_pretrained(tiny_encoder_dir)) == before
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    assert weights_fingerprint(model) != before


@pytest.mark.integration
def test_packaged_gguf_lm_is_converted_once_and_matches_gguf(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from radit.models import PACKAGED_MODELS, _package_dir

    monkeypatch.setenv("RADIT_HOME", str(tmp_path))
    path = resolve_model("smollm2-135m-instruct")
    assert path == tmp_path / "models" / "smollm2-135m-instruct"
    assert not list(tmp_path.glob("models/.*tmp-*"))  # the atomic write left nothing behind
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("smollm2-135m-instruct") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not converted again

    pkg = PACKAGED_MODELS["smollm2-135m-instruct"]
    gguf_dir = _package_dir(pkg.module)
    reference = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=pkg.subpath)
    converted = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("Background: Paris is the capital of France.\n\nQuestion: What is the capital of France?\nAnswer:", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, reference(ids).logits)
    assert tok.decode(converted(ids).logits[0, -1].argmax()).strip() == "Paris"
