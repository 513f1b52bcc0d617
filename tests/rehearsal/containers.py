"""Containers for the rehearsal: podman with runc, every container named under one prefix and
removed on exit (also when a test fails), the built images checked before anything starts."""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

# What `make images` builds (docker/build.py).
IMAGE = "localhost/primer:0.1.0"
TRAIN_IMAGE = "localhost/primer-train:0.1.0-cpu"


def podman(*args: str, check: bool = True, timeout: float = 600) -> str:
    proc = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])} … failed ({proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return proc.stdout


def require_images(*images: str) -> None:
    """Fail (never skip) with the command that builds what is missing."""
    if not shutil.which("podman"):
        raise RuntimeError("podman not found: apt-get install podman buildah runc")
    missing = [i for i in images
               if subprocess.run(["podman", "image", "exists", i]).returncode != 0]
    if missing:
        raise RuntimeError(f"images {missing} not built: run `make images` first")


def _ulimits() -> list[str]:
    # Never above this machine's hard limits: runc cannot raise them.
    nofile = min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[1])
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


class Containers:
    """Starts containers named ``<prefix>-<name>`` and removes all of them on :meth:`close`."""

    def __init__(self) -> None:
        self.prefix = f"rehearsal-{uuid.uuid4().hex[:8]}"
        self.names: list[str] = []

    def full(self, name: str) -> str:
        return f"{self.prefix}-{name}"

    def run(self, name: str, args: list[str]) -> str:
        """``podman run -d`` with ``args`` (options, image, arguments from podspec.run_args)."""
        full = self.full(name)
        self.names.append(full)
        podman("run", "-d", "--name", full, "--runtime", "runc", *_ulimits(), *args)
        return full

    def state(self, name: str) -> tuple[str, int]:
        out = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}",
                     self.full(name)).split()
        return out[0], int(out[1])

    def logs(self, name: str) -> str:
        proc = subprocess.run(["podman", "logs", self.full(name)], capture_output=True,
                              text=True, timeout=60)
        return proc.stdout + proc.stderr

    def kill(self, name: str) -> None:
        podman("kill", "--signal", "KILL", self.full(name))

    def start(self, name: str) -> None:
        """Restart an exited container in place (its volumes kept), as the kubelet does."""
        podman("start", self.full(name))

    def wait_exit(self, name: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, code = self.state(name)
            if status in ("exited", "stopped"):
                return code
            time.sleep(1)
        raise TimeoutError(f"{name} still running after {timeout:.0f}s:\n"
                           f"{self.logs(name)[-3000:]}")

    def close(self) -> None:
        for name in reversed(self.names):
            podman("rm", "-f", "-t", "0", name, check=False)


@contextlib.contextmanager
def containers() -> Iterator[Containers]:
    group = Containers()
    try:
        yield group
    finally:
        group.close()
