"""YAML and argparse for the typed config groups of `radit.config`: one flag per field, YAML presets
that mirror the dataclasses, and type checks with messages that name the key.

    cfg = build_config(EvalConfig, parser.parse_args(argv), "configs/eval.yaml")
    save_yaml(cfg, run_dir / "config.yaml")

Each field is documented by the string literal under it; `field_docs` reads those strings from the
source so that `--help` and the YAML presets share one description. A nested dataclass field is a
YAML mapping and `--group.field` flags (`--encoder.pooling cls`); one marked `flat()` (the inference
settings) keeps the YAML mapping but gets plain flags (`--k 3`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml

_FLAT = "radit_flat_flags"


def flat(factory: Any) -> Any:
    """A nested dataclass field whose fields get plain `--name` flags instead of `--group.name`."""
    return dataclasses.field(default_factory=factory, metadata={_FLAT: True})


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal written under each dataclass field, by field name."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for stmt, nxt in zip(body, body[1:]):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        item = typing.get_args(tp)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, _type_name(item))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def check_value(tp: Any, value: Any, where: str) -> Any:
    """`value` if it is of type `tp` (ints are accepted as floats), else a ValueError naming `where`.

    YAML gives `k: ten` as a string and `k: 3.5` as a float: both are errors for an int field, as is
    a bool (`true` is an int to Python), and a Literal field takes only its listed values.
    """
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: must be set ({_type_name(tp)}), got null")
    origin = typing.get_origin(tp)
    bad = ValueError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp) or isinstance(value, bool) != isinstance(typing.get_args(tp)[0], bool):
            raise ValueError(f"{where}: {value!r} is not allowed; valid values: {', '.join(map(str, typing.get_args(tp)))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(tp)
        return [check_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "config") -> Any:
    """Build dataclass `cls` from a (YAML) dict, type-checking every value; unknown keys are an error
    naming the valid ones."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        homes = {name: f.name for f in fields.values() if f.metadata.get(_FLAT)
                 for name in (g.name for g in dataclasses.fields(_strip_optional(hints[f.name])[0]))}
        moved = [f"{key} belongs under {homes[key]}:" for key in unknown if key in homes]
        hint = f" ({'; '.join(moved)})" if moved else ""
        raise ValueError(f"{where}: unknown key(s) {unknown}{hint}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        tp, _ = _strip_optional(hints[key])
        if _is_dataclass_type(tp) and isinstance(value, dict):
            value = from_dict(tp, value, f"{where}: {key}")
        elif _is_dataclass_type(tp):
            raise ValueError(f"{where}: {key}: expected a mapping of its options, got {value!r}")
        else:
            value = check_value(hints[key], value, f"{where}: {key}")
        kwargs[key] = value
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({' '.join(str(e).split())}); fix the file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; save the config as UTF-8") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a mapping of option: value")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    from radit.artifacts import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def add_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "", positional: str | None = None,
                  flag_prefix: str | None = None) -> None:
    """One flag per field of `cls` (nested dataclasses become `--group.field`, `flat()` ones plain
    `--field`), help from its doc.

    Defaults are `argparse.SUPPRESS` so that only flags actually given override the YAML config.
    """
    flag_prefix = prefix if flag_prefix is None else flag_prefix
    docs = field_docs(cls)
    hints = _hints(cls)
    title = prefix.rstrip(".") or cls.__name__
    summary = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
    group = parser.add_argument_group(title, summary)
    for f in dataclasses.fields(cls):
        tp, _ = _strip_optional(hints[f.name])
        if _is_dataclass_type(tp):
            nested_flags = flag_prefix if f.metadata.get(_FLAT) else f"{flag_prefix}{f.name}."
            add_arguments(parser, tp, prefix=f"{prefix}{f.name}.", flag_prefix=nested_flags)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = docs.get(f.name, "")
        if default is not None and default != [] and default != "":
            help_text += f" (default: {default})"
        dest = f"{prefix}{f.name}"
        kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": help_text}
        origin = typing.get_origin(tp)
        if positional == f.name and not prefix:
            parser.add_argument(f.name, nargs="*", **{k: v for k, v in kwargs.items() if k != "dest"}, metavar=f.name.upper())
            continue
        flag = "--" + (flag_prefix + f.name).replace("_", "-")
        if tp is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif origin is Literal:
            group.add_argument(flag, choices=list(typing.get_args(tp)), **kwargs)
        elif origin is list:
            (item,) = typing.get_args(tp)
            if typing.get_origin(item) is Literal:  # e.g. --eval.configurations lm-ft ra-dit
                group.add_argument(flag, nargs="+", choices=list(typing.get_args(item)), **kwargs)
            else:
                group.add_argument(flag, nargs="+", type=item, metavar=item.__name__.upper(), **kwargs)
        else:
            group.add_argument(flag, type=tp, metavar=tp.__name__.upper(), **kwargs)


def build_config(cls: type, args: argparse.Namespace, yaml_path: str | None = None) -> Any:
    """YAML file (if any) first, then every flag the user typed on top; then validate."""
    data: dict[str, Any] = load_yaml(yaml_path) if yaml_path else {}
    for dest, value in vars(args).items():
        parts = dest.split(".")
        if parts[0] not in {f.name for f in dataclasses.fields(cls)}:
            continue
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"{yaml_path}: {part}: expected a mapping of its options, got {child!r}")
            node = child
        node[parts[-1]] = value
    return from_dict(cls, data, where=str(yaml_path or "flags"))
