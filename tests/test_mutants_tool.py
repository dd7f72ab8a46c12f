"""tools/mutants.py's arithmetic: equivalent survivors are counted apart and left out of the kill rate; the list of
equivalents is read with its reasons; every module it mutates has fast tests that exist."""

from __future__ import annotations

import importlib.util
from collections import Counter

from tests.conftest import REPO


def tool():
    spec = importlib.util.spec_from_file_location("mutants_tool", REPO / "tools" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kill_rate_leaves_out_untested_and_equivalent_mutants():
    mutants = tool()
    counts = Counter({"killed": 80, "import-broken": 5, "timeout": 5, "survived": 10, "no tests": 7, "equivalent": 3})
    assert mutants.rate(counts) == 90 / 100
    assert mutants.rate(Counter({"survived": 1, "equivalent": 1})) == 0.0
    assert mutants.rate(Counter()) == 0.0


def test_equivalents_are_read_with_their_reasons(tmp_path, monkeypatch):
    mutants = tool()
    listed = tmp_path / "eq.txt"
    listed.write_text("# comment\n\nskinflow.a.x_f__mutmut_1 dim +1 is dim -1 on 2-D\nskinflow.a.x_f__mutmut_2 why\n")
    monkeypatch.setattr(mutants, "EQUIVALENT_FILE", listed)
    assert mutants.equivalents() == {"skinflow.a.x_f__mutmut_1": "dim +1 is dim -1 on 2-D", "skinflow.a.x_f__mutmut_2": "why"}
    shipped = tool().equivalents()
    assert shipped and all(reason for reason in shipped.values())  # every listed mutant says why


def test_every_mutated_module_and_its_tests_exist():
    mutants = tool()
    for module, tests in mutants.FAST_TESTS.items():
        assert (REPO / "skinflow" / f"{module}.py").is_file(), module
        assert tests and all((REPO / t).is_file() for t in tests), module
