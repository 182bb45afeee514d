"""Frozen dataclass configs loaded from YAML, with strict validation and ``--set`` overrides.

Every config is a tree of frozen dataclasses. Each key is declared once, with its default
and its documentation, through :func:`opt`::

    @dataclass(frozen=True)
    class PPOConfig(Checked):
        lr: float = opt(3e-4, "Adam learning rate.", gt=0.0)
        clip: float = opt(0.2, "PPO clip range.", gt=0.0, max=1.0)

    @dataclass(frozen=True)
    class TrainConfig(Checked):
        seed: int = opt(0, "Random seed.")
        ppo: PPOConfig = opt(PPOConfig, "PPO hyperparameters.")

    cfg = load_yaml_config(TrainConfig, "configs/cartpole.yaml")
    cfg = apply_overrides(cfg, ["ppo.lr=1e-3"])
    save_config(cfg, run_dir / "config.yaml")

Loading is strict: an unknown key, a value of the wrong type, a value outside its bounds
or its choices, or a duplicate key raises :class:`ConfigError` naming the dotted key; the
YAML itself goes through :mod:`hyperrl.yamlio` (files over 1 MiB, alias bombs and deep
nesting are refused before anything is expanded). Keys left out take their defaults.
Supported field types: nested dataclasses, ``bool``, ``int``, ``float``, ``str``,
``X | None``, ``tuple[X, ...]``, fixed ``tuple[X, Y]`` and ``Literal[...]``.

Value rules: ``int`` is accepted for ``float`` fields; ``bool`` is never accepted for
``int``/``float`` fields; an integral float (``1.0e6``) is accepted for ``int`` fields;
scientific notation without a dot or exponent sign (``1e-3``, ``1e6``), which YAML 1.1
reads as a *string*, is accepted for ``float`` and (when integral) ``int`` fields. NaN is
rejected. An empty section (``ppo:`` with nothing under it) means all defaults.

Config dataclasses derive from :class:`Checked`, so a config constructed directly in Python
is checked like a loaded one. Cross-field checks belong in the dataclass's ``__post_init__``
(after ``super().__post_init__()``): a ``ValueError`` raised there is reported as a
:class:`ConfigError` naming the section.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from hyperrl.errors import HyperrlError
from hyperrl.fileio import atomic_write_text
from hyperrl.yamlio import YamlInputError, parse_yaml, read_yaml_file

__all__ = [
    "Checked",
    "ConfigError",
    "opt",
    "from_dict",
    "to_dict",
    "load_yaml_config",
    "apply_overrides",
    "dump_yaml",
    "save_config",
    "roundtrip",
    "config_docs",
    "config_keys",
    "check_config_class",
    "type_name",
]

C = TypeVar("C")
_NoneType = type(None)
# Scientific notation that YAML 1.1 (PyYAML) leaves as a string: no dot, or no exponent sign.
_SCI_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def scalar_from_text(text: str) -> Any:
    """A command-line ``KEY=VALUE`` value outside the config dataclasses (``hyperrl.baselines``'
    SB3 PPO hyperparameters, checked against SB3's own signature): YAML (``true``, ``null``, ``{a: 1}``), with
    ``3e-4`` (no dot, a string in YAML 1.1) read as a float; unparsable text stays a string."""
    try:
        value = parse_yaml(text)
    except YamlInputError:
        return text
    if isinstance(value, str) and _SCI_RE.match(value.strip()):
        return float(value)
    return value


class ConfigError(HyperrlError):
    """An unknown config key, a bad value, or an unreadable/malformed config file."""


class _TypeMismatch(ConfigError):
    """A value of the wrong type for one key (re-worded by the caller for unions)."""

    def __init__(self, key: str, tp: Any, value: Any) -> None:
        self.key = key
        super().__init__(f"config key '{key}': expected {type_name(tp)}, got {_show(value)}")


# --------------------------------------------------------------------------------------
# Declaring fields
# --------------------------------------------------------------------------------------
def opt(
    default: Any,
    doc: str,
    *,
    choices: Sequence[Any] | None = None,
    min: float | None = None,  # noqa: A002 - mirrors the metadata key
    max: float | None = None,  # noqa: A002
    gt: float | None = None,
) -> Any:
    """A documented config field: ``dataclasses.field`` with ``doc``/``choices``/``min``/``max``/``gt`` metadata.

    ``default`` may be a value, a list/tuple (stored as a tuple so the dataclass stays
    hashable) or a dataclass *type* for a nested section (built with its own defaults).
    ``min``/``max`` are inclusive, ``gt`` an exclusive lower bound (a rate or a fraction that
    must be positive); like ``choices`` they apply to each element of a tuple.
    """
    if not isinstance(doc, str) or not doc.strip():
        raise TypeError("opt(): every config key needs a non-empty doc string")
    meta: dict[str, Any] = {"doc": doc.strip()}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if min is not None:
        meta["min"] = min
    if max is not None:
        meta["max"] = max
    if gt is not None:
        meta["gt"] = gt
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=default, metadata=meta)
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    if isinstance(default, (dict, set)):
        raise TypeError("opt(): mappings/sets are not config values; use a nested dataclass")
    if isinstance(default, list):
        default = tuple(default)
    try:
        _check_meta(default, meta, "<default>")
    except ConfigError as e:
        raise ValueError(f"opt(): default {default!r} violates its own constraints: {e}") from None
    return dataclasses.field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------
# Type helpers
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as e:  # noqa: BLE001 - a programming error in the config class
        raise TypeError(f"cannot resolve the field types of config class {cls.__name__}: {e}") from e


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    """The init fields of a dataclass, in declaration order: exactly its config keys."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _is_union(tp: Any) -> bool:
    origin = typing.get_origin(tp)
    return origin is Union or origin is types.UnionType


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _section_arm(tp: Any) -> type | None:
    """The dataclass in ``tp`` (``Section`` or ``Section | None``), else None."""
    if _is_section(tp):
        return tp
    if _is_union(tp):
        arms = [a for a in typing.get_args(tp) if _is_section(a)]
        if len(arms) == 1:
            return arms[0]
    return None


def _accepts_str(tp: Any) -> bool:
    if tp is str or tp is Any:
        return True
    if _is_union(tp):
        return any(_accepts_str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return any(isinstance(a, str) for a in typing.get_args(tp))
    return False


def type_name(tp: Any) -> str:
    """A YAML-oriented name for a field type: ``float``, ``int | null``, ``list[int]``, ``'a' | 'b'``."""
    if tp is _NoneType or tp is None:
        return "null"
    if tp is Any:
        return "any"
    if _is_section(tp):
        return "section"
    if _is_union(tp):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple or tp is tuple:
        args = typing.get_args(tp)
        if not args:
            return "list"
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{type_name(args[0])}]"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    return getattr(tp, "__name__", str(tp))


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


# --------------------------------------------------------------------------------------
# Coercion and validation
# --------------------------------------------------------------------------------------
def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` and return it in canonical form (tuples, floats)."""
    if tp is Any:
        return value
    if _is_section(tp):
        if isinstance(value, tp):
            return value
        if value is None or isinstance(value, Mapping):
            return from_dict(tp, value, where=key)
        raise ConfigError(f"config key '{key}' is a section: expected a mapping of keys, got {_show(value)}")
    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None and _NoneType in args:
            return None
        for arm in (a for a in args if a is not _NoneType):
            try:
                return _coerce(value, arm, key)
            except _TypeMismatch as e:
                if e.key != key:  # an element or nested key failed: that message is precise
                    raise
        raise _TypeMismatch(key, tp, value)
    origin = typing.get_origin(tp)
    if origin is Literal:
        for a in typing.get_args(tp):
            if a == value and type(a) is type(value):
                return a
        raise _TypeMismatch(key, tp, value)
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _TypeMismatch(key, tp, value)
        args = typing.get_args(tp)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"config key '{key}': expected {len(args)} items {type_name(tp)}, "
                f"got {len(value)}: {_show(value)}"
            )
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _TypeMismatch(key, tp, value)
    if tp is int:
        if isinstance(value, bool):
            raise _TypeMismatch(key, tp, value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str) and _SCI_RE.match(value.strip()):
            try:
                d = Decimal(value.strip())
            except InvalidOperation:  # pragma: no cover - the regex guarantees a number
                raise _TypeMismatch(key, tp, value) from None
            if d == d.to_integral_value():
                return int(d)
        raise _TypeMismatch(key, tp, value)
    if tp is float:
        if isinstance(value, bool):
            raise _TypeMismatch(key, tp, value)
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str) and _SCI_RE.match(value.strip()):
            value = float(value.strip())
        if isinstance(value, float):
            # No key means "unbounded" by infinity (null does that where allowed), and an
            # infinite lr or coefficient only turns into NaN losses mid-run: refuse both here.
            if not math.isfinite(value):
                raise ConfigError(f"config key '{key}': expected a finite number, got {value!r}")
            return value
        raise _TypeMismatch(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _TypeMismatch(key, tp, value)
    raise TypeError(f"config key '{key}': unsupported field type {tp!r}")


def _check_meta(value: Any, meta: Mapping[str, Any], key: str) -> None:
    """Enforce ``choices``/``min``/``max`` metadata on a value (each element of a tuple)."""
    if value is None or not any(k in meta for k in ("choices", "min", "max", "gt")):
        return
    items = list(enumerate(value)) if isinstance(value, tuple) else [(None, value)]
    for i, v in items:
        k = key if i is None else f"{key}[{i}]"
        choices = meta.get("choices")
        if choices is not None and not any(
            c == v and isinstance(c, bool) == isinstance(v, bool) for c in choices
        ):
            raise ConfigError(
                f"config key '{k}': must be one of {', '.join(repr(c) for c in choices)}; got {v!r}"
            )
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        lo, hi, gt = meta.get("min"), meta.get("max"), meta.get("gt")
        if lo is not None and numeric and v < lo:
            raise ConfigError(f"config key '{k}': must be >= {lo}; got {v!r}")
        if gt is not None and numeric and v <= gt:
            raise ConfigError(f"config key '{k}': must be > {gt}; got {v!r}")
        if hi is not None and numeric and v > hi:
            raise ConfigError(f"config key '{k}': must be <= {hi}; got {v!r}")


class Checked:
    """Base of every config dataclass: construction checks each field's type and its
    ``opt`` constraints, so a config built in Python (``PPOConfig(lr=float("inf"))``) is
    held to the same rules as one loaded from YAML or ``--set``. Subclasses with cross-field
    checks extend ``__post_init__`` and call ``super().__post_init__()`` first."""

    def __post_init__(self) -> None:
        hints = _hints(type(self))
        for name, f in _fields(type(self)).items():
            value = getattr(self, name)
            if not _is_section(hints[name]) or not isinstance(value, hints[name]):
                _coerce(_plain(value), hints[name], name)
            _check_meta(value, f.metadata, name)


def _unknown_key(cls: type, key: Any, where: str) -> ConfigError:
    valid = list(_fields(cls))
    name = str(key)
    full = f"{where}.{name}" if where else name
    scope = f"valid keys in '{where}'" if where else "valid top-level keys"
    msg = f"unknown config key '{full}'; {scope}: {', '.join(valid) if valid else '(none)'}"
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        msg += f" (did you mean '{f'{where}.{close[0]}' if where else close[0]}'?)"
    return ConfigError(msg)


def _construct(cls: type[C], kwargs: dict[str, Any], where: str) -> C:
    try:
        return cls(**kwargs)
    except ValueError as e:  # cross-field checks in __post_init__
        raise ConfigError(f"config section '{where}': {e}" if where else f"config: {e}") from None


def from_dict(cls: type[C], data: Mapping[str, Any] | None, where: str = "") -> C:
    """Build the frozen dataclass ``cls`` from a (YAML-parsed) mapping, strictly.

    ``where`` is the dotted key of this section, used in error messages. Missing keys take
    their defaults; ``None`` means an empty section.
    """
    if not _is_section(cls):
        raise TypeError(f"from_dict(): {cls!r} is not a dataclass type")
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        what = f"config section '{where}'" if where else "config"
        raise ConfigError(f"{what} must be a mapping of keys, got {_show(data)}")
    fields = _fields(cls)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        if name not in fields:
            raise _unknown_key(cls, name, where)
        key = f"{where}.{name}" if where else name
        value = _coerce(value, hints[name], key)
        _check_meta(value, fields[name].metadata, key)
        kwargs[name] = value
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{where}.{name}" if where else name
            raise ConfigError(f"missing required config key '{key}'")
    return _construct(cls, kwargs, where)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-friendly data: nested dicts in field order, tuples as lists."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"to_dict(): expected a dataclass instance, got {type(cfg).__name__}")
    return {name: _plain(getattr(cfg, name)) for name in _fields(type(cfg))}


# --------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------
def _yaml_error(e: YamlInputError, source: str) -> ConfigError:
    if e.line is not None:
        return ConfigError(f"{source}:{e.line}:{e.column}: {e.what}: {e.detail}")
    return ConfigError(f"{source}: {e.what}: {e.detail}")


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return parse_yaml(text)
    except YamlInputError as e:
        raise _yaml_error(e, source) from None


def load_yaml_config(cls: type[C], path: str | os.PathLike[str]) -> C:
    """Load and validate a YAML config file into ``cls``; errors name the file, line and key."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    if p.is_dir():
        raise ConfigError(f"config path is a directory, not a YAML file: {p}")
    try:
        data = read_yaml_file(p)
    except YamlInputError as e:
        raise _yaml_error(e, str(p)) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror or e}") from None
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{p}: the top level must be a mapping of config keys, got {_show(data)}")
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def _flow(value: Any, in_list: bool = False) -> str:
    """A plain value (scalar or nested list) as one line of YAML flow text (``in_list``: an
    item of a flow sequence, where a string with ``,`` or ``[`` needs quotes)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v, in_list=True) for v in value) + "]"
    if in_list and isinstance(value, str) and not any(c in value for c in "\n\r\x85\u2028\u2029"):
        text = yaml.safe_dump([value], default_flow_style=True, width=1 << 30, allow_unicode=True).strip()
        return text[1:-1]
    style = '"' if isinstance(value, str) and any(c in value for c in "\n\r\x85\u2028\u2029") else None
    text = yaml.safe_dump(
        value, default_flow_style=True, default_style=style, width=1 << 30, allow_unicode=True
    )
    if text.endswith("\n...\n"):
        text = text[: -len("\n...\n")]
    return text.strip()


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in text.splitlines()]


def _dump_section(cfg: Any, indent: str, comments: bool, out: list[str]) -> None:
    for name, f in _fields(type(cfg)).items():
        value = getattr(cfg, name)
        if comments and f.metadata.get("doc"):
            out.extend(_comment(f.metadata["doc"], indent))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            if not _fields(type(value)):
                out.append(f"{indent}{name}: {{}}")
                continue
            out.append(f"{indent}{name}:")
            _dump_section(value, indent + "  ", comments, out)
        else:
            out.append(f"{indent}{name}: {_flow(_plain(value))}")


def dump_yaml(cfg: Any, *, comments: bool = True, header: str | None = None) -> str:
    """The config as YAML text with every key; with ``comments``, each key's doc above it."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"dump_yaml(): expected a dataclass instance, got {type(cfg).__name__}")
    out: list[str] = _comment(header, "") if header else []
    _dump_section(cfg, "", comments, out)
    return "\n".join(out) + "\n"


def roundtrip(cfg: C) -> C:
    """``cfg`` written as YAML text and loaded back (equal to ``cfg`` for any valid config)."""
    return from_dict(type(cfg), _parse_yaml(dump_yaml(cfg, comments=True), "<roundtrip>"))


def save_config(
    cfg: Any, path: str | os.PathLike[str], *, comments: bool = True, header: str | None = None
) -> Path:
    """Write the resolved config (every key) to ``path`` as YAML, atomically; returns the path.

    The text is loaded back and compared before writing, so a saved config always reloads
    (with :func:`load_yaml_config`) to an equal config.
    """
    text = dump_yaml(cfg, comments=comments, header=header)
    back = from_dict(type(cfg), _parse_yaml(text, "<saved config>"))
    if back != cfg:
        raise ConfigError(f"config does not survive a YAML round trip: {cfg!r} != {back!r}")
    p = Path(path)
    atomic_write_text(p, text)
    return p


# --------------------------------------------------------------------------------------
# Overrides: --set a.b=v
# --------------------------------------------------------------------------------------
def _deep_merge(base: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _set_path(obj: Any, parts: list[str], parsed: Any, raw: str, where: str) -> Any:
    cls = type(obj)
    fields = _fields(cls)
    name = parts[0]
    if name not in fields:
        raise _unknown_key(cls, name, where)
    key = f"{where}.{name}" if where else name
    tp = _hints(cls)[name]
    current = getattr(obj, name)
    section = _section_arm(tp)
    if len(parts) > 1:
        if section is None:
            raise ConfigError(
                f"config key '{key}' holds a value of type {type_name(tp)}, not a section; "
                f"cannot set '{key}.{'.'.join(parts[1:])}'"
            )
        if current is None:
            current = from_dict(section, {}, where=key)
        new = _set_path(current, parts[1:], parsed, raw, key)
    elif section is not None and parsed is None and not _is_union(tp):
        raise ConfigError(f"config key '{key}' is a section; set its keys instead, e.g. {key}.KEY=VALUE")
    elif section is not None and isinstance(parsed, Mapping):
        base = to_dict(current) if current is not None else {}
        new = from_dict(section, _deep_merge(base, parsed), where=key)
    else:
        try:
            new = _coerce(parsed, tp, key)
        except ConfigError:
            # `--set name=2024` / `--set mode=on`: YAML made a non-string; use the raw text.
            if isinstance(parsed, str) or not _accepts_str(tp) or section is not None:
                raise
            new = _coerce(raw.strip(), tp, key)
        _check_meta(new, fields[name].metadata, key)
    # Not constructed here: a cross-field check (``__post_init__``) must see the config after
    # every override, not a half-applied one (``env.num_envs=16`` before ``ppo.num_minibatches=2``).
    # apply_overrides rebuilds the result once, with every check.
    out = copy.copy(obj)
    object.__setattr__(out, name, new)
    return out


def apply_overrides(cfg: C, overrides: Sequence[str] | None) -> C:
    """Apply ``KEY=VALUE`` overrides (``--set ppo.lr=1e-3``) in order; returns a new config.

    Values are parsed as YAML (``[32, 32]``, ``true``, ``null``) then validated like the
    config file. A mapping value on a section (``ppo={lr: 1e-3}``) merges into it.
    """
    for item in overrides or ():
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        parts = key.split(".")
        if not sep or not key or any(not p.strip() for p in parts):
            raise ConfigError(f"malformed override {item!r}: expected KEY=VALUE, e.g. ppo.lr=3e-4")
        parts = [p.strip() for p in parts]
        parsed = _parse_yaml(raw, f"override {item!r}")
        cfg = _set_path(cfg, parts, parsed, raw, "")
    return from_dict(type(cfg), to_dict(cfg)) if overrides else cfg


# --------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------
def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _walk(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, dataclasses.Field, bool]]:
    """(dotted key, type, field, is_section) for every key, depth first in declaration order."""
    hints = _hints(cls)
    for name, f in _fields(cls).items():
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        section = _section_arm(tp)
        yield key, tp, f, section is not None
        if section is not None:
            yield from _walk(section, key)


def config_keys(cls: type) -> list[str]:
    """Every dotted key of a config class (sections included), in declaration order."""
    return [key for key, *_ in _walk(cls)]


def _constraints(meta: Mapping[str, Any]) -> str:
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(_flow(c) for c in meta["choices"]))
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "gt" in meta:
        parts.append(f"> {meta['gt']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    return "; ".join(parts)


def config_docs(cls: type, fmt: str = "text") -> str:
    """Every key with its type, default, constraints and doc; ``fmt`` is ``text`` or ``markdown``."""
    if fmt not in ("text", "markdown"):
        raise ValueError(f"config_docs(): fmt must be 'text' or 'markdown', not {fmt!r}")
    lines: list[str] = []
    if fmt == "markdown":
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
    for key, tp, f, is_section in _walk(cls):
        doc = f.metadata.get("doc", "(undocumented)")
        if is_section:
            if fmt == "markdown":
                lines.append(f"| **`{key}`** | section | | {doc} |")
            else:
                lines.append(f"{'  ' * key.count('.')}{key}:  (section)  {doc}")
            continue
        default = _default_of(f)
        shown = "(required)" if default is dataclasses.MISSING else _flow(_plain(default))
        cons = _constraints(f.metadata)
        if fmt == "markdown":
            desc = f"{doc} ({cons})" if cons else doc
            desc = desc.replace("|", "\\|").replace("\n", " ")
            tname = type_name(tp).replace("|", "\\|")
            lines.append(f"| `{key}` | {tname} | `{shown}` | {desc} |")
        else:
            depth = key.count(".")
            head = f"{'  ' * depth}{key}: {type_name(tp)} = {shown}"
            if cons:
                head += f"  [{cons}]"
            lines.append(head)
            lines.extend(f"{'  ' * depth}    {line}" for line in doc.splitlines())
    return "\n".join(lines) + "\n"


def check_config_class(cls: type) -> None:
    """Developer check (for tests): every key is documented, typed supportedly, defaults valid.

    Raises ``TypeError`` listing every problem found.
    """
    problems: list[str] = []
    for key, tp, f, is_section in _walk(cls):
        if not f.metadata.get("doc"):
            problems.append(f"{key}: no doc (declare it with opt(default, doc))")
        if is_section:
            continue
        default = _default_of(f)
        if default is dataclasses.MISSING:
            continue
        try:
            value = _coerce(_plain(default), tp, key)
            _check_meta(value, f.metadata, key)
            if value != default:
                problems.append(f"{key}: default {default!r} is not in canonical form ({value!r})")
        except (ConfigError, TypeError) as e:
            problems.append(f"{key}: invalid default: {e}")
    if not problems:
        try:
            defaults = from_dict(cls, {})
            if roundtrip(defaults) != defaults:
                problems.append("the defaults do not survive a YAML round trip")
        except ConfigError as e:  # e.g. a required key, or __post_init__ rejecting the defaults
            problems.append(f"cannot build the defaults: {e}")
    if problems:
        raise TypeError(f"config class {cls.__name__}:\n  " + "\n  ".join(problems))
