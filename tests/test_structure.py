"""The repository's shape stays as docs/architecture.md draws it ("The repository").

Pure reading of the Python files (about a second): no file over 400 lines, no function over 80,
no project file loaded by its path, no import-path edits outside test configuration, and each
top-level folder importing only what the map allows.
"""

from __future__ import annotations

import ast
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = {".venv", ".git", ".test-services", ".pip-tools", ".ruff_cache", ".lab-inv"}
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80
# Test configuration may put folders on the import path; nothing else may.
TEST_CONFIGURATION = {"conftest.py"}
# Folder -> the project's packages it may import (besides its own). The map in
# docs/architecture.md says the same in words; test_the_map_names_every_folder keeps them together.
MAY_IMPORT = {
    "app": set(),
    "devstack": set(),
    "labkit": set(),
    "lab": {"labkit", "loadtests"},  # loadtests: only the walk-through, which drives the load tools
    "loadtests": {"app", "labkit"},  # app: bench_stats generates clicks with the worker's SQL
    "molecule": {"labkit"},
    "chaos": {"labkit"},
    "vagrant": {"lab"},  # vmhost.py builds the box with the lab's Debian facts (suite, mirrors, packages)
    "tests": {"app", "chaos", "devstack", "lab", "labkit", "loadtests", "vagrant"},
}
PROJECT_PACKAGES = set(MAY_IMPORT)


def python_files() -> Iterator[Path]:
    # os.walk, pruned: the virtualenv alone holds thousands of files that are not ours.
    for folder, subfolders, names in os.walk(ROOT):
        subfolders[:] = sorted(d for d in subfolders if d not in SKIP)
        yield from (Path(folder) / name for name in sorted(names) if name.endswith(".py"))


FILES = list(python_files())


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=rel(path))


def test_the_scan_sees_the_packages() -> None:
    seen = {path.relative_to(ROOT).parts[0] for path in FILES}
    assert seen >= PROJECT_PACKAGES, PROJECT_PACKAGES - seen


def test_no_python_file_is_over_400_lines() -> None:
    long = {rel(p): n for p in FILES if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, f"split these by what they hold: {long}"


def test_no_function_is_over_80_lines() -> None:
    long = {
        f"{rel(p)}:{node.lineno} {node.name}": node.end_lineno - node.lineno + 1
        for p in FILES
        for node in ast.walk(parsed(p))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    }
    assert not long, f"split these by the steps they perform: {long}"


def _attribute_chain(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def path_loading_and_edits(tree: ast.Module) -> list[str]:
    """Calls that load a file by its path, and changes to sys.path, with their lines."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _attribute_chain(node.func)
            if name.endswith("spec_from_file_location") or name.startswith("sys.path."):
                found.append(f"{node.lineno}: {name}()")
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if _attribute_chain(target.value if isinstance(target, ast.Subscript) else target) == "sys.path":
                    found.append(f"{node.lineno}: sys.path assigned")
    return found


def test_no_file_is_loaded_by_path_and_the_import_path_is_left_alone() -> None:
    found = {
        rel(p): hits for p in FILES if p.name not in TEST_CONFIGURATION and (hits := path_loading_and_edits(parsed(p)))
    }
    assert not found, f"import packages normally (pyproject's pytest pythonpath, python -m): {found}"


@pytest.mark.parametrize(
    "source",
    [
        "import importlib.util\nimportlib.util.spec_from_file_location('x', 'x.py')",
        "import sys\nsys.path.insert(0, 'x')",
        "import sys\nsys.path.append('x')",
        "import sys\nsys.path[:0] = ['x']",
        "import sys\nsys.path += ['x']",
    ],
)
def test_the_check_catches_path_tricks(source: str) -> None:
    assert path_loading_and_edits(ast.parse(source))


def imported_packages(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & PROJECT_PACKAGES


def test_each_folder_imports_only_what_the_map_allows() -> None:
    wrong = {}
    for path in FILES:
        folder = path.relative_to(ROOT).parts[0]
        if folder not in MAY_IMPORT:
            continue
        extra = imported_packages(parsed(path)) - MAY_IMPORT[folder] - {folder}
        if extra:
            wrong[rel(path)] = sorted(extra)
    assert not wrong, f"not allowed by docs/architecture.md's map: {wrong}"


def test_the_map_names_every_folder() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## The repository", 1)[1].split("\n## ", 1)[0]
    # Hidden folders are local state (.venv, .test-services, ...), except these two.
    folders = sorted(
        p.name for p in ROOT.iterdir() if p.is_dir() and (p.name in (".ci", ".github") or p.name[0] != ".")
    )
    missing = [folder for folder in folders if f"`{folder}/`" not in section]
    assert not missing, f"docs/architecture.md's map lacks {missing}"
