"""The gateway's HTTP API (FastAPI). Launch: ``uvicorn services.gateway.app:app``.

    POST /v1/runs          {"component": "generation", "kind": "textbooks", "count": 100}
                           → 201, the run (phase Pending), Location: /v1/runs/<id>
    GET  /v1/runs          newest first; ?component=&phase=&limit=&offset=
    GET  /v1/runs/{id}     phase, progress (units done), outputs, error
    GET  /metrics          Prometheus (see metrics.py)
    GET  /healthz          the process is up;   GET /readyz: Redis answers
    GET  /openapi.json     this API's OpenAPI spec (docs at /docs)

A run is one ``primer.run_unit`` task on its component's queue (see ``driver.py``); its
record lives in Redis (``store.py``). Settings come from the environment (``config.py``).
Before any body is parsed, ``guard.py`` checks the token, the rate limit and the body size;
before a run is enqueued, ``policy.py`` checks what it asks for (overrides on its kind's
allow-list, endpoints the operator listed, inputs and outputs inside the storage roots).
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

import redis
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CollectorRegistry, generate_latest

from primer.executor import WorkUnit
from primer.executor.celery_app import TASK_NAME, CeleryConfig, make_app
from primer.progress import units_done
from services.gateway import policy
from services.gateway.auth import bearer_scheme
from services.gateway.commands import command
from services.gateway.config import COMPONENTS, GatewayConfig
from services.gateway.driver import DRIVER_FN
from services.gateway.guard import Guard, RateLimiter
from services.gateway.metrics import GatewayCollector
from services.gateway.models import TERMINAL, ErrorBody, Phase, Run, RunList, RunSpec
from services.gateway.store import RunStore, now

RUN_ID = r"^run-[0-9a-f]{12}$"
ERRORS = {code: {"model": ErrorBody} for code in (401, 413, 422, 429, 503)}


def create_app(config: GatewayConfig | None = None) -> FastAPI:
    config = config or GatewayConfig.from_env()
    store = RunStore.from_url(config.redis_url)
    celery = make_app(CeleryConfig(redis_url=config.redis_url))
    registry = CollectorRegistry()
    registry.register(GatewayCollector(store, config))
    app = FastAPI(title="Primer gateway", version="1",
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

    @app.post("/v1/runs", status_code=201, response_model=Run, dependencies=auth,
              responses=ERRORS, summary="Submit a run")
    def submit(spec: RunSpec, response: Response) -> dict[str, Any]:
        if problems := policy.check(spec, config):
            raise RunRefused(problems)
        run_id = f"run-{uuid.uuid4().hex[:12]}"
        output = policy.run_output(config, run_id, spec)
        argv = command(spec, output)
        queue = config.queues[spec.component]
        task_id = str(uuid.uuid4())
        record = {"id": run_id, "component": spec.component, "phase": "Pending",
                  "spec": spec.model_dump(mode="json"), "command": ["primer", *argv],
                  "queue": queue, "task_id": task_id, "output": output,
                  "created_at": now(), "progress": {"units_done": 0, "detail": "queued"}}
        store.create(record, time.time())  # before the task exists, so the worker finds it
        unit = WorkUnit(run_id, DRIVER_FN, {"run_id": run_id, "component": spec.component,
                                            "argv": argv, "output": output,
                                            "redis_url": config.redis_url})
        celery.send_task(TASK_NAME, kwargs={"unit": unit.to_dict(), "job": f"gateway-{run_id}",
                                            "state_uri": output.rstrip("/") + "/_work/gateway"},
                         queue=queue, task_id=task_id)
        response.headers["Location"] = f"/v1/runs/{run_id}"
        return record

    @app.get("/v1/runs", response_model=RunList, dependencies=auth, responses=ERRORS,
             summary="List runs, newest first")
    def list_runs(component: Literal["curation", "generation", "evaluation"] | None = None,
                  phase: Phase | None = None,
                  limit: Annotated[int, Query(ge=1, le=500)] = 50,
                  offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> dict[str, Any]:
        runs = [refresh(r) for r in store.list(limit, offset)]
        runs = [r for r in runs if (component is None or r["component"] == component)
                and (phase is None or r["phase"] == phase)]
        return {"runs": runs, "count": len(runs)}

    @app.get("/v1/runs/{run_id}", response_model=Run, dependencies=auth,
             responses={**ERRORS, 404: {"model": ErrorBody}}, summary="One run")
    def get_run(run_id: Annotated[str, Path(pattern=RUN_ID)]) -> dict[str, Any]:
        record = store.get(run_id)
        if record is None:
            raise HTTPException(404, f"no run with id {run_id!r}")
        return refresh(record)

    def refresh(record: dict[str, Any]) -> dict[str, Any]:
        """Fold in what happened since the record was written: a task that failed before the
        driver could say so (delivery limit, import error), and the markers written so far."""
        if record["phase"] in TERMINAL:
            return record
        meta = celery.backend.get_task_meta(record["task_id"])
        if meta.get("status") == "FAILURE" and record["phase"] != "Failed":
            changes = {"phase": "Failed", "finished_at": now(),
                       "error": f"the task failed: {meta.get('result')!r}"}
            store.update(record["id"], **changes)
            return {**record, **changes}
        try:
            done = {"units_done": units_done(record["output"]), "detail": "completion markers"}
        except Exception as exc:  # storage unreachable from here: show, do not fail the GET
            done = {**record["progress"], "detail": f"cannot read markers: {exc}"}
        store.update(record["id"], progress=done)
        return {**record, "progress": done}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(),
                                 media_type="text/plain; version=0.0.4")

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: Redis answers",
             responses={503: {"model": ErrorBody}})
    def readyz() -> JSONResponse:
        try:
            store.client.ping()
        except redis.RedisError as exc:
            return JSONResponse({"error": f"Redis at {config.redis_url} does not answer: "
                                 f"{exc}", "fields": []}, 503)
        return JSONResponse({"status": "ready"})

    app.state.store, app.state.celery = store, celery
    return app


class RunRefused(Exception):
    """A valid spec that asks for what this gateway does not allow (``policy.check``)."""

    def __init__(self, problems: list[tuple[str, str]]):
        super().__init__(problems)
        self.problems = problems


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
