"""The package's shape, as docs/architecture.md draws it: arrows that must never exist, and module sizes.

Read from the source with `ast` (nothing is imported), so a forbidden import fails here, in
seconds, whether or not any other test happens to load the module that holds it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "fedhpc"
MAX_MODULE_LINES = 420  # "about 400": a module past this has grown two jobs

FORBIDDEN = {
    # the server launches the worker as a command; it never loads its code
    "run": ("fedhpc.worker", "fedhpc.simulate", "fedhpc.cli"),
    "facility": ("fedhpc.worker", "fedhpc.run", "fedhpc.simulate", "fedhpc.cli"),
    # the facility side never reaches into the server
    "worker": ("fedhpc.run", "fedhpc.facility", "fedhpc.simulate", "fedhpc.cli", "fedhpc.report"),
    # the formats and the maths sit below everything that moves or schedules
    "exchange": ("fedhpc.run", "fedhpc.facility", "fedhpc.worker", "fedhpc.aggregate", "fedhpc.cli"),
    "aggregate": ("fedhpc.run", "fedhpc.facility", "fedhpc.worker", "fedhpc.cli"),
    "config": ("fedhpc.run", "fedhpc.facility", "fedhpc.worker", "fedhpc.exchange", "fedhpc.aggregate",
               "fedhpc.report", "fedhpc.cli"),
    "report": ("fedhpc.run", "fedhpc.facility", "fedhpc.worker", "fedhpc.cli"),
    "chem": ("fedhpc.run", "fedhpc.facility", "fedhpc.worker", "fedhpc.config", "fedhpc.cli"),
    # trackers are fed the server's events; they never drive the run or load the worker
    "tracking": ("fedhpc.run", "fedhpc.facility", "fedhpc.worker", "fedhpc.simulate", "fedhpc.cli"),
    # the privacy maths sits beside the aggregation rules it wraps: nothing that moves, schedules or runs
    "privacy": ("fedhpc.run", "fedhpc.facility", "fedhpc.worker", "fedhpc.exchange", "fedhpc.report", "fedhpc.cli"),
    # the protocol is shared by both sides, so it can depend on neither
    "secagg": ("fedhpc.run", "fedhpc.facility", "fedhpc.worker", "fedhpc.aggregate", "fedhpc.report", "fedhpc.cli"),
}


def _modules() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.py") if "__pycache__" not in p.parts)


def _imports(path: Path) -> set[str]:
    """Every fedhpc module `path` imports, at any depth of the file (imports inside functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name == "fedhpc" or name.startswith("fedhpc.")}


def _package(path: Path) -> str:
    relative = path.relative_to(SRC)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_arrow_runs_the_wrong_way(package: str) -> None:
    wrong = []
    for path in _modules():
        if _package(path) != package:
            continue
        for name in sorted(_imports(path)):
            if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[package]):
                wrong.append(f"{path.relative_to(SRC)} imports {name}")
    assert wrong == [], "imports that docs/architecture.md forbids:\n" + "\n".join(wrong)


def test_no_module_has_outgrown_one_job() -> None:
    long = [f"{p.relative_to(SRC)}: {n} lines" for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert long == [], "modules over ~400 lines; split them along a real seam:\n" + "\n".join(long)


def test_no_capability_is_found_by_getattr_on_a_launcher_or_mover() -> None:
    """What a launcher or mover can do is in facility/base.py's contract, not probed for by name."""
    probes = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2):
                target = ast.unparse(node.args[0])
                if any(word in target for word in ("launcher", "mover")):
                    probes.append(f"{path.relative_to(SRC)}:{node.lineno} {ast.unparse(node)}")
    assert probes == [], "\n".join(probes)
