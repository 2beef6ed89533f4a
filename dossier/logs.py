"""Logging setup: text for people, JSON lines for log shippers. No personal data is logged:
log records carry dossier codes and agency codes at most, never applicant fields."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # transitions logs every trigger at INFO; that is the engine's hot path.
    logging.getLogger("transitions").setLevel(logging.WARNING)
    # kafka-python's I/O thread reports every slice it could not get the GIL for promptly; the
    # engine's batches hold it by design. Lag and latency metrics tell the operator what matters.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
