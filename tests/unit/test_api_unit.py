"""Pure pieces of the API: token matching, body depth, the OpenAPI document vs. the routes."""

from __future__ import annotations

from taskplane import broker
from taskplane.api import create_app
from taskplane.api.auth import match_token
from taskplane.api.body import MAX_DEPTH, _too_deep
from taskplane.lifecycle import fingerprint
from taskplane.settings import Settings


def test_match_token_finds_the_tenant_or_none() -> None:
    tokens = {"a" * 20: "acme", "b" * 20: "globex"}
    assert match_token(tokens, "a" * 20) == "acme"
    assert match_token(tokens, "a" * 19) is None
    assert match_token(tokens, "") is None


def test_depth_scan_ignores_brackets_inside_strings() -> None:
    assert _too_deep("[" * (MAX_DEPTH + 1))
    assert not _too_deep('{"a": "' + "[" * 500 + '"}')
    assert not _too_deep("[" * MAX_DEPTH + "]" * MAX_DEPTH)


def test_fingerprint_ignores_key_order() -> None:
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_priorities_flip_for_the_redis_transport() -> None:
    assert broker.transport_priority(9) == 0  # most urgent is served first
    assert broker.transport_priority(0) == 9
    # kombu's default layout: four lists, the bare name served first
    assert broker.queue_keys("q") == ["q", "q\x06\x163", "q\x06\x166", "q\x06\x169"]
    assert [broker.queue_key("q", broker.transport_priority(p)) for p in (9, 7, 6, 4, 3, 1, 0)] == [
        "q", "q", "q\x06\x163", "q\x06\x163", "q\x06\x166", "q\x06\x166", "q\x06\x169"]
    assert [broker.api_priority(broker.transport_priority(p)) for p in range(10)] == list(range(10))
    assert len(broker.queue_keys("q")) == len(broker.PRIORITY_STEPS)


def test_openapi_document_matches_the_routes_exactly() -> None:
    app = create_app(Settings.from_env({"AUTH_DISABLED": "true"}))
    doc = app.test_client().get("/openapi.json").get_json()
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        routed |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == routed


def test_the_api_refuses_to_start_without_tokens() -> None:
    import pytest

    with pytest.raises(RuntimeError, match="API_TOKENS"):
        create_app(Settings.from_env({}))


def test_metric_catalogue_follows_the_naming_rules() -> None:
    from taskplane import metrics

    for spec in metrics.CATALOGUE_SPECS:
        assert spec.name.startswith("taskplane_")
        if spec.type == "counter":
            assert spec.name.endswith("_total"), spec.name
        if spec.type == "histogram" or "seconds" in spec.name:
            assert spec.name.endswith("_seconds"), spec.name
        if spec.type == "gauge" and spec.endpoint in ("api", "worker"):
            assert spec.multiprocess_mode, f"{spec.name} needs a multiprocess mode"
    assert list(metrics.TASK_BUCKETS) == sorted(metrics.TASK_BUCKETS)


def test_options_answers_204_with_allow_and_no_body() -> None:
    app = create_app(Settings.from_env({"AUTH_DISABLED": "true"}))
    response = app.test_client().options("/v1/tasks")
    assert response.status_code == 204 and response.data == b""
    assert "Content-Type" not in response.headers
    assert {"POST", "OPTIONS"} <= set(response.headers["Allow"].replace(" ", "").split(","))
