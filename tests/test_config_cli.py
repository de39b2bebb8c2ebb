"""Typed config: YAML + flags, docs for every field; the CLI table and every command's --help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from radit import cli
from radit.config import CorpusConfig, IndexConfig
from radit.config_io import build_config, field_docs, from_dict

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


def test_list_of_literal_flag_takes_its_values_and_refuses_others(capsys):
    from radit.config import PipelineConfig

    args = cli.build_parser().parse_args(["pipeline", "--eval.configurations", "lm-ft", "ra-dit"])
    assert build_config(PipelineConfig, args).eval.configurations == ["lm-ft", "ra-dit"]
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["pipeline", "--eval.configurations", "lm-fine-tuned"])
    assert "invalid choice: 'lm-fine-tuned'" in capsys.readouterr().err


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


# Each shipped preset is named for the command that reads it: configs/<command>-*.yaml; the pipeline
# recipes (`radit pipeline --config`) are named for what they run.
PRESET_COMMANDS = {"index": "index", "lm-data": "build-lm-data", "lm-ft": "train-lm", "lsr-data": "build-lsr-data",
                   "r-ft": "train-retriever"}
RECIPES = {"quickstart", "quickstart-fast", "squad-cpu", "gpu-1x", "paper-8b"}
CONFIGS = sorted(Path(__file__).parents[1].glob("configs/*.yaml"))


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem not in RECIPES], ids=lambda p: p.name)
def test_shipped_presets_load(path):
    from radit.config_io import load_yaml

    prefix = next((p for p in sorted(PRESET_COMMANDS, key=len, reverse=True) if path.name.startswith(p + "-")), None)
    assert prefix, f"{path.name}: name it <command>-*.yaml for one of {sorted(PRESET_COMMANDS)}, or add it to RECIPES"
    cfg = from_dict(cli.COMMANDS[PRESET_COMMANDS[prefix]].config, load_yaml(path), where=str(path))
    if prefix == "index":
        from radit.retriever.encoder import resolve_encoder_spec

        assert resolve_encoder_spec(cfg.encoder).doc_model


def test_every_recipe_is_shipped():
    assert RECIPES <= {p.stem for p in CONFIGS}


def test_recipes_are_package_data():
    """`radit quickstart` finds its recipe inside the package (radit/configs links to configs/ in a
    checkout), and the wheel's package-data takes that folder, so it works from a pip install too."""
    import tomllib

    import radit
    from radit.pipeline import recipe_path

    for name in ("quickstart", "quickstart-fast"):
        path = recipe_path(name)
        assert path.parent == Path(radit.__file__).parent / "configs"
        assert path.read_bytes() == (Path(__file__).parents[1] / "configs" / f"{name}.yaml").read_bytes()
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "configs/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["radit"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_load_and_plan_every_stage(name, tmp_path):
    """Each recipe is a valid PipelineConfig whose every stage config (and every report row's `radit
    eval` config) validates; its encoder preset and instruction sources exist."""
    import dataclasses

    from radit.config import PipelineConfig
    from radit.config_io import load_yaml
    from radit.data.instructions import SOURCES
    from radit.pipeline import plan
    from radit.retriever.encoder import resolve_encoder_spec

    path = Path(__file__).parents[1] / "configs" / f"{name}.yaml"
    cfg = from_dict(PipelineConfig, load_yaml(path), where=str(path))
    assert resolve_encoder_spec(cfg.index.encoder).doc_model
    for source in [*cfg.lm_data.sources, *cfg.lsr_data.sources]:
        assert source in SOURCES or source.startswith(("jsonl:", "hf:")), source
    cfg = dataclasses.replace(cfg, output=str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    stages = plan(cfg, tmp_path / "run")
    rows = [s for s in stages if s.name.startswith("eval/")]
    assert len(rows) == len(cfg.eval.tasks) * len(cfg.eval.configurations)
    assert {"corpus", "index", "lm-data", "train-lm", "lsr-data", "train-retriever"} <= {s.name for s in stages}


def test_quickstart_runs_its_recipe(monkeypatch, tmp_path):
    """`radit quickstart [--fast]` is `radit pipeline` on configs/quickstart(-fast).yaml, with its flags on top."""
    import radit.cli

    seen = []
    monkeypatch.setattr(radit.cli, "cmd_pipeline", lambda cfg: seen.append(cfg) or 0)
    assert cli.main(["quickstart", "--fast", "--output", str(tmp_path / "q"), "--dtype", "float32"]) == 0
    assert seen[0].output == str(tmp_path / "q") and seen[0].dtype == "float32" and seen[0].limit_documents == 2500
    assert cli.main(["quickstart"]) == 0
    assert seen[1].output == "runs/quickstart" and seen[1].limit_documents is None


# --------------------------------------------------------------------------------------------------
# YAML values are type-checked; the inference settings are one group with plain flags
# --------------------------------------------------------------------------------------------------


def _yaml_config(tmp_path, command: str, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    args = cli.build_parser().parse_args([command, "--config", str(path)])
    return build_config(cli.COMMANDS[command].config, args, args._config)


@pytest.mark.parametrize(("command", "text", "message"), [
    ("eval", "inference:\n  k: ten\n", r"c\.yaml: inference: k: expected an integer, got 'ten'"),
    ("eval", "inference:\n  k: 2.5\n", r"inference: k: expected an integer"),
    ("eval", "inference:\n  k: true\n", r"inference: k: expected an integer"),
    ("eval", "inference:\n  scoring: bogus\n", r"scoring: 'bogus' is not allowed; valid values: nll, nll_token, nll_char, nll_comp"),
    ("ask", "inference:\n  mode: fusion\n", r"mode: 'fusion' is not allowed; valid values: replug, top1, concat, closed-book"),
    ("eval", "k: 3\n", r"unknown key\(s\) \['k'\] \(k belongs under inference:\)"),
    ("eval", "inference: 3\n", r"inference: expected a mapping"),
    ("index", "batch_size: '64'\n", r"batch_size: expected an integer, got '64'"),
    ("index", "encoder:\n  normalize: 'yes'\n", r"encoder: normalize: expected true or false"),
    ("eval-retrieval", "ks: [1, x]\n", r"ks\[1\]: expected an integer"),
    ("corpus", "inputs: docs.jsonl\n", r"inputs: expected a list of strings"),
    ("index", "dtype: fp8\n", r"dtype: 'fp8' is not allowed; valid values: auto, float32"),
    ("index", "a: [\n", r"c\.yaml: not valid YAML"),
])
def test_bad_yaml_values_name_the_key_and_what_is_allowed(tmp_path, command, text, message):
    with pytest.raises(ValueError, match=message):
        _yaml_config(tmp_path, command, text)


def test_bad_yaml_value_through_the_cli_is_a_message_not_a_traceback(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("inference:\n  k: ten\n")
    assert cli.main(["eval", "--config", str(path), "--mode", "closed-book"]) == 2
    err = capsys.readouterr().err
    assert "k: expected an integer, got 'ten'" in err and "Traceback" not in err


def test_inference_settings_are_one_group_with_plain_flags(tmp_path):
    cfg = _yaml_config(tmp_path, "eval", "index: i\ninference:\n  k: 3\n  scoring: nll_char\n")
    assert (cfg.inference.k, cfg.inference.scoring, cfg.inference.mode) == (3, "nll_char", "replug")
    path = tmp_path / "c.yaml"
    args = cli.build_parser().parse_args(["eval", "--config", str(path), "--k", "5", "--retrieval-temperature", "0.1"])
    cfg = build_config(cli.COMMANDS["eval"].config, args, args._config)
    assert (cfg.inference.k, cfg.inference.scoring, cfg.inference.retrieval_temperature) == (5, "nll_char", 0.1)
    # The same group type in ask and eval; its defaults are the paper's (k=10, Eq. 2 ensemble).
    from radit.config import AskConfig, EvalConfig, InferenceConfig

    assert AskConfig().inference == InferenceConfig() == EvalConfig(index="i").inference
    assert (InferenceConfig().k, InferenceConfig().mode, InferenceConfig().dtype) == (10, "replug", "auto")
    with pytest.raises(ValueError, match="--retrieval-temperature must be a finite number > 0"):
        InferenceConfig(retrieval_temperature=0.0)
    with pytest.raises(ValueError, match="--mode 'fusion' is unknown"):
        InferenceConfig(mode="fusion")


def test_quiet_silences_progress_bars_and_library_lines(tmp_path, passages_file, tiny_encoder_dir):
    def run(*flags: str) -> str:
        out = tmp_path / f"index{len(flags)}"
        argv = [sys.executable, "-m", "radit.cli", "index", "--passages", str(passages_file), "--output", str(out),
                "--encoder.query-model", str(tiny_encoder_dir), "--device", "cpu", *flags]
        return subprocess.run(argv, capture_output=True, text=True, check=True).stderr

    assert run("-q") == ""
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "Who founded the Ming dynasty?", "answers": ["Zhu Yuanzhang"]}\n')
    argv = [sys.executable, "-m", "radit.cli", "eval-retrieval", "--index", str(tmp_path / "index1"), "--questions",
            str(questions), "--output", str(tmp_path / "er"), "--device", "cpu", "-q"]
    assert subprocess.run(argv, capture_output=True, text=True, check=True).stderr == ""  # no search bar either
    normal = run()
    assert "embed passages" in normal  # radit's own progress bar and log lines stay in a normal run
    assert "faiss.loader" not in normal and "Loading faiss" not in normal and "Loading weights" not in normal
