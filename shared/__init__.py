"""Contracts shared by producers, the command worker and the query service.

Nothing here imports worker or query-service code, and nothing connects at import time: only
the producer client (``client.py``) does I/O, when it is called; ``asgi.py`` holds the edge
both HTTP services share (bearer tokens, bounded JSON bodies).
"""
