"""The bare limit: a Flask route that returns a constant, nothing else.

Served under the same gunicorn configuration as Taskplane's API, it is the most any
Flask API can answer on this machine.
"""

from flask import Flask

app = Flask(__name__)

CONSTANT = {"status": "ok"}


@app.route("/")
def constant():  # noqa: ANN201
    return CONSTANT
