"""Prometheus metrics for /metrics.

The API, the workers and the beat are separate processes, so nothing counts events in memory: a
collector reads the database at scrape time (annotations, tasks, jobs, job durations, active model
F1). Only the HTTP request metrics belong to this API process and are counted as requests pass.
Each app has a registry of its own, so several apps in one process (tests) never clash.
"""

from __future__ import annotations

from collections.abc import Iterator
from time import perf_counter

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from starlette.routing import compile_path

from ..models import Annotation, Job, ModelStatus, ModelVersion, Task

# HTTP's methods; any other a client invents is counted as "other", so clients cannot add series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Seconds; jobs run from seconds (a sync) to hours (a training on a large labelled set).
JOB_DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


class DatabaseCollector(Collector):
    """Reads the loop's state from the database on every scrape."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def collect(self) -> Iterator:
        with Session(self.engine) as session:
            yield annotation_counts(session)
            yield task_counts(session)
            yield job_counts(session)
            yield job_durations(session)
            yield from active_model_f1(session)


def annotation_counts(session: Session) -> GaugeMetricFamily:
    # A gauge, not a counter: annotations deleted in Label Studio are deleted here too.
    family = GaugeMetricFamily(
        "nerloop_annotations", "Annotations ingested from Label Studio and still there, per project", labels=["project", "accepted"]
    )
    rows = session.exec(
        select(Task.project_id, Annotation.accepted, func.count())
        .join(Task, Annotation.task_id == Task.id)
        .group_by(Task.project_id, Annotation.accepted)
    ).all()
    for project_id, accepted, n in rows:
        family.add_metric([str(project_id), str(bool(accepted)).lower()], n)
    return family


def task_counts(session: Session) -> GaugeMetricFamily:
    family = GaugeMetricFamily("nerloop_tasks", "Tasks per project and state (pool or labelled)", labels=["project", "state"])
    for project_id, state, n in session.exec(select(Task.project_id, Task.state, func.count()).group_by(Task.project_id, Task.state)):
        family.add_metric([str(project_id), state.value], n)
    return family


def job_counts(session: Session) -> GaugeMetricFamily:
    family = GaugeMetricFamily("nerloop_jobs", "Jobs per project, kind and status", labels=["project", "kind", "status"])
    rows = session.exec(select(Job.project_id, Job.kind, Job.status, func.count()).group_by(Job.project_id, Job.kind, Job.status))
    for project_id, kind, status, n in rows:
        family.add_metric(["" if project_id is None else str(project_id), kind, status.value], n)
    return family


def job_durations(session: Session) -> HistogramMetricFamily:
    """Start-to-finish time of finished jobs, per kind and outcome.

    Computed in Python from the timestamps (portable across SQLite and PostgreSQL); the job table
    holds one row per run, so this stays small next to a scrape interval.
    """
    family = HistogramMetricFamily(
        "nerloop_job_duration_seconds", "Start-to-finish time of finished jobs", labels=["kind", "status"]
    )
    rows = session.exec(
        select(Job.kind, Job.status, Job.started_at, Job.finished_at).where(
            Job.started_at.is_not(None), Job.finished_at.is_not(None)
        )
    )
    durations: dict[tuple[str, str], list[float]] = {}
    for kind, status, started, finished in rows:
        durations.setdefault((kind, status.value), []).append((finished - started).total_seconds())
    for labels, seconds in sorted(durations.items()):
        # Cumulative, as Prometheus histograms are; bounds written "60.0", "+Inf" like its own clients do.
        buckets = [(floatToGoString(bound), sum(s <= bound for s in seconds)) for bound in (*JOB_DURATION_BUCKETS, float("inf"))]
        family.add_metric(list(labels), buckets, sum_value=sum(seconds))
    return family


def active_model_f1(session: Session) -> Iterator[GaugeMetricFamily]:
    overall = GaugeMetricFamily(
        "nerloop_active_model_dev_f1", "Dev-set micro F1 of each project's active model version", labels=["project", "version"]
    )
    per_type = GaugeMetricFamily(
        "nerloop_active_model_dev_type_f1",
        "Dev-set F1 of each project's active model version, per entity type",
        labels=["project", "version", "type"],
    )
    for version in session.exec(select(ModelVersion).where(ModelVersion.status == ModelStatus.active)):
        if version.dev_f1 is not None:
            overall.add_metric([str(version.project_id), version.name], version.dev_f1)
        for label, scores in ((version.metrics.get("dev") or {}).get("per_type") or {}).items():
            per_type.add_metric([str(version.project_id), version.name, label], scores["f1"])
    yield overall
    yield per_type


class RequestMetrics:
    """ASGI middleware: request count and latency per method, route template and status.

    The route template, not the raw path, keeps the number of series bounded; requests that match
    no route share ``unmatched``, methods outside ``KNOWN_METHODS`` share ``other``. The request
    count is the histogram's ``_count``.
    """

    def __init__(self, app, registry: CollectorRegistry):
        self.app = app
        self.latency = Histogram(
            "nerloop_http_request_duration_seconds",
            "Time to answer HTTP requests to the API",
            ["method", "route", "status"],
            registry=registry,
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before answering
        started = perf_counter()

        async def send_and_note_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
            self.latency.labels(method, route_template(scope), str(status)).observe(perf_counter() - started)


def route_template(scope) -> str:
    """The matched route's full template, e.g. ``/api/v1/projects/{project_id}``.

    The router leaves the matched route on the scope, but an included router's route knows only its
    own part of the path (``/health`` under both /api/v1 and /ml); the prefix is what the request's
    path has in front of that part.
    """
    route = scope.get("route")
    if route is None:  # refused before routing (the request guard): count it under the route it asked for
        return _template_matching(scope) or "unmatched"
    own_part = route.path_format.format(**scope.get("path_params", {}))
    prefix = scope["path"].removesuffix(own_part) if scope["path"].endswith(own_part) else ""
    return prefix + route.path_format


def _template_matching(scope) -> str | None:
    """The documented path template that ``scope``'s path matches (the app's OpenAPI paths)."""
    app = scope.get("app")
    if app is None or not hasattr(app, "openapi"):
        return None
    for template in app.openapi()["paths"]:
        if compile_path(template)[0].match(scope["path"]):
            return template
    return None


def registry_for(engine: Engine) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(engine))
    return registry
