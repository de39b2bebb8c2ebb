"""The package reads top-down: each layer imports only its own layer or those below, and no import cycle.

    cli  >  eval, train  >  augment  >  retriever, lm  >  everything else (config, corpus, prompts, ...)

`distributed` (the one owner of torch.distributed) and `runtime` sit in the bottom layer, so that every
layer above can use them; `distributed` imports `runtime`, never the reverse.

Imports inside functions count too: a lazy import is still an arrow a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import radit

ROOT = Path(radit.__file__).parent
LAYERS = {"cli": 5, "pipeline": 5, "eval": 4, "train": 4, "augment": 3, "retriever": 2, "lm": 2}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """radit module -> the radit modules it imports (names relative to the package, "" = radit itself)."""
    modules = {_module(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name[len("radit."):] for a in node.names if a.name.startswith("radit.")]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.startswith("radit."):
                    target = node.module[len("radit."):]
                else:
                    continue
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _layer(module: str) -> int:
    return LAYERS.get(module.split(".")[0], 1)


def test_no_import_runs_up_a_layer():
    upward = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
              if d.split(".")[0] != m.split(".")[0] and _layer(d) > _layer(m)]
    assert not upward


def test_no_import_cycle():
    graph = import_graph()
    packages = {m for m in graph if (ROOT / m.replace(".", "/") / "__init__.py").is_file()}

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(d for d in graph.get(node, ()) if d not in packages)
        return False

    cycles = sorted(f"{m} <-> {d}" for m, deps in graph.items() for d in deps
                    if m not in packages and d not in packages and reaches(d, m))
    assert not cycles


def test_the_graph_sees_real_imports():
    # Guards the two tests above against passing on an empty graph.
    graph = import_graph()
    assert "eval.metrics" in graph["eval.harness"] and "answers" in graph["eval.metrics"]
    assert "config" in graph["cli"]
