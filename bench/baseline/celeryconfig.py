"""The blog post's ``celeryconfig.py``, as written there, except where Redis is.

The post hard-codes ``redis://localhost:6379/0``; the benchmark runs its own Redis on a
free port and passes it as ``REDIS_URL`` (there is deliberately no default, so the
baseline can never talk to a Redis it was not given).
"""

import os

broker_url = os.environ["REDIS_URL"]
result_backend = os.environ["REDIS_URL"]

task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True
