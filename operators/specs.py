"""Typed specs of the four custom resources; the CRDs in ``charts/primer/crds`` mirror them.

The API server already refuses a spec that breaks the CRD schema; these models check the
same rules again in the operator (an API server without the CRD's schema, an older CRD, a
field changed by ``kubectl edit --validate=false``) and turn a refusal into a message that
names the field: ``spec.count: Input should be greater than or equal to 1``.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import kopf
from pydantic import BaseModel, ConfigDict, Field, ValidationError

S3_URI = r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$"
IMAGE = r"^[^\s]+(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[a-f0-9]{64})$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$"
Benchmark = Literal["humaneval", "mbpp"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class Teacher(_Spec):
    url: str | None = Field(None, pattern=r"^https?://.+")
    model: str | None = Field(None, min_length=1)


class CurationSpec(_Spec):
    input: str = Field(pattern=S3_URI)
    output: str = Field(pattern=S3_URI)
    steps: list[Literal["read", "dedup", "annotate", "train", "score", "select"]] | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class GenerationSpec(_Spec):
    kind: Literal["textbooks", "exercises"]
    count: int = Field(ge=1, le=100_000_000)
    output: str = Field(pattern=S3_URI)
    teacher: Teacher = Field(default_factory=Teacher)
    seed: int = Field(0, ge=0)
    batch_size: int = Field(128, ge=1, le=4096, alias="batchSize")
    overgenerate: float = Field(1.25, ge=1, le=10)


class EvaluationSettings(_Spec):
    benchmarks: list[Benchmark] = Field(default_factory=lambda: ["humaneval", "mbpp"],
                                        min_length=1, max_length=2)
    samples: int = Field(1, ge=1, le=200)


class TrainingSpec(_Spec):
    preset: Literal["phi1", "phi1_small", "tiny"] = "phi1"
    data: str = Field(pattern=S3_URI)
    output: str = Field(pattern=S3_URI)
    image: str | None = Field(None, pattern=IMAGE)
    nodes: int = Field(1, ge=1, le=256)
    gpus_per_node: int = Field(8, ge=0, le=16, alias="gpusPerNode")
    steps: int | None = Field(None, ge=1)
    cpu: str = Field("8", pattern=QUANTITY)
    memory: str = Field("64Gi", pattern=QUANTITY)
    shm_size: str = Field("16Gi", pattern=QUANTITY, alias="shmSize")
    backoff_limit: int = Field(3, ge=0, le=100, alias="backoffLimit")
    clean_pod_policy: Literal["None", "Running", "All"] = Field("Running",
                                                                alias="cleanPodPolicy")
    evaluate_every: int = Field(0, ge=0, alias="evaluateEvery")
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)


class EvaluationSpec(_Spec):
    checkpoint: str = Field(pattern=S3_URI)
    output: str = Field(pattern=S3_URI)
    benchmarks: list[Benchmark] = Field(default_factory=lambda: ["humaneval", "mbpp"],
                                        min_length=1, max_length=2)
    samples: int = Field(1, ge=1, le=200)
    image: str | None = Field(None, pattern=IMAGE)
    cpu: str = Field("4", pattern=QUANTITY)
    memory: str = Field("16Gi", pattern=QUANTITY)
    gpus: int = Field(0, ge=0, le=8)
    active_deadline_seconds: int = Field(86400, ge=60, le=1_209_600,
                                         alias="activeDeadlineSeconds")
    backoff_limit: int = Field(1, ge=0, le=10, alias="backoffLimit")


M = TypeVar("M", bound=_Spec)


def parse_spec(model: type[M], spec: Any) -> M:
    """``spec`` as ``model``, or a PermanentError whose message names each bad field."""
    try:
        return model.model_validate(dict(spec or {}))
    except ValidationError as e:
        problems = "; ".join(
            "spec." + ".".join(str(p) for p in err["loc"]) + f": {err['msg']}"
            for err in e.errors())
        raise kopf.PermanentError(f"invalid spec: {problems}") from None
