"""Taskplane: a Flask API and Celery workers on Redis, packaged for Kubernetes."""

__version__ = "0.1.0"
