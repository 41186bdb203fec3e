"""Every test that tests/conftest.py marks `slow` by name still exists: a renamed test would
otherwise silently rejoin `make test-unit`'s quick loop."""

from __future__ import annotations

import ast
from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parent


def test_every_test_marked_slow_by_name_exists():
    missing = []
    for entry in conftest._SLOW_TESTS:
        file, name = entry.split("::")
        path = TESTS / file
        defined = set()
        if path.exists():
            defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        if name not in defined:
            missing.append(entry)
    assert not missing, f"conftest._SLOW_TESTS names tests that do not exist: {missing}"


def test_every_slow_fixture_exists():
    fixtures = {
        n.name for p in TESTS.glob("*.py") for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.FunctionDef)
    }
    assert conftest._SLOW_FIXTURES <= fixtures, conftest._SLOW_FIXTURES - fixtures
