"""kopf's own settings: Primer's finalizer and annotation names, bounded API timeouts."""

from __future__ import annotations

import kopf

FINALIZER = "primer.dev/finalizer"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    """Name what kopf writes on our objects after our group, and never wait on a dead API."""
    settings.persistence.finalizer = FINALIZER
    # One exact namespace and CRDs installed by the chart before the operator starts: no
    # cluster-wide watch of namespaces or CRDs, so no ClusterRole (discovery needs none).
    settings.scanning.disabled = True
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="primer.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="primer.dev", key="last-handled-configuration")
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.watching.server_timeout = 300
