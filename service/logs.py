"""Logging: one JSON object per line on stderr, for every component (spec §13 "Logs").

One ``dictConfig`` (:func:`logging_config`) is applied by every process (``seats api``, ``seats worker`` and
its child, hence ``seats dev``'s children) and handed to uvicorn as its ``log_config``, so uvicorn's own
loggers go through the same handler; Litestar is built with ``logging_config=None`` so it adds no handler
of its own (its default one queues records to a thread and lost the last lines at SIGTERM). The handler
writes synchronously: a line logged is on stderr before the call returns.

Fields of every line: ``ts`` (RFC 3339, UTC), ``level``, ``logger``, ``msg``, ``requestId`` (any line
logged while an HTTP request is handled: :data:`REQUEST_ID`), ``exc`` (the formatted exception, when there
is one) and the call's ``extra`` fields. Secrets are kept out by what is logged, not by scrubbing: no
headers, no bodies, no query strings (paths only), Redis URLs through :func:`redacted_url`.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import threading
import urllib.parse
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.msgspec import MsgspecFormatter

# The id of the HTTP request the current task is handling (service.api.request_id sets it).
REQUEST_ID: ContextVar[str | None] = ContextVar("seats_request_id", default=None)

# uvicorn passes an ANSI-coloured copy of some messages as ``extra``: not a field worth a line's bytes.
_SKIPPED = [*RESERVED_ATTRS, "color_message"]


class JsonLines(MsgspecFormatter):
    """python-json-logger's msgspec formatter with this service's field names and lower-case levels."""

    def __init__(self) -> None:
        super().__init__(
            "{levelname}{name}{message}", style="{", timestamp="ts", reserved_attrs=_SKIPPED,
            rename_fields={"levelname": "level", "name": "logger", "message": "msg", "exc_info": "exc"},
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Lower-case the level (``info``, ``warning`` …) and put the time first."""
        log_data["level"] = str(log_data.get("level", "")).lower()
        return {"ts": log_data.pop("ts"), **log_data}


class RequestIdFilter(logging.Filter):
    """Adds ``requestId`` to every record logged while a request is handled (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag ``record`` with the current request's id, if any."""
        request_id = REQUEST_ID.get()
        if request_id is not None:
            record.requestId = request_id
        return True


def logging_config(level: str = "INFO") -> dict[str, Any]:
    """The one ``logging.config.dictConfig`` of every process (uvicorn's ``log_config`` too)."""
    quiet = {"level": "WARNING", "handlers": [], "propagate": True}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {"json": {"()": JsonLines}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "formatter": "json", "filters": ["request_id"]}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # uvicorn's start-up and error lines at INFO, through the root handler
            "uvicorn": {"level": "INFO", "handlers": [], "propagate": True},
            "uvicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
            # its access log stays off (access_log=False): service.api.request_id logs requests, paths only
            # (SEATS_ACCESS_LOG)
            "uvicorn.access": quiet,
            # arq logs two INFO lines per job (~5 % of the worker's CPU at 1,000 jobs/s); payments are
            # counted in /metrics instead. Its warnings and job errors still show.
            "arq.worker": quiet,
            # httpx logs every request's full URL at INFO (a webhook URL may carry a receiver's token)
            "httpx": quiet,
            "httpcore": quiet,
        },
    }


def configure_logging(level: str = "INFO") -> None:
    """Apply :func:`logging_config` to this process (idempotent), and send what would otherwise reach stderr
    as plain text through it too: uncaught exceptions (main thread and others) and ``warnings``."""
    logging.config.dictConfig(logging_config(level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        return
    logging.getLogger("seats").critical("uncaught exception: the process exits", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread else "?"
    logging.getLogger("seats").critical("uncaught exception in thread %s", name,
                                        exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def redacted_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (a Redis URL's credentials never reach a log)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}***@{host}"))
