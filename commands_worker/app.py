"""The name operators start the worker by: ``celery -A commands_worker.app worker``."""

from commands_worker.entrypoints.celery_app import app

__all__ = ["app"]
