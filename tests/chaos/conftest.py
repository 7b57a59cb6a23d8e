"""The chaos suite's fixtures, its summary table and the JSON file of its figures.

Each test reports one line ``fault-N <name>: accepted=N completed=N duplicated=N lost=N``
through the ``summary`` fixture. pytest captures test output, so the lines are also
collected here and printed as a table at the end of the run (whatever ``-s`` says), and
written to ``$CHAOS_RESULTS`` (``make chaos``: ``bench/results/chaos-latest.json``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.chaos.harness import SCALE, Stack, results_path

_RESULTS = pytest.StashKey[list[dict[str, Any]]]()
_OUTCOMES = pytest.StashKey[dict[str, str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: fault injection against real processes (tests/chaos; make chaos)")
    config.stash[_RESULTS] = []
    config.stash[_OUTCOMES] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" or (report.when == "setup" and report.failed):
        item.config.stash[_OUTCOMES][item.nodeid] = report.outcome
        if report.failed:  # what the processes said, next to the failure
            for s in getattr(item, "chaos_stacks", []):
                report.sections.append(("chaos process logs", s.logs()))
    return report


Summary = Callable[..., str]


@pytest.fixture
def summary(request: pytest.FixtureRequest) -> Summary:
    """``summary(n, name, accepted=, completed=, duplicated=, lost=, **details)``: print and
    collect the test's one summary line; details go to the table and the JSON file."""
    started = time.monotonic()

    def record(fault: int, name: str, *, accepted: int, completed: int, duplicated: int,
               lost: int, **details: Any) -> str:
        line = (f"fault-{fault} {name}: accepted={accepted} completed={completed} "
                f"duplicated={duplicated} lost={lost}")
        print(line)
        request.config.stash[_RESULTS].append({
            "fault": fault, "name": name, "nodeid": request.node.nodeid, "line": line,
            "accepted": accepted, "completed": completed, "duplicated": duplicated,
            "lost": lost, "details": details, "seconds": round(time.monotonic() - started, 1),
        })
        return line

    return record


@pytest.fixture
def stack(request: pytest.FixtureRequest) -> Iterator[Callable[..., Stack]]:
    """``stack(**redis_options)`` starts a Stack; every one started is closed afterwards
    (their logs join the report of a failed test)."""
    made: list[Stack] = []
    request.node.chaos_stacks = made

    def make(**redis_options: Any) -> Stack:
        s = Stack(**redis_options)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    results = sorted(config.stash.get(_RESULTS, []), key=lambda r: r["fault"])
    if not results:
        return
    outcomes = config.stash.get(_OUTCOMES, {})
    tr = terminalreporter
    tr.write_sep("=", f"chaos summary (CHAOS_SCALE={SCALE})")
    for r in results:
        outcome = outcomes.get(r["nodeid"], "?")
        r["outcome"] = outcome
        tr.write_line(f"{r['line']}  [{outcome}, {r['seconds']}s]")
        if r["details"]:
            tr.write_line("    " + " ".join(f"{k}={v}" for k, v in r["details"].items()))
    path = results_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"scale": SCALE, "finished_at": time.time(),
                                    "results": results}, indent=2) + "\n")
        tr.write_line(f"chaos figures written to {path}")
    except OSError as exc:
        tr.write_line(f"could not write {path}: {exc}")
