"""Webhook targets, secrets, signatures and back-off (``taskplane.webhooks``); the
signature is checked by the reference Standard Webhooks verifier."""

from __future__ import annotations

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from taskplane import webhooks

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


def public(_: str) -> list[str]:
    return ["93.184.215.14"]


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://10.1.2.3/", "https://192.168.0.9/", "https://[::1]/",
    "https://169.254.169.254/latest/meta-data/", "https://[::ffff:127.0.0.1]/",
    "https://0.0.0.0/", "https://100.64.0.1/", "https://[fd00::1]/",
])
def test_private_loopback_link_local_and_metadata_targets_are_refused(url: str) -> None:
    assert "address" in (webhooks.target_problem(url, False, False, public) or "")
    assert webhooks.target_problem(url, True, False, public) is None


def test_a_name_that_resolves_to_a_private_address_is_refused() -> None:
    problem = webhooks.target_problem("https://intranet.example/", False, False,
                                      lambda host: ["93.184.215.14", "10.0.0.7"])
    assert problem and "private" in problem
    assert webhooks.target_problem("https://example.com/x?y=1", False, False, public) is None

    def nowhere(host: str) -> list[str]:
        raise OSError("no such host")
    assert "resolve" in (webhooks.target_problem("https://nope.invalid/", False, False,
                                                 nowhere) or "")


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "gopher://x/",
                                 "javascript:alert(1)", "/relative", "example.com/hook", "",
                                 "https://user:pw@example.com/", 42, "https://x:99999/"])
def test_other_schemes_relative_and_malformed_urls_are_refused(url: object) -> None:
    assert webhooks.target_problem(url, True, True, public)


def test_http_needs_the_operator_setting() -> None:
    assert "https" in (webhooks.target_problem("http://example.com/", False, False, public)
                       or "")
    assert webhooks.target_problem("http://example.com/", False, True, public) is None


@pytest.mark.parametrize("secret", ["k" * 40, "whsec_", "whsec_!!!",
                                    "whsec_" + base64.b64encode(b"short").decode(), None])
def test_secrets_must_be_whsec_base64_of_24_to_64_bytes(secret: object) -> None:
    assert webhooks.secret_key(secret) is None
    problems = webhooks.notify_problems({"url": "https://example.com/", "secret": secret},
                                        False, False, public)
    assert [p["field"] for p in problems] == ["notify.secret"]


def test_notify_must_be_exactly_url_and_secret() -> None:
    assert webhooks.notify_problems({"url": "https://example.com/"}, False, False, public)
    assert webhooks.notify_problems("https://example.com/", False, False, public)
    assert webhooks.notify_problems({"url": "https://example.com/", "secret": SECRET},
                                    False, False, public) == []


def test_the_signature_verifies_with_the_reference_implementation() -> None:
    body = b'{"type":"task.succeeded","data":{"id":"t1"}}'
    stamp = int(time.time())
    signature = webhooks.sign(SECRET, "msg_1", stamp, body)
    assert signature.startswith("v1,")
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(stamp),
               "webhook-signature": signature}
    verifier = Webhook(SECRET)
    assert verifier.verify(body, headers)["data"]["id"] == "t1"
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body + b" ", headers)


def test_the_webhook_id_is_stable_per_ending() -> None:
    first = webhooks.event_id("task", "t1", "SUCCESS", "1700000000.5")
    assert first == webhooks.event_id("task", "t1", "SUCCESS", "1700000000.5")
    assert first != webhooks.event_id("task", "t1", "SUCCESS", "1700000099.5")
    assert first.startswith("msg_")


def test_back_off_grows_with_full_jitter_up_to_an_hour() -> None:
    assert webhooks.backoff(0, lambda: 1.0) == webhooks.FIRST_BACKOFF
    assert webhooks.backoff(3, lambda: 1.0) == webhooks.FIRST_BACKOFF * 8
    assert webhooks.backoff(50, lambda: 1.0) == webhooks.MAX_BACKOFF
    assert webhooks.backoff(5, lambda: 0.0) == 1.0  # never an immediate retry
