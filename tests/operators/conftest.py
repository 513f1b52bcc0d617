"""The operator in-process (``KopfRunner``) against kmock's Kubernetes emulator.

No API server can run here, so kmock's emulator plays it: discovery, list/watch, create,
merge- and JSON-patches, finalizers. It does not validate against schemas or collect
garbage by owner references; tests validate objects against the real schemas themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("PRIMER_OPERATOR_POLL_SECONDS", "0.5")  # before operators is imported
os.environ.setdefault("PRIMER_OPERATOR_RETRY_SECONDS", "0.5")
# The kubernetes client reads KUBECONFIG once, when it is imported: point it at a file now and
# write the file when kmock's URL is known.
KUBECONFIG = Path(tempfile.mkdtemp(prefix="primer-kube-")) / "config"
os.environ["KUBECONFIG"] = str(KUBECONFIG)

import kmock  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
from kopf.testing import KopfRunner  # noqa: E402

NS = "primer"
RESOURCES = {
    "primer.dev/v1alpha1/curationruns": "CurationRun",
    "primer.dev/v1alpha1/generationruns": "GenerationRun",
    "primer.dev/v1alpha1/trainingruns": "TrainingRun",
    "primer.dev/v1alpha1/evaluationruns": "EvaluationRun",
    "kubeflow.org/v1/pytorchjobs": "PyTorchJob",
    "batch/v1/jobs": "Job",
    "v1/events": "Event",  # kopf posts the operator's log lines; the gateway reads them
}
VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, plus what a real API server fills in on create: a name from
    ``generateName`` (kopf's Events have none), a uid and a resourceVersion (kopf's
    JSON-patches test it)."""

    async def _handle(self, request: kmock.Request):
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:8]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("resourceVersion", "1")
        return await super()._handle(request)


class Cluster:
    """kmock's emulator served from its own event loop thread, driven with plain HTTP."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""
        self.emulator: kmock.KubernetesEmulator | None = None

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with Emulator() as emulator, kmock.Server(emulator) as server:
            for key, kind in RESOURCES.items():
                emulator.resources[key] = kmock.ResourceInfo(
                    kind=kind, namespaced=True, verbs=VERBS, subresources={"status"})
            # What kopf's observers look up before they start any watch.
            emulator.resources["v1/namespaces"] = kmock.ResourceInfo(
                kind="Namespace", namespaced=False, verbs=VERBS)
            emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = \
                kmock.ResourceInfo(kind="CustomResourceDefinition", namespaced=False,
                                   verbs={"get", "list", "watch"})
            # The core group's discovery, as a real server answers it (kmock serves none): kopf
            # posts the operator's log lines as Events once it has seen v1/events there.
            emulator["get /api/v1"] << {"kind": "APIResourceList", "groupVersion": "v1",
                                        "resources": [
                {"name": "namespaces", "kind": "Namespace", "namespaced": False,
                 "singularName": "namespace", "verbs": sorted(VERBS)},
                {"name": "events", "kind": "Event", "namespaced": True,
                 "singularName": "event", "verbs": sorted(VERBS)}]}
            emulator.objects[kmock.resource("v1/namespaces"), None, NS] = {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
            self.emulator, self.url = emulator, str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> Cluster:
        self._thread.start()
        self._task = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        assert self._ready.wait(10), "kmock did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._task.result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- a tiny kubectl ----------------------------------------------------------------------

    def path(self, api_version: str, plural: str, name: str = "", sub: str = "") -> str:
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        return "/".join(p for p in (f"{self.url}{base}/namespaces/{NS}/{plural}", name, sub)
                        if p)

    def create(self, api_version: str, plural: str, obj: dict[str, Any]) -> None:
        requests.post(self.path(api_version, plural), json=obj, timeout=10).raise_for_status()

    def get(self, api_version: str, plural: str, name: str) -> dict[str, Any] | None:
        r = requests.get(self.path(api_version, plural, name), timeout=10)
        return None if r.status_code == 404 else r.raise_for_status() or r.json()

    def patch_status(self, api_version: str, plural: str, name: str, status: dict) -> None:
        requests.patch(self.path(api_version, plural, name, "status"), json={"status": status},
                       headers={"Content-Type": "application/merge-patch+json"},
                       timeout=10).raise_for_status()

    def delete(self, api_version: str, plural: str, name: str) -> None:
        requests.delete(self.path(api_version, plural, name), timeout=10).raise_for_status()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``check`` until it returns something truthy (the operator works asynchronously;
    kopf on two loaded cores can take tens of seconds to see an event)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    with Cluster() as c:
        yield c


@contextlib.contextmanager
def run_operator(cluster: Cluster, env: dict[str, str]) -> Iterator[KopfRunner]:
    """The operator as the chart runs it (``kopf run --standalone --namespace … -m operators``),
    with ``env`` set while it runs."""
    KUBECONFIG.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: kmock\n"
        f"clusters: [{{name: kmock, cluster: {{server: '{cluster.url}'}}}}]\n"
        "users: [{name: kmock, user: {token: test}}]\n"
        "contexts: [{name: kmock, context: {cluster: kmock, user: kmock, namespace: primer}}]\n")
    env = {"PRIMER_RELEASE": "rel", "PRIMER_S3_CREDENTIALS": "rel-primer-s3", **env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with KopfRunner(["run", "--standalone", "--namespace", NS, "-m", "operators"],
                        timeout=30) as runner:
            yield runner
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert runner.exception is None, runner.output


@pytest.fixture(scope="module")
def operator(cluster, redis_url) -> Iterator[KopfRunner]:
    """The operator with S3 unreachable (progress polling must tolerate it)."""
    with run_operator(cluster, {"PRIMER_REDIS_URL": redis_url,
                                "PRIMER_S3_ENDPOINT": "http://127.0.0.1:9",
                                "PRIMER_S3_RETRIES": "1", "AWS_ACCESS_KEY_ID": "x",
                                "AWS_SECRET_ACCESS_KEY": "y"}) as runner:
        yield runner
