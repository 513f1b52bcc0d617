"""The operator's settings, from the environment of its pod (the chart sets every one)."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class OperatorConfig:
    """Where work goes and what the children run; read once per handler call (cheap)."""

    redis_url: str
    """Celery broker (``PRIMER_REDIS_URL``)."""
    generation_queue: str
    """Queue of the generation workers (``PRIMER_GENERATION_QUEUE``, default ``generation``)."""
    curation_queue: str
    """Queue of the curation workers (``PRIMER_CURATION_QUEUE``, default ``curation``)."""
    training_image: str
    """Default PyTorchJob image (``PRIMER_TRAINING_IMAGE``)."""
    evaluation_image: str
    """Default evaluation Job image (``PRIMER_EVALUATION_IMAGE``)."""
    s3_secret: str
    """Secret with the S3 keys that PyTorchJobs mount (``PRIMER_S3_CREDENTIALS``)."""
    evaluation_s3_secret: str
    """Secret with the S3 keys that evaluation Jobs mount, scoped to what evaluation reads and
    writes (``PRIMER_S3_CREDENTIALS_EVALUATION``, default ``PRIMER_S3_CREDENTIALS``)."""
    s3_endpoint: str | None
    """``PRIMER_S3_ENDPOINT`` passed on to children; None: AWS S3."""
    teacher_url: str
    """Default teacher for GenerationRuns (``PRIMER_TEACHER_URL``)."""
    instance: str | None
    """Helm release (``PRIMER_RELEASE``): children get ``app.kubernetes.io/instance`` so the
    release's NetworkPolicies apply to them."""

    @classmethod
    def from_env(cls) -> OperatorConfig:
        env = os.environ.get
        return cls(
            redis_url=env("PRIMER_REDIS_URL", "redis://localhost:6379/0"),
            generation_queue=env("PRIMER_GENERATION_QUEUE", "generation"),
            curation_queue=env("PRIMER_CURATION_QUEUE", "curation"),
            training_image=env("PRIMER_TRAINING_IMAGE", "ghcr.io/primer-ml/primer-train:0.1.0"),
            evaluation_image=env("PRIMER_EVALUATION_IMAGE", "ghcr.io/primer-ml/primer:0.1.0"),
            s3_secret=env("PRIMER_S3_CREDENTIALS", "primer-s3-training"),
            evaluation_s3_secret=env("PRIMER_S3_CREDENTIALS_EVALUATION")
            or env("PRIMER_S3_CREDENTIALS", "primer-s3-evaluation"),
            s3_endpoint=env("PRIMER_S3_ENDPOINT") or None,
            teacher_url=env("PRIMER_TEACHER_URL", ""),
            instance=env("PRIMER_RELEASE") or None,
        )

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
