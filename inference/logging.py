"""Structured logs: every record is one JSON object on one line, and each HTTP request gets exactly one.

Log collectors (Loki, CloudWatch, SLS, CLS) parse JSON lines without per-format rules, so the fields
of a request line (id, status, tokens, latency) become queryable as they are.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from inference.json_lines import one_line

ACCESS_LOGGER = "inference.access"

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((key, value) for key, value in vars(record).items() if key not in _RECORD_ATTRIBUTES)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return one_line(json.dumps(entry, default=str, ensure_ascii=False))


def configure_logging(level: str) -> None:
    """JSON lines on stderr at `level` for this package, uvicorn and everything else."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # The server writes its own access line per request, with request id and token counts.
    logging.getLogger("uvicorn.access").disabled = True


def log_request(
    *,
    request_id: str,
    method: str,
    route: str,
    status: int,
    latency_seconds: float,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> None:
    logging.getLogger(ACCESS_LOGGER).info(
        "request",
        extra={
            "request_id": request_id,
            "method": method,
            "route": route,
            "status": status,
            "latency_seconds": round(latency_seconds, 6),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        },
    )
