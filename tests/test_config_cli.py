"""Typed config: YAML + flags, docs for every field; the CLI table and every command's --help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from radit import cli
from radit.config import CorpusConfig, IndexConfig, build_config, field_docs, from_dict

CONFIG_CLASSES = sorted({c.config for c in cli.COMMANDS.values()}, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", CONFIG_CLASSES, ids=lambda c: c.__name__)
def test_every_field_is_documented(cls):
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing


def test_yaml_then_flags_override(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("passages: p.jsonl\nbatch_size: 8\nencoder:\n  preset: e5-base-v2\n  pooling: cls\n")
    args = cli.build_parser().parse_args(["index", "--config", str(yaml_file), "--batch-size", "16", "--encoder.normalize"])
    cfg = build_config(IndexConfig, args, args._config)
    assert (cfg.passages, cfg.batch_size) == ("p.jsonl", 16)
    assert (cfg.encoder.preset, cfg.encoder.pooling, cfg.encoder.normalize) == ("e5-base-v2", "cls", True)
    assert cfg.encoder.query_model is None and cfg.shard_size == IndexConfig().shard_size


def test_unknown_yaml_key_and_bad_values_are_errors():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_wrods'\]"):
        from_dict(CorpusConfig, {"max_wrods": 3})
    with pytest.raises(ValueError, match="--max-words"):
        CorpusConfig(max_words=0)
    with pytest.raises(ValueError, match="--index-type"):
        IndexConfig(backend="bm25", index_type="hnsw")


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    assert cli.main(["search", "--index", str(tmp_path / "missing"), "hello"]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("command", [None, *cli.COMMANDS])
def test_help_of_every_command(command):
    argv = [sys.executable, "-m", "radit.cli"] + ([command] if command else []) + ["--help"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    assert "usage: radit" in out
    if command:
        for f in dataclasses.fields(cli.COMMANDS[command].config):
            if not dataclasses.is_dataclass(f.type):
                assert f.name.replace("_", "-") in out or f.name.upper() in out


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("configs/*.yaml")), ids=lambda p: p.name)
def test_shipped_presets_load(path):
    from radit.config import load_yaml
    from radit.retriever.encoder import resolve_encoder_spec

    cfg = from_dict(IndexConfig, load_yaml(path), where=str(path))
    assert resolve_encoder_spec(cfg.encoder).doc_model
