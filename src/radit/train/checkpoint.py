"""Resumable training checkpoints: written atomically, the last few kept, a `latest` pointer written last.

    run_dir/checkpoints/
      step-00000025/        trainable.safetensors  optimizer.pt  rng.pt [rng-1.pt ...]  state.json  .radit-output
      step-00000050/
      latest                "step-00000050"

A checkpoint holds what a training loop needs to continue exactly where it stopped: the trainable
parameters (all of them for full fine-tuning, the adapters for LoRA, the query tower for retriever
fine-tuning; frozen weights are reloaded from where they came from), the optimizer's state, the RNG
states (python, numpy, torch, CUDA) of every process (rng.pt: rank 0's, rng-R.pt: rank R's, so that
each process resumes its own dropout masks) and the loop's own state (step, data position, best
score, ...) as JSON. Under several processes rank 0 alone writes (the weights and the optimizer state
are the same everywhere: data-parallel replicas) and every process reads.

A model sharded by FSDP (version 2, `fully_shard`: each process holds a slice of every parameter and
of its optimizer state) writes the same files: `gather_trainable_state` and `gather_optimizer_state`
assemble the whole of both on rank 0's CPU, and `load_training_state` broadcasts them back from rank
0 (through `radit.distributed`, which owns the torch.distributed calls). A checkpoint therefore
resumes on any number of processes, sharded or not, whichever wrote it; the price is a full copy of
the trainable weights and their optimizer state in rank 0's CPU memory.

A checkpoint is written into a temporary directory that is renamed into place (`radit.artifacts.
atomic_path`), then `latest` is replaced: a run killed at any moment leaves the previous checkpoint
intact, and at worst a `.step-*.tmp-*` leftover that `save_checkpoint` removes next time.

Nothing here knows about a particular loop; `radit.train.lm_ft` and `radit.train.r_ft` own what goes
into `state`. The rest is the run directory both loops share: whether a rerun may continue in it
(`inspect_run_dir`), starting it (`start_run_dir`), the metric lines to drop on resume
(`truncate_metrics`) and to plot (`read_metrics`), and the best evaluation's weights (`save_best`,
`load_best`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import random
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from radit.artifacts import (
    OUTPUT_MARKER,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    check_output_target,
    mark_output_dir,
)
from radit.config_io import load_yaml, save_yaml
from radit.distributed import (
    broadcast_object,
    full_model_state,
    full_optimizer_state,
    is_main,
    is_sharded,
    load_full_state,
)

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
WEIGHTS_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"step-(\d+)")


# --------------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """The global RNG states of python, numpy, torch and CUDA, as tensors and plain values
    (loadable with `torch.load(weights_only=True)`)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_file(rank: int) -> str:
    """The file of process `rank`'s RNG states in a checkpoint (rank 0's keeps the one-process name)."""
    return RNG_FILE if rank == 0 else f"rng-{rank}.pt"


def _as_tuple(x: Any) -> Any:
    # random.setstate wants tuples all the way down (version, internal state, gauss).
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------- trainable weights


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, by name, detached on CPU (tied weights once)."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    """Copy `weights` (from `trainable_state`) into the model's parameters of the same names.

    Raises:
        ValueError: the names differ from the model's trainable parameters (another model or method).
    """
    problem = _mismatch(model, weights)
    if problem:
        raise ValueError(problem)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))


def _mismatch(model: torch.nn.Module, weights: Mapping[str, torch.Tensor]) -> str | None:
    """Why `weights` cannot be loaded into `model`'s trainable parameters, or None."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        return (f"checkpoint weights do not match the model's trainable parameters (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}); it was written for another model or method")
    for name, p in params.items():  # a sharded parameter's shape is the whole one
        if p.shape != weights[name].shape:
            return f"checkpoint weight {name} has shape {tuple(weights[name].shape)}, the model's {tuple(p.shape)}"
    return None


def save_weights(path: str | Path, weights: Mapping[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file(dict(weights), str(path))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# --------------------------------------------------------------------------- checkpoints


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint directory on disk; its files are read on demand."""

    path: Path
    step: int
    state: dict[str, Any]
    """The loop's own state (`state.json`)."""

    def weights(self) -> dict[str, torch.Tensor]:
        return read_weights(self.path / WEIGHTS_FILE)

    def optimizer_state(self, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return torch.load(self.path / OPTIMIZER_FILE, map_location=map_location, weights_only=True)

    def rng(self, rank: int = 0) -> dict[str, Any] | None:
        """Process `rank`'s RNG states; None when the checkpoint was written by fewer processes."""
        path = self.path / rng_file(rank)
        return torch.load(path, weights_only=True) if path.is_file() else None

    def restore_rng(self, rank: int, seed: int) -> None:
        """Put back process `rank`'s RNG states. A process the checkpoint lacks (resumed on more
        processes than wrote it) is seeded from (seed, rank, step) instead: its own masks from here
        on, but not the ones an uninterrupted run would have drawn."""
        state = self.rng(rank)
        if state is not None:
            set_rng_state(state)
            return
        fresh = int(np.random.SeedSequence([seed, rank, self.step]).generate_state(1)[0])
        random.seed(fresh)
        np.random.seed(fresh)
        torch.manual_seed(fresh)


def checkpoint_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    weights: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any],
    state: Mapping[str, Any],
    keep: int = 2,
    rng: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write checkpoint `step` atomically under `run_dir/checkpoints`, point `latest` at it, keep the last `keep`.

    Args:
        run_dir: the run directory.
        step: optimizer steps done.
        weights: trainable parameters (`trainable_state(model)`).
        optimizer_state: `optimizer.state_dict()`.
        state: the loop's JSON-serialisable state (data position, best score, ...); `step` is added.
        keep: checkpoints kept (older ones are deleted after `latest` moves on).
        rng: every process's RNG states in rank order (`radit.distributed.gather_object(rng_state())`);
            default: this process's alone.

    Returns:
        The checkpoint directory.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_dir_name(step)
    with atomic_path(final, kind="dir") as tmp:
        tmp.mkdir()
        save_weights(tmp / WEIGHTS_FILE, weights)
        torch.save(dict(optimizer_state), tmp / OPTIMIZER_FILE)
        for rank, states in enumerate(rng or [rng_state()]):
            torch.save(dict(states), tmp / rng_file(rank))
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2) + "\n", encoding="utf-8")
    atomic_write_text(root / LATEST, final.name + "\n")  # last: it names only a complete checkpoint
    _prune(root, keep, final.name)
    return final


def _prune(root: Path, keep: int, latest: str) -> None:
    steps = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir())
    for _, p in steps[:-keep]:
        if p.name != latest:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.iterdir():  # leftovers of a run killed while writing (atomic_path's temporary dirs)
        if p.name.startswith(".") and ".tmp-" in p.name:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def latest_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The checkpoint `latest` names (or, without a pointer, the highest step), None when there is none."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    name = (root / LATEST).read_text(encoding="utf-8").strip() if (root / LATEST).is_file() else ""
    path = root / name if name else None
    if path is None or not (path / STATE_FILE).is_file():
        # Every step-* directory is complete (renamed into place whole), so the highest one will do.
        steps = sorted((int(m.group(1)), p) for p in root.iterdir()
                       if (m := _STEP_DIR.fullmatch(p.name)) and (p / STATE_FILE).is_file())
        if not steps:
            return None
        path = steps[-1][1]
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    return Checkpoint(path, int(state["step"]), state)


# --------------------------------------------------------------------------- sharded models (FSDP)


def gather_trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """`trainable_state(model)` on rank 0, None on the others.

    For a sharded model every process must call it: the slices are gathered onto rank 0's CPU
    (`radit.distributed.full_model_state`).
    """
    if not is_sharded(model):
        return trainable_state(model) if is_main() else None
    return full_model_state(model, trainable_only=True)


def gather_optimizer_state(model: torch.nn.Module, optimizer) -> dict[str, Any] | None:
    """`optimizer.state_dict()` on rank 0, None on the others, in torch's format (parameters numbered
    in the optimizer's order) whether or not `model` is sharded.

    For a sharded model every process must call it: the slices are gathered onto rank 0's CPU
    (`radit.distributed.full_optimizer_state`).
    """
    if not is_sharded(model):
        return optimizer.state_dict() if is_main() else None
    return full_optimizer_state(model, optimizer)


def load_training_state(model: torch.nn.Module, optimizer, checkpoint: Checkpoint) -> None:
    """Load a checkpoint's trainable weights and optimizer state into `model` and `optimizer`,
    whatever number of processes wrote it.

    For a sharded model every process must call it: rank 0 reads the files and the slices are
    broadcast from it (`radit.distributed.load_full_state`).

    Raises:
        ValueError: the checkpoint's weights are not the model's trainable parameters (on every process).
    """
    if not is_sharded(model):
        load_trainable(model, checkpoint.weights())
        optimizer.load_state_dict(checkpoint.optimizer_state())
        return
    weights = checkpoint.weights() if is_main() else {}
    problem = broadcast_object(_mismatch(model, weights) if is_main() else None)  # all raise, or none waits forever
    if problem:
        raise ValueError(problem)
    # Frozen weights are not in the checkpoint: they keep the values the model was loaded with.
    load_full_state(model, optimizer, weights, checkpoint.optimizer_state() if is_main() else None)


# --------------------------------------------------------------------------- the run directory


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v})
    return out


def inspect_run_dir(
    out: str | Path,
    config: Mapping[str, Any],
    marker: str,
    resumable: Sequence[str],
    overwrite: bool,
    finished: Sequence[str],
    config_file: str = "config.yaml",
) -> str:
    """What a training run should do with its directory, touching nothing: `fresh`, `resume`, `done` or `overwrite`.

    Args:
        out: the run directory (--output).
        config: this run's resolved config as a dict (`radit.config_io.to_dict`).
        marker: the name the loop marks its directory with (`radit.artifacts.mark_output_dir`).
        resumable: config keys (dotted for nested groups) that may differ from the saved run's.
        overwrite: --overwrite was given.
        finished: files or folders whose presence means the run has finished.
        config_file: where the run saved its config (YAML).

    Raises:
        ValueError: `out` is a folder radit did not write, another stage's output, or a run with other
            settings (without --overwrite); the message says to pass --overwrite or another --output.
    """
    out = Path(out)
    if not os.path.lexists(out) or (out.is_dir() and not out.is_symlink() and not any(out.iterdir())):
        return "fresh"
    check_output_target(out, kind="dir")  # an existing folder radit did not write is never touched
    written_by = json.loads((out / OUTPUT_MARKER).read_text(encoding="utf-8") or "{}").get("output")
    if written_by != marker:
        raise ValueError(f"--output {out} holds radit's {written_by!r} output, not a {marker} run; choose another --output")
    if overwrite:
        return "overwrite"
    if not (out / config_file).is_file():
        return "fresh"
    saved, new = _flat(load_yaml(out / config_file)), _flat(config)
    changed = sorted(k for k in set(saved) | set(new) if k not in resumable and saved.get(k) != new.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
        raise ValueError(f"--output {out} holds a run with other settings ({diff}); pass --overwrite to start over "
                         "or choose another --output")
    return "done" if all((out / name).exists() for name in finished) else "resume"


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep the JSON lines of `path` whose `step` is <= `step` (a killed run logged steps past its
    last checkpoint, which the resumed run logs again); a line cut by the kill is dropped."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError, AttributeError):
            if json.loads(line).get("step", 0) <= step:
                kept.append(line + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")


def start_run_dir(out: str | Path, cfg: Any, marker: str, run_files: Sequence[str], overwrite: bool) -> None:
    """Create (or, with `overwrite`, first clear the `run_files` of) the run directory, mark it as
    `marker`'s output and save `cfg` as its config.yaml."""
    out = Path(out)
    if overwrite:
        for name in run_files:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    mark_output_dir(out, marker)
    save_yaml(cfg, out / "config.yaml")


def read_metrics(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The `train` and the `eval` lines of a run's metrics.jsonl."""
    lines = [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]
    return [x for x in lines if x.get("kind") == "train"], [x for x in lines if x.get("kind") == "eval"]


BEST_DIR = "best"


def save_best(run_dir: str | Path, weights: Mapping[str, torch.Tensor], best: Mapping[str, Any]) -> None:
    """Keep the best evaluation's trainable weights in run_dir/best (atomically), with best.json saying which."""
    with atomic_path(Path(run_dir) / BEST_DIR, kind="dir") as tmp:
        tmp.mkdir()
        save_weights(tmp / WEIGHTS_FILE, weights)
        atomic_write_json(tmp / "best.json", dict(best))


def load_best(run_dir: str | Path, step: int) -> dict[str, torch.Tensor]:
    """The weights `save_best` kept, checked to be step `step`'s.

    Raises:
        ValueError: best/ holds another step (a run killed between the two writes); --overwrite helps.
    """
    best = Path(run_dir) / BEST_DIR
    saved = json.loads((best / "best.json").read_text(encoding="utf-8"))
    if saved.get("step") != step:
        raise ValueError(f"{best} holds step {saved.get('step')}, the checkpoint says {step}; rerun with --overwrite")
    return read_weights(best / WEIGHTS_FILE)
