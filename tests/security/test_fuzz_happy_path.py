"""Schemathesis' own run, ``--checks all`` and its stateful phase, reaches the happy path.

``test_fuzz.py`` drives schemathesis from Python to check that every response conforms.
This one runs its CLI as a user would, against a real gunicorn on its own Redis, with
every check on (positive data accepted, negative data rejected, use after free...) and
all four phases: examples, coverage, fuzzing, and the stateful phase, which follows the
description's OpenAPI links from ``POST /v1/tasks`` to the task's routes and from
``POST /v1/schedules`` to the schedule's. Its NDJSON report (every case, every response,
every check, every link followed) is then read back, and the test asserts that:

* submissions were accepted (202) and schedules created (201) from generated bodies: the
  per-task schemas lead the fuzzer to valid arguments;
* the stateful phase called the task and schedule routes on the ids those responses
  returned, and got 2xx answers;
* no response was a 5xx, and schemathesis met no error;
* every failed check is in :data:`ALLOWED`, each with the reason it is not a bug.

No worker runs: submitted tasks stay queued, so the follow-ups see them PENDING and a
revoke succeeds; what workers do with arguments is tested elsewhere. Only the built-in
tasks are registered (the test tasks include ones that crash their worker).

``FUZZ_EXAMPLES`` sizes it like ``test_fuzz.py`` (examples per operation: a hundredth of
it, at least 5); ``make chaos`` runs it larger. ``FUZZ_REPORT_DIR`` keeps the reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.security.helpers import FuzzStats
from tests.support.services import ROOT, TEST_TOKENS, VENV_BIN, Api, RedisServer

pytestmark = pytest.mark.security

EXAMPLES = max(5, int(os.environ.get("FUZZ_EXAMPLES", "1200")) // 100)
#: Stateful scenarios: each a chain of up to ``MAX_STEPS`` calls along the links.
SCENARIOS, MAX_STEPS = 4 * EXAMPLES, 12
SEED = int(os.environ.get("FUZZ_SEED", "20261204"))

#: Failed checks that are not bugs: (check code, operation) -> why.
ALLOWED = {
    ("ST202", "GET /v1/tasks"):
        "`cursor` is opaque: only a `next` this API returned is accepted, which no schema "
        "of a string can say (its description says so; the server answers 422).",
    ("ST202", "PATCH /v1/schedules/{name}"):
        "a change is checked merged into the schedule it changes (new arguments against "
        "its task, `cron: null` on a cron schedule): valid alone, invalid for that schedule.",
    ("ST301", "DELETE /v1/tasks/{task_id}"):
        "DELETE /v1/tasks/{id} revokes a task, it does not delete it: the task stays "
        "readable (GET, its events) as REVOKED until its record expires.",
}


@dataclass
class Report:
    """What the NDJSON report says: every response, failed check and link followed."""

    statuses: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    #: (link id, status) of each stateful step that followed a link: one of the
    #: description's (``POST /v1/tasks -> [202] GetTask -> ...``) or one schemathesis
    #: inferred (from ``Location``, or a listing: ``... X-Inferred-Link-4 -> ...``)
    followed: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def count(self, method: str, path: str, low: int, high: int | None = None) -> int:
        high = low if high is None else high
        return sum(n for (m, p, s), n in self.statuses.items()
                   if m == method and p == path and low <= s <= high)

    def summary(self) -> list[str]:
        """A few lines for the end of the pytest run: the happy path and what was flagged."""
        followed = Counter()
        for (link, status), n in self.followed.items():
            source, target = link.split(" -> ")[0], link.split(" -> ")[-1]
            if source.startswith("POST") and 200 <= status < 300:
                followed[f"{source} -> {target}"] += n
        links = ", ".join(f"{step} {n}" for step, n in sorted(followed.items()))
        server = sum(n for (_, _, s), n in self.statuses.items() if s >= 500)
        return [f"responses={sum(self.statuses.values())} 5xx={server} "
                f"submit 202={self.count('POST', '/v1/tasks', 202)} "
                f"schedule 201={self.count('POST', '/v1/schedules', 201)}",
                f"follow-ups of created resources with 2xx: {links}",
                "failed checks (allowed): " + (", ".join(
                    f"{code} {op}" for code, op in sorted(self.failures)) or "none")]

    def table(self) -> str:
        rows = [f"{m:7} {p:38} {s}: {n}" for (m, p, s), n in sorted(self.statuses.items())]
        links = [f"{link} -> {s}: {n}" for (link, s), n in sorted(self.followed.items())]
        return "\n".join(["responses:", *rows, "links followed:", *links])


def read_report(path: Path) -> Report:
    report = Report()
    for line in path.read_text().splitlines():
        event = json.loads(line)
        (kind, body), = event.items()
        if "Error" in kind:
            report.errors.append(f"{kind}: {json.dumps(body)[:600]}")
        if kind != "ScenarioFinished" or "cases" not in body["recorder"]:
            continue
        recorder = body["recorder"]
        for case_id, case in recorder["cases"].items():
            value = case["value"]
            response = (recorder.get("interactions", {}).get(case_id) or {}).get("response")
            if response is None:
                continue
            status = int(response["status_code"])
            report.statuses[(value["method"], value["path"], status)] += 1
            transition = case.get("transition")
            if transition:
                report.followed[(transition["id"], status)] += 1
        for checks in recorder.get("checks", {}).values():
            for check in checks:
                failure = (check.get("failure_info") or {}).get("failure")
                if check.get("status") == "failure" and failure:
                    key = (failure["code"], failure["operation"])
                    report.failures.setdefault(key, f"{failure['title']}: {failure['message']}")
    return report


@pytest.fixture(scope="module")
def fuzz_api() -> Iterator[Api]:
    redis = RedisServer().start()
    api = None
    try:
        # Built-in tasks only; waits and event streams short, as nothing ever runs.
        api = Api(redis.url, TASK_MODULES="", MAX_WAIT="0.5", MAX_EVENT_STREAM="1")
        yield api
    finally:
        if api is not None:
            api.close()
        redis.close()


@pytest.fixture(scope="module")
def report(fuzz_api: Api, fuzz_stats: FuzzStats) -> Iterator[Report]:
    kept = os.environ.get("FUZZ_REPORT_DIR")
    out = Path(kept) if kept else Path(tempfile.mkdtemp(prefix="tp-schemathesis-"))
    out.mkdir(parents=True, exist_ok=True)
    ndjson = out / "schemathesis.ndjson"
    config = out / "schemathesis.toml"
    config.write_text(f"[phases.stateful]\nmax-steps = {MAX_STEPS}\n"
                      f"[phases.stateful.generation]\nmax-examples = {SCENARIOS}\n")
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.security.fuzz_hooks",
           "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    command = [str(VENV_BIN / "schemathesis"), "--config-file", str(config), "run",
               f"{fuzz_api.base}/openapi.json",
               "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
               "-n", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
               "--request-timeout", "10",
               "-H", f"Authorization: Bearer {TEST_TOKENS['acme']}",
               "--report", "ndjson,junit", "--report-dir", str(out),
               "--report-ndjson-path", str(ndjson)]
    try:
        # run in the report folder: schemathesis keeps a cache of the failures it found in
        # ./.schemathesis, which would replay them first next time (and sit in the checkout)
        done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True,
                              timeout=600)
        (out / "schemathesis.txt").write_text(done.stdout + done.stderr)
        assert ndjson.exists(), f"no report; schemathesis said:\n{done.stdout[-3000:]}" \
                                f"{done.stderr[-3000:]}"
        found = read_report(ndjson)
        print(found.table())  # in the test's captured output, and with -s
        fuzz_stats.happy_path = found.summary()
        yield found
    finally:
        if not kept:
            shutil.rmtree(out, ignore_errors=True)


def test_no_server_error_and_no_schemathesis_error(report: Report) -> None:
    server_errors = {k: n for k, n in report.statuses.items() if k[2] >= 500}
    assert not server_errors, f"5xx answers: {server_errors}\n{report.table()}"
    assert not report.errors, "\n".join(report.errors)
    assert sum(report.statuses.values()) > 20 * EXAMPLES, report.table()


def test_submissions_and_schedules_reach_the_happy_path(report: Report) -> None:
    assert report.count("POST", "/v1/tasks", 202) >= 3, report.table()
    assert report.count("POST", "/v1/schedules", 201) >= 3, report.table()


def _followed(report: Report, source: str, target: str, described: bool = False) -> int:
    """2xx answers of stateful steps that took a link from ``source`` to ``target`` (only
    the description's own links if ``described``)."""
    return sum(n for (link, status), n in report.followed.items()
               if link.startswith(source) and link.endswith(target) and 200 <= status < 300
               and not (described and "X-Inferred-Link" in link))


def test_the_stateful_phase_follows_the_links_to_real_resources(report: Report) -> None:
    """The ids a 202 and a 201 returned are used, and answer 2xx: the task is read and
    revoked, the schedule read, changed or deleted; at least one task follow-up went by
    a link of the description (schemathesis also infers some from ``Location``)."""
    submitted = "POST /v1/tasks -> [202]"
    created = "POST /v1/schedules -> [201]"
    assert _followed(report, submitted, "GET /v1/tasks/{task_id}") >= 1, report.table()
    assert _followed(report, submitted, "DELETE /v1/tasks/{task_id}") >= 1, report.table()
    described = sum(_followed(report, submitted, target, described=True) for target in (
        "GET /v1/tasks/{task_id}", "DELETE /v1/tasks/{task_id}",
        "GET /v1/tasks/{task_id}/events"))
    assert described >= 1, report.table()
    on_schedules = sum(_followed(report, created, f"{method} /v1/schedules/{{name}}")
                       for method in ("GET", "PATCH", "DELETE"))
    assert on_schedules >= 1, report.table()


def test_every_failed_check_is_allowed_with_a_reason(report: Report) -> None:
    unexpected = {key: text for key, text in report.failures.items() if key not in ALLOWED}
    listing = "\n\n".join(f"{code} {operation}: {text}"
                          for (code, operation), text in sorted(unexpected.items()))
    assert not unexpected, f"{len(unexpected)} failed checks not allowed:\n\n{listing}"

