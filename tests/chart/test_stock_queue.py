"""Celery's default queue (``celery``) and the webhook deliveries' queue (``webhooks``) in
custom pools: a pool of the default queue consumes and counts both whether or not it lists
them, a pool may list them itself, and both render."""

from __future__ import annotations

import re

from .conftest import CHART, Render, env_of
from .test_structure import worker_deployments

CASE = "stock-queue-pools"


def pool_queues(render: Render) -> dict[str, list[str]]:
    out = {}
    for deployment in worker_deployments(render):
        pool = deployment["metadata"]["name"].rsplit("worker-", 1)[1]
        queues = deployment["metadata"]["annotations"]["taskplane.io/queues"].split(",")
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert env_of(container)["WORKER_QUEUES"]["value"] == ",".join(queues)
        out[pool] = queues
    return out


def test_a_pool_of_the_default_queue_counts_celerys_default_queue(
        renders: dict[str, Render]) -> None:
    queues = pool_queues(renders[CASE])
    assert queues == {"main": ["default", "celery", "webhooks"], "stock": ["reports", "celery"]}
    selectors = {}
    for hpa in renders[CASE].of_kind("HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]["name"].rsplit("worker-", 1)[-1]
        for metric in hpa["spec"]["metrics"]:
            (expression,) = metric["external"]["metric"]["selector"]["matchExpressions"]
            selectors.setdefault(target, expression["values"])
    assert selectors["main"] == ["default", "celery", "webhooks"], selectors
    config = next(c for c in renders[CASE].of_kind("ConfigMap") if "QUEUES" in c.get("data", {}))
    assert config["data"]["QUEUES"] == "celery,default,reports,webhooks"


def test_the_default_pool_is_unchanged(renders: dict[str, Render]) -> None:
    # and the webhook deliveries' queue (WEBHOOK_QUEUE), which workers consume
    assert pool_queues(renders["default"]) == {"default": ["default", "celery", "webhooks"]}


def test_the_charts_stock_queue_is_celerys_default() -> None:
    from taskplane.runtime import STOCK_DEFAULT_QUEUE

    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    (named,) = re.findall(r'define "taskplane.stockQueue" -\}\}(\w+)\{\{', helpers)
    assert named == STOCK_DEFAULT_QUEUE


def test_the_charts_webhook_queue_is_the_settings_default() -> None:
    from taskplane.settings import Settings

    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    (named,) = re.findall(r'define "taskplane.webhookQueue" -\}\}(\w+)\{\{', helpers)
    assert named == Settings.from_env({}).webhook_queue
