"""tests/BAD_INPUTS.md lists every bad input tried; each row must name a test that exists."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def table_rows() -> list[list[str]]:
    lines = (TESTS / "BAD_INPUTS.md").read_text().splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in lines if line.startswith("| ") and not line.startswith("| entry")]
    return [row for row in rows if not set(row[0]) <= set("-")]


def test_every_row_names_an_existing_test():
    rows = table_rows()
    assert len(rows) >= 60
    defined: dict[str, set[str]] = {}
    for row in rows:
        assert len(row) == 4 and all(row), row
        file, _, name = row[3].partition("::")
        if file not in defined:
            tree = ast.parse((TESTS / file).read_text())
            defined[file] = {node.name for node in ast.walk(tree)
                             if isinstance(node, ast.FunctionDef)}
        assert name.startswith("test_") and name in defined[file], row[3]
