"""A typed, synchronous Python client for Taskplane's HTTP API.

    from taskplane.client import Client

    tp = Client("https://tasks.example.com", token="...")
    task = tp.submit("reports.summary", kwargs={"csv": "city,temp\\nOslo,3"})
    done = tp.wait(task.id)            # one call; woken by the server, not by polling
    print(done.state, done.result)

Every ``submit`` carries an Idempotency-Key (a fresh one unless you pass yours), and a
submission refused with 429 or 503, or whose answer was lost, is sent again with the same
key after the server's ``Retry-After``: it returns the one task, never a second. Errors
raise :class:`TaskplaneError` with the API's ``{"error": {code, message, details}}``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

#: States a task never leaves.
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")
#: The longest single ``?wait=`` this client asks for (the API's ``MAX_WAIT`` is 60 by
#: default; a shorter one there makes the client ask for less, see :meth:`Client.wait`).
MAX_WAIT = 25.0


class TaskplaneError(Exception):
    """An answer that is not a success: the API's error envelope, or no answer at all."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after


@dataclass(frozen=True)
class Task:
    """A task as the API describes it (``raw`` holds every field it sent)."""

    id: str
    task: str
    state: str
    result: Any = None
    error: dict[str, str] | None = None
    progress: dict[str, Any] | None = None
    queue: str | None = None
    retries: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Task:
        return cls(id=str(body["id"]), task=str(body.get("task", "")), state=str(body["state"]),
                   result=body.get("result"), error=body.get("error"),
                   progress=body.get("progress"), queue=body.get("queue"),
                   retries=int(body.get("retries", 0)), raw=dict(body))


#: Statuses worth sending again after ``Retry-After`` (rate limit, cap, Redis away).
RETRYABLE = (429, 503)


class Client:
    """One API endpoint and token. Cheap to create; keeps one HTTP session.

    ``retries``: how many times a refused (429/503) or unanswered request is sent again,
    waiting the server's ``Retry-After`` (at most ``max_retry_wait`` seconds) in between.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0, retries: int = 5,
                 max_retry_wait: float = 30.0, session: requests.Session | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"
        self._wait_chunk = MAX_WAIT

    # --- tasks ------------------------------------------------------------------------

    def submit(self, task: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
               *, queue: str | None = None, countdown: float | None = None,
               priority: int | None = None, idempotency_key: str | None = None) -> Task:
        """Submit ``task``; retried safely under one Idempotency-Key."""
        body: dict[str, Any] = {"task": task, "args": list(args), "kwargs": dict(kwargs or {})}
        for name, value in (("queue", queue), ("countdown", countdown), ("priority", priority)):
            if value is not None:
                body[name] = value
        key = idempotency_key or str(uuid.uuid4())
        return Task.from_json(self._call("POST", "/v1/tasks", json=body,
                                         headers={"Idempotency-Key": key}, retry_unanswered=True))

    def get(self, task_id: str) -> Task:
        return Task.from_json(self._call("GET", f"/v1/tasks/{task_id}", retry_unanswered=True))

    def wait(self, task_id: str, timeout: float | None = None) -> Task:
        """The task once it has ended, or as it is when ``timeout`` seconds have passed.

        Each request asks the server to hold it until the task ends (``?wait=``), so this
        returns within moments of the ending without polling. Through an outage (Redis or
        the API away: 503, 429 or no answer) it keeps asking, after each ``Retry-After``,
        until the task ends or ``timeout`` passes: it comes back on its own."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            chunk = self._wait_chunk
            left = chunk if deadline is None else min(chunk, deadline - time.monotonic())
            try:
                body = self._call("GET", f"/v1/tasks/{task_id}",
                                  params={"wait": f"{max(0.0, left):.3f}"},
                                  retry_unanswered=True, timeout=self.timeout + chunk)
            except TaskplaneError as err:
                if err.status == 422 and chunk > 1:  # the API's MAX_WAIT is shorter
                    self._wait_chunk = max(1.0, chunk / 2)
                    continue
                if err.status in (0, *RETRYABLE) and self._pause(err.retry_after, deadline):
                    continue
                raise
            task = Task.from_json(body)
            if task.done or (deadline is not None and time.monotonic() >= deadline):
                return task

    def events(self, task_id: str, timeout: float | None = None) -> Iterator[Task]:
        """Each state and progress change of the task, as it happens, until it ends.

        A stream the server ends early (its ``MAX_EVENT_STREAM``, or an ``error`` event when
        Redis went away) or that breaks is opened again, after the server's ``retry`` hint,
        with ``Last-Event-ID``: it goes on by itself until the task ends (or ``timeout``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last_id, retry = "", 1.0
        while True:
            last: Task | None = None
            headers = {"Last-Event-ID": last_id} if last_id else {}
            failure: TaskplaneError | None = None
            try:
                with self.session.get(f"{self.url}/v1/tasks/{task_id}/events", stream=True,
                                      headers=headers,
                                      timeout=(self.timeout, self.timeout + 30)) as r:
                    if r.status_code != 200:
                        raise _error(r)
                    for event in _sse_events(r.iter_lines(decode_unicode=True)):
                        if event.retry is not None:
                            retry = event.retry
                        if event.id:
                            last_id = event.id
                        if event.kind == "error":
                            failure = TaskplaneError(503, "stream_error", event.data, None,
                                                     retry)
                        elif event.kind == "state":
                            last = Task.from_json(json.loads(event.data))
                            yield last
            except requests.RequestException as exc:
                failure = TaskplaneError(0, "unreachable", str(exc))
            except TaskplaneError as err:
                if err.status != 503:  # a 429 (no follower slot) is the caller's to handle
                    raise
                failure = err
            if last is not None and last.done:
                return
            if failure is not None and not self._pause(failure.retry_after or retry, deadline):
                raise failure
            # else the server closed a long stream: follow on

    def _pause(self, seconds: float | None, deadline: float | None) -> bool:
        """Sleep before asking again (``seconds`` or 1, at most ``max_retry_wait``); False
        when that would pass ``deadline``."""
        pause = min(self.max_retry_wait, seconds or 1.0)
        if deadline is not None and time.monotonic() + pause >= deadline:
            return False
        time.sleep(pause)
        return True

    def cancel(self, task_id: str, terminate: bool = False) -> Task:
        """Revoke the task: one not yet started never runs; ``terminate`` stops a running
        one too. Raises 409 ``task_running``/``task_finished`` when it cannot."""
        params = {"terminate": "true"} if terminate else None
        return Task.from_json(self._call("DELETE", f"/v1/tasks/{task_id}", params=params))

    def list(self, *, state: str | None = None, task: str | None = None,
             queue: str | None = None, submitted_after: str | float | None = None,
             submitted_before: str | float | None = None, page_size: int = 100
             ) -> Iterator[Task]:
        """Your tasks, newest first, page after page as you iterate."""
        params: dict[str, Any] = {"limit": page_size}
        for name, value in (("state", state), ("task", task), ("queue", queue),
                            ("submitted_after", submitted_after),
                            ("submitted_before", submitted_before)):
            if value is not None:
                params[name] = value
        while True:
            page = self._call("GET", "/v1/tasks", params=params, retry_unanswered=True)
            for item in page["items"]:
                yield Task.from_json(item)
            if not page.get("next"):
                return
            params["cursor"] = page["next"]

    def dead_letters(self, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Tasks that failed for good, newest first."""
        offset = 0
        while True:
            page = self._call("GET", "/v1/dead-letters",
                              params={"limit": page_size, "offset": offset},
                              retry_unanswered=True)
            yield from page["items"]
            offset += len(page["items"])
            if not page["items"] or offset >= page.get("total", 0):
                return

    def retry(self, task_id: str) -> Task:
        """Enqueue a dead letter again under its id."""
        return Task.from_json(self._call("POST", f"/v1/dead-letters/{task_id}/retry"))

    # --- plumbing ---------------------------------------------------------------------

    def _call(self, method: str, path: str, *, retry_unanswered: bool = False,
              timeout: float | None = None, **kwargs: Any) -> Any:
        """One API call; 429/503 are sent again after Retry-After. An unanswered request is
        sent again only where that cannot do anything twice (reads, keyed submits)."""
        attempt = 0
        while True:
            try:
                r = self.session.request(method, self.url + path,
                                         timeout=timeout or self.timeout, **kwargs)
            except requests.ConnectionError as exc:
                if not retry_unanswered or attempt >= self.retries:
                    raise TaskplaneError(0, "unreachable", str(exc)) from exc
                attempt += 1
                time.sleep(min(self.max_retry_wait, 0.5 * 2 ** attempt))  # back-off
                continue
            if r.status_code < 400:
                return r.json()
            error = _error(r)
            if r.status_code not in RETRYABLE or attempt >= self.retries:
                raise error
            attempt += 1
            time.sleep(min(self.max_retry_wait, error.retry_after or 1.0))  # Retry-After


def _error(r: requests.Response) -> TaskplaneError:
    retry_after = None
    if r.headers.get("Retry-After", "").replace(".", "", 1).isdigit():
        retry_after = float(r.headers["Retry-After"])
    try:
        err = r.json()["error"]
        return TaskplaneError(r.status_code, str(err["code"]), str(err["message"]),
                              err.get("details"), retry_after)
    except (ValueError, KeyError, TypeError):
        return TaskplaneError(r.status_code, "http_error", r.text[:200] or r.reason, None,
                              retry_after)


@dataclass(frozen=True)
class _Event:
    kind: str
    data: str
    id: str
    retry: float | None  # seconds, from the stream's ``retry:`` field


def _sse_events(raw_lines: Iterator[str | bytes]) -> Iterator[_Event]:
    """The events of a Server-Sent Events stream (comments skipped; UTF-8, the only encoding
    SSE has, should requests hand over bytes). A ``retry:`` with no event after it still
    reaches the caller, as an event of kind ``""``."""
    event: dict[str, str] = {}
    for raw in raw_lines:
        line = raw.decode() if isinstance(raw, bytes) else raw
        if line == "":
            retry = event.get("retry", "")
            if "data" in event or retry:
                yield _Event(event.get("event", "message" if "data" in event else ""),
                             event.get("data", ""),
                             event.get("id", ""),
                             int(retry) / 1000 if retry.isdigit() else None)
            event = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            event[name] = value[1:] if value.startswith(" ") else value
