"""OpenTelemetry traces, opt-in (README, "Traces"). A submission is a message sent to a queue and its job
the message processed, in OpenTelemetry's messaging conventions: the API or the CLI opens a producer span
"send training" and stores its W3C traceparent with the request (a SQL caller writes its own), the model
keeps it, and every attempt at the model's training job is a consumer span "process training" in that
trace, as is each of its backtests ("process simulation"), whichever worker runs it and however often the
job is rescued.

Off unless the standard variables ask for it (`OTEL_TRACES_EXPORTER`, or an `OTEL_EXPORTER_OTLP_*ENDPOINT`,
and not `OTEL_SDK_DISABLED=true`): then every helper here returns at once, nothing is parsed or stored,
and the spans are the API's no-op ones. On, the SDK (the `otel` extra) is configured from the same
variables: exporters, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from queue_app.errors import ConfigError
from queue_app.vocabulary import TRAINING_PHASES

SYSTEM = "procrastinate"  # messaging.system: the queue sfq's jobs go through
# OTEL_TRACES_EXPORTER's names, as the SDK's entry points call them ("otlp": over HTTP unless
# OTEL_EXPORTER_OTLP_PROTOCOL says grpc, whose exporter is then to be installed).
_EXPORTER_ALIASES = {"otlp": "otlp_proto_http"}

_propagator = TraceContextTextMapPropagator()
_tracer = trace.get_tracer("sfq")  # a proxy: the SDK's tracer once configure() has set the provider
_enabled = False


def requested() -> bool:
    """Do the OTEL_* variables ask for traces? (The SDK's own default exporter, otlp, is not asked for:
    a machine with no collector exports nothing unless told where.)"""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return exporters != "none"
    return any(
        os.environ.get(name, "").strip()
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure(service: str) -> bool:
    """Set up the SDK for this process when the variables ask for it (once; later calls change nothing).
    `service` is the default service.name, which OTEL_SERVICE_NAME overrides. True when tracing is on."""
    global _enabled
    if _enabled or not requested():
        return _enabled
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError(
            "OTEL_TRACES_EXPORTER or OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-sdk is not "
            "installed: pip install 'sfq[otel]'"
        ) from None
    exporters = [_exporter(name) for name in _exporter_names()]
    # The variables' service name and attributes win over the default name.
    resource = Resource.create({SERVICE_NAME: service}).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # flushed at exit (the SDK's atexit)
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def _exporter_names() -> list[str]:
    raw = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() or "otlp"
    names = [name.strip() for name in raw.split(",") if name.strip() and name.strip() != "none"]
    grpc = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip().lower() == "grpc"
    return [("otlp_proto_grpc" if grpc else _EXPORTER_ALIASES[n]) if n == "otlp" else n for n in names]


def _exporter(name: str) -> Any:
    """An exporter by the name the SDK's plugins register (opentelemetry_traces_exporter entry points)."""
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        known = sorted({"otlp", *(e.name for e in entry_points(group="opentelemetry_traces_exporter"))})
        raise ConfigError(f"OTEL_TRACES_EXPORTER: no exporter {name!r}; installed: {', '.join(known)}")
    return next(iter(found)).load()()


def traceparent(span: Span) -> str | None:
    """A span's W3C traceparent, as stored with a request."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, trace.set_span_in_context(span))
    return carrier.get("traceparent")


def _context(carrier: Mapping[str, str] | None):
    """The trace context a carrier (HTTP headers, or {"traceparent": stored}) holds; a malformed or absent
    traceparent is none (W3C Trace Context: the receiver starts a new trace)."""
    return _propagator.extract(carrier) if carrier else None


# ---------------------------------------------------------------------------------------------------
# Producing: a submission.


@dataclass
class Sending:
    """What `sending` yields: the request to submit (with the span's traceparent) and the span."""

    request: Mapping[str, Any]
    span: Span = INVALID_SPAN

    @property
    def recording(self) -> bool:
        return self.span.is_recording()

    @staticmethod
    def new_models(answer: Any) -> list[int]:
        """The models a submission's answer (a Submission, or a batch's list of them) created, whose jobs
        `sent` names: the deduplicated ones were there already."""
        return [s.model_id for s in _submissions(answer) if not s.deduplicated]

    def sent(self, answer: Any, job_ids: list[int]) -> None:
        """The models that serve the submission, and the jobs deferred for the new ones among them (none:
        existing models serve it all)."""
        if len(job_ids) == 1:
            self.span.set_attribute("messaging.message.id", str(job_ids[0]))
        elif len(job_ids) > 1:
            self.span.set_attribute("messaging.batch.message_count", len(job_ids))
        self.span.set_attribute("sfq.model.ids", [s.model_id for s in _submissions(answer)])
        self.span.set_attribute("sfq.deduplicated", not job_ids)


def _submissions(answer: Any) -> list[Any]:
    return answer if isinstance(answer, list) else [answer]


@contextlib.contextmanager
def sending(queue: str, request: Mapping[str, Any], carrier: Mapping[str, str] | None) -> Iterator[Sending]:
    """The producer span "send <queue>" of a submission, a child of the trace context `carrier` holds (an
    HTTP request's headers, or the CLI's TRACEPARENT variable); its traceparent goes into the request,
    unless the request names its own (then that is what is stored, and checked, as from SQL)."""
    if not _enabled or request.get("traceparent") is not None:
        yield Sending(request)
        return
    with _tracer.start_as_current_span(
        f"send {queue}",
        context=_context(carrier),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "send",
            "messaging.destination.name": queue,
        },
    ) as span:
        yield Sending({**request, "traceparent": traceparent(span)}, span)


# ---------------------------------------------------------------------------------------------------
# Consuming: a job.


@contextlib.contextmanager
def processing(
    queue: str, stored: str | None, job_id: int | None, attributes: Mapping[str, Any]
) -> Iterator[Span]:
    """The consumer span "process <queue>" of one attempt at a job: a child of the context stored with its
    request, and linked to it (the messaging conventions' link to the creation context; each attempt,
    a rescued job's too, is a new span with the same parent and link). No stored context: a new trace."""
    if not _enabled:
        yield INVALID_SPAN
        return
    parent = _context({"traceparent": stored} if stored else None)
    creation = trace.get_current_span(parent).get_span_context() if parent is not None else None
    with _tracer.start_as_current_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=[Link(creation)] if creation is not None and creation.is_valid else None,
        attributes={
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.destination.name": queue,
            **({"messaging.message.id": str(job_id)} if job_id is not None else {}),
            **attributes,
        },
    ) as span:
        yield span


@contextlib.contextmanager
def step(name: str, **attributes: Any) -> Iterator[Span]:
    """A child span of the current one (storing results, a backtest), when tracing is on."""
    if not _enabled:
        yield INVALID_SPAN
        return
    with _tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def failed(span: Span, reason: str) -> None:
    span.set_status(Status(StatusCode.ERROR, reason))


_PHASE_SPANS = {"cv": "cross-validation"}


@dataclass
class TrainingClock:
    """When a training was handed to the training process, when each CV fold's scores came back, and
    when its answer did (wall clock, ns): the training's child spans are drawn from these and its phase
    timings, after the fact (the training process itself exports nothing)."""

    sent_ns: int = 0
    fold_ends_ns: list[int] = field(default_factory=list)
    answered_ns: int = 0


def training_spans(clock: TrainingClock, timings: Mapping[str, float] | None, folds: int) -> None:
    """The span "train" (from handing the job to the training process to its answer) under the current
    span, with "load bars" and each phase of `timings` (a "cv fold" per fold under "cross-validation",
    ending when its scores arrived), placed back from the answer's time."""
    if not _enabled or not clock.answered_ns:
        return
    train = _tracer.start_span("train", start_time=clock.sent_ns)
    within = trace.set_span_in_context(train)
    durations = [(phase, int(timings[phase] * 1e9)) for phase in TRAINING_PHASES if phase in (timings or {})]
    at = max(clock.sent_ns, clock.answered_ns - sum(d for _, d in durations))
    if durations:
        _tracer.start_span("load bars", context=within, start_time=clock.sent_ns).end(end_time=at)
    for phase, duration in durations:
        span = _tracer.start_span(_PHASE_SPANS.get(phase, phase), context=within, start_time=at)
        if phase == "cv":
            _fold_spans(span, at, at + duration, clock.fold_ends_ns[:folds])
        at += duration
        span.end(end_time=at)
    train.end(end_time=clock.answered_ns)


def _fold_spans(cv: Span, start: int, end: int, fold_ends: list[int]) -> None:
    """One "cv fold" span per fold, each from the one before's end (kept within the CV's span)."""
    within = trace.set_span_in_context(cv)
    for number, fold_end in enumerate(fold_ends, start=1):
        fold_end = min(max(start, fold_end), end)
        _tracer.start_span("cv fold", context=within, start_time=start, attributes={"sfq.fold": number}).end(
            end_time=fold_end
        )
        start = fold_end
