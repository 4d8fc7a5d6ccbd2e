"""The building blocks every section of the experiment file shares.

Bounded numbers, paths, the frozen base model, and the helpers that put a
cross-field error at the key the user must edit. Nothing here knows a section:
model, launcher and facility modules build on it.

A relative path resolves against where it was written (docs/configuration.md,
"Paths"): in the experiment file, against the file's folder (the validation
context's ``base_dir``); on the command line (``--set``), against the current
directory, which `CommandLineText` marks it for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NoReturn, get_args

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
DType = Literal["float32", "bfloat16", "float16"]

# Bounds on numbers, so a value no run could use (nprocs: 1e20, a timeout past the thread library's limit,
# an infinite learning rate) fails at load time with its key, not in a launcher or a memory plan.
MAX_COUNT = 2**31 - 1  # what C ints downstream (torch, schedulers) hold
MAX_SECONDS = 1e8  # about three years: beyond any allocation, below every timer's limit
PositiveInt = Annotated[int, Field(gt=0, le=MAX_COUNT)]
PositiveFloat = Annotated[float, Field(gt=0.0, allow_inf_nan=False)]
Duration = Annotated[float, Field(gt=0.0, le=MAX_SECONDS, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
SeqLen = Annotated[int, Field(gt=0, le=1 << 20)]  # tokens: beyond the longest context of any model trained here
ModelDim = Annotated[int, Field(gt=0, le=1 << 16)]
BatchSize = Annotated[int, Field(gt=0, le=1 << 16)]
Steps = Annotated[int, Field(gt=0, le=100_000_000)]
NodeCount = Annotated[int, Field(gt=0, le=100_000)]  # the largest machines have about 10,000 nodes
RankCount = Annotated[int, Field(gt=0, le=1024)]  # ranks (or threads) on one node


def expand_user(value: Path) -> Path:
    """``~`` and ``~user`` expanded; an unknown user is a `ValueError` (pydantic reports it at the key)."""
    try:
        return value.expanduser()
    except RuntimeError:
        raise ValueError(f"{value}: {value.parts[0]} names no user on this machine") from None


def path_exists(value: Path) -> bool:
    """`Path.exists`, but a name the OS refuses (too long, a NUL byte) is a `ValueError` saying why."""
    try:
        return value.exists()
    except OSError as e:
        raise ValueError(f"cannot use {shown(value)}: {e.strerror}") from None


def shown(value: object) -> str:
    """A path or argument for a message: whole, or its first 200 characters (a fuzzed name can be huge)."""
    text = str(value)
    return text if len(text) <= 200 else f"{text[:200]}..."


class CommandLineText(str):
    """A string written on the command line (a ``--set`` value): as a relative path, it means one under the cwd.

    Only a validator that runs before pydantic's own (which makes it a plain
    `str`) sees the mark, so path fields read it there (`RelPath`, `base_dir`).
    """


def base_dir(value: object, info: ValidationInfo) -> Path | None:
    """What a relative path in `value` resolves against: the cwd for command-line text, else the file's folder.

    None when neither applies (a document validated without a file, such as a task.json).
    """
    if isinstance(value, CommandLineText):
        return Path.cwd()
    base = (info.context or {}).get("base_dir")
    return None if base is None else Path(base)


def _resolve_command_line(value: Any) -> Any:
    """A command-line path made absolute against the cwd, before the file's folder could be put in front of it."""
    if isinstance(value, CommandLineText):
        return Path.cwd() / expand_user(Path(value))
    return value


def _resolve_against_file(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    value = expand_user(value)
    if not value.is_absolute() and base is not None:
        value = Path(base) / value
    return value


def _must_exist(value: Path) -> Path:
    if not path_exists(value):
        raise ValueError(f"no such file or directory: {value}")
    return value


RelPath = Annotated[Path, BeforeValidator(_resolve_command_line), AfterValidator(_resolve_against_file)]
ExistingPath = Annotated[
    Path, BeforeValidator(_resolve_command_line), AfterValidator(_resolve_against_file), AfterValidator(_must_exist)
]


class KeyedValueError(ValueError):
    """A cross-field check's failure, carrying the dotted key it is about.

    pydantic locates a model-level validator's error at the model itself (for
    the whole experiment: no key at all); this lets the error name the key the
    user must edit, e.g. ``algorithm.min_facilities``.
    """

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(message)


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BackendConfig(Frozen):
    """A launcher's or a mover's section, chosen by its ``kind`` from a discriminated union.

    Every backend states `remote`: whether the facility's jobs run where the
    server's files are not seen, so the facility names its data as they see it.
    """

    remote: ClassVar[bool]


def kinds_of(union: object) -> dict[str, type[BackendConfig]]:
    """Each member of an ``Annotated[A | B, Field(discriminator="kind")]`` by its kind, in the union's order."""
    members: tuple[type[BackendConfig], ...] = get_args(get_args(union)[0])
    return {member.model_fields["kind"].default: member for member in members}


def one_of(names: tuple[str, ...]) -> str:
    """``a``, ``a or b``, ``a, b or c``: the names a message offers."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


KeyedErrors = list[tuple[tuple[str, ...], str, Any]]
"""Errors of one section, each at its own key: (location under the section, message, the value)."""


def raise_keyed(owner: type[BaseModel], errors: KeyedErrors) -> None:
    """Raise every error at its own key (``launcher.qos``, ``launcher.mpi.launcher``), not at ``launcher``."""
    if errors:
        raise ValidationError.from_exception_data(
            owner.__name__,
            [{"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(message)}}
             for loc, message, value in errors],
        )


def raise_at(owner: type[BaseModel], loc: tuple[str, ...], value: Any, message: str) -> NoReturn:
    """Raise one error at `loc` under `owner`'s section, as pydantic would for a field of it."""
    error = {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(message)}}
    raise ValidationError.from_exception_data(owner.__name__, [error])
