"""The operator's settings, from the environment of its pod (the chart sets every one)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from pydantic import ConfigDict, Field, model_validator

from primer.config import ConfigModel, load_config
from primer.runs import QUEUES


class OperatorConfig(ConfigModel):
    """Where work goes and what the children run: a config section whose defaults come from
    the service variables the chart sets on the operator's pod (``env_defaults``); read once
    per handler call (cheap)."""

    model_config = ConfigDict(frozen=True)
    env_defaults: ClassVar[Mapping[str, str]] = {
        "redis_url": "PRIMER_REDIS_URL", "generation_queue": "PRIMER_GENERATION_QUEUE",
        "curation_queue": "PRIMER_CURATION_QUEUE", "training_image": "PRIMER_TRAINING_IMAGE",
        "evaluation_image": "PRIMER_EVALUATION_IMAGE", "s3_secret": "PRIMER_S3_CREDENTIALS",
        "evaluation_s3_secret": "PRIMER_S3_CREDENTIALS_EVALUATION",
        "s3_endpoint": "PRIMER_S3_ENDPOINT", "teacher_url": "PRIMER_TEACHER_URL",
        "instance": "PRIMER_RELEASE", "endpoints": "PRIMER_OPERATOR_ENDPOINTS"}

    redis_url: str = Field("redis://localhost:6379/0", description="Celery broker.")
    generation_queue: str = Field(QUEUES["generation"], description=(
        "Queue of the generation workers."))
    curation_queue: str = Field(QUEUES["curation"], description=(
        "Queue of the curation workers."))
    training_image: str = Field("ghcr.io/primer-ml/primer-train:0.1.0",
                                description="Default PyTorchJob image.")
    evaluation_image: str = Field("ghcr.io/primer-ml/primer:0.1.0",
                                  description="Default evaluation Job image.")
    s3_secret: str = Field("primer-s3-training",
                           description="Secret with the S3 keys that PyTorchJobs mount.")
    evaluation_s3_secret: str | None = Field(None, description=(
        "Secret with the S3 keys that evaluation Jobs mount, scoped to what evaluation reads "
        "and writes; unset: s3_secret."))
    s3_endpoint: str | None = Field(None, description="S3 endpoint passed on to children; "
                                    "unset: AWS S3.")
    teacher_url: str = Field("", description="Default teacher for GenerationRuns.")
    endpoints: str = Field("", description=(
        "Teacher endpoints a GenerationRun may name besides teacher_url, comma-separated (the "
        "chart passes the gateway's gateway.policy.endpoints): the workers send their teacher "
        "key to whatever a run names, so a resource may name no other."))
    instance: str | None = Field(None, description=(
        "Helm release: children get app.kubernetes.io/instance so the release's "
        "NetworkPolicies apply to them."))

    @model_validator(mode="after")
    def _fallbacks(self) -> OperatorConfig:
        # An empty variable means unset, as the chart renders optional values.
        for name in ("evaluation_s3_secret", "s3_endpoint", "instance"):
            if getattr(self, name) == "":
                object.__setattr__(self, name, None)
        if self.evaluation_s3_secret is None:
            object.__setattr__(self, "evaluation_s3_secret", self.s3_secret)
        return self

    @classmethod
    def from_env(cls) -> OperatorConfig:
        return load_config(cls)

    def allowed_endpoints(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in (self.teacher_url, *self.endpoints.split(","))
                     if u.strip())

    def child_labels(self, run: str) -> dict[str, str]:
        labels = {"primer.dev/run": run}
        if self.instance:
            labels["app.kubernetes.io/instance"] = self.instance
        return labels


#: Seconds between status polls of a running resource (timers); tests shorten it.
POLL_SECONDS = float(os.environ.get("PRIMER_OPERATOR_POLL_SECONDS", "30"))
#: Seconds before a handler that met an unreachable backend (Redis, S3, API) tries again.
RETRY_SECONDS = float(os.environ.get("PRIMER_OPERATOR_RETRY_SECONDS", "15"))
#: Attempts of a delete handler before it lets the object go anyway: a finalizer must never
#: keep a resource forever because Redis or the Training Operator is gone.
DELETE_ATTEMPTS = 3
