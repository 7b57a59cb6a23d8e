from __future__ import annotations

from pathlib import Path

import pytest

from taskplane.settings import Settings, SettingsError, settings_table

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_frozen() -> None:
    s = Settings.from_env({})
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.result_backend_url == ""
    with pytest.raises(AttributeError):
        s.redis_url = "x"  # type: ignore[misc]


def test_environment_is_parsed_by_type() -> None:
    s = Settings.from_env({"API_PORT": "9000", "AUTH_DISABLED": "yes", "REDIS_TIMEOUT": "0.5",
                           "TASK_MODULES": "a.tasks, b.tasks,", "QUEUES": "heavy"})
    assert (s.api_port, s.auth_disabled, s.redis_timeout) == (9000, True, 0.5)
    assert s.task_modules == ("a.tasks", "b.tasks")
    assert s.queues == ("heavy",)


@pytest.mark.parametrize(("env", "message"), [
    ({"API_PORT": "eighty"}, "API_PORT"),
    ({"AUTH_DISABLED": "maybe"}, "AUTH_DISABLED"),
    ({"QUEUES": "Bad Queue"}, "queue name"),
    ({"DEFAULT_SOFT_TIME_LIMIT": "400"}, "DEFAULT_SOFT_TIME_LIMIT"),
    ({"VISIBILITY_TIMEOUT": "20", "LEASE_INTERVAL": "10"}, "LEASE_INTERVAL"),
    ({"LEASE_INTERVAL": "0"}, "LEASE_INTERVAL"),
    ({"MAX_DELIVERIES": "0"}, "MAX_DELIVERIES"),
    ({"REDIS_URL": "http://x"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://redis.prod:6379/0"}, "password"),
    ({"WORKER_CONCURRENCY": "0"}, "WORKER_CONCURRENCY"),
    ({"MAX_SCHEDULES_PER_TENANT": "-1"}, "MAX_SCHEDULES_PER_TENANT"),
])
def test_bad_settings_are_refused_with_their_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_remote_redis_needs_a_password_or_an_explicit_override() -> None:
    assert Settings.from_env({"REDIS_URL": "redis://:pw@redis.prod:6379/0"})
    assert Settings.from_env({"REDIS_URL": "redis://redis.prod:6379/0",
                              "REDIS_ALLOW_NO_PASSWORD": "true"})
    assert Settings.from_env({"REDIS_URL": "redis://localhost:6379/0"})


def test_tokens_from_value_and_from_file(tmp_path: Path) -> None:
    s = Settings.from_env({"API_TOKENS": "acme:aaaaaaaaaaaaaaaa1, globex:bbbbbbbbbbbbbbbb2"})
    assert s.tokens() == {"aaaaaaaaaaaaaaaa1": "acme", "bbbbbbbbbbbbbbbb2": "globex"}
    f = tmp_path / "tokens"
    f.write_text("# mounted secret\nacme:cccccccccccccccc3\n\n")
    assert Settings.from_env({"API_TOKENS": str(f)}).tokens() == {"cccccccccccccccc3": "acme"}
    with pytest.raises(SettingsError, match="16"):
        Settings.from_env({"API_TOKENS": "acme:short"}).tokens()
    with pytest.raises(SettingsError, match="cannot be read"):
        Settings.from_env({"API_TOKENS": str(tmp_path / "missing")}).tokens()


def test_operator_tokens_are_their_own_kind(tmp_path: Path) -> None:
    tenants = "acme:aaaaaaaaaaaaaaaa1"
    s = Settings.from_env({"API_TOKENS": tenants, "API_ADMIN_TOKENS": "ops:oooooooooooooooo1"})
    assert s.admin_tokens() == {"oooooooooooooooo1": "ops"}
    f = tmp_path / "operators"
    f.write_text("ops:pppppppppppppppp2\n")
    assert Settings.from_env({"API_ADMIN_TOKENS": str(f)}).admin_tokens() == {
        "pppppppppppppppp2": "ops"}
    with pytest.raises(SettingsError, match="both"):
        Settings.from_env({"API_TOKENS": tenants,
                           "API_ADMIN_TOKENS": "ops:aaaaaaaaaaaaaaaa1"}).admin_tokens()
    with pytest.raises(SettingsError, match="tenant names"):
        Settings.from_env({"API_TOKENS": tenants,
                           "API_ADMIN_TOKENS": "acme:oooooooooooooooo1"}).admin_tokens()
    with pytest.raises(SettingsError, match="API_ADMIN_TOKENS entries"):
        Settings.from_env({"API_ADMIN_TOKENS": "ops:short"}).admin_tokens()
    assert "oooooooooooooooo1" not in repr(s.redacted())


def test_redacted_hides_secrets() -> None:
    s = Settings.from_env({"REDIS_URL": "redis://:hunter2@localhost:6379/0",
                           "API_TOKENS": "acme:aaaaaaaaaaaaaaaa1"})
    text = repr(s.redacted())
    assert "hunter2" not in text and "aaaaaaaaaaaaaaaa1" not in text


def test_readme_settings_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README settings table is stale: run `make docs`"


def test_readme_metrics_table_is_current() -> None:
    from taskplane.metrics import reference_table

    assert reference_table() in (ROOT / "README.md").read_text(), "run `make docs`"


def test_results_in_another_redis_are_refused_with_the_reason() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0",
                           "RESULT_BACKEND_URL": "redis://127.0.0.1:6380/0"})
    message = str(refused.value)
    assert "RESULT_BACKEND_URL" in message and "REDIS_URL" in message
    assert "One result store" in message and "README" in message


@pytest.mark.parametrize("results", ["", "redis://r:6379/1", "redis://:pw%2F@r:6379/1"])
def test_results_in_the_records_redis_are_accepted(results: str) -> None:
    """Equal to ``REDIS_URL`` once ``REDIS_PASSWORD`` went into both (the TLS deploy test's
    form), or empty."""
    s = Settings.from_env({"REDIS_URL": "redis://r:6379/1", "REDIS_PASSWORD": "pw/",
                           "RESULT_BACKEND_URL": results})
    assert s.result_backend_url in ("", s.redis_url)


def test_the_reconcile_pass_runs_behind_sentinel_by_default_and_not_on_a_single_node() -> None:
    single = Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert single.reconcile_seconds == 0
    sentinel = Settings.from_env({"REDIS_URL": "sentinel://127.0.0.1:26379/0",
                                  "REDIS_SENTINEL_MASTER": "m"})
    assert sentinel.reconcile_seconds == 10
    assert Settings.from_env({"RECONCILE_INTERVAL": "2.5"}).reconcile_seconds == 2.5
    for bad in ("-1", "soon", "nan"):
        with pytest.raises(SettingsError, match="RECONCILE_INTERVAL"):
            Settings.from_env({"RECONCILE_INTERVAL": bad})
