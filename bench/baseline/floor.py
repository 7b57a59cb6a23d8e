"""The floor of any durable enqueue: a Flask route that does one Redis LPUSH.

``POST /`` pushes a constant message onto a list and answers 202 with a constant body:
no authentication, validation, record, serialisation or metrics, only the one round
trip to Redis that any API must make before it can promise a task will run. Served
under the same gunicorn configuration as Taskplane's API and the other baselines, it
shows how much of the bare route's throughput that round trip alone costs here.
"""

import os

import redis
from flask import Flask

app = Flask(__name__)
client = redis.Redis.from_url(os.environ["REDIS_URL"])

LIST = "floor"
MESSAGE = b'{"task": "noop", "args": [], "kwargs": {}}'
ACCEPTED = {"status": "queued"}


@app.post("/")
def enqueue():  # noqa: ANN201
    client.lpush(LIST, MESSAGE)
    return ACCEPTED, 202


@app.get("/healthz")
def healthz():  # noqa: ANN201
    return {"status": "ok"}
