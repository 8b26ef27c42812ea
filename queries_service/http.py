"""uvicorn's httptools protocol, bounded: a request's head (request line and headers) may
take at most ``MAX_HEAD_BYTES``, and every error the server itself gives is JSON.

httptools buffers a header until it is complete, without limit: four connections streaming
100 MB headers made ``/healthz`` take seconds. Here the bytes a request's head takes are
counted as they arrive, and past the bound the connection gets a 431 and is closed.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.asgi import MAX_HEAD_BYTES

_REASONS: Final = {400: b"Bad Request", 431: b"Request Header Fields Too Large"}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.send_json_error(431, "request_head_too_large",
                                     f"request line and headers exceed {MAX_HEAD_BYTES} bytes")
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def send_400_response(self, msg: str) -> None:
        self.send_json_error(400, "bad_request", msg)

    def send_json_error(self, status: int, error: str, detail: str) -> None:
        if self.transport.is_closing():
            return
        body = orjson.dumps({"error": error, "detail": detail})
        head = (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body)))
        self.transport.write(head + body)
        self.transport.close()
