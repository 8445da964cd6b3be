"""docs/reliability.md's tables of bad inputs and the tests stay one-to-one: every row
names a test that exists, and every bad-input test has its row."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = {"The core": "test_bad_input_core.py",
         "The guest side": "test_bad_input_pci.py",
         "Experiments and the command line": "test_bad_input_experiments.py"}


def table_tests():
    """{file: [test names in its table's last column]}"""
    doc = (ROOT / "docs" / "reliability.md").read_text()
    found = {}
    for section in re.split(r"\n### ", doc)[1:]:
        title = next((t for t in FILES if section.startswith(t)), None)
        if title is None:
            continue
        rows = [line for line in section.splitlines() if line.startswith("| ") and "`test_" in line]
        found[FILES[title]] = [re.findall(r"`(test_\w+)`", row.rsplit("|", 2)[-2])[0] for row in rows]
    return found


def file_tests(name):
    tree = ast.parse((Path(__file__).parent / name).read_text())
    return [node.name for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


def test_every_row_has_its_test_and_every_test_its_row():
    tables = table_tests()
    assert sorted(tables) == sorted(FILES.values())
    for name, rows in tables.items():
        assert len(rows) == len(set(rows)), f"{name}: a test named by two rows"
        assert sorted(rows) == sorted(file_tests(name)), name
