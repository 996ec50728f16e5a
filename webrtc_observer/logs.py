"""Structured logging on the standard library: an event name plus key=value fields.

``logger.info("receiver started", endpoint="0.0.0.0:7080")`` renders as
``... info  receiver started  component=observertc endpoint=0.0.0.0:7080`` in text, or one JSON object
per line with ``format: json``.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_ROOT = "webrtc_observer"


class Logger:
    """A thin structured front for :mod:`logging`, bound to a set of fields (e.g. the component id)."""

    __slots__ = ("_bound", "_logger")

    def __init__(self, name: str = _ROOT, **bound: Any) -> None:
        self._logger = logging.getLogger(name)
        self._bound = bound

    def bind(self, **fields: Any) -> Logger:
        child = Logger.__new__(Logger)
        child._logger = self._logger
        child._bound = {**self._bound, **fields}
        return child

    def _log(self, level: int, event: str, fields: dict[str, Any], exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": {**self._bound, **fields}}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields, exc_info=exc_info)


def get_logger(name: str = _ROOT, **bound: Any) -> Logger:
    return Logger(name, **bound)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields = getattr(record, "fields", {})
        rendered = " ".join(f"{k}={_text(v)}" for k, v in fields.items())
        line = f"{stamp} {record.levelname.lower():<7} {record.getMessage()}"
        if rendered:
            line += f"  {rendered}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text(value: Any) -> str:
    text = str(value)
    return f'"{text}"' if (" " in text or not text) else text


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": record.created, "level": record.levelname.lower(), "event": record.getMessage()}
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def configure(level: str = "info", fmt: str = "text") -> None:
    """Send the collector's logs to stderr in the chosen format (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger(_ROOT)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
