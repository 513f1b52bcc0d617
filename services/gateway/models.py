"""The API's request and response bodies. Every field a user sends is checked here, so a bad
request is a 422 naming the field, never a run that fails later on a worker."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
TERMINAL = ("Succeeded", "Failed")

#: A value passed to the ``primer`` command as one argument: no leading "-" (it would be
#: read as an option), no control characters.
Arg = Annotated[str, StringConstraints(pattern=r"^[^-\x00-\x1f][^\x00-\x1f]*$", min_length=1,
                                       max_length=2048)]
#: ``section.key`` of the component's config, as in ``--section.key=value``.
OverrideKey = Annotated[str, StringConstraints(
    pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$", max_length=200)]
OverrideValue = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f]*$", max_length=2048)] \
    | bool | int | float


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    output: Arg | None = Field(None, description=(
        "Folder inside the run's own prefix <PRIMER_DATA>/runs/<run id>/ (e.g. curated/v1); "
        "default: the component's name. Paths and URIs of its own are refused."))
    overrides: dict[OverrideKey, OverrideValue] = Field(default_factory=dict, description=(
        "Config overrides, as --section.key=value on the command line; only those on the "
        "run kind's allow-list (never the sandbox, endpoints, key variables or storage)."),
        max_length=100)


class CurationSpec(_Spec):
    """``primer curate``."""

    component: Literal["curation"]
    input: Arg | None = Field(None, description=(
        "Directory or dataset URI under the gateway's storage roots, or hf:NAME where "
        "allowed."))
    annotator: Literal["heuristic", "teacher"] | None = Field(None, description="Annotator.")
    keep_top: float | None = Field(None, gt=0, le=1, description="Keep this top fraction.")
    min_score: float | None = Field(None, ge=0, le=1, description="Keep edu_score >= this.")

    @model_validator(mode="after")
    def _one_rule(self) -> CurationSpec:
        if self.keep_top is not None and self.min_score is not None:
            raise ValueError("give keep_top or min_score, not both")
        return self


class GenerationSpec(_Spec):
    """``primer generate textbooks|exercises``."""

    component: Literal["generation"]
    kind: Literal["textbooks", "exercises"] = Field(description="What to generate.")
    count: int = Field(ge=1, le=100_000_000, description="Valid records to produce.")
    teacher_url: Arg | None = Field(None, description=(
        "OpenAI-compatible base URL, one of the gateway's allowed endpoints; default: the "
        "workers' configured teacher."))
    teacher_model: Arg | None = Field(None, description="Model name to request.")


class EvaluationSpec(_Spec):
    """``primer eval run`` (with ``model``) or ``primer eval score`` (with ``samples``)."""

    component: Literal["evaluation"]
    benchmarks: list[Literal["humaneval", "mbpp"]] = Field(min_length=1, max_length=2,
                                                           description="Benchmarks.")
    model: Arg | None = Field(None, description=(
        "Checkpoint folder under the storage roots, or a served model name with api_base."))
    api_base: Arg | None = Field(None, description=(
        "OpenAI-compatible base URL serving model, one of the gateway's allowed endpoints."))
    samples: Arg | None = Field(None, description=(
        "Samples JSONL under the storage roots to score (no generation)."))

    @model_validator(mode="after")
    def _model_or_samples(self) -> EvaluationSpec:
        if (self.model is None) == (self.samples is None):
            raise ValueError("give exactly one of model (generate, then score) or samples")
        if self.samples is not None and len(self.benchmarks) != 1:
            raise ValueError("scoring samples takes exactly one benchmark")
        if self.api_base is not None and self.model is None:
            raise ValueError("api_base serves a model: give model with it")
        return self


RunSpec = Annotated[CurationSpec | GenerationSpec | EvaluationSpec,
                    Field(discriminator="component")]


class Progress(BaseModel):
    units_done: int = Field(description="Work units with a completion marker so far.")
    detail: str = Field("", description="What the count is based on.")


class Run(BaseModel):
    id: str
    component: Literal["curation", "generation", "evaluation"]
    phase: Phase
    spec: dict[str, Any]
    command: list[str] = Field(description="The primer command the worker runs.")
    queue: str
    task_id: str
    output: str
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    progress: Progress
    outputs: dict[str, Any] = Field(default_factory=dict, description="Set on success.")
    error: str | None = Field(None, description="Why it failed (the command's last output).")


class RunList(BaseModel):
    runs: list[Run]
    count: int


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    error: str
    fields: list[FieldError] = Field(default_factory=list)
