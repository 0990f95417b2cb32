"""Worker logs: every line says which host and process wrote it and which job and model it is about
(set while a job runs, through context variables, so Procrastinate's own lines get them too); JSON lines
on request (SFQ_LOG_FORMAT=json), for log shippers."""

from __future__ import annotations

import contextvars
import json
import logging

JOB: contextvars.ContextVar[int | None] = contextvars.ContextVar("sfq_job", default=None)
MODEL: contextvars.ContextVar[int | None] = contextvars.ContextVar("sfq_model", default=None)

TEXT_FORMAT = (
    "%(asctime)s %(host)s worker-%(instance)s [%(process)d] "
    "job=%(job)s model=%(model)s %(levelname)s %(message)s"
)


class _Context(logging.Filter):
    def __init__(self, host: str, instance: int):
        super().__init__()
        self.host, self.instance = host, instance

    def filter(self, record: logging.LogRecord) -> bool:
        record.host, record.instance = self.host, self.instance
        record.job, record.model = JOB.get() or "-", MODEL.get() or "-"
        return True


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "host": record.host,
            "instance": record.instance,
            "pid": record.process,
            "job": None if record.job == "-" else record.job,
            "model": None if record.model == "-" else record.model,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(host: str, instance: int, json_lines: bool) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_Context(host, instance))
    handler.setFormatter(_Json() if json_lines else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
