"""Cluster mode: a run is a ``primer.dev`` custom resource the operator drives.

POST creates the CurationRun, GenerationRun or EvaluationRun (named by the run id, in the
gateway's namespace, labelled as the gateway's); GET and list read the resources back and
map their status (phase, units, progress, message) to the same :class:`Run` as embedded
mode, so ``primer runs`` cannot tell the modes apart. Cancelling deletes the resource (the
operator's delete handler removes the run's waiting units from the queue); a run's logs are
its resource's Kubernetes Events (kopf posts the operator's log lines as Events) and the
failure records of its units. The services may not import the operator; the API is reached
with the ``kubernetes`` client directly.
"""

from __future__ import annotations

import datetime
import functools
import json
from typing import Any

from urllib3.exceptions import HTTPError

from primer import progress
from primer.runs import TERMINAL
from services.gateway.config import GatewayConfig
from services.gateway.models import Body, RunEnded, spec_of

GROUP, VERSION = "primer.dev", "v1alpha1"
KINDS = {"curation": ("CurationRun", "curationruns"),
         "generation": ("GenerationRun", "generationruns"),
         "evaluation": ("EvaluationRun", "evaluationruns")}
LABEL = "primer.dev/submitted-by"
# When the gateway created it, to the microsecond: newest first even within one second
# (creationTimestamp has seconds only).
SUBMITTED = "primer.dev/submitted-at"
TIMEOUT = (5, 20)  # connect, read: a dead API server fails a request, never hangs it
# status fields the Run maps itself; any other one of a finished run is an output
_MAPPED = {"phase", "message", "progress", "startedAt", "completedAt", "conditions", "units",
           "tokens", "etaSeconds", "queue", "finishing", "traceback"}


class ClusterUnavailable(RuntimeError):
    """The Kubernetes API refused or did not answer; the message says which and why."""


class ClusterRuns:
    def __init__(self, settings: GatewayConfig):
        self.namespace = settings.namespace
        self._api = functools.cache(lambda: _objects(settings.kube_api))
        self._core = functools.cache(lambda: _core(self._api()))

    def submit(self, run_id: str, body: Body, output: str) -> dict[str, Any]:
        component, spec = body.component, spec_of(body, output)
        kind, plural = KINDS[component]
        obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind,
               "metadata": {"name": run_id, "namespace": self.namespace,
                            "labels": {LABEL: "gateway"}, "annotations": {SUBMITTED: _now_us()}},
               "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True)}
        created = self._call("create", f"{kind} {run_id}", lambda api: api.
                             create_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                             plural, obj,
                                                             _request_timeout=TIMEOUT))
        return run_of(component, created)

    def get(self, run_id: str) -> dict[str, Any] | None:
        found = self._find(run_id)
        return run_of(*found) if found else None

    def cancel(self, run_id: str) -> dict[str, Any] | None:
        """Delete the run's resource; the run as it was, phase Cancelled. None if there is
        no such run, :class:`RunEnded` if it had ended."""
        found = self._find(run_id)
        if found is None:
            return None
        run = run_of(*found)
        if run["phase"] in TERMINAL:
            raise RunEnded(run_id, run["phase"], run["finished_at"])
        kind, plural = KINDS[found[0]]
        try:
            self._call("delete", f"{kind} {run_id}", lambda api: api.
                       delete_namespaced_custom_object(GROUP, VERSION, self.namespace, plural,
                                                       run_id, _request_timeout=TIMEOUT))
        except _NotFound:
            return None
        return {**run, "phase": "Cancelled", "finished_at": _now_us(),
                "progress": {**run["progress"], "detail": (
                    f"cancelled: {kind} {run_id} deleted; the operator removes its waiting "
                    f"units, units already running finish")}}

    def logs(self, run_id: str) -> dict[str, Any] | None:
        """The resource's Events (oldest first) and its units' failures; None if there is
        no such run."""
        found = self._find(run_id)
        if found is None:
            return None
        component, obj = found
        kind = obj.get("kind") or KINDS[component][0]
        response = self._call("list", f"events of {kind} {run_id}", lambda _: self._core().
                              list_namespaced_event(
                                  self.namespace, field_selector=f"involvedObject.name={run_id}",
                                  _request_timeout=TIMEOUT, _preload_content=False))
        items = json.loads(response.data).get("items", [])
        ours = [e for e in items if (e.get("involvedObject") or {}).get("name") == run_id
                and (e.get("involvedObject") or {}).get("kind") == kind]
        events = sorted(({"at": _event_time(e), "message": e.get("message") or
                          e.get("reason") or ""} for e in ours), key=lambda e: e["at"])
        output = run_of(component, obj)["output"]
        return {"events": events, "failures": progress.failures(output) if output else []}

    def _find(self, run_id: str) -> tuple[str, dict[str, Any]] | None:
        """The run's component and custom resource."""
        for component, (kind, plural) in KINDS.items():
            try:
                obj = self._call("read", f"{kind} {run_id}", lambda api, p=plural: api.
                                 get_namespaced_custom_object(GROUP, VERSION, self.namespace,
                                                              p, run_id,
                                                              _request_timeout=TIMEOUT))
            except _NotFound:
                continue
            return component, obj
        return None

    def list(self, limit: int, offset: int = 0) -> list[dict[str, Any]]:
        """The gateway's runs, newest first."""
        runs = []
        for component, (_, plural) in KINDS.items():
            found = self._call("list", plural, lambda api, p=plural: api.
                               list_namespaced_custom_object(GROUP, VERSION, self.namespace, p,
                                                             label_selector=LABEL,
                                                             _request_timeout=TIMEOUT))
            runs += [run_of(component, obj) for obj in found.get("items", [])]
        runs.sort(key=lambda r: (r["created_at"], r["id"]), reverse=True)
        return runs[offset:offset + limit]

    def _call(self, action: str, what: str, request):
        from kubernetes import config
        from kubernetes.client.exceptions import ApiException

        try:
            return request(self._api())
        except ApiException as e:
            if e.status == 404 and action in ("read", "delete"):
                raise _NotFound from None
            raise ClusterUnavailable(f"cannot {action} {what} in namespace {self.namespace}: "
                                     f"{e.status} {e.reason}: {e.body}") from None
        except (HTTPError, OSError, config.ConfigException) as e:
            raise ClusterUnavailable(f"cannot {action} {what} in namespace {self.namespace}: "
                                     f"{e}") from None


class _NotFound(Exception):
    pass


def run_of(component: str, obj: dict[str, Any]) -> dict[str, Any]:
    """A custom resource as the gateway's :class:`Run`."""
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    units = status.get("units") or {}
    phase = status.get("phase") or "Pending"
    deleted = meta.get("deletionTimestamp")
    if deleted and phase not in TERMINAL:  # cancelled; the operator's finalizer still runs
        phase = "Cancelled"
    stats = {"units_done": units.get("done", 0)}
    if "tokens" in status:
        stats["tokens_generated"] = status["tokens"]
    return {
        "id": meta["name"], "component": component, "phase": phase, "spec": spec,
        "output": spec.get("output", ""), "queue": status.get("queue"),
        "created_at": (meta.get("annotations") or {}).get(SUBMITTED)
        or meta.get("creationTimestamp") or "",
        "started_at": status.get("startedAt"),
        "finished_at": status.get("completedAt") or (deleted if phase == "Cancelled" else None),
        "progress": {"units_done": units.get("done", 0), "units_total": units.get("total", 0),
                     "stage": "", "detail": status.get("progress") or status.get("message")
                     or ""},
        "stats": stats,
        "outputs": {k: v for k, v in status.items() if k not in _MAPPED}
        if phase == "Succeeded" else {},
        "error": status.get("message") if phase == "Failed" else None,
        "traceback": status.get("traceback") if phase == "Failed" else None}


def _objects(api_url: str | None):
    """The API at ``api_url`` (no auth), else the in-cluster service account's."""
    # Imported on first use: embedded mode never needs the client, and the client reads
    # KUBECONFIG once, when it is imported (a test's later setting would be missed).
    from kubernetes import client, config

    configuration = client.Configuration()
    if api_url:
        configuration.host = api_url.rstrip("/")
    else:
        config.load_incluster_config(client_configuration=configuration)
    return client.CustomObjectsApi(client.ApiClient(configuration))


def _core(objects):
    """The core API (Events) on the same connection settings as ``objects``."""
    from kubernetes import client

    return client.CoreV1Api(objects.api_client)


def _event_time(event: dict[str, Any]) -> str:
    return (event.get("lastTimestamp") or event.get("eventTime") or event.get("firstTimestamp")
            or (event.get("metadata") or {}).get("creationTimestamp") or "")


def _now_us() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
