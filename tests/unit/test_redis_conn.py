"""Sentinel URLs, settings and the options every Redis client gets (no server needed)."""

from __future__ import annotations

import socket

import pytest

from taskplane import broker, redis_conn, results
from taskplane.celery_app import create_celery
from taskplane.settings import Settings, SettingsError

URL = "sentinel://10.0.0.1:26379;sentinel://10.0.0.2;sentinel://:pw@10.0.0.3:26380/2"
ENV = {"REDIS_URL": URL, "REDIS_SENTINEL_MASTER": "mymaster",
       "REDIS_SENTINEL_PASSWORD": "sentinel-secret"}


def test_a_sentinel_url_lists_every_sentinel_with_one_db_and_password() -> None:
    target = redis_conn.parse_sentinel_url(URL)
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380))
    assert (target.db, target.password) == (2, "pw")
    # normal form: kombu and Celery read the db and password from the first entry
    assert target.url().split(";")[0] == "sentinel://:pw@10.0.0.1:26379/2"
    assert redis_conn.parse_sentinel_url(target.url()) == target


@pytest.mark.parametrize("url, says", [
    ("sentinel://h1:1/0;redis://h2:6379/0", "every entry"),
    ("sentinel://h1:1/0;sentinel://h2:2/3", "different dbs"),
    ("sentinel://:a@h1:1;sentinel://:b@h2:2", "different dbs or passwords"),
    ("sentinel://h1:1/x", "must be a number"),
    ("sentinel://h1:99999", "invalid port"),
])
def test_a_bad_sentinel_url_is_refused_saying_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(redis_conn.SentinelUrlError, match=says):
        redis_conn.parse_sentinel_url(url)
    with pytest.raises(SettingsError, match="REDIS_URL"):
        Settings.from_env({**ENV, "REDIS_URL": url})


def test_a_sentinel_url_without_a_master_name_fails_naming_the_setting() -> None:
    with pytest.raises(SettingsError, match="REDIS_SENTINEL_MASTER"):
        Settings.from_env({"REDIS_URL": URL})


def test_redis_password_goes_into_every_sentinel_entry_and_is_never_shown() -> None:
    settings = Settings.from_env({**ENV, "REDIS_URL": "sentinel://10.0.0.1;sentinel://10.0.0.2/1",
                                  "REDIS_PASSWORD": "p@ss;word"})
    assert settings.redis_url == ("sentinel://:p%40ss%3Bword@10.0.0.1:26379/1;"
                                  "sentinel://:p%40ss%3Bword@10.0.0.2:26379/1")
    assert redis_conn.parse_sentinel_url(settings.redis_url).password == "p@ss;word"
    shown = str(settings.redacted())
    assert "p@ss" not in shown and "p%40ss" not in shown and "sentinel-secret" not in shown


def test_remote_sentinels_without_a_data_password_are_refused() -> None:
    with pytest.raises(SettingsError, match="no password"):
        Settings.from_env({**ENV, "REDIS_URL": "sentinel://10.0.0.1:26379/0"})
    assert Settings.from_env({**ENV, "REDIS_URL": "sentinel://127.0.0.1:26379/0"})


def test_sentinel_connections_get_timeouts_keepalive_and_their_own_password() -> None:
    settings = Settings.from_env({**ENV, "REDIS_TIMEOUT": "1.5"})
    kwargs = redis_conn.sentinel_kwargs(settings)
    assert kwargs["password"] == "sentinel-secret"
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 1.5
    assert kwargs["socket_keepalive"] is True
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert kwargs["socket_keepalive_options"][socket.TCP_KEEPIDLE] == 5
    assert "ssl" not in kwargs


def test_tls_to_sentinels_and_to_the_master_are_set_apart() -> None:
    only_sentinels = Settings.from_env({**ENV, "REDIS_SENTINEL_TLS": "true",
                                        "REDIS_TLS_CA_FILE": "/ca.pem"})
    assert redis_conn.sentinel_kwargs(only_sentinels)["ssl"] is True
    assert redis_conn.sentinel_kwargs(only_sentinels)["ssl_ca_certs"] == "/ca.pem"
    assert redis_conn.celery_ssl(only_sentinels.redis_url, only_sentinels) is None
    only_master = Settings.from_env({**ENV, "REDIS_MASTER_TLS": "true"})
    assert "ssl" not in redis_conn.sentinel_kwargs(only_master)
    assert redis_conn.celery_ssl(only_master.redis_url, only_master) == {
        "ssl_cert_reqs": "required"}
    client = redis_conn.client(only_master.redis_url, only_master)
    assert client.connection_pool.connection_class is redis_conn.MasterSSLConnection


def test_the_lifecycle_client_finds_the_master_through_the_sentinels() -> None:
    settings = Settings.from_env(ENV)
    client = redis_conn.client(settings.redis_url, settings, patient=True)
    pool = client.connection_pool
    assert pool.service_name == "mymaster"
    assert pool.connection_class is redis_conn.MasterConnection
    assert pool.connection_kwargs["socket_timeout"] == settings.redis_timeout
    assert pool.connection_kwargs["socket_keepalive"] is True
    assert pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["retry"] is not None
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["password"] for s in sentinels] == [
        "sentinel-secret"] * 3
    assert all(s.connection_pool.connection_kwargs["socket_timeout"] == settings.redis_timeout
               for s in sentinels)


def test_celery_gets_master_name_in_both_transport_options_and_the_sentinel_classes() -> None:
    app = create_celery(Settings.from_env(ENV))
    for options in (app.conf.broker_transport_options,
                    app.conf.result_backend_transport_options):
        assert options["master_name"] == "mymaster"
        assert options["sentinel_kwargs"]["password"] == "sentinel-secret"
        assert options["sentinel_kwargs"]["socket_timeout"] > 0
    assert app.conf.broker_transport_options["socket_timeout"] > 0  # celery#6348
    assert app.conf.broker_transport == broker.SENTINEL_TRANSPORT
    assert type(app.backend) is results.SentinelResultBackend
    assert app.backend.connparams["connection_class"] is redis_conn.MasterConnection
    assert app.backend.connparams["socket_timeout"] > 0
    with app.connection_for_write() as conn:
        channel_cls = conn.transport.Channel
        assert channel_cls is broker.RideThroughSentinelChannel
        assert channel_cls.connection_class is redis_conn.MasterConnection


def test_a_single_node_keeps_its_transport_and_backend() -> None:
    app = create_celery(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}))
    assert app.conf.broker_transport == broker.TRANSPORT
    assert "master_name" not in app.conf.broker_transport_options
    assert "master_name" not in app.conf.result_backend_transport_options
    assert type(app.backend) is results.ResultBackend


def test_describe_never_shows_a_password() -> None:
    assert redis_conn.describe(Settings.from_env(ENV).redis_url) == (
        "sentinel://10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26380/2")
    assert "pw" not in redis_conn.describe("redis://:pw@h:6379/0")


def test_kombus_failover_between_sentinels_keeps_the_ride_through_transport() -> None:
    """kombu treats the sentinels of a URL as failover alternates and re-reads the
    transport from the next one's scheme: ``sentinel`` must still name ours."""
    from kombu import Connection

    app = create_celery(Settings.from_env(ENV))
    conn = Connection(app.conf.broker_url, transport=app.conf.broker_transport)
    conn.maybe_switch_next()  # what a lost connection does
    assert conn.transport_cls == "sentinel"
    assert conn.get_transport_cls() is broker.RideThroughSentinelTransport


class _StubSentinel:
    """What one sentinel answers: its ``SENTINEL MASTERS`` entry and, when it runs the
    failover, ``GET-MASTER-ADDR-BY-NAME``'s promoted replica (pure logic: no server)."""

    def __init__(self, ip: str, flags: str, epoch: int = 1,
                 names: tuple[str, int] | None = None, down: bool = False) -> None:
        self.state = {"ip": ip, "port": 6379, "flags": flags, "config-epoch": epoch,
                      "is_master": "master" in flags.split(","),
                      "is_sdown": "s_down" in flags, "is_odown": "o_down" in flags,
                      "num-other-sentinels": 2}
        self.names, self.down = names or (ip, 6379), down

    def sentinel_masters(self) -> dict[str, dict[str, object]]:
        if self.down:
            raise redis_conn.redis.ConnectionError("refused")
        return {"mymaster": self.state}

    def sentinel_get_master_addr_by_name(self, name: str) -> tuple[bytes, int]:
        return self.names[0].encode(), self.names[1]


def _discover(*sentinels: _StubSentinel) -> tuple[str, int]:
    finder = redis_conn.FailoverSentinel([])
    finder.sentinels = list(sentinels)  # type: ignore[arg-type]  # stubs of redis.Redis
    return finder.discover_master("mymaster")


def test_discovery_takes_the_replica_a_failover_under_way_promoted() -> None:
    # a planned failover: two sentinels still name the old, healthy master; the one running
    # the failover already names the promoted replica
    old = _StubSentinel("10.0.0.1", "master")
    leader = _StubSentinel("10.0.0.1", "master,failover_in_progress", names=("10.0.0.2", 6379))
    assert _discover(old, old, leader) == ("10.0.0.2", 6379)
    # before the promotion it names the old master, which is then what is found
    waiting = _StubSentinel("10.0.0.1", "master,failover_in_progress")
    assert _discover(old, waiting) == ("10.0.0.1", 6379)


def test_discovery_takes_the_newest_configuration_and_skips_silent_sentinels() -> None:
    stale = _StubSentinel("10.0.0.1", "master", epoch=3)
    fresh = _StubSentinel("10.0.0.2", "master", epoch=4)
    assert _discover(_StubSentinel("x", "master", down=True), stale, fresh) == ("10.0.0.2", 6379)
    down = _StubSentinel("10.0.0.1", "master,s_down,o_down", epoch=5)
    with pytest.raises(redis_conn.MasterNotFoundError, match="No master found"):
        _discover(down, _StubSentinel("y", "master", down=True))
