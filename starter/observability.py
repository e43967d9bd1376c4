"""Logs, metrics and traces for oppflow processes (worker, HTTP API, CLI).

- Logs: one JSON object per line on stderr, each with ``opportunity_id``, ``workflow_id`` and
  ``request_id`` (null when a line has none). The ids come from context variables that the
  HTTP API binds per request (``RequestContext``), that a worker interceptor binds around
  every activity and workflow handler, and from the extras ``workflow.logger`` and
  ``activity.logger`` attach.
- Metrics: the Temporal SDK's Prometheus metrics plus oppflow's own (``starter.metrics``) on
  one ``/metrics``: the worker serves it on ``OPPFLOW_METRICS_PORT``, the API mounts
  ``starter.metrics.metrics_app()``.
- Traces (``OPPFLOW_OTEL=1``): OpenTelemetry spans from the API request through the client
  call, the workflow and its activities (``temporalio.contrib.opentelemetry``). Spans go to
  OTLP when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set and the OTLP exporter is installed,
  otherwise to stdout.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import IO, TYPE_CHECKING, Any, Literal

from pydantic_settings import BaseSettings, SettingsConfigDict
from temporalio import activity, workflow
from temporalio.runtime import (
    LogForwardingConfig,
    LoggingConfig,
    PrometheusConfig,
    Runtime,
    TelemetryConfig,
    TelemetryFilter,
)
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    ExecuteWorkflowInput,
    HandleSignalInput,
    HandleUpdateInput,
    Interceptor,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
)

from starter import metrics

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from temporalio.contrib.opentelemetry import TracingInterceptor

# OpenTelemetry and the JSON formatter are imported where used: CLI commands stay quick to start.

OPPORTUNITY_WORKFLOW_PREFIX = "opportunity-"
CONTEXT_FIELDS = ("opportunity_id", "workflow_id", "request_id")

log = logging.getLogger("oppflow.activity")


class ObservabilitySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="OPPFLOW_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    otel: bool = False


# -- context ----------------------------------------------------------------------------------------

_context: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"oppflow_{name}", default=None) for name in CONTEXT_FIELDS
}


@contextmanager
def bind(**ids: str | None) -> Iterator[None]:
    """Attach ids to every log line written inside the block (and tasks it starts)."""
    tokens = [(_context[name], _context[name].set(value)) for name, value in ids.items() if value]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            try:
                var.reset(token)
            except ValueError:
                # A workflow coroutine closed by eviction runs this in another Context.
                var.set(None)


def current_ids() -> dict[str, str | None]:
    return {name: var.get() for name, var in _context.items()}


def opportunity_id_from_workflow_id(workflow_id: str | None) -> str | None:
    if workflow_id and workflow_id.startswith(OPPORTUNITY_WORKFLOW_PREFIX):
        return workflow_id[len(OPPORTUNITY_WORKFLOW_PREFIX) :]
    return None


class ContextFilter(logging.Filter):
    """Puts the three ids on every record: bound context first, then the extras the
    Temporal SDK's loggers add (``temporal_workflow`` / ``temporal_activity``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids()
        sdk_extra = getattr(record, "temporal_workflow", None) or getattr(record, "temporal_activity", None)
        if isinstance(sdk_extra, Mapping):
            ids["workflow_id"] = ids["workflow_id"] or sdk_extra.get("workflow_id")
        ids["opportunity_id"] = ids["opportunity_id"] or opportunity_id_from_workflow_id(ids["workflow_id"])
        for name, value in ids.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


def configure_logging(
    settings: ObservabilitySettings | None = None, stream: IO[str] | None = None
) -> logging.Handler:
    """Replace the root logger's handlers with one that writes JSON (or text) lines."""
    settings = settings or ObservabilitySettings()
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    if settings.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                defaults=dict.fromkeys(CONTEXT_FIELDS),
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [opp=%(opportunity_id)s wf=%(workflow_id)s "
                "req=%(request_id)s] %(message)s"
            )
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.captureWarnings(True)
    return handler


def _first_arg(args: Sequence[Any]) -> Any:
    return args[0] if args else None


def _request_id_of(arg: Any) -> str | None:
    if (request_id := getattr(arg, "request_id", None)) is not None:
        return str(request_id)
    changes = getattr(arg, "changes", None)  # a persist batch: the commands it writes
    if changes:
        return ",".join(dict.fromkeys(str(c.request_id) for c in changes))
    return None


def _opportunity_id_of(arg: Any) -> str | None:
    if (opportunity_id := getattr(arg, "opportunity_id", None)) is not None:
        return str(opportunity_id)
    row = getattr(arg, "opportunity", None)
    return getattr(row, "id", None)


class _ActivityContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        arg = _first_arg(input.args)
        opportunity_id = _opportunity_id_of(arg) or opportunity_id_from_workflow_id(info.workflow_id)
        started = time.monotonic()
        with bind(
            workflow_id=info.workflow_id, opportunity_id=opportunity_id, request_id=_request_id_of(arg)
        ):
            result = await super().execute_activity(input)
            log.debug(
                "activity %s done in %.1f ms (attempt %d)",
                info.activity_type,
                (time.monotonic() - started) * 1000,
                info.attempt,
            )
            return result


class _WorkflowContext(WorkflowInboundInterceptor):
    # Runs inside the workflow sandbox: binding context variables is deterministic and does no I/O.
    @staticmethod
    def _ids(arg: Any = None) -> dict[str, str | None]:
        workflow_id = workflow.info().workflow_id
        return {
            "workflow_id": workflow_id,
            "opportunity_id": opportunity_id_from_workflow_id(workflow_id),
            "request_id": _request_id_of(arg) if arg is not None else None,
        }

    async def execute_workflow(self, input: ExecuteWorkflowInput) -> Any:
        with bind(**self._ids()):
            return await super().execute_workflow(input)

    async def handle_signal(self, input: HandleSignalInput) -> None:
        with bind(**self._ids(_first_arg(input.args))):
            await super().handle_signal(input)

    def handle_update_validator(self, input: HandleUpdateInput) -> None:
        with bind(**self._ids(_first_arg(input.args))):
            super().handle_update_validator(input)

    async def handle_update_handler(self, input: HandleUpdateInput) -> Any:
        with bind(**self._ids(_first_arg(input.args))):
            return await super().handle_update_handler(input)


class LogContextInterceptor(Interceptor):
    """Binds workflow id, opportunity id and request id for logs written by activities and
    by workflow handlers."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityContext(next)

    def workflow_interceptor_class(
        self, input: WorkflowInterceptorClassInput
    ) -> type[WorkflowInboundInterceptor] | None:
        return _WorkflowContext


# -- tracing ------------------------------------------------------------------------------------------

_tracer_provider: TracerProvider | None = None


def tracer_provider(exporter: SpanExporter | None = None) -> TracerProvider:
    """The process's tracer provider, made once (and installed as the global one)."""
    global _tracer_provider
    if _tracer_provider is None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider(
            resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "oppflow")})
        )
        provider.add_span_processor(BatchSpanProcessor(exporter or _default_exporter()))
        trace.set_tracer_provider(provider)
        _tracer_provider = provider
    return _tracer_provider


def _default_exporter() -> SpanExporter:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            logging.getLogger("oppflow").warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but opentelemetry-exporter-otlp-proto-http "
                "is not installed: spans go to stdout"
            )
        else:
            return OTLPSpanExporter()
    return ConsoleSpanExporter()


def tracing_interceptor(provider: TracerProvider) -> TracingInterceptor:
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return TracingInterceptor(provider.get_tracer("oppflow"))


def client_interceptors(settings: ObservabilitySettings | None = None) -> list[TracingInterceptor]:
    """Interceptors for ``Client.connect``: tracing when ``OPPFLOW_OTEL=1`` (workers built on
    that client trace workflows and activities too)."""
    settings = settings or ObservabilitySettings()
    return [tracing_interceptor(tracer_provider())] if settings.otel else []


def worker_interceptors() -> list[Interceptor]:
    return [LogContextInterceptor()]


# -- metrics ------------------------------------------------------------------------------------------


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def install_runtime(*, sdk_metrics: bool) -> str | None:
    """Set this process's Temporal runtime (call before the first client connects): the SDK
    core's own log lines go through Python logging (so they are JSON too), and with
    ``sdk_metrics`` the SDK exports Prometheus metrics on a loopback port that this
    process's ``/metrics`` re-exposes. Answers the SDK's own metrics URL, if any."""
    address = f"127.0.0.1:{_free_loopback_port()}" if sdk_metrics else None
    telemetry = TelemetryConfig(
        logging=LoggingConfig(
            filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
            forwarding=LogForwardingConfig(logger=logging.getLogger("temporalio.core")),
        ),
        metrics=PrometheusConfig(bind_address=address, counters_total_suffix=True) if address else None,
    )
    Runtime.set_default(Runtime(telemetry=telemetry), error_if_already_set=False)
    if address is None:
        return None
    url = f"http://{address}/metrics"
    metrics.add_sdk_metrics(url)
    return url


def setup_worker_process(metrics_port: int | None) -> None:
    """Logging for a worker process and, with a port, its ``/metrics`` endpoint."""
    configure_logging()
    install_runtime(sdk_metrics=bool(metrics_port))
    if metrics_port:
        metrics.serve_metrics(metrics_port)
        logging.getLogger("oppflow.worker").info("metrics on :%d/metrics", metrics_port)


def setup_api_process() -> None:
    """Logging for the HTTP API process; mount ``starter.metrics.metrics_app()`` for ``/metrics``."""
    configure_logging()
    install_runtime(sdk_metrics=True)


# -- HTTP requests --------------------------------------------------------------------------------------


class RequestContext:
    """ASGI middleware: binds ``request_id`` (the ``Idempotency-Key`` or ``X-Request-ID`` header,
    else a new one) and the opportunity id in ``/opportunities/{id}...`` paths for every log
    line of the request, and opens a server span when tracing is on."""

    def __init__(
        self, app: Any, settings: ObservabilitySettings | None = None, provider: TracerProvider | None = None
    ) -> None:
        self.app = app
        self.tracing = provider is not None or (settings or ObservabilitySettings()).otel
        self.provider = provider

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        request_id = headers.get("idempotency-key") or headers.get("x-request-id") or uuid.uuid4().hex
        parts = scope["path"].strip("/").split("/")
        opportunity_id = parts[1] if len(parts) > 1 and parts[0] == "opportunities" else None
        span: Any = nullcontext()
        if self.tracing:
            from opentelemetry.trace import SpanKind

            tracer = (self.provider or tracer_provider()).get_tracer("oppflow.api")
            span = tracer.start_as_current_span(f"{scope['method']} {scope['path']}", kind=SpanKind.SERVER)
        with bind(request_id=request_id, opportunity_id=opportunity_id), span:
            await self.app(scope, receive, send)
