"""What a transition raises: an outcome Redis did not confirm, and a poisoned task."""

from __future__ import annotations

import redis


class OutcomeUnknown(Exception):
    """Redis did not answer a state change in time: it may or may not have happened.

    Raised instead of the connection error so that no caller reports "nothing was
    changed" for a write that may have been applied.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"Redis did not confirm the change ({type(cause).__name__})")
        self.cause = cause
        self.task_id = ""  # set by callers that know which task it concerns


def never_sent(exc: BaseException) -> bool:
    """True when ``exc`` was raised while connecting, before a command was sent.

    redis-py raises ``ConnectionError("Error N connecting to host:port. …")`` and
    ``TimeoutError("Timeout connecting to server")`` from ``Connection.connect``; every
    other connection error may come after the command reached Redis. A test pins these
    messages (``tests/lifecycle/test_transitions.py``).
    """
    return isinstance(exc, redis.ConnectionError | redis.TimeoutError) and (
        "connecting to" in str(exc))


class PoisonedTask(Exception):
    """The task's process died under it ``MAX_DELIVERIES`` times; it is not run again."""
