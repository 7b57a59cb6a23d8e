"""Taskplane's own gunicorn configuration, serving a baseline app instead of the API.

Every gunicorn setting ``taskplane.api.gunicorn_conf`` sets (workers, threads, worker
class, timeouts, keep-alive, request limits, access log and its format, log level, bind
address, ...) is copied from it, so the baselines and the API are served alike; only the
application differs: ``BASELINE_APP`` (``app:app``, the blog post's, ``bare:app`` or
``floor:app``).
Server hooks are not copied: Taskplane's only drops a dead worker's metric files.
Start it with ``--no-control-socket`` and ``--chdir bench/baseline``.
"""

import os

from gunicorn.config import Config

from taskplane.api import gunicorn_conf as _taskplane

_KNOWN = Config().settings
COPIED = sorted(name for name, value in vars(_taskplane).items()
                if name in _KNOWN and name != "wsgi_app" and not callable(value))
globals().update({name: getattr(_taskplane, name) for name in COPIED})
wsgi_app = os.environ["BASELINE_APP"]
