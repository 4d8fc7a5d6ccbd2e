"""YAML typed by users, read within bounds: no input may exhaust the stack, memory or the clock.

PyYAML's composer recurses once per nesting level, so a file nested a thousand
deep raised `RecursionError`; and aliases let a few hundred bytes stand for
billions of values (the "billion laughs"), which validation would then walk for
minutes. `load_bounded` refuses both before any Python object is built, and
reports every YAML problem as a `ConfigError` naming where the text came from
(a file, or a ``--set`` argument) and the line and column, never PyYAML's
``<unicode string>``.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.error import Mark
from yaml.nodes import MappingNode, Node, SequenceNode

from fedhpc.errors import ConfigError

#: Nesting levels of mappings and lists, aliases followed; an experiment file needs about eight.
MAX_DEPTH = 64
#: Values in the document with every alias expanded; an experiment file has a few hundred.
MAX_NODES = 100_000
#: Bytes in an experiment file; the largest shipped example is a few KiB.
MAX_FILE_BYTES = 1024 * 1024
_TOP_LEVEL_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)\s*:")


class _DepthBoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing to compose deeper than `MAX_DEPTH` (the composer recurses per level)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_bounded(text: str, *, file: str, key: str | None = None) -> Any:
    """Parse `text` as one YAML document; raise `ConfigError` at `file` (and `key`) if it is bad or too big.

    Without `key`, the error names the top-level section it is in, besides the line and column.
    """
    loader = None
    try:
        loader = _DepthBoundedLoader(text)  # its reader refuses control characters already
        node = loader.get_single_node()
        problem = _expansion_problem(node) if node is not None else None
        if problem is not None:
            message, mark = problem
            raise ConfigError(f"line {mark.line + 1}, column {mark.column + 1}: {message}", file=file,
                              key=key or _section_at(text, mark))
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        raise ConfigError(f"not valid YAML{where}: {_problem(e)}", file=file, key=key or _section_at(text, mark)) \
            from None
    finally:
        if loader is not None:
            loader.dispose()


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expansion_problem(root: Node) -> tuple[str, Mark] | None:
    """What is too big about the document with every alias copied out (and where), counted without copying.

    Iterative and memoised per node, so it takes time in the number of distinct
    nodes however large the expansion. An alias inside its own anchor is a cycle
    no configuration needs.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth) with aliases expanded
    open_nodes: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        ident = id(node)
        if finished:
            open_nodes.discard(ident)
            parts = [measured[id(child)] for child in _children(node)]
            size = 1 + sum(values for values, _ in parts)
            depth = 1 + max((levels for _, levels in parts), default=0)
            if size > MAX_NODES:
                return (f"expands to more than {MAX_NODES:,} values through its aliases (*name); an experiment "
                        "needs a few hundred", node.start_mark)
            if depth > MAX_DEPTH:
                return f"nested deeper than {MAX_DEPTH} levels once its aliases (*name) are expanded", node.start_mark
            measured[ident] = (size, depth)
        elif ident in open_nodes:
            return "an alias (*name) refers to the value that contains it", node.start_mark
        elif ident not in measured:
            open_nodes.add(ident)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))
    return None


def _section_at(text: str, mark: Any) -> str | None:
    """The top-level key whose block holds `mark` (the nearest unindented ``key:`` above it), if any.

    YAML that does not parse has no keys to speak of, but the section is what the
    user looks for first; the line and column locate the problem exactly.
    """
    if mark is None:
        return None
    for line in reversed(text.splitlines()[: mark.line + 1]):
        found = _TOP_LEVEL_KEY.match(line)
        if found:
            return found[1]
    return None


def _problem(error: yaml.YAMLError) -> str:
    parts = [getattr(error, "context", None), getattr(error, "problem", None)]
    return ", ".join(str(part) for part in parts if part) or str(error).splitlines()[0]
