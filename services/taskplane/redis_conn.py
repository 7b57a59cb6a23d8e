"""The one place a Redis connection is configured: a single node, or a master found
through Redis Sentinel.

``REDIS_URL`` takes kombu's Sentinel form, ``sentinel://[:password@]host:26379;
sentinel://host2:26379;.../0``, with ``REDIS_SENTINEL_MASTER`` naming the master set and
``REDIS_SENTINEL_PASSWORD`` the sentinels' own password. Every client Taskplane builds
(the lifecycle's, the probes', the exporter's, the scheduler's, the ``?wait`` pub/sub)
comes from :func:`client`, and Celery's broker and result backend get their options from
:func:`broker_options` and :func:`backend_options`, so all of them find the master the
same way and find the new one by themselves after a failover:

* redis-py's ``SentinelManagedConnection`` asks the sentinels for the master's address
  on every (re)connection, and turns a demoted master's ``READONLY`` into a
  ``ConnectionError`` after dropping the socket: the next attempt rediscovers.
* Socket timeouts and TCP keepalive are set on master *and* sentinel connections. kombu's
  default ``socket_timeout`` is None, so a worker would never notice a master lost at the
  network level (celery#6348), and Celery's Sentinel backend does not pass its timeouts on
  to the sentinel connections: both go into ``sentinel_kwargs`` here.
* ``master_name`` goes into both the broker's and the result backend's transport options
  (the backend only fails at first use without it).
* TLS to the master (``REDIS_MASTER_TLS``) and to the sentinels (``REDIS_SENTINEL_TLS``)
  are set separately: they are often different listeners.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.connection import Connection, SSLConnection
from redis.exceptions import ReadOnlyError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelManagedConnection

if TYPE_CHECKING:
    from .settings import Settings

log = logging.getLogger("taskplane.redis")

#: The URL scheme of a Sentinel ``REDIS_URL`` (kombu's and Celery's).
SENTINEL_SCHEME = "sentinel"
#: Separator between the sentinels of one URL (kombu's and Celery's).
SEPARATOR = ";"
#: Port a sentinel listens on when its URL names none.
SENTINEL_PORT = 26379

#: How long a worker keeps retrying Redis before a write gives up: a task that finished
#: during a short Redis outage (or a failover) must still end SUCCESS, not
#: FAILURE(ConnectionError).
WORKER_REDIS_RETRIES = 25  # 0.1 s doubling to 2 s apart: about 45 s in all
WORKER_REDIS_BACKOFF = {"base": 0.1, "cap": 2.0}
#: Seconds between checks that an idle pooled connection still answers.
HEALTH_CHECK_INTERVAL = 30


class WriteRefused(redis.ConnectionError):
    """The node behind the master's address refused a write: it was demoted (``READONLY``)
    or has lost its replicas (``NOREPLICAS``, ``min-replicas-to-write``). Redis refuses a
    script at its first write, so nothing was applied. The connection is dropped, so the
    next attempt asks the sentinels for the master again.

    A ``ConnectionError``: every caller that rides through a lost connection (kombu's
    consumer, a worker's patient retries) rides through this too.
    """


#: Error prefixes after which a Sentinel master connection is dropped and rediscovered
#: (redis-py strips the prefix of the ones it knows: READONLY is ``ReadOnlyError``).
REFUSED_PREFIXES = ("READONLY", "NOREPLICAS")


class MasterConnection(SentinelManagedConnection):
    """redis-py's Sentinel master connection, which also treats ``NOREPLICAS`` as "not the
    master to talk to". redis-py handles ``READONLY`` only, but after a planned failover
    the old master stays a master without replicas for a while (Sentinel converts it
    later), answering ``NOREPLICAS``, and a client connected to it would keep asking it.

    It also asks the sentinels on *every* reconnection: redis-py 8 reconnects inside a
    command's retry loop (``send_packed_command`` → ``connect_check_health``) without the
    Sentinel lookup, so a patient client would retry against the old address for as long
    as its retries last.
    """

    def _connect_retry(self) -> None:
        self.connect_check_health(check_health=self.connection_pool.check_connection,
                                  retry_socket_connect=False)

    def connect_check_health(self, check_health: bool = True,
                             retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health=check_health,
                                     retry_socket_connect=retry_socket_connect)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return Connection.read_response(self, *args, **kwargs)
        except redis.ResponseError as exc:
            refused = isinstance(exc, ReadOnlyError) or str(exc).startswith(REFUSED_PREFIXES)
            if not refused or not self.connection_pool.is_master:
                raise
            self.disconnect()
            raise WriteRefused(f"the master refused the write, nothing applied: {exc}") from exc


class MasterSSLConnection(MasterConnection, SSLConnection):
    """:class:`MasterConnection` over TLS."""


class FailoverSentinel(Sentinel):
    """redis-py's :class:`~redis.sentinel.Sentinel`, asking every sentinel and taking the
    newest answer, including a master promoted by a failover still under way.

    redis-py takes the first sentinel's ``SENTINEL MASTERS`` entry it finds healthy. While
    a failover runs, that is none (the old master is down) or the old master (a planned
    failover's, write-paused), until the failover's last step. Only the sentinel running
    the failover knows the promoted replica before then: it names it in ``SENTINEL
    GET-MASTER-ADDR-BY-NAME`` as soon as the replica took the role (Sentinel does not roll
    back from there), while the others learn the new configuration from its hello
    messages, seconds later. So every sentinel is asked (a connection is opened rarely;
    the pool keeps it), and the answer is, in order: a promoted replica, else the healthy
    master of the highest ``config-epoch``. Writes to a just-promoted master are accepted
    once a replica follows it (``min-replicas-to-write``).
    """

    def discover_master(self, service_name: str) -> tuple[str, int]:
        errors: list[str] = []
        best: tuple[int, tuple[str, int]] | None = None
        for sentinel in self.sentinels:
            try:
                masters = cast(dict[str, dict[str, Any]], sentinel.sentinel_masters())
                state = masters.get(service_name)
                if not state:
                    continue
                if FAILOVER_FLAG in _flags(state) and \
                        (promoted := self._promoted(sentinel, service_name, state)):
                    return promoted
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                errors.append(f"{sentinel} - {exc!r}")
                continue
            if self.check_master_state(state, service_name):
                epoch = int(state.get("config-epoch") or 0)
                if best is None or epoch > best[0]:
                    best = (epoch, (state["ip"], int(state["port"])))
        if best is None:
            raise MasterNotFoundError(f"No master found for {service_name!r}"
                                      + (f" : {', '.join(errors)}" if errors else ""))
        return best[1]

    @staticmethod
    def _promoted(sentinel: redis.Redis, service_name: str,
                  state: dict[str, Any]) -> tuple[str, int] | None:
        """The replica the failover this sentinel runs has promoted, if it has yet."""
        reply = cast(tuple[Any, Any] | None,
                     sentinel.sentinel_get_master_addr_by_name(service_name))
        if not reply:
            return None
        host, port = reply
        address = (host.decode() if isinstance(host, bytes) else str(host), int(port))
        return address if address != (state["ip"], int(state["port"])) else None


#: The flag a sentinel sets on a master set while it runs that set's failover.
FAILOVER_FLAG = "failover_in_progress"


def _flags(state: dict[str, Any]) -> set[str]:
    flags = state.get("flags", "")
    return set(flags) if isinstance(flags, set) else set(str(flags).split(","))


class SentinelUrlError(ValueError):
    """A ``sentinel://`` URL that cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class SentinelTarget:
    """What a ``sentinel://`` URL says: the sentinels, and the master's db and credentials."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None  # the master's (data) password, not the sentinels'

    def url(self) -> str:
        """The normal form: every sentinel carries the credentials and the db, because
        kombu and Celery read them from the first entry and other tools from the last."""
        auth = ""
        if self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        elif self.username:
            auth = f"{quote(self.username, safe='')}@"
        return SEPARATOR.join(f"{SENTINEL_SCHEME}://{auth}{_hostport(h, p)}/{self.db}"
                              for h, p in self.sentinels)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_sentinel(url: str) -> bool:
    return url.strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse ``sentinel://[user:password@]host[:port][/db];sentinel://...``.

    The db and credentials may be given on any entry (kombu's documentation puts the db
    on the last); two entries that disagree are refused rather than one silently winning.
    """
    sentinels: list[tuple[str, int]] = []
    dbs: set[int] = set()
    creds: set[tuple[str | None, str | None]] = set()
    for chunk in (c.strip() for c in url.split(SEPARATOR)):
        if not chunk:
            continue
        parts = urlsplit(chunk)
        if parts.scheme.lower() != SENTINEL_SCHEME:
            raise SentinelUrlError(
                f"every entry of a Sentinel URL must be sentinel://host:port, not {chunk!r}")
        if not parts.hostname:
            raise SentinelUrlError("a Sentinel URL entry has no host")
        try:
            port = parts.port or SENTINEL_PORT
        except ValueError:
            raise SentinelUrlError("a Sentinel URL entry has an invalid port") from None
        sentinels.append((parts.hostname, port))
        path = parts.path.strip("/")
        if path:
            if not path.isdigit():
                raise SentinelUrlError(f"the db of a Sentinel URL must be a number, not {path!r}")
            dbs.add(int(path))
        if parts.password or parts.username:
            creds.add((unquote(parts.username) if parts.username else None,
                       unquote(parts.password) if parts.password else None))
    if not sentinels:
        raise SentinelUrlError("a Sentinel URL names no sentinel")
    if len(dbs) > 1 or len(creds) > 1:
        raise SentinelUrlError("the entries of a Sentinel URL name different dbs or passwords")
    username, password = next(iter(creds)) if creds else (None, None)
    return SentinelTarget(tuple(sentinels), dbs.pop() if dbs else 0, username, password)


def tls_options(settings: Settings) -> dict[str, Any]:
    """TLS options of a ``rediss://`` (or TLS Sentinel) connection: the server's
    certificate is checked, against ``REDIS_TLS_CA_FILE`` when set (else the system's
    CAs). Celery's broker and result backend take the same dict (``broker_use_ssl``,
    ``redis_backend_use_ssl``)."""
    options: dict[str, Any] = {"ssl_cert_reqs": "required"}  # redis-py, kombu and Celery all read it
    if settings.redis_tls_ca_file:
        options["ssl_ca_certs"] = settings.redis_tls_ca_file
    return options


def keepalive_options() -> dict[int, int]:
    """TCP keepalive that notices a dead peer in about 20 s (5 s idle, then 5 probes 3 s
    apart) where the kernel's default would take over two hours. Only the options this
    platform has are set."""
    wanted = {"TCP_KEEPIDLE": 5, "TCP_KEEPINTVL": 3, "TCP_KEEPCNT": 5}
    return {getattr(socket, name): value for name, value in wanted.items()
            if hasattr(socket, name)}


def socket_options(timeout: float) -> dict[str, Any]:
    """Timeouts and keepalive of every connection, to masters and sentinels alike."""
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout,
            "socket_keepalive": True, "socket_keepalive_options": keepalive_options()}


def sentinel_kwargs(settings: Settings, timeout: float | None = None) -> dict[str, Any]:
    """Options of the connections to the sentinels themselves: their own password and
    TLS, and the same timeouts as the master's (Celery's backend would leave them unset).

    No retries: redis-py's default (three, backing off up to 10 s) would spend many seconds
    on one dead sentinel before asking the next; the lookup itself goes round them all."""
    kwargs: dict[str, Any] = socket_options(settings.redis_timeout if timeout is None
                                            else timeout)
    kwargs["retry"] = None
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password
    if settings.redis_sentinel_tls:
        kwargs.update(ssl=True, **tls_options(settings))
    return kwargs


def worker_retry() -> Retry:
    """Connection errors retried with back-off through an outage (workers' writes)."""
    return Retry(ExponentialBackoff(**WORKER_REDIS_BACKOFF), WORKER_REDIS_RETRIES,
                 supported_errors=(redis.ConnectionError, redis.TimeoutError))


def client(url: str, settings: Settings, patient: bool = False,
           timeout: float | None = None) -> redis.Redis:
    """A client of the Redis ``url`` names (a node, or the master behind sentinels).

    It fails fast (the API: a quick 503 beats a hung request), or, when ``patient``
    (workers), retries connection errors with back-off through an outage or a failover.
    ``timeout`` overrides ``REDIS_TIMEOUT`` (the probes ask with a shorter one).
    """
    seconds = settings.redis_timeout if timeout is None else timeout
    common: dict[str, Any] = {
        **socket_options(seconds),
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": worker_retry() if patient else None,
        "retry_on_timeout": patient,
    }
    if not is_sentinel(url):
        options = {**common, **(tls_options(settings) if url.startswith("rediss:") else {})}
        if patient:
            return redis.Redis.from_url(url, **options)
        # Under gevent thousands of requests run at once (followers waking together when a
        # burst of tasks ends): an unbounded pool would open a connection for each. A
        # bounded, blocking pool makes the excess wait for a free one (at most the timeout).
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=settings.api_redis_connections, timeout=seconds, **options)
        return redis.Redis(connection_pool=pool)
    target = parse_sentinel_url(url)
    sentinel = FailoverSentinel(list(target.sentinels),
                                sentinel_kwargs=sentinel_kwargs(settings, seconds), **common)
    master: dict[str, Any] = {"db": target.db, "username": target.username,
                              "password": target.password,
                              "connection_class": MasterConnection}
    if settings.redis_master_tls:
        master.update(connection_class=MasterSSLConnection, **tls_options(settings))
    if not patient:  # bounded as above (redis-py's Sentinel pool refuses the excess instead)
        master["max_connections"] = settings.api_redis_connections
    found: redis.Redis = sentinel.master_for(settings.redis_sentinel_master,
                                             redis_class=redis.Redis, **master)
    return found


def sentinels_of(url: str, settings: Settings, timeout: float | None = None) -> Sentinel:
    """A :class:`Sentinel` handle on the sentinels ``url`` names, for asking them (not the
    master) questions: the exporter's view of the master set."""
    target = parse_sentinel_url(url)
    return FailoverSentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs(settings, timeout),
                            password=target.password)


@dataclass(frozen=True)
class Problem:
    """Why no master can be reached through the sentinels: a stable ``code`` (readiness
    answers it) and a sentence for the log that names the setting to check."""

    code: str
    message: str


def diagnose(url: str, settings: Settings, timeout: float = 1.0) -> Problem | None:
    """Ask each sentinel ``url`` names, then the master they name, what is wrong; None when
    a master answers. A wrong sentinel password, a wrong master set name and silent
    sentinels each get their own answer, at once, instead of a client retrying forever."""
    master_name = settings.redis_sentinel_master
    target = parse_sentinel_url(url)
    kwargs = sentinel_kwargs(settings, timeout)
    refused: list[str] = []
    silent: list[str] = []
    unknown: list[str] = []
    address: tuple[str, int] | None = None
    for host, port in target.sentinels:
        conn = redis.Redis(host=host, port=port, **kwargs)
        try:
            found = conn.sentinel_get_master_addr_by_name(master_name)
        except redis.AuthenticationError:
            refused.append(_hostport(host, port))
            continue
        except redis.ResponseError as exc:  # NOAUTH: a password is needed and none was given
            (refused if "auth" in str(exc).lower() else silent).append(_hostport(host, port))
            continue
        except redis.RedisError:
            silent.append(_hostport(host, port))
            continue
        finally:
            conn.close()
        if not isinstance(found, tuple | list) or not found:
            unknown.append(_hostport(host, port))
        elif address is None:
            address = (found[0].decode() if isinstance(found[0], bytes) else str(found[0]),
                       int(found[1]))
    if address is None:
        if refused:
            return Problem("sentinel_auth", f"sentinel {refused[0]} refused the password "
                           "(REDIS_SENTINEL_PASSWORD)")
        if unknown:
            return Problem("unknown_master", f"the sentinels know no master set named "
                           f"{master_name!r} (REDIS_SENTINEL_MASTER)")
        return Problem("no_sentinel", f"no sentinel answered at {', '.join(silent)} "
                       "(REDIS_URL)")
    master = redis.Redis(host=address[0], port=address[1], db=target.db,
                         username=target.username, password=target.password,
                         retry=None,  # type: ignore[arg-type]  # None: no retries (redis-py)
                         **socket_options(timeout),
                         **({"ssl": True, **tls_options(settings)}
                            if settings.redis_master_tls else {}))
    try:
        master.ping()
    except redis.AuthenticationError:
        return Problem("master_auth", f"the master at {_hostport(*address)} refused the data "
                       "password (REDIS_PASSWORD or the URL's)")
    except redis.RedisError as exc:
        if "auth" in str(exc).lower():
            return Problem("master_auth", f"the master at {_hostport(*address)} wants a "
                           "password (REDIS_PASSWORD or the URL's)")
        return Problem("master_unreachable", f"the master the sentinels name, "
                       f"{_hostport(*address)}, does not answer ({type(exc).__name__})")
    finally:
        master.close()
    return None


def await_master(settings: Settings, who: str) -> None:
    """At the start of a long-running process: wait up to ``REDIS_STARTUP_TIMEOUT`` for a
    master behind the sentinels, then exit non-zero with the reason (so Kubernetes shows
    it and restarts the pod) rather than run without one. A no-op for a single node: its
    clients ride through an outage as before."""
    if not is_sentinel(settings.redis_url):
        return
    deadline = time.monotonic() + settings.redis_startup_timeout
    while (problem := diagnose(settings.redis_url, settings)) is not None:
        if time.monotonic() >= deadline:
            raise SystemExit(f"taskplane {who}: no Redis master after "
                             f"{settings.redis_startup_timeout:g}s: {problem.message}")
        log.warning("waiting for a Redis master: %s", problem.message)
        time.sleep(1)  # polling the sentinels at start


def warn_if_too_few_replicas(settings: Settings, who: str) -> int | None:
    """Log a warning when ``REDIS_MIN_REPLICAS_ACK`` asks for more replicas than the master
    has: then every accepting transition answers ``outcome_unknown`` (README). Returns the
    replicas counted, or None when the master could not be asked (nothing is said then: a
    process starting during an outage is not misconfigured)."""
    wanted = settings.replicas_ack
    if wanted <= 0:
        return None
    try:
        found = int(client(settings.redis_url, settings, timeout=1.0)
                    .info("replication").get("connected_slaves", 0))
    except redis.RedisError:
        return None
    if found < wanted:
        log.warning("taskplane %s: REDIS_MIN_REPLICAS_ACK=%d but the master has %d replica(s): "
                    "every accepted task will be answered 503 outcome_unknown until enough "
                    "replicas are connected", who, wanted, found)
    return found


def broker_options(settings: Settings) -> dict[str, Any]:
    """``broker_transport_options`` a Sentinel ``REDIS_URL`` needs ({} for a single node):
    the master set, the sentinels' connection options, keepalive."""
    if not is_sentinel(settings.redis_url):
        return {}
    return _transport_sentinel_options(settings)


def backend_options(settings: Settings) -> dict[str, Any]:
    """The same for ``result_backend_transport_options`` (Celery's Sentinel backend reads
    ``master_name`` from here, not from the broker's)."""
    if not is_sentinel(settings.redis_url):
        return {}
    return _transport_sentinel_options(settings)


def _transport_sentinel_options(settings: Settings) -> dict[str, Any]:
    return {"master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": sentinel_kwargs(settings),
            "socket_keepalive": True,
            "socket_keepalive_options": keepalive_options()}


def celery_ssl(url: str, settings: Settings) -> dict[str, Any] | None:
    """``broker_use_ssl`` / ``redis_backend_use_ssl`` for ``url``: the master is spoken to
    over TLS for ``rediss://`` or, behind sentinels, with ``REDIS_MASTER_TLS``."""
    if url.startswith("rediss:") or (is_sentinel(url) and settings.redis_master_tls):
        return tls_options(settings)
    return None


def describe(url: str) -> str:
    """``url`` without credentials, for logs and error messages."""
    if is_sentinel(url):
        try:
            target = parse_sentinel_url(url)
        except SentinelUrlError:
            return "sentinel://<invalid>"
        return SEPARATOR.join(f"{SENTINEL_SCHEME}://{_hostport(h, p)}"
                              for h, p in target.sentinels) + f"/{target.db}"
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url
