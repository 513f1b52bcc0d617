"""The gateway's settings, from the environment the chart sets."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

COMPONENTS = ("curation", "generation", "evaluation")


@dataclass(frozen=True)
class GatewayConfig:
    """Where runs are recorded and queued, and who may submit them."""

    redis_url: str = "redis://localhost:6379/0"
    """Run records and the Celery broker (``PRIMER_REDIS_URL``)."""
    token: str | None = None
    """Bearer token required on ``/v1/*`` (``PRIMER_GATEWAY_TOKEN``); None: no auth."""
    storage_root: str = "./primer-data"
    """Default outputs go to ``<root>/runs/<run id>/<component>`` (``PRIMER_DATA``)."""
    queues: dict[str, str] = field(default_factory=lambda: {c: c for c in COMPONENTS})
    """Celery queue per component (``PRIMER_GATEWAY_QUEUE_<COMPONENT>``); the chart's
    workers consume ``curation``, ``generation`` and ``evaluation``."""

    @classmethod
    def from_env(cls) -> GatewayConfig:
        env = os.environ
        return cls(
            redis_url=env.get("PRIMER_REDIS_URL", cls.redis_url),
            token=env.get("PRIMER_GATEWAY_TOKEN") or None,
            storage_root=env.get("PRIMER_DATA", cls.storage_root),
            queues={c: env.get(f"PRIMER_GATEWAY_QUEUE_{c.upper()}", c) for c in COMPONENTS})
