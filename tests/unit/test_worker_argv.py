"""The ``celery worker`` command line ``taskplane worker`` runs: which queues it consumes."""

from __future__ import annotations

from taskplane.runtime import STOCK_DEFAULT_QUEUE
from taskplane.settings import Settings
from taskplane.worker import worker_argv


def queues_of(argv: list[str]) -> list[str]:
    (flag,) = [a for a in argv if a.startswith("--queues=")]
    return flag.split("=", 1)[1].split(",")


def test_a_worker_of_the_default_queue_also_takes_stock_sends_and_webhook_deliveries() -> None:
    settings = Settings.from_env({"WORKER_QUEUES": "default,reports"})
    assert queues_of(worker_argv(settings)) == [
        "default", "reports", STOCK_DEFAULT_QUEUE, settings.webhook_queue]


def test_a_pool_that_lists_them_itself_gets_each_once() -> None:
    settings = Settings.from_env({"WORKER_QUEUES": "webhooks,default,celery"})
    assert queues_of(worker_argv(settings)) == ["webhooks", "default", "celery"]


def test_a_pool_without_the_default_queue_takes_only_its_own() -> None:
    settings = Settings.from_env({"WORKER_QUEUES": "reports"})
    assert queues_of(worker_argv(settings)) == ["reports"]
