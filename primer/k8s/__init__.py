"""Kubernetes manifest builders shared by the CLI, the Helm chart's tests and the operator.

Builders are pure functions (a spec dataclass in, a plain ``dict`` out): no API calls, no
global state, so the same object can be printed (``--dry-run``), sent with the
``kubeflow-training`` SDK, rendered by the operator, and compared with the chart's template.
"""

from primer.k8s.pytorchjob import (
    API_VERSION,
    CONTAINER_NAME,
    KIND,
    PLURAL,
    TrainingJobSpec,
    build_pytorchjob,
    to_yaml,
)

__all__ = ["API_VERSION", "CONTAINER_NAME", "KIND", "PLURAL", "TrainingJobSpec",
           "build_pytorchjob", "to_yaml"]
