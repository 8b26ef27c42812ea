"""The ASGI application object for servers (``uvicorn queries_service.asgi:app``)."""

from queries_service.app import create_app

app = create_app()
