"""The API's request and response bodies.

A request body is a run spec of :mod:`primer.runs` (the models the operator reads from its
custom resources and the planners resolve) tagged with its ``component``; only ``output``
differs: through the gateway it is a folder inside the run's own prefix, never a URI of its
own. Every field a user sends is checked here, so a bad request is a 422 naming the field,
never a run that fails later on a worker.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from primer.runs import CurationRun, EvaluationRun, GenerationRun, Phase, RunSpec, Text, parse_spec

Component = Literal["curation", "generation", "evaluation"]
_OUTPUT = ("Folder inside the run's own prefix <storage root>/runs/<run id>/ (e.g. "
           "curated/v1); default: the component's name. Paths and URIs of its own are refused.")


class CurationBody(CurationRun):
    __doc__ = CurationRun.__doc__
    component: Literal["curation"]
    output: Text | None = Field(None, description=_OUTPUT)


class GenerationBody(GenerationRun):
    __doc__ = GenerationRun.__doc__
    component: Literal["generation"]
    output: Text | None = Field(None, description=_OUTPUT)


class EvaluationBody(EvaluationRun):
    """An EvaluationRun: in cluster mode the custom resource (the operator's hardened Job);
    in embedded mode its planner's units, one per benchmark, on the evaluation workers."""

    component: Literal["evaluation"]
    output: Text | None = Field(None, description=_OUTPUT)  # type: ignore[assignment]


Body = CurationBody | GenerationBody | EvaluationBody
RunBody = Annotated[Body, Field(discriminator="component")]


def spec_of(body: Body, output: str) -> RunSpec:
    """The :mod:`primer.runs` spec ``body`` stands for, writing to ``output`` (a URI);
    :class:`SpecError` when the spec refuses that URI (an EvaluationRun writes to s3://)."""
    model = type(body).__mro__[1]
    fields = body.model_dump(exclude={"component"}, exclude_unset=True)
    return parse_spec(model, {**fields, "output": output}, prefix="body")


class Progress(BaseModel):
    units_done: int = Field(0, description="Units of the current step with a completion "
                            "marker (every unit, once the run has ended).")
    units_total: int = Field(0, description="Units of the current step.")
    stage: str = Field("", description="The current step, in a word (read, round 1, commit).")
    detail: str = Field("", description="What the numbers are based on.")


class Condition(BaseModel):
    type: str = Field(description="Waiting: something the run needs is missing.")
    reason: str = Field(description="NoConsumer: no worker consumes the run's queue.")
    message: str = Field(description="What is missing and how to provide it.")


class Run(BaseModel):
    id: str
    component: Component
    phase: Phase
    spec: dict[str, Any] = Field(description="The run spec (primer.runs), output resolved.")
    output: str = Field(description="Where the run writes.")
    queue: str | None = Field(None, description="The Celery queue of its units.")
    job: str | None = Field(None, description="The step whose units were sent last.")
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    progress: Progress = Field(default_factory=Progress)
    stats: dict[str, Any] = Field(default_factory=dict, description=(
        "Totals over the run's unit markers (units, seconds, teacher tokens)."))
    outputs: dict[str, Any] = Field(default_factory=dict, description="Set on success.")
    error: str | None = Field(None, description=(
        "Why it failed, in one line: the exception and where (e.g. \"ValueError: count must "
        "be > 0 (unit read-0 of step curate-read; 1 unit(s) failed)\")."))
    traceback: str | None = Field(None, description=(
        "The plain-text traceback behind the error, when there is one."))
    conditions: list[Condition] = Field(default_factory=list, description=(
        "Why a run that has not ended is not moving, e.g. NoConsumer (its queue has no "
        "worker); empty when nothing is missing."))


class RunList(BaseModel):
    runs: list[Run]
    count: int


class Event(BaseModel):
    at: str = Field(description="When (ISO 8601, UTC).")
    message: str = Field(description="What the run's driver did: the gateway's reconciler "
                         "(embedded mode) or the operator (cluster mode, its Kubernetes "
                         "Events).")


class Failure(BaseModel):
    unit: str = Field(description="The work unit's id.")
    job: str = Field(description="The step it belongs to.")
    error: str = Field(description="ExceptionType: message.")
    host: str = Field(description="The worker that ran it.")
    failed_at: str = Field(description="When (ISO 8601, UTC).")
    traceback: str = Field(description="The worker's plain-text traceback.")


class RunLogs(BaseModel):
    events: list[Event] = Field(description="The driver's log, oldest first.")
    failures: list[Failure] = Field(description="Units whose last attempt failed.")


class FieldError(BaseModel):
    field: str
    message: str


class RunEnded(Exception):
    """Cancelling a run that had ended already (409)."""

    def __init__(self, run_id: str, phase: str, finished_at: str | None):
        super().__init__(f"run {run_id} already ended: {phase}"
                         + (f" at {finished_at}" if finished_at else ""))
        self.phase = phase


class ErrorBody(BaseModel):
    error: str
    fields: list[FieldError] = Field(default_factory=list)


class QueueState(BaseModel):
    consumers: int | None = Field(description="Workers consuming it; null: unknown.")
    waiting: int = Field(description="Units waiting in it.")


class Readiness(BaseModel):
    status: Literal["ready"]
    queues: dict[str, QueueState] = Field(description="Each queue runs are sent to.")
    notes: list[str] = Field(description="Queues without a worker (and the command that "
                             "starts one), or why the workers could not be asked.")
