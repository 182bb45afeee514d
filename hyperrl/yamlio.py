"""Strict, bounded YAML reading: the one loader behind config files, ``--set`` values and
family files.

PyYAML's SafeLoader keeps the last of two equal keys without a word, and it shares an
aliased node instead of copying it, so a few hundred bytes of nested anchors (a
"billion laughs" file) load instantly and then turn into gigabytes the first time the data
is walked or printed. The loader here refuses, while composing and so before anything is
expanded:

- a key given twice in one mapping (merge keys ``<<`` may be overridden, as YAML intends);
- aliases that stand for more than :data:`MAX_ALIAS_NODES` nodes, counted as if expanded
  (an alias of a list of aliases counts every node they stand for);
- nesting deeper than :data:`MAX_DEPTH` (PyYAML composes recursively);

and :func:`read_yaml_file` refuses a file over :data:`MAX_BYTES` before parsing it.

Every refusal is a :class:`YamlInputError` with the dotted key path where it happened; each
loader words it in its own message (the config loader as ``file:line:column: ...``, the
family loader as ``family file F: ... at line L, column C: ...``).
"""

from __future__ import annotations

import os
from typing import Any

import yaml

__all__ = ["MAX_BYTES", "MAX_ALIAS_NODES", "MAX_DEPTH", "YamlInputError", "parse_yaml", "read_yaml_file"]

MAX_BYTES = 1 << 20  # a config or family file is a few KiB
MAX_ALIAS_NODES = 1000  # a hand-written file aliases a few small blocks, if any
MAX_DEPTH = 100  # configs and families nest 2 to 5 levels


class YamlInputError(ValueError):
    """YAML input a loader refuses: ``what`` names the kind ("malformed YAML", ...),
    ``detail`` the problem, ``line`` and ``column`` (1-based) where it is, when known."""

    def __init__(self, what: str, detail: str, line: int | None = None, column: int | None = None) -> None:
        self.what, self.detail, self.line, self.column = what, detail, line, column
        at = f" at line {line}, column {column}" if line is not None else ""
        super().__init__(f"{what}{at}: {detail}")


def _at(mark: Any) -> dict[str, int | None]:
    if mark is None:
        return {"line": None, "column": None}
    return {"line": mark.line + 1, "column": mark.column + 1}


def _dotted(parts: list[str]) -> str:
    out = ""
    for p in parts:
        out += p if p.startswith("[") or not out else f".{p}"
    return out or "(top level)"


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader refusing duplicate keys, alias expansion past :data:`MAX_ALIAS_NODES`
    and nesting past :data:`MAX_DEPTH`; errors name the dotted key path."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._path: list[str] = []  # key path of the node being composed
        self._alias_nodes = 0  # nodes the aliases so far stand for, as if expanded
        self._anchor_size: dict[str, int] = {}  # anchor -> nodes its node expands to
        self._nodes = 0  # nodes composed so far, aliases expanded
        self._mapping_path: dict[yaml.Node, str] = {}

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:  # type: ignore[override]
        if isinstance(parent, yaml.SequenceNode):
            part: str | None = f"[{index}]"
        elif isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.Node):
            part = str(index.value) if isinstance(index, yaml.ScalarNode) else "?"
        else:  # the document root, or a mapping key: no path step of its own
            part = None
        if part is not None:
            self._path.append(part)
        try:
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                size = self._anchor_size.get(event.anchor, 1)  # 1: an alias inside its own anchor
                self._alias_nodes += size
                self._nodes += size
                if self._alias_nodes > MAX_ALIAS_NODES:
                    raise YamlInputError(
                        "too many YAML aliases",
                        f"the aliases up to '{_dotted(self._path)}' stand for more than {MAX_ALIAS_NODES} "
                        "nodes once expanded (nested anchors, a 'billion laughs' file?); a hand-written "
                        "file needs few aliases or none",
                        **_at(event.start_mark),
                    )
                return super().compose_node(parent, index)
            if len(self._path) > MAX_DEPTH:
                raise YamlInputError("YAML nested too deeply",
                                     f"'{_dotted(self._path[:10])}...' is more than {MAX_DEPTH} levels deep",
                                     **_at(event.start_mark))
            before = self._nodes
            self._nodes += 1
            node = super().compose_node(parent, index)
            if event.anchor is not None:
                self._anchor_size[event.anchor] = self._nodes - before
            if isinstance(node, yaml.MappingNode):
                self._mapping_path[node] = _dotted(self._path)
            return node
        finally:
            if part is not None:
                self._path.pop()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:  # type: ignore[override]
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=False)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: PyYAML reports it itself
                continue
            if first is not key_node.start_mark:
                where = self._mapping_path.get(node, "(top level)")
                full = key_node.value if where == "(top level)" else f"{where}.{key_node.value}"
                raise YamlInputError("malformed YAML",
                                     f"duplicate key '{full}' (first defined on line {first.line + 1})",
                                     **_at(key_node.start_mark))
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """One YAML document through :class:`StrictLoader`; raises :class:`YamlInputError`."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise YamlInputError("malformed YAML", problem, **_at(mark)) from None


def read_yaml_file(path: str | os.PathLike[str]) -> Any:
    """Parse a YAML file of at most :data:`MAX_BYTES` (read no further: a huge file or a
    device is refused without reading it whole). Raises :class:`YamlInputError`, or
    ``OSError`` when the file cannot be read."""
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlInputError("file too large",
                             f"more than {MAX_BYTES // (1 << 20)} MiB ({MAX_BYTES} bytes); "
                             "a config or family file is a few KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlInputError("not UTF-8 text", f"byte {e.start}: {e.reason}") from None
    return parse_yaml(text)
