"""What the API's views share: settings, the Celery app and its Taskplane runtime."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from ..runtime import Runtime, TaskplaneCelery
from ..schema import CompiledSchema
from ..settings import Settings


@dataclass(frozen=True)
class ApiContext:
    settings: Settings
    celery: TaskplaneCelery
    runtime: Runtime
    tokens: dict[str, str]
    admin_tokens: dict[str, str]
    auth_disabled: bool
    submit_validator: CompiledSchema


def api_context() -> ApiContext:
    context: ApiContext = current_app.extensions["taskplane"]  # set by create_app
    return context
