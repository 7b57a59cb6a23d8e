"""The blog post's ``app.py``: ``/start_task/<data>`` calls ``.delay()``, ``/task_status/<id>``.

Verbatim but for the ``__main__`` block (the benchmark serves it with gunicorn, under the
same configuration as Taskplane's API: see gunicorn_conf.py).
"""

from flask import Flask, jsonify
from tasks import long_running_task

app = Flask(__name__)


@app.route("/start_task/<data>")
def start_task(data):  # noqa: ANN001, ANN201 - the post's code
    """
    Enqueues the long-running task with Celery.
    """
    task = long_running_task.delay(data)
    return jsonify({"task_id": task.id, "message": "Task enqueued!"})


@app.route("/task_status/<task_id>")
def task_status(task_id):  # noqa: ANN001, ANN201 - the post's code
    """
    Retrieves the status of a Celery task.
    """
    task = long_running_task.AsyncResult(task_id)
    if task.state == "PENDING":
        response = {
            "state": task.state,
            "status": "Pending...",
        }
    elif task.state != "FAILURE":
        response = {
            "state": task.state,
            "result": task.result,
        }
    else:
        # something went wrong in the background job
        response = {
            "state": task.state,
            "status": str(task.info),  # this is the exception raised
        }
    return jsonify(response)
