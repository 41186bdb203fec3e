"""Logging set-up for `saliency serve`: stdlib logging to stderr, as JSON lines (one object per
record, for a log pipeline) or text, and every record made while an RPC is served carries that
RPC's request_id and trace_id (and span_id inside a span).

The RPC's identity travels in a context variable set by the access-log interceptor
(api/access_log.py): gRPC runs the interceptors and the handler in one contextvars.Context per
RPC, so records from the servicer, the backend and the span processor below all see it.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor
from pythonjsonlogger.json import JsonFormatter

LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Extra record attributes the text format appends as key=value, in this order.
TEXT_FIELDS = (
    "rpc", "model", "code", "ms", "request_id", "trace_id", "span_id", "peer", "bytes_in", "bytes_out",
)


@dataclass
class RequestContext:
    """Who is being served: filled by the access-log interceptor, read by the log filter."""

    request_id: str
    trace_id: str = ""  # hex; the first span the RPC started (RequestTraceRecorder)


CURRENT_REQUEST: ContextVar[RequestContext | None] = ContextVar("saliency_request", default=None)


class RequestTraceRecorder(SpanProcessor):
    """Notes the trace id of the first span started while an RPC is served. The servicer starts
    its request span itself (a child of the caller's `traceparent`, or a new trace); the access
    line, written after that span has ended, needs its id. Unsampled spans never reach a span
    processor: their lines fall back to the caller's trace id."""

    def on_start(self, span, parent_context=None) -> None:
        current = CURRENT_REQUEST.get()
        if current is not None and not current.trace_id:
            current.trace_id = trace.format_trace_id(span.get_span_context().trace_id)

    def on_end(self, span) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class RequestContextFilter(logging.Filter):
    """Adds request_id, trace_id and span_id to records made while an RPC is served (and
    trace/span ids inside any span). Attributes already set (the access line's) are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = CURRENT_REQUEST.get()
        span = trace.get_current_span().get_span_context()
        if current is not None and not getattr(record, "request_id", None):
            record.request_id = current.request_id
        if not getattr(record, "trace_id", None):
            if span.is_valid:
                record.trace_id = trace.format_trace_id(span.trace_id)
            elif current is not None and current.trace_id:
                record.trace_id = current.trace_id
        if span.is_valid and not getattr(record, "span_id", None):
            record.span_id = trace.format_span_id(span.span_id)
        return True


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...` for the fields in TEXT_FIELDS a record has."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{k}={record.__dict__[k]}" for k in TEXT_FIELDS if record.__dict__.get(k) not in (None, "")]
        if not pairs:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {' '.join(pairs)}{newline}{rest}"


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, the record's
    extra fields, and exc_info as text."""
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger"},
        timestamp="time",
        json_ensure_ascii=False,
    )


def configure_logging(log_format: str = "text", level: str = "info", stream=None) -> logging.Handler:
    """Replace the root logger's handlers with one stream handler (stderr) in `log_format`."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log_format: {log_format!r} is not one of {LOG_FORMATS}")
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log_level: {level!r} is not one of {LOG_LEVELS}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RequestContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
