"""The ASGI application object for servers (``uvicorn queries_service.asgi:app``)."""

from queries_service.app import create_app
from shared import logs
from shared.settings import Settings

_settings = Settings.from_env()
logs.configure(_settings.log_level)
app = create_app(_settings)
