"""The package layers: each package may import only those below it (docs/architecture.md, "Layers").

    commands                      the CLI, the demo, the bench, the report
    training  registry  service   the capabilities (registry builds on training; service on neither)
    dnirecon                      the core: FFT conventions, IO, masks, metrics, errors, wire format

Every import counts, function-local ones included, so a lazy import cannot hide an upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# package -> the project packages it may import (itself always allowed)
ALLOWED = {
    "dnirecon": set(),
    "training": {"dnirecon"},
    "registry": {"dnirecon", "training"},
    "service": {"dnirecon"},
    "commands": {"dnirecon", "training", "registry", "service"},
}


def imported_packages(source: str, filename: str) -> list[tuple[int, str]]:
    """(line, top-level package) of every absolute import in a module, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def upward_imports(root: Path, allowed: dict[str, set[str]]) -> list[str]:
    """Every import in `root`'s packages of a project package that the layer map does not allow."""
    bad = []
    for package, may in allowed.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, target in imported_packages(path.read_text(), str(path)):
                if target in allowed and target != package and target not in may:
                    bad.append(f"{path.relative_to(root)}:{line} imports {target}")
    return bad


def test_no_package_imports_a_layer_above_it():
    assert upward_imports(ROOT, ALLOWED) == []


def test_every_project_package_has_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")}
    assert packages - {"tests", "experiments"} == set(ALLOWED)


def test_an_upward_import_is_reported_with_its_file_and_line(tmp_path):
    for package in ALLOWED:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "dnirecon" / "fftc.py").write_text("import numpy\n\ndef f():\n    from service.client import x\n")
    (tmp_path / "service" / "engine.py").write_text("from dnirecon import fftc\nimport training.models\n")
    (tmp_path / "commands" / "cli.py").write_text("import service, training, registry\n")
    assert upward_imports(tmp_path, ALLOWED) == [
        "dnirecon/fftc.py:4 imports service",
        "service/engine.py:2 imports training",
    ]
