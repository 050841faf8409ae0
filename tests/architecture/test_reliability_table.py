"""tests/reliability/README.md is the table of every injected fault: each test it names exists, and every
test in tests/reliability/ is a row of it."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
README = TESTS / "reliability" / "README.md"


def defined_tests(paths) -> set[str]:
    return {m for p in paths for m in re.findall(r"^def (test_\w+)", p.read_text(), re.M)}


def test_every_test_the_table_names_exists():
    named = set(re.findall(r"\b(test_\w+?)(?:\[|`|\b)", README.read_text())) - {
        f.stem for f in (TESTS / "reliability").glob("test_*.py")} - {
        f.stem for f in TESTS.rglob("test_*.py")}
    missing = named - defined_tests(TESTS.rglob("test_*.py"))
    assert not missing, f"{README} names tests that do not exist: {sorted(missing)}"


def test_every_reliability_test_is_a_row_of_the_table():
    table = README.read_text()
    absent = sorted(t for t in defined_tests((TESTS / "reliability").glob("test_*.py")) if t not in table)
    assert not absent, f"tests in tests/reliability/ without a row in {README}: {absent}"
