"""The command gateway: commands over HTTP for producers that do not speak Celery. It
validates with the worker's own models and publishes by the public wire contract; it never
touches the store or the read cache. ``python -m commands_worker.gateway``."""
