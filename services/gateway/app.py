"""The gateway's HTTP API (FastAPI). Launch: ``uvicorn services.gateway.app:app``.

    POST /v1/runs          {"component": "generation", "kind": "textbooks", "count": 100}
                           → 201, the run (phase Pending), Location: /v1/runs/<id>
    GET  /v1/runs          newest first; ?component=&phase=&limit=&offset=
    GET  /v1/runs/{id}     phase, progress (units done), outputs, error, conditions (a run
                           whose queue no worker consumes says so: primer.executor.consumers)
    DELETE /v1/runs/{id}   cancel: 200, the run (phase Cancelled); 409 if it had ended
    GET  /v1/runs/{id}/logs  the driver's events and the units' failures (with tracebacks)
    GET  /metrics          Prometheus (see metrics.py)
    GET  /healthz          the process is up;   GET /readyz: Redis answers, and the
                           consumers and waiting units of each queue
    GET  /openapi.json     this API's OpenAPI spec (docs at /docs)

A request body is a run spec of :mod:`primer.runs` (``models.py``). In embedded mode the run
is a record in Redis that this process's reconciler drives through its component's planner
(``embedded.py``); in cluster mode it is a custom resource the operator drives
(``cluster.py``). A run that ended expires after ``PRIMER_GATEWAY_RUN_TTL_SECONDS`` (embedded
mode; ``store.py``). Settings come from the environment (``config.py``). Before any body is
parsed, ``guard.py`` checks the token, the rate limit and the body size; before a run is
started, ``policy.py`` checks what it asks for (config keys on its kind's allow-list,
endpoints the operator listed, inputs and outputs inside the storage roots).
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Annotated, Any, Literal

import redis
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest

from primer.executor.consumers import Consumers, idle
from primer.executor.queue import QueueUnavailable
from primer.runs import Phase, SpecError
from primer.storage import StorageError
from services.gateway import policy
from services.gateway.auth import bearer_scheme
from services.gateway.cluster import ClusterRuns, ClusterUnavailable
from services.gateway.config import COMPONENTS, GatewayConfig
from services.gateway.embedded import EmbeddedRuns, NotPlanned
from services.gateway.guard import Guard, RateLimiter
from services.gateway.metrics import GatewayCollector
from services.gateway.models import (
    ErrorBody,
    Readiness,
    Run,
    RunBody,
    RunEnded,
    RunList,
    RunLogs,
)
from services.gateway.store import RunStore

RUN_ID = r"^run-[0-9a-f]{12}$"
ERRORS = {code: {"model": ErrorBody} for code in (401, 413, 422, 429, 501, 503)}
NOT_FOUND = {404: {"model": ErrorBody, "description": "No run with this id (or it expired)."}}


def create_app(config: GatewayConfig | None = None) -> FastAPI:
    config = config or GatewayConfig.from_env()
    store = RunStore.from_url(config.redis_url, config.run_ttl_seconds)
    embedded = EmbeddedRuns(store, config) if config.mode == "embedded" else None
    runs = embedded or ClusterRuns(config)
    registry = CollectorRegistry()
    consumers = Consumers(config.redis_url)
    registry.register(GatewayCollector(store, config, consumers))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        if embedded is not None:
            embedded.reconciler.start()
        yield
        if embedded is not None:
            embedded.reconciler.stop()
        consumers.close()  # the broker and Redis connections go with the app
        store.close()

    app = FastAPI(title="Primer gateway", version="1", lifespan=lifespan,
                  description="Submit and watch curation, generation and evaluation runs.")
    limiter = RateLimiter(store.client, config.rate_limit) if config.rate_limit else None
    app.add_middleware(Guard, config=config, limiter=limiter)
    # No token, no security scheme: the spec then says what the server does.
    auth = [Security(bearer_scheme)] if config.token else []

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [{"field": _field(e["loc"]), "message": e["msg"]} for e in exc.errors()]
        text = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return JSONResponse({"error": f"invalid request: {text}", "fields": fields}, 422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail, "fields": []}, exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(RunRefused)
    async def _refused(_: Request, exc: RunRefused) -> JSONResponse:
        fields = [{"field": f, "message": m} for f, m in exc.problems]
        text = "; ".join(f"{f}: {m}" for f, m in exc.problems)
        return JSONResponse({"error": f"refused by this gateway's policy: {text}",
                             "fields": fields}, 422)

    @app.exception_handler(redis.RedisError)
    async def _redis_down(_: Request, exc: redis.RedisError) -> JSONResponse:
        return JSONResponse({"error": f"the run store (Redis) is unavailable: {exc}",
                             "fields": []}, 503)

    @app.exception_handler(QueueUnavailable)
    async def _queue_down(_: Request, exc: QueueUnavailable) -> JSONResponse:
        return JSONResponse({"error": f"the queue (Redis) is unavailable: {exc}",
                             "fields": []}, 503)

    @app.exception_handler(StorageError)
    async def _storage_down(_: Request, exc: StorageError) -> JSONResponse:
        return JSONResponse({"error": f"the storage did not answer as expected: "
                             f"{type(exc).__name__}: {exc}", "fields": []}, 503)

    @app.exception_handler(ClusterUnavailable)
    async def _cluster_down(_: Request, exc: ClusterUnavailable) -> JSONResponse:
        return JSONResponse({"error": f"the Kubernetes API is unavailable: {exc}",
                             "fields": []}, 503)

    @app.post("/v1/runs", status_code=201, response_model=Run, dependencies=auth,
              responses=ERRORS, summary="Submit a run")
    def submit(body: RunBody, response: Response) -> dict[str, Any]:
        if problems := policy.check(body, config):
            raise RunRefused(problems)
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        try:
            record = runs.submit(run_id, body, policy.run_output(config, run_id, body))
        except NotPlanned as exc:
            raise HTTPException(501, str(exc)) from None
        except (ClusterUnavailable, redis.RedisError):
            raise
        except SpecError as exc:
            raise RunRefused([("body", str(exc))]) from None
        except (ValueError, RuntimeError) as exc:  # the component refuses the config
            raise RunRefused([("config", f"{type(exc).__name__}: {exc}")]) from None
        response.headers["Location"] = f"/v1/runs/{run_id}"
        return record

    @app.get("/v1/runs", response_model=RunList, dependencies=auth, responses=ERRORS,
             summary="List runs, newest first")
    def list_runs(component: Literal["curation", "generation", "evaluation"] | None = None,
                  phase: Phase | None = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> dict[str, Any]:
        found = [r for r in runs.list(limit, offset)
                 if (component is None or r["component"] == component)
                 and (phase is None or r["phase"] == phase)]
        return {"runs": consumers.annotate(found), "count": len(found)}

    @app.get("/v1/runs/{run_id}", response_model=Run, dependencies=auth,
             responses={**ERRORS, **NOT_FOUND}, summary="One run")
    def get_run(run_id: Annotated[str, Path(pattern=RUN_ID)]) -> dict[str, Any]:
        return consumers.annotate([_found(run_id, runs.get(run_id))])[0]

    @app.delete("/v1/runs/{run_id}", response_model=Run, dependencies=auth,
                responses={**ERRORS, **NOT_FOUND, 409: {
                    "model": ErrorBody, "description": "The run had ended already."}},
                summary="Cancel a run")
    def cancel_run(run_id: Annotated[str, Path(pattern=RUN_ID)]) -> dict[str, Any]:
        """The run ends as Cancelled: its units waiting in the queue are removed, a unit a
        worker already runs finishes, and nothing follows it."""
        try:
            return _found(run_id, runs.cancel(run_id))
        except RunEnded as exc:
            raise HTTPException(409, f"{exc}; nothing to cancel") from None

    @app.get("/v1/runs/{run_id}/logs", response_model=RunLogs, dependencies=auth,
             responses={**ERRORS, **NOT_FOUND}, summary="A run's events and unit failures")
    def run_logs(run_id: Annotated[str, Path(pattern=RUN_ID)]) -> dict[str, Any]:
        """The driver's events (the gateway's reconciler, or the operator's Kubernetes
        Events in cluster mode), oldest first, and every unit whose last attempt failed,
        with the worker's traceback."""
        return _found(run_id, runs.logs(run_id))

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: Redis answers; each queue's consumers",
             response_model=Readiness, responses={503: {"model": ErrorBody}})
    def readyz() -> JSONResponse:
        try:
            store.client.ping()
            waiting = {q: store.client.llen(q) for q in sorted(set(config.queues.values()))}
        except redis.RedisError as exc:
            return JSONResponse({"error": f"Redis at {_safe(config.redis_url)} does not "
                                 f"answer: {exc}", "fields": []}, 503)
        try:
            counts, notes = consumers.counts(), []
        except Exception as exc:  # ready to serve all the same; the workers are unknown
            counts, notes = None, [f"cannot ask the workers: {type(exc).__name__}: {exc}"]
        queues = {q: {"consumers": None if counts is None else counts[q], "waiting": n}
                  for q, n in waiting.items()}
        notes += [idle(q) for q, v in queues.items() if v["consumers"] == 0]
        return JSONResponse({"status": "ready", "queues": queues, "notes": notes})

    app.state.store, app.state.runs = store, runs
    return app


class RunRefused(Exception):
    """A valid spec that asks for what this gateway does not allow (``policy.check``), or
    whose config its component refuses."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__(problems)
        self.problems = problems


def _safe(url: str) -> str:
    """``url`` without its password (error messages are read by whoever calls /readyz)."""
    head, at, host = url.rpartition("@")
    return f"{head.split('//')[0]}//…@{host}" if at else url


def _found(run_id: str, answer: dict[str, Any] | None) -> dict[str, Any]:
    if answer is None:
        raise HTTPException(404, f"no run with id {run_id!r}")
    return answer


def _field(loc: tuple) -> str:
    """``("body", "generation", "count")`` → ``"count"``: the run spec's own field name (the
    discriminator tag pydantic puts in front is noise); the whole body when none."""
    parts = [str(p) for p in loc]
    if parts[:1] == ["body"] and parts[1:2] and parts[1] in COMPONENTS:
        parts = parts[2:]
    parts = [p for p in parts if p not in ("body", "query", "path")]
    return ".".join(parts) or "body"


#: What ``uvicorn services.gateway.app:app`` serves (connects to Redis on first use).
app = create_app()
