"""The Kubernetes API for the rehearsal's pods, and the two controllers of it the rehearsal plays.

The API server is kmock's emulator, the one the operator tests use (tests/operators/conftest.py),
behind TLS (``release.Forwarder``). Pods reach it as in a cluster (``podspec.ApiServer``):
``KUBERNETES_SERVICE_*`` in their env and, where they automount it, a service account token and
the CA that signed the server's certificate. So the operator's and the gateway's in-cluster
login (the ``kubernetes`` client's ``load_incluster_config``, kopf's login) runs unchanged:
HTTPS with the certificate checked against the mounted CA, the bearer token sent. kmock
authenticates and authorizes nothing; the chart's RBAC is checked against the handlers'
calls in tests/charts.

The test itself talks to kmock over plain HTTP (``Cluster``'s helpers), as ``kubectl`` would.

Played by the test, because no cluster runs here: the Job controller and the kubelet for the
Jobs the operator creates (:func:`run_job`): the Job's pod is run with ``podspec.run_args``,
init containers first, and the Job's status is set as the Job controller sets it.
"""

from __future__ import annotations

import contextlib
import secrets
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from tests.operators.conftest import NS, Cluster
from tests.rehearsal.containers import Containers
from tests.rehearsal.podspec import ApiServer, Objects, Pod, run_args
from tests.rehearsal.release import Forwarder


def certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signs for 127.0.0.1 (the address the pods use) and
    the in-cluster name: (ca.crt, server.crt, server.key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    crt, key, csr, ext = (folder / n for n in ("server.crt", "server.key", "server.csr",
                                              "server.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc\n"
                   "extendedKeyUsage=serverAuth\n")
    curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for cmd in (["req", "-x509", *curve, "-keyout", ca_key, "-out", ca, "-days", "1",
                 "-subj", "/CN=rehearsal-cluster-ca"],
                ["req", *curve, "-keyout", key, "-out", csr, "-subj", "/CN=kube-apiserver"],
                ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
                 "-out", crt, "-days", "1", "-extfile", ext]):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True, timeout=60)
    return ca, crt, key


@contextlib.contextmanager
def api_server(folder: Path) -> Iterator[tuple[Cluster, ApiServer]]:
    """kmock behind TLS: the emulator (for the test) and what pods are given to reach it."""
    ca, crt, key = certificates(folder)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(crt, key)
    with Cluster() as cluster:
        front = Forwarder(0, int(cluster.url.rsplit(":", 1)[1]), tls)
        try:
            yield cluster, ApiServer("127.0.0.1", front.port, ca.read_text(),
                                     secrets.token_urlsafe(32))
        finally:
            front.close()


def jobs(cluster: Cluster) -> list[dict[str, Any]]:
    r = requests.get(cluster.path("batch/v1", "jobs"), timeout=10)
    r.raise_for_status()
    return r.json().get("items") or []


def wait_job(cluster: Cluster, timeout: float) -> dict[str, Any]:
    """The first Job that appears (the operator creates it asynchronously)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := jobs(cluster):
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no Job was created in {timeout:.0f}s")


def run_job(cluster: Cluster, job: dict[str, Any], objects: Objects, group: Containers,
            volumes: Path, hosts: dict[str, str], api: ApiServer,
            timeout: float) -> tuple[int, str]:
    """The Job controller and the kubelet for one Job, one attempt: its pod runs (the init
    containers in order, then the main container), then the Job's status says Complete or
    Failed as the Job controller writes it. Returns the exit code that decided it, and the
    log of that container."""
    name = job["metadata"]["name"]
    spec = job["spec"]["template"]["spec"]
    pod = Pod(spec, f"{name}-x7k2p", NS, volumes, hosts, api=api)
    code, log = 0, ""
    for container in [*spec.get("initContainers", []), *spec["containers"]]:
        short = f"{name}-{container['name']}"
        group.run(short, run_args(pod, container["name"], objects))
        code, log = group.wait_exit(short, timeout), group.logs(short)
        if code != 0:
            break
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if code == 0:
        status = {"succeeded": 1, "completionTime": now, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
            {"type": "Complete", "status": "True", "lastTransitionTime": now}]}
    else:
        status = {"failed": 1, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
             "lastTransitionTime": now},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
             "message": "Job has reached the specified backoff limit",
             "lastTransitionTime": now}]}
    cluster.patch_status("batch/v1", "jobs", name, status)
    return code, log


__all__ = ["NS", "api_server", "certificates", "jobs", "run_job", "wait_job"]
