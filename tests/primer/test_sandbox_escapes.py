"""Issue 14's sandbox findings, each as it was reproduced: a forged pass, leftovers, aggregate
limits, a spoofed layer report, and failing closed where a layer cannot be had."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from primer.sandbox import SandboxConfig, SandboxUnavailable, check_layers, run_many, run_program
from primer.sandbox.config import LAYERS

FAST = SandboxConfig(timeout_s=5, memory_mb=256, max_processes=32)
REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"  # readable by any uid, unlike a root-only pyenv

FORGERIES = {
    "frame": ("import os, sys\nf = sys._getframe(1).f_locals\n"
              "os.write(f['status_fd'], b'P ' + f['nonce'] + b'\\n')\nos._exit(0)\n"),
    "traceback": ("import os\ntry:\n    raise ValueError\nexcept ValueError as e:\n"
                  "    f = e.__traceback__.tb_frame.f_back.f_locals\n"
                  "os.write(f['status_fd'], b'P ' + f['nonce'] + b'\\n')\nos._exit(0)\n"),
    "gc": ("import gc, os\nfor o in gc.get_objects():\n"
           "    if isinstance(o, dict) and 'nonce' in o:\n"
           "        os.write(o['status_fd'], b'P ' + o['nonce'] + b'\\n')\nos._exit(0)\n"),
    "ctypes": ("import ctypes\nctypes.string_at(id(1), 8)\n"),
    "proc_mem": "open('/proc/self/mem', 'rb')\n",
    # a fresh interpreter has no audit hook, but the program is not dumpable to it
    "other_process": ("import os, subprocess, sys\nsubprocess.run([sys.executable, '-c', "
                      "f'open(\"/proc/{os.getpid()}/mem\", \"rb\")'], check=True)\n"),
    "every_fd": ("import os\nfor fd in range(3, 64):\n    try:\n"
                 "        os.write(fd, b'P ' + b'0' * 32 + b'\\n')\n    except OSError:\n"
                 "        pass\nos._exit(0)\n"),
}


@pytest.mark.parametrize("name", FORGERIES)
def test_a_program_cannot_forge_its_pass(name):
    r = run_program(FORGERIES[name] + "assert False, 'the tests were skipped'\n", FAST)
    assert r.status == "failed", r
    assert set(r.layers) == set(LAYERS)


def test_honest_programs_that_touch_frames_indirectly_still_pass():
    r = run_program("import logging, collections, typing, enum, dataclasses, warnings\n"
                    "logging.getLogger('x').warning('still fine')\n"
                    "P = collections.namedtuple('P', 'x y')\nassert P(1, 2).y == 2\n"
                    "warnings.warn('w')\nimport subprocess\n"
                    "assert subprocess.run(['true']).returncode == 0\n", FAST)
    assert r.passed, r


def test_the_layer_report_cannot_be_spoofed():
    spoof = ("import os\nfor fd in range(3, 64):\n    try:\n"
             "        os.write(fd, b'L gvisor,seccomp,FAKE\\n')\n    except OSError:\n"
             "        pass\n")
    r = run_program(spoof, FAST)
    assert r.passed and not {"gvisor", "seccomp", "FAKE"} & set(r.layers), r.layers


SHM_KEY = 0x5EED0014


def _shm_keys() -> set[int]:
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return {int(line.split()[0]) for line in lines}


def test_sysv_shared_memory_and_run_lock_files_do_not_survive():
    # ctypes is refused to the program itself: a fresh interpreter it starts does the shmget
    shm = ("import ctypes\nlibc = ctypes.CDLL(None)\n"
           f"print(libc.shmget({SHM_KEY}, 64 << 20, 0o1666), libc.shmget({SHM_KEY + 1}, "
           "64 << 20, 0o1666))\n")
    marker = Path("/run/lock") / f"primer-leftover-{os.getpid()}"
    program = (f"import subprocess, sys\nprint(subprocess.run([sys.executable, '-c', {shm!r}], "
               f"capture_output=True, text=True).stdout)\n"
               f"try:\n    open({str(marker)!r}, 'w').write('x')\n"
               "except OSError as e:\n    print('refused', e)\n")
    r = run_program(program, FAST)
    ids = [int(i) for i in r.stdout.split()[:2]]
    assert r.passed and len(ids) == 2 and min(ids) >= 0, r  # both segments made (-1: refused)
    assert "refused" in r.stdout and not marker.exists()
    assert not {SHM_KEY, SHM_KEY + 1} & _shm_keys()


def _world_writable(depth: int = 4) -> tuple[list[str], list[str]]:
    """World-writable directories and files (not symlinks or devices) on this host: every
    mount point and everything up to ``depth`` levels below / (where such places live; the
    whole tree takes minutes), /proc and /sys aside."""
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4].encode().decode("unicode_escape") for line in f]
    dirs: set[str] = set()
    files: set[str] = set()

    def visit(path: str, level: int) -> None:
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if st.st_mode & 0o002:
                if is_dir:
                    dirs.add(e.path)
                elif stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode):
                    files.add(e.path)
            if is_dir and level < depth and e.path not in ("/proc", "/sys"):
                visit(e.path, level + 1)

    visit("/", 1)
    for m in mounts:
        if not m.startswith(("/proc", "/sys")) and os.path.isdir(m):
            if os.stat(m).st_mode & 0o002:
                dirs.add(m)
            visit(m, depth)
    return sorted(dirs), sorted(files)


def test_nothing_but_the_temp_dir_is_writable_and_the_host_is_not_visible(tmp_path):
    dirs, files = _world_writable()
    assert "/tmp" in dirs and "/run/lock" in dirs  # the scan does find them
    probe = f"primer-probe-{os.getpid()}"
    sleeper = subprocess.Popen(["sleep", "64.25"])
    try:
        program = (f"import os\ndirs, files = {dirs!r}, {files!r}\n"
                   "for d in dirs:\n    try:\n"
                   f"        open(os.path.join(d, {probe!r}), 'x').close()\n"
                   "    except OSError:\n        pass\n"
                   "for f in files:\n    try:\n        open(f, 'a').write('x')\n"
                   "        print('APPENDED', f)\n    except OSError:\n        pass\n"
                   "seen = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                   "cmds = [open(f'/proc/{p}/cmdline', 'rb').read() for p in seen]\n"
                   "print('SLEEPER', any(b'64.25' in c for c in cmds), len(seen))\n"
                   f"print('PROJECT', os.path.exists({str(REPO / 'pyproject.toml')!r}))\n"
                   "open('own-file', 'w').write('mine')\n")
        r = run_program(program, FAST)
        left = [d for d in dirs if Path(d, probe).exists()]
    finally:
        sleeper.kill()
        sleeper.wait()
        for d in dirs:
            Path(d, probe).unlink(missing_ok=True)
    assert r.passed, r
    assert left == [] and "APPENDED" not in r.stdout  # /tmp & co. were its own tmpfs
    assert "SLEEPER False" in r.stdout and "PROJECT False" in r.stdout


@pytest.mark.slow
def test_memory_processes_and_disk_are_limited_per_program_in_total():
    forks = ("import os, time\nkids = []\nfor _ in range(6):\n    pid = os.fork()\n"
             "    if pid == 0:\n        block = b'x' * (200 << 20)\n        time.sleep(1.5)\n"
             "        os._exit(0)\n    kids.append(pid)\n"
             "ok = sum(os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) == 0 for k in kids)\n"
             "print('HELD', ok)\n")
    disk = ("total = 0\ntry:\n    for i in range(24):\n"
            "        with open(f'f{i}', 'wb') as f:\n            f.write(b'x' * (16 << 20))\n"
            "        total += 16\nexcept OSError as e:\n    print(e)\nprint('WROTE', total)\n")
    config = SandboxConfig(timeout_s=20, memory_mb=256, disk_mb=64, max_processes=32)
    held, wrote = run_many([forks, disk], config, workers=2)
    assert held.passed, held
    assert int(held.stdout.split("HELD")[1]) <= 1  # 256 MiB in all: one 200 MiB child at most
    assert wrote.passed and "No space left on device" in wrote.stdout, wrote
    assert int(wrote.stdout.split("WROTE")[1]) <= 64


def _as_uid_10001(config: SandboxConfig):
    """``check_layers`` in a child that runs as uid 10001 with no capabilities (the chart's
    worker); the parent's modules are already imported, the child imports nothing new."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(10001)
            os.setuid(10001)
            try:
                msg = "layers " + ",".join(check_layers(config))
            except SandboxUnavailable as e:
                msg = f"refused {e}"
            os.write(write, msg.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return out


def test_without_root_the_worker_refuses_and_names_the_missing_layers():
    out = _as_uid_10001(SandboxConfig(timeout_s=5, python=PYTHON))
    assert out.startswith("refused sandbox layers missing:"), out
    for layer in ("uid", "mountns", "pidns", "cgroup"):
        assert layer in out.split(";")[0]
    assert "hostUsers: false" in out and "sandbox.allow_missing" in out


def test_a_degraded_mode_needs_naming_every_missing_layer_and_is_recorded():
    missing = ["cgroup", "mountns", "ipcns", "pidns", "netns", "readonly", "tmpfs", "uid"]
    out = _as_uid_10001(SandboxConfig(timeout_s=5, python=PYTHON, allow_missing=missing[:-1]))
    assert out.startswith("refused") and "uid" in out.split(";")[0]
    out = _as_uid_10001(SandboxConfig(timeout_s=5, python=PYTHON, allow_missing=missing))
    assert out.startswith("layers ") and "uid" not in out and "guard" in out, out


def test_the_sandbox_needs_nothing_but_the_standard_library():
    bootstrap = (REPO / "primer/sandbox/_bootstrap.py").read_text()
    imported = {line.split()[1].split(".")[0] for line in bootstrap.splitlines()
                if line.strip().startswith(("import ", "from "))}
    assert imported <= set(sys.stdlib_module_names), imported


def test_run_many_refuses_before_running_anything_where_a_layer_is_missing(monkeypatch):
    # generation validates exercises through run_many: it fails closed the same way
    monkeypatch.setattr("primer.sandbox.runner.os.geteuid", lambda: 10001)
    with pytest.raises(SandboxUnavailable, match="sandbox layers missing: cgroup, uid"):
        run_many(["open('/tmp/ran', 'w')"], FAST)
