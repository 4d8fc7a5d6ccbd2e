"""Reading an experiment file: bounded YAML, ``--set`` overrides, validation, and errors that name file and key.

`load_experiment` never writes to disk: a bad file leaves no trace. A ``--set``
key reaches into a list by index or, for a list of named items such as
``facilities``, by name (``facilities.beta.launcher.nprocs=1``); its text is
marked as the command line's (`CommandLineText`), so a relative path in it
resolves against the current directory, not the file's folder.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fedhpc.config.experiment import Experiment
from fedhpc.config.types import CommandLineText, KeyedValueError, shown
from fedhpc.errors import ConfigError
from fedhpc.safe_yaml import MAX_DEPTH, MAX_FILE_BYTES, load_bounded


def load_experiment(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Experiment:
    """Read, override and validate an experiment file; raise `ConfigError` naming file (or --set) and key."""
    path = Path(path)
    file = str(path)
    raw = load_bounded(_read_experiment_text(path), file=file)
    if not isinstance(raw, dict):
        raise ConfigError("the top level must be a mapping of keys such as name, model, facilities", file=file)
    set_by: dict[str, str] = {}
    for override in overrides:
        set_by[apply_override(raw, override, file=file)] = override
    try:
        return Experiment.model_validate(raw, context={"base_dir": path.parent.absolute()})
    except ValidationError as e:
        error = ConfigError(_describe(e, file, set_by))
        key = _key_of(e.errors()[0])
        error.file, error.key = _source_of(key, file, set_by), key
        raise error from e


def _read_experiment_text(path: Path) -> str:
    """The file as UTF-8 text, at most `MAX_FILE_BYTES`; a FIFO or device is refused, never waited on."""
    file = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) else str(e)
        raise ConfigError(f"cannot read the experiment file: {reason}", file=file) from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError("is not a regular file; give the experiment's YAML file", file=file)
        try:
            data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"cannot read the experiment file: {e.strerror}", file=file) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"is larger than {MAX_FILE_BYTES // 1024} KiB; an experiment file is a few KiB of YAML",
                          file=file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        begins, ends = data.rfind(b"\n", 0, e.start) + 1, data.find(b"\n", e.start)
        text = data[begins : ends if ends >= 0 else len(data)].decode("utf-8", "replace")[:80]
        raise ConfigError(f"is not UTF-8 text: byte {e.start} (line {line}, in {text!r}) is "
                          f"{data[e.start:e.start + 1]!r}; save the file as UTF-8", file=file) from None


def apply_override(raw: dict[str, Any], override: str, *, file: str) -> str:
    """Apply one ``dotted.key=value`` override in place (the value parsed as YAML); return its key, indices for names.

    Errors name the ``--set`` argument rather than `file`: that is what the user must correct.
    The key returned is the one validation errors use (``facilities.1.launcher.nprocs``), so an
    error at it is traced back to this ``--set``.
    """
    source = shown(f"--set {override}")
    key, sep, value_text = override.partition("=")
    if not sep or not key:
        raise ConfigError("must look like key.path=value", file=source)
    parts = key.split(".")
    if len(parts) > MAX_DEPTH:  # each part nests a mapping: as deep as a file may nest, no deeper
        raise ConfigError(f"the key has {len(parts)} parts, more than {MAX_DEPTH}", file=source)
    node: Any = raw
    canonical: list[str] = []
    for depth, part in enumerate(parts[:-1]):
        node, part = _step_into(node, part, ".".join(parts[: depth + 1]), source)
        canonical.append(part)
    last = parts[-1]
    value = _marked(load_bounded(value_text, file=source, key=key) if value_text else "")
    if isinstance(node, list):
        index = _list_index(node, last, key, source)
        node[index] = value
        last = str(index)
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError("cannot set a sub-key of a plain value", file=source, key=key)
    return ".".join([*canonical, last])


def _marked(value: Any) -> Any:
    """The parsed value with every string in it marked as written on the command line."""
    if isinstance(value, str):
        return CommandLineText(value)
    if isinstance(value, list):
        return [_marked(item) for item in value]
    if isinstance(value, dict):
        return {key: _marked(item) for key, item in value.items()}
    return value


def _step_into(node: Any, part: str, key: str, file: str) -> tuple[Any, str]:
    """The node under `part`, and `part` as validation names it (a list's index rather than an item's name)."""
    if isinstance(node, list):
        index = _list_index(node, part, key, file)
        return node[index], str(index)
    if not isinstance(node, dict):
        raise ConfigError("cannot set a sub-key of a plain value", file=file, key=key)
    if node.get(part) is None:  # absent, or an empty section (`model:` with nothing under it)
        node[part] = {}
    return node[part], part


def _list_index(node: list[Any], part: str, key: str, file: str) -> int:
    """`part` as an index into `node`: a number below its length, or the `name` of one of its items."""
    if re.fullmatch(r"\d+", part):
        if int(part) < len(node):
            return int(part)
        raise ConfigError(f"expected a list index below {len(node)}", file=file, key=key)
    named: dict[str, int] = {}
    for index, item in enumerate(node):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            named.setdefault(item["name"], index)
    if part in named:
        return named[part]
    what = "facility" if key.split(".")[0] == "facilities" else "item"
    if not named:
        raise ConfigError(f"expected a list index below {len(node)}", file=file, key=key)
    raise ConfigError(f"no {what} is named {part!r}: expected a list index below {len(node)} or one of the names "
                      f"{', '.join(named)}", file=file, key=key)


def _dotted(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-after"))


def _key_of(item: Any) -> str:
    keyed = item.get("ctx", {}).get("error")
    return keyed.key if isinstance(keyed, KeyedValueError) else _dotted(item["loc"])


def _source_of(key: str, file: str, set_by: dict[str, str]) -> str:
    """The ``--set`` argument that wrote `key`, a key above it or one below it, else the file."""
    for written, override in set_by.items():
        if key == written or key.startswith(f"{written}.") or (key and written.startswith(f"{key}.")):
            return shown(f"--set {override}")
    return file


def _describe(error: ValidationError, file: str, set_by: dict[str, str]) -> str:
    lines = []
    for item in error.errors():
        key = _key_of(item)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check its spelling against docs/configuration.md)"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{_source_of(key, file, set_by)}: {key or '(top level)'}: {message}")
    return "invalid experiment\n  " + "\n  ".join(lines)
