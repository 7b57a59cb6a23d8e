"""Fixtures and the one-line fuzz summary of the security suite (tests/security).

The fuzz test counts what it sent and what came back in a :class:`FuzzStats`
kept on the pytest config; the end of the run prints
``fuzz: requests=N 5xx=N nonconforming=N`` whatever ``-q`` or ``-s`` say.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from tests.security.helpers import FuzzStats

_STATS = pytest.StashKey[FuzzStats]()
_HOME = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STATS] = FuzzStats()
    # Hypothesis keeps a cache under ./.hypothesis unless told otherwise: not in the checkout.
    if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
        home = tempfile.mkdtemp(prefix="tp-hypothesis-")
        os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = home
        config.stash[_HOME] = home
        from hypothesis.configuration import set_hypothesis_home_dir

        set_hypothesis_home_dir(home)


def pytest_unconfigure(config: pytest.Config) -> None:
    home = config.stash.get(_HOME, None)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def fuzz_stats(request: pytest.FixtureRequest) -> FuzzStats:
    return request.config.stash[_STATS]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    stats = config.stash.get(_STATS, None)
    if stats is not None and stats.happy_path:
        terminalreporter.write_sep("-", "schemathesis run (--checks all, stateful)")
        for line in stats.happy_path:
            terminalreporter.write_line(line)
    if stats is None or not stats.ran:
        return
    terminalreporter.write_sep("-", "fuzz summary")
    statuses = " ".join(f"{code}:{n}" for code, n in sorted(stats.statuses.items()))
    terminalreporter.write_line(f"statuses {statuses}")
    terminalreporter.write_line(stats.line())
