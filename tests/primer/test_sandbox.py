"""The sandbox contains hostile programs and scores them failed; honest ones pass."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from primer.sandbox import SandboxConfig, run_many, run_program
from primer.sandbox.config import LAYERS
from primer.sandbox.runner import Zygote

FAST = SandboxConfig(timeout_s=3, memory_mb=256, max_processes=32)
FULL = set(LAYERS)


def test_an_honest_program_passes_with_every_layer_and_leaves_nothing():
    r = run_program("import os\nprint(os.getcwd())\nassert sum(range(4)) == 6\n", FAST)
    assert r.passed and r.summary == "passed" and r.exit_code == 0
    assert set(r.layers) == FULL  # root, as in CI
    workdir = r.stdout.strip()
    assert workdir and not Path(workdir).exists()


def test_a_failing_assert_is_failed_with_the_reason():
    r = run_program("assert 1 == 2, 'wrong answer'", FAST)
    assert not r.passed and r.summary == "failed: AssertionError: wrong answer"


@pytest.mark.parametrize("exit_code", [
    "import sys; sys.exit(0)",
    "import os; os._exit(0)",
    "print('passed'); raise SystemExit",
    "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
])
def test_early_exit_is_never_passed(exit_code):
    r = run_program(exit_code + "\nassert False, 'tests were skipped'\n", FAST)
    assert r.status == "failed", r


@pytest.mark.parametrize(("source", "code"), [
    ("import sys; sys.exit(200)", 200), ("import sys; sys.exit(147)", 147),
    ("import os, signal; os.killpg(0, signal.SIGKILL)", -9),
    ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", -15)])
def test_exit_codes_and_kills_are_reported_as_they_happened(source, code):
    # 128 + n from the namespace's init means signal n only where n is one (147: SIGSTOP's
    # number, which the outer process must not send itself)
    r = run_program(source, FAST)
    assert (r.status, r.exit_code) == ("failed", code), r


def test_hostile_programs_are_contained_and_failed(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIMER_TEST_SECRET", "hunter2-do-not-leak")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    outside = Path("/var/lib/primer-sandbox-escape-test")
    real_tmp = Path("/tmp") / f"primer-escape-{os.getpid()}"
    hostile = {
        "loop": "while True:\n    pass\n",
        "memory": "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n",
        "fork": ("import subprocess\nkids = [subprocess.Popen(['sleep', '61.5']) "
                 "for _ in range(300)]\n"),
        "write": f"open({str(outside)!r}, 'w').write('x')\n",
        "tmp": f"open({str(real_tmp)!r}, 'w').write('x')\nassert False\n",
        "secret": "import os\nprint(os.environ['PRIMER_TEST_SECRET'])\n",
        "parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
        "flood": "while True:\n    print('x' * 65536)\n",
    }
    start = time.monotonic()
    results = dict(zip(hostile, run_many(list(hostile.values()), FAST, workers=3), strict=True))
    assert time.monotonic() - start < 30
    for name, r in results.items():
        assert r.status in ("failed", "timeout"), (name, r)
    assert results["loop"].status == "timeout" and results["loop"].duration_s < 5
    assert "MemoryError" in results["memory"].stderr
    assert "BlockingIOError" in results["fork"].stderr  # RLIMIT_NPROC under the sandbox uid
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and b"61.5" in _cmdline(p)], "sandboxed children survived"
    assert "Read-only file system" in results["write"].stderr and not outside.exists()
    assert not real_tmp.exists()  # /tmp inside was the sandbox's own
    assert "hunter2" not in results["secret"].stdout + results["secret"].stderr
    assert "KeyError" in results["secret"].stderr
    assert "PermissionError" in results["parent"].stderr  # and we are still alive
    # its own network namespace has no interface up: the host's listener is unreachable
    assert results["socket"].summary == "failed: OSError: [Errno 101] Network is unreachable"
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing reached it
        listener.accept()
    listener.close()
    assert "netns" in results["socket"].layers
    flood = results["flood"]
    assert len(flood.stdout) <= FAST.max_output_bytes + 100 and flood.exit_code != 0
    assert "File too large" in flood.stderr  # RLIMIT_FSIZE caps stdout on disk


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def test_wall_limit_kills_the_whole_group_even_when_the_main_process_waits():
    r = run_program("import subprocess\nsubprocess.run(['sleep', '62.5'])\n",
                    SandboxConfig(timeout_s=1))
    assert r.status == "timeout" and r.summary == "timed out" and r.duration_s < 3
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit()
                and b"62.5" in _cmdline(p)]


def test_a_sandbox_error_is_a_result_not_an_exception():
    r = run_program("pass", SandboxConfig(python="/nonexistent/python"))
    assert r.status == "error" and "nonexistent" in r.stderr


def test_programs_forked_from_one_zygote_hold_nothing_of_it_or_of_each_other():
    """Every program of a worker is forked from its pre-started interpreter: the program's
    only descriptors are stdio and its status pipe (no socket back to the zygote), and what
    one program does (exit codes, a crash, a timeout, a kill of its own group) changes
    nothing for the next."""
    fds = ("import os\nopen_fds = []\nfor fd in sorted(os.listdir('/proc/self/fd'), key=int):\n"
           "    try:\n        open_fds.append((int(fd), os.readlink(f'/proc/self/fd/{fd}')))\n"
           "    except FileNotFoundError:\n        pass  # listdir's own, closed by now\n"
           "print(open_fds)\n")
    with Zygote() as zygote:
        first = run_program(fds, FAST, zygote)
        hostile = [run_program(src, FAST, zygote) for src in (
            "import os, signal\nos.killpg(0, signal.SIGKILL)\n",
            "import sys\nsys.exit(7)\n", "raise MemoryError\n", "while True: pass\n")]
        again = run_program(fds, FAST, zygote)
        pid = zygote._proc.pid
    assert first.passed and again.passed, (first, again)
    open_fds = eval(first.stdout)  # [(fd, target)]
    assert [fd for fd, _ in open_fds][:3] == [0, 1, 2] and len(open_fds) == 4, open_fds
    assert open_fds[3][1].startswith("pipe:")  # the status pipe
    assert not [t for _, t in open_fds if t.startswith("socket:")], open_fds
    assert [r.status for r in hostile] == ["failed", "failed", "failed", "timeout"], hostile
    assert [r.exit_code for r in hostile[:3]] == [-9, 7, 1]
    assert "MemoryError" in hostile[2].stderr
    # the same descriptors for the sixth program as for the first
    assert [fd for fd, _ in eval(again.stdout)] == [fd for fd, _ in open_fds]
    assert not Path(f"/proc/{pid}").exists()  # closing the zygote ended it


def test_a_zygote_that_died_is_started_again():
    with Zygote() as zygote:
        assert run_program("pass", FAST, zygote).passed
        zygote._proc.kill()
        zygote._proc.wait()
        assert run_program("pass", FAST, zygote).passed
