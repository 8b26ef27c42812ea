"""Optional bearer tokens (``QUERY_API_TOKENS``): the edge both HTTP services share."""

from shared.asgi import BearerTokens

__all__ = ["BearerTokens"]
