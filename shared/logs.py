"""One JSON object per log line, so an operator can follow a command by its ids."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, TextIO

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Our loggers speak JSON on stderr (or ``stream``); Celery's own logging is left as
    it is. An unknown level name logs at INFO."""
    if level not in logging.getLevelNamesMapping():
        level = "INFO"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    for name in ("hostfactory",):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
