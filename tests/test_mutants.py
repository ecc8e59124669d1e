"""The mutation check's own wiring (``tests/mutants.py``): fast, so it runs in every CI.

The slow part, planting each mutation and running its tests, is ``python -m tests.mutants``.
What is checked here is that the list stays true to the code: a refactor that moves a
mutated line makes this fail at once (update the mutation's snippet), instead of leaving
the README's kill table silently about code that no longer exists.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.mutants import MUTATIONS, ROOT, Edit, Mutation, apply, outcomes, selects


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_every_mutation_still_applies_to_the_code(mutation: Mutation, tmp_path: Path) -> None:
    target = tmp_path / mutation.file
    target.parent.mkdir(parents=True)
    original = (ROOT / mutation.file).read_text()
    target.write_text(original)
    assert apply(mutation, tmp_path) is None, "update this mutation in tests/mutants.py"
    assert target.read_text() != original
    for spec in mutation.tests:
        assert (ROOT / spec.split("::")[0]).is_file(), spec


def test_mutation_names_are_unique() -> None:
    names = [m.name for m in MUTATIONS]
    assert len(names) == len(set(names))


def test_a_snippet_that_moved_is_an_error_never_a_mutation(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("x = 1\nx = 1\n")
    gone = Mutation("gone", "g", "m.py", (Edit("y = 2\n", "y = 3\n"),), ("t",))
    twice = Mutation("twice", "g", "m.py", (Edit("x = 1\n", "x = 2\n"),), ("t",))
    broken = Mutation("broken", "g", "m.py", (Edit("x = 1\nx", "x = (\nx", count=1),), ("t",))
    missing = Mutation("missing", "g", "n.py", (Edit("x", "y"),), ("t",))
    assert (apply(gone, tmp_path) or "").startswith("snippet not found")
    assert (apply(twice, tmp_path) or "").startswith("snippet ambiguous")
    assert "does not compile" in (apply(broken, tmp_path) or "")
    assert (apply(missing, tmp_path) or "").startswith("snippet not found")
    assert (tmp_path / "m.py").read_text() == "x = 1\nx = 1\n"  # untouched by failures


def test_pytest_outcomes_and_selection() -> None:
    text = (
        "PASSED tests/a.py::t1\nPASSED tests/a.py::t2\nERROR tests/a.py::t2 - teardown\n"
        "FAILED tests/a.py::t3[x-y] - AssertionError\nSKIPPED [1] tests/a.py:12: no mount\n"
    )
    assert outcomes(text) == {
        "tests/a.py::t1": "PASSED",
        "tests/a.py::t2": "ERROR",
        "tests/a.py::t3[x-y]": "FAILED",
    }
    assert selects("tests/a.py", "tests/a.py::t1")
    assert selects("tests/a.py::t3", "tests/a.py::t3[x-y]")
    assert not selects("tests/a.py::t3", "tests/a.py::t30")
    assert not selects("tests/a.py", "tests/ab.py::t1")
