"""The HTTP API's application factory.

``create_app(settings)`` builds everything from the frozen settings: nothing runs
at import, so tests build as many apps as they like, and gunicorn calls
``taskplane.api:create_app()`` in each worker process. Each app owns its state (tasks,
metrics: ``Runtime``); the process's logging is the entry point's (gunicorn's config,
``logs.configure``), never the factory's.
"""

from __future__ import annotations

from flask import Flask, Request, Response
from flask.sessions import NullSession, SessionInterface

from .. import redis_conn
from ..celery_app import create_celery
from ..settings import Settings
from . import (
    auth,
    deliveries,
    errors,
    followers,
    health,
    limits,
    observe,
    routes,
    schedules,
    seed,
    workflows,
)
from .context import ApiContext


class TaskplaneFlask(Flask):
    """Flask, but ``OPTIONS`` answers 204 with ``Allow`` and no body (Flask's default is an
    empty 200 labelled text/html, the one non-JSON answer a route would give)."""

    def make_default_options_response(self) -> Response:
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


class NoSessions(SessionInterface):
    """No cookie session: a token API has no use for one. Flask's default interface looks
    for a secret key and builds a NullSession for every request; this hands out one
    shared NullSession (which refuses writes) and saves nothing: about 2 µs a request."""

    _null = NullSession()

    def open_session(self, app: Flask, request: Request) -> NullSession:
        return self._null

    def save_session(self, app: Flask, session: object, response: Response) -> None:
        return None


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    tokens = settings.tokens()
    celery = create_celery(settings, set_as_current=False, shared_backend=True)
    redis_conn.warn_if_too_few_replicas(settings, "api")
    app = TaskplaneFlask("taskplane")
    app.session_interface = NoSessions()
    # No redirects: a merged-slash redirect would name whatever Host the client sent.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]  # DefaultJSONProvider's; typed as its base
    auth.init_app(app, tokens, settings.auth_disabled)
    errors.init_app(app, settings.retry_after)
    observe.init_app(app, celery.runtime.metrics, settings.access_log)
    limits.init_app(app)
    app.extensions["taskplane"] = ApiContext(
        settings=settings,
        celery=celery,
        runtime=celery.runtime,
        tokens=tokens,
        admin_tokens=settings.admin_tokens(),
        auth_disabled=settings.auth_disabled,
        submit_validator=routes.submit_validator(settings.max_countdown),
    )
    # Followers share one pub/sub connection per process, to the Redis results live in.
    followers.init_app(app, settings, celery.runtime.lifecycle.pubsub_connection,
                       celery.runtime.metrics.instruments)
    app.register_blueprint(health.bp)
    app.register_blueprint(routes.bp)
    app.register_blueprint(seed.bp)
    app.register_blueprint(schedules.bp)
    app.register_blueprint(workflows.bp)
    app.register_blueprint(deliveries.bp)
    return app
