"""The run specs: one model per run kind, whoever starts the run.

The operator reads them from its custom resources (the CRDs' OpenAPI schemas under
``charts/primer/crds`` are generated from these models: ``python -m primer.k8s.crds``), the
gateway takes them as request bodies, and a component's planner
(:mod:`primer.executor.plan`) turns one into the component's config. Field names are
snake_case in Python and camelCase on the wire where Kubernetes style wants it (aliases);
both spellings are accepted.

``config`` carries any other setting of the component's config as ``section.key: value``
(what ``--section.key=value`` sets on the command line); the planner validates it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
IMAGE = r"^[^\s]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$"
Benchmark = Literal["humaneval", "mbpp"]
#: Pending → Running → Succeeded | Failed, the same words in CR status and gateway runs.
Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
TERMINAL = ("Succeeded", "Failed")
#: The Celery queue (a Redis list) each component's units go to, whoever sends them (the CLI
#: with ``--executor celery``, the gateway, the operator) and that its workers consume: the
#: chart's defaults and the README's worker command name the same ones.
QUEUES: dict[str, str] = {"curation": "curation", "generation": "generation",
                          "evaluation": "evaluation"}


def worker_command(*queues: str) -> str:
    """The command that starts a worker consuming ``queues`` (for messages and docs)."""
    return (f"PRIMER_REDIS_URL=redis://… celery -A primer.executor.celery_app worker "
            f"-Q {','.join(queues)}")

#: A text a user passes on: no leading "-" (a command line would read an option), no control
#: characters.
Text = Annotated[str, StringConstraints(pattern=r"^[^-\x00-\x1f][^\x00-\x1f]*$", min_length=1,
                                        max_length=2048)]
#: ``section.key`` of a component's config.
ConfigKey = Annotated[str, StringConstraints(
    pattern=r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$", max_length=200)]
ConfigValue = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f]*$", max_length=2048)] \
    | bool | int | float | None


class RunSpec(BaseModel):
    """Base of every run spec: unknown fields fail; snake_case or camelCase both parse."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ComponentRun(RunSpec):
    """A run made of work units on the component's Celery workers."""

    output: Text | None = Field(None, description=(
        "Output dataset URI. In the cluster an s3:// URI; through the gateway a folder inside "
        "the run's own prefix."))
    config: dict[ConfigKey, ConfigValue] = Field(default_factory=dict, max_length=100,
                                                 description=(
        "Other settings of the component's config, as section.key: value (what "
        "--section.key=value sets on the command line)."))


class CurationRun(ComponentRun):
    """``primer curate``: raw code → an educational, deduplicated corpus."""

    input: Text | None = Field(None, description=(
        "Directory, dataset / Parquet / JSONL URI, or hf:NAME to curate."))
    annotator: Literal["heuristic", "teacher"] | None = Field(None, description=(
        "Who labels the sample: heuristic (offline) or teacher (LLM judge)."))
    keep_top: float | None = Field(None, gt=0, le=1, alias="keepTop", description=(
        "Keep this fraction of files with the highest edu_score."))
    min_score: float | None = Field(None, ge=0, le=1, alias="minScore", description=(
        "Keep files with edu_score >= this (default 0.5)."))

    @model_validator(mode="after")
    def _one_rule(self) -> CurationRun:
        if self.keep_top is not None and self.min_score is not None:
            raise ValueError("give keepTop or minScore, not both")
        return self


class Teacher(RunSpec):
    url: str | None = Field(None, pattern=r"^https?://[^\x00-\x1f]+$", max_length=2048,
                            description=(
        "OpenAI-compatible base URL, e.g. http://vllm:8000/v1 (default: the workers' "
        "configured teacher)."))
    model: str | None = Field(None, pattern=r"^[^-\x00-\x1f][^\x00-\x1f]*$", max_length=256,
                              description="Model name sent with every request.")


class GenerationRun(ComponentRun):
    """``primer generate``: synthetic textbooks or exercises from a teacher LLM."""

    kind: Literal["textbooks", "exercises"] = Field(description="What to generate.")
    count: int = Field(ge=1, le=100_000_000, description="Valid records wanted.")
    teacher: Teacher = Field(default_factory=Teacher, description="The teacher to ask.")
    seed: int | None = Field(None, ge=0, description="Seed of the prompt-spec stream.")
    batch_size: int | None = Field(None, ge=1, le=4096, alias="batchSize",
                                   description="Prompt specs per work unit.")
    overgenerate: float | None = Field(None, ge=1, le=10, description=(
        "The first round asks for count x overgenerate specs (some outputs are invalid)."))


class EvaluationSettings(RunSpec):
    benchmarks: list[Benchmark] = Field(default_factory=lambda: ["humaneval", "mbpp"],
                                        min_length=1, max_length=2,
                                        description="Benchmarks to run.")
    samples: int = Field(1, ge=1, le=200, description="Samples per problem (pass@k).")


class TrainingRun(RunSpec):
    """A PyTorchJob training a phi-1 model (torchrun on every pod)."""

    preset: Literal["phi1", "phi1_small", "tiny"] = Field("phi1", description="Model preset.")
    data: str = Field(pattern=S3_URI, max_length=1024, description="Packed dataset (s3://).")
    output: str = Field(pattern=S3_URI, max_length=1024,
                        description="Checkpoints and the exported model (s3://).")
    image: str | None = Field(None, pattern=IMAGE, description="Training image.")
    nodes: int = Field(1, ge=1, le=256, description="Pods (torchrun nodes).")
    gpus_per_node: int = Field(8, ge=0, le=16, alias="gpusPerNode",
                               description="GPUs per pod (0: CPU).")
    steps: int | None = Field(None, ge=1, description="Optimizer steps (default: preset's).")
    cpu: str = Field("8", pattern=QUANTITY, description="CPU per pod.")
    memory: str = Field("64Gi", pattern=QUANTITY, description="Memory per pod.")
    shm_size: str = Field("16Gi", pattern=QUANTITY, alias="shmSize",
                          description="/dev/shm per pod (data loader workers).")
    backoff_limit: int = Field(3, ge=0, le=100, alias="backoffLimit",
                               description="Restarts before the job fails.")
    clean_pod_policy: Literal["None", "Running", "All"] = Field(
        "Running", alias="cleanPodPolicy", description="Pods removed when the job ends.")
    evaluate_every: int = Field(0, ge=0, alias="evaluateEvery",
                                description="Evaluate every N steps (0: at the end only).")
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings,
                                           description="What the evaluations run.")


class EvaluationRun(RunSpec):
    """A hardened evaluation Job: generate with a checkpoint, score in the sandbox."""

    checkpoint: str = Field(pattern=S3_URI, max_length=1024,
                            description="Exported model folder (s3://).")
    output: str = Field(pattern=S3_URI, max_length=1024, description="Results (s3://).")
    benchmarks: list[Benchmark] = Field(default_factory=lambda: ["humaneval", "mbpp"],
                                        min_length=1, max_length=2,
                                        description="Benchmarks to run.")
    samples: int = Field(1, ge=1, le=200, description="Samples per problem (pass@k).")
    image: str | None = Field(None, pattern=IMAGE, description="Evaluation image.")
    cpu: str = Field("4", pattern=QUANTITY, description="CPU of the Job's pod.")
    memory: str = Field("16Gi", pattern=QUANTITY, description="Memory of the Job's pod.")
    gpus: int = Field(0, ge=0, le=8, description="GPUs of the Job's pod.")
    active_deadline_seconds: int = Field(86400, ge=60, le=1_209_600,
                                         alias="activeDeadlineSeconds",
                                         description="The Job is stopped after this long.")
    backoff_limit: int = Field(1, ge=0, le=10, alias="backoffLimit",
                               description="Retries of the Job's pod.")


#: kind (as in ``primer.planners`` and the gateway's ``component``) → spec model
KINDS: dict[str, type[RunSpec]] = {
    "curation": CurationRun, "generation": GenerationRun, "training": TrainingRun,
    "evaluation": EvaluationRun,
}
M = TypeVar("M", bound=RunSpec)


class SpecError(ValueError):
    """A spec broke its model; the message names every bad field (``spec.count: …``)."""


def parse_spec(model: type[M], spec: Any, prefix: str = "spec") -> M:
    """``spec`` as ``model``, or a :class:`SpecError` naming each bad field."""
    try:
        return model.model_validate(dict(spec or {}))
    except ValidationError as e:
        problems = "; ".join(
            ".".join([prefix, *(str(p) for p in err["loc"])]) + f": {err['msg']}"
            for err in e.errors())
        raise SpecError(f"invalid {model.__name__}: {problems}") from None


def nested(config: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}`` (a spec's ``config`` as a config layer)."""
    tree: dict[str, Any] = {}
    for key, value in config.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(f"config: {key} sets a key inside {part}, which is a value")
        node[leaf] = value
    return tree
