"""Mutation testing of the modules where a wrong number is silent (``make mutants``; not part of CI).

    python tools/mutants.py                      # every module below, one after another
    python tools/mutants.py rl/grpo data/ontology    # some of them
    python tools/mutants.py --list               # the modules and the tests each is run against

Each module is mutated by mutmut 3 (one-line faults: an operator, a comparison, a number, a string, a dropped
argument or call) in its own scratch copy of the repository, and each mutant runs only against that module's
fast tests (``FAST_TESTS``) plus the module's doctests; mutmut runs, of those, only the tests that reach the
mutated function. The fork server imports the third-party libraries once (``tools/mutmut_preload.txt``) and every
mutant imports skinflow afresh, so code that runs at import (the ontology's tables) runs under the mutant.

Counted per module: killed; import-broken (the mutant breaks the module's import, so every test fails: pytest
reports an interrupted session, which mutmut files as "interrupted"; killed for this purpose); survived; equivalent
(a survivor listed in ``tools/mutants_equivalent.txt`` with the reason it cannot change behaviour); no tests (no
selected test reaches the function); timeout. Kill rate = (killed + import-broken + timeout) / (all - no tests -
equivalent). Survivors are listed with their diffs in ``<out>/<module>.survivors.txt`` (``--out``, default
``.mutants/``, ignored by git) and the table is printed and written to ``<out>/report.md``.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# module (under skinflow/) -> the fast tests that target it (its doctests are added)
FAST_TESTS: dict[str, list[str]] = {
    "rl/grpo": ["tests/test_grpo_math.py", "tests/test_grpo_behaviour.py"],
    "rl/credit": ["tests/test_credit.py"],
    "rl/rewards": ["tests/test_grpo_math.py", "tests/test_metrics.py", "tests/test_parsers_property.py", "tests/test_captions.py",
                   "tests/test_credit.py"],
    "rl/logprobs": ["tests/test_logprobs.py"],
    "rl/rollout": ["tests/test_grpo_math.py", "tests/test_grpo_behaviour.py"],
    "metrics/grading": ["tests/test_metrics.py"],
    "metrics/clinical": ["tests/test_metrics.py"],
    "data/ontology": ["tests/test_ontology.py", "tests/test_metrics.py"],
    "data/splits": ["tests/test_splits.py"],
    "data/names": ["tests/test_formats.py", "tests/test_download.py"],
    "data/transforms": ["tests/test_transforms.py"],
    "data/formats": ["tests/test_formats.py", "tests/test_parsers_property.py"],
    "models/fdlinear": ["tests/test_fdlinear.py"],
    "models/stem": ["tests/test_stem.py"],
    "llm/judge": ["tests/test_llm.py", "tests/test_judge_units.py"],
    "llm/captions": ["tests/test_llm.py", "tests/test_captions.py", "tests/test_captions_records.py"],
    "resume": ["tests/test_resume_units.py"],
}
# Survivors that behave exactly like the original, with the reason (tools/mutants_equivalent.txt: "<mutant name>
# <reason>" per line). They are counted apart and left out of the kill rate; one that is killed or gone is reported.
EQUIVALENT_FILE = REPO / "tools" / "mutants_equivalent.txt"
STATUS = {"killed": "killed", "check was interrupted by user": "import-broken", "survived": "survived",
          "no tests": "no tests", "timeout": "timeout", "suspicious": "suspicious", "segfault": "killed"}


def config(module: str) -> str:
    tests = [*FAST_TESTS[module], f"skinflow/{module}.py"]
    return "\n".join([
        "", "[tool.mutmut]", 'source_paths = ["skinflow/"]', f'only_mutate = ["skinflow/{module}.py"]',
        f"pytest_add_cli_args_test_selection = {tests!r}".replace("'", '"'),
        'pytest_add_cli_args = ["-p", "no:randomly", "-q", "-m", "not slow", "-p", "no:cacheprovider", "-x"]',
        'process_isolation = "forkserver"', 'forkserver_warmup = "import"',
        f'preload_modules_file = "{REPO / "tools" / "mutmut_preload.txt"}"', ""])


def scratch_copy(module: str, root: Path) -> Path:
    """The tracked files (and untracked, not ignored ones) in ``root/<module>``, with the module's mutmut config."""
    folder = root / module.replace("/", "-")
    shutil.rmtree(folder, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    for name in files:
        source = REPO / name
        if source.is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / name)
    with open(folder / "pyproject.toml", "a") as handle:
        handle.write(config(module))
    return folder


def mutmut(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mutmut", *args], cwd=folder, capture_output=True, text=True)


def run_module(module: str, out: Path) -> Counter:
    folder = scratch_copy(module, out / "work")
    done = mutmut(folder, "run")
    if done.returncode:
        print(done.stdout[-2000:], done.stderr[-2000:])
        raise SystemExit(f"mutmut run failed on skinflow/{module}.py")
    rows = [line.strip().rsplit(": ", 1) for line in mutmut(folder, "results", "--all", "true").stdout.splitlines() if ": " in line]
    equivalent = equivalents()
    statuses = {name: STATUS.get(status, status) for name, status in rows}
    for name, status in statuses.items():
        if status == "survived" and name in equivalent:
            statuses[name] = "equivalent"
    stale = [n for n in equivalent if n.startswith(f"skinflow.{module.replace('/', '.')}.") and statuses.get(n) != "equivalent"]
    for name in stale:
        print(f"note: {name} is listed as equivalent but {statuses.get(name, 'no longer exists')}")
    counts = Counter(statuses.values())
    survivors = [name for name, status in statuses.items() if status == "survived"]
    with open(out / f"{module.replace('/', '-')}.survivors.txt", "w") as handle:
        for name in survivors:
            handle.write(mutmut(folder, "show", name).stdout + "\n")
    return counts


def equivalents() -> dict[str, str]:
    """``{mutant name: reason}`` from ``EQUIVALENT_FILE`` (blank lines and ``#`` comments skipped)."""
    if not EQUIVALENT_FILE.exists():
        return {}
    out = {}
    for line in EQUIVALENT_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.strip().partition(" ")
            out[name] = reason.strip()
    return out


def rate(counts: Counter) -> float:
    """(killed + import-broken + timeout) / (all - no tests - equivalent)."""
    judged = sum(counts.values()) - counts["no tests"] - counts["equivalent"]
    return (counts["killed"] + counts["import-broken"] + counts["timeout"]) / max(judged, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("modules", nargs="*", help=f"modules under skinflow/ (default: all {len(FAST_TESTS)})")
    parser.add_argument("--out", default=str(REPO / ".mutants"))
    parser.add_argument("--list", action="store_true")
    ns = parser.parse_args()
    if ns.list:
        for module, tests in FAST_TESTS.items():
            print(f"skinflow/{module}.py: {' '.join(tests)}")
        return
    unknown = [m for m in ns.modules if m not in FAST_TESTS]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {sorted(FAST_TESTS)}")
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    lines = [f"mutmut 3 over skinflow at {commit}, {datetime.date.today()}", "",
             "| module | mutants | killed | import-broken | timeout | survived | equivalent | no tests | kill rate |",
             "|---|---|---|---|---|---|---|---|---|"]
    total: Counter = Counter()
    for module in ns.modules or list(FAST_TESTS):
        counts = run_module(module, out)
        total += counts
        lines.append(f"| `{module}.py` | {sum(counts.values())} | {counts['killed']} | {counts['import-broken']} | "
                     f"{counts['timeout']} | {counts['survived']} | {counts['equivalent']} | {counts['no tests']} | {rate(counts):.1%} |")
        print(lines[-1], flush=True)
    lines.append(f"| all | {sum(total.values())} | {total['killed']} | {total['import-broken']} | {total['timeout']} | "
                 f"{total['survived']} | {total['equivalent']} | {total['no tests']} | {rate(total):.1%} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
