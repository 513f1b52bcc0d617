"""The gateway's settings, from the environment the chart sets (defaults in brackets):

- ``PRIMER_REDIS_URL``: run records, rate-limit counters, the Celery broker
  [``redis://localhost:6379/0``];
- ``PRIMER_GATEWAY_TOKEN``: bearer token required on ``/v1/*`` [none: no auth];
- ``PRIMER_DATA``: the storage root; a run writes only under ``<root>/runs/<run id>/`` and
  may read under the root [``./primer-data``];
- ``PRIMER_GATEWAY_INPUT_ROOTS``: more prefixes runs may read, comma-separated URIs; ``hf:``
  admits Hugging Face datasets as curation inputs [none];
- ``PRIMER_GATEWAY_ENDPOINTS``: OpenAI-compatible base URLs a run may name as its
  ``teacher.url``, comma-separated [none: the configured teacher only];
- ``PRIMER_GATEWAY_MAX_BODY_BYTES``: largest request body, refused (413) unread [262144];
- ``PRIMER_GATEWAY_RATE_LIMIT``: ``/v1/*`` requests a minute per token (per client address
  without auth), then 429 with Retry-After; 0 turns it off [600];
- ``PRIMER_GATEWAY_QUEUE_<COMPONENT>``: Celery queue per component [``primer.runs.QUEUES``];
- ``PRIMER_GATEWAY_MODE``: ``embedded`` (the gateway plans runs and sends their units itself)
  or ``cluster`` (it creates ``primer.dev`` custom resources for the operator) [``cluster``
  when the pod has a service-account token, else ``embedded``];
- ``PRIMER_GATEWAY_RECONCILE_SECONDS``: embedded mode, seconds between reconciler passes [2];
- ``PRIMER_GATEWAY_KUBE_API``: cluster mode, the API server's URL, reached without auth (a
  test's emulator, ``kubectl proxy``) [the in-cluster service account];
- ``PRIMER_GATEWAY_NAMESPACE``: cluster mode, where runs are created [the pod's namespace].
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from primer.runs import QUEUES

COMPONENTS = tuple(QUEUES)
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class GatewayConfig:
    """Where runs are recorded and queued, who may submit them, and what they may touch."""

    redis_url: str = "redis://localhost:6379/0"
    """Run records, rate-limit counters and the Celery broker (``PRIMER_REDIS_URL``)."""
    token: str | None = None
    """Bearer token required on ``/v1/*`` (``PRIMER_GATEWAY_TOKEN``); None: no auth."""
    storage_root: str = "./primer-data"
    """Every run writes under ``<root>/runs/<run id>/`` only (default folder: the component
    name) and may read inputs under the root (``PRIMER_DATA``)."""
    input_roots: tuple[str, ...] = ()
    """More prefixes runs may read inputs from, besides the storage root
    (``PRIMER_GATEWAY_INPUT_ROOTS``, comma-separated URIs); the entry ``hf:`` admits Hugging
    Face datasets as curation inputs. Anything else (other paths, buckets, schemes) is a 422."""
    endpoints: tuple[str, ...] = ()
    """OpenAI-compatible base URLs a run may name as its ``teacher.url``
    (``PRIMER_GATEWAY_ENDPOINTS``, comma-separated). Empty: runs use the configured teacher
    (``PRIMER_TEACHER_URL``) and may name none. A run never chooses which key is sent."""
    max_body_bytes: int = 256 << 10
    """Largest request body (``PRIMER_GATEWAY_MAX_BODY_BYTES``); a larger one is refused with
    413 from its Content-Length, or as soon as the streamed bytes pass it, unparsed."""
    rate_limit: int = 600
    """``/v1/*`` requests per minute per token, per client address when auth is off
    (``PRIMER_GATEWAY_RATE_LIMIT``); above it, 429 with Retry-After. 0: no limit."""
    queues: dict[str, str] = field(default_factory=lambda: dict(QUEUES))
    """Celery queue per component (``PRIMER_GATEWAY_QUEUE_<COMPONENT>``; default
    :data:`primer.runs.QUEUES`, what the chart's workers consume)."""
    mode: Literal["embedded", "cluster"] = "embedded"
    """``embedded``: the gateway's reconciler drives each run's planner over Celery;
    ``cluster``: runs are ``primer.dev`` custom resources the operator drives
    (``PRIMER_GATEWAY_MODE``)."""
    reconcile_seconds: float = 2.0
    """Embedded mode: seconds between reconciler passes (``PRIMER_GATEWAY_RECONCILE_SECONDS``)."""
    kube_api: str | None = None
    """Cluster mode: the API server's URL, reached without auth (``PRIMER_GATEWAY_KUBE_API``);
    None: the in-cluster service account (its token, CA and namespace)."""
    namespace: str = "default"
    """Cluster mode: the namespace runs are created in (``PRIMER_GATEWAY_NAMESPACE``, else the
    service account's)."""

    @classmethod
    def from_env(cls) -> GatewayConfig:
        env = os.environ
        return cls(
            redis_url=env.get("PRIMER_REDIS_URL", cls.redis_url),
            token=env.get("PRIMER_GATEWAY_TOKEN") or None,
            storage_root=env.get("PRIMER_DATA", cls.storage_root),
            input_roots=_list(env.get("PRIMER_GATEWAY_INPUT_ROOTS", "")),
            endpoints=_list(env.get("PRIMER_GATEWAY_ENDPOINTS", "")),
            max_body_bytes=_int(env, "PRIMER_GATEWAY_MAX_BODY_BYTES", cls.max_body_bytes),
            rate_limit=_int(env, "PRIMER_GATEWAY_RATE_LIMIT", cls.rate_limit),
            queues={c: env.get(f"PRIMER_GATEWAY_QUEUE_{c.upper()}") or q
                    for c, q in QUEUES.items()},
            mode=_mode(env.get("PRIMER_GATEWAY_MODE", "")),
            reconcile_seconds=float(env.get("PRIMER_GATEWAY_RECONCILE_SECONDS") or 2.0),
            kube_api=env.get("PRIMER_GATEWAY_KUBE_API") or None,
            namespace=env.get("PRIMER_GATEWAY_NAMESPACE") or _pod_namespace())


def _mode(raw: str) -> Literal["embedded", "cluster"]:
    raw = raw.strip().lower()
    if not raw:
        return "cluster" if (SERVICE_ACCOUNT / "token").is_file() else "embedded"
    if raw not in ("embedded", "cluster"):
        raise ValueError(f"PRIMER_GATEWAY_MODE={raw!r} must be embedded or cluster")
    return raw  # type: ignore[return-value]


def _pod_namespace() -> str:
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text().strip()
    except OSError:
        return "default"


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a whole number") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r} must not be negative")
    return value
