"""The hostile suite: programs that try to escape, forge a pass or exhaust the worker, and the
verdict each gets when contained. Runs wherever the worker runs (here, in a podman container
as the chart's pod runs), prints one JSON object and exits 0 only when all were contained.

    python tests/primer/sandbox_hostile.py [ALLOW_MISSING_LAYER ...]

Output: ``{"refused": msg}`` when a required layer is missing, else ``{"verdicts": {name:
status}, "escaped": [names], "degraded": [...]}``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from primer.sandbox import SandboxConfig, SandboxUnavailable, check_layers, run_many

SECRET = "hunter2-do-not-leak"
SHM_KEY = 0x5EED0115
PROJECT_FILE = str(Path(__file__).resolve().parents[2] / "pyproject.toml")
CONFIG = dict(timeout_s=10, memory_mb=256, disk_mb=64, max_processes=32)


def programs(port: int) -> dict[str, str]:
    """Each asserts that its attack worked: contained, it fails (or times out)."""
    shm = ("import ctypes\nlibc = ctypes.CDLL(None)\n"
           f"assert libc.shmget({SHM_KEY}, 64 << 20, 0o1666) >= 0\n")
    return {
        "loop": "while True:\n    pass\n",
        "memory": "blocks = []\nwhile True:\n    blocks.append(bytearray(64 << 20))\n",
        "fork_bomb": "import subprocess\nkids = [subprocess.Popen(['sleep', '30']) "
                     "for _ in range(300)]\n",
        "forks_hold_memory": (
            "import os, time\nkids = []\nfor _ in range(6):\n    pid = os.fork()\n"
            "    if pid == 0:\n        block = b'x' * (200 << 20)\n        time.sleep(1.5)\n"
            "        os._exit(0)\n    kids.append(pid)\n"
            "ok = sum(os.waitstatus_to_exitcode(os.waitpid(k, 0)[1]) == 0 for k in kids)\n"
            "assert ok >= 2, ok\n"),
        "disk": ("total = 0\nfor i in range(24):\n    with open(f'f{i}', 'wb') as f:\n"
                 "        f.write(b'x' * (16 << 20))\n    total += 16\n"),
        "write_root": "open('/primer-escape', 'w').write('x')\n",
        "run_lock": "open('/run/lock/primer-escape', 'w').write('x')\n",
        "secret_env": f"import os\nassert {SECRET!r} in str(os.environ)\n",
        "secret_proc": ("import glob\nfound = []\nfor p in glob.glob('/proc/*/environ'):\n"
                        "    try:\n        found.append(open(p, 'rb').read())\n"
                        "    except OSError:\n        pass\n"
                        f"assert any({SECRET.encode()!r} in x for x in found)\n"),
        "kill_parent": "import os\nos.kill(os.getppid(), 9)\nos.kill(-1, 9)\n",
        "socket": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
        "flood": "while True:\n    print('x' * 65536)\n",
        "forge_frame": ("import os, sys\nf = sys._getframe(1).f_locals\n"
                        "os.write(f['status_fd'], b'P ' + f['nonce'] + b'\\n')\nos._exit(0)\n"),
        "proc_view": ("import os\ncmds = [open(f'/proc/{p}/cmdline', 'rb').read() "
                      "for p in os.listdir('/proc') if p.isdigit()]\n"
                      "assert any(b'64.75' in c for c in cmds)\n"),
        "project_tree": f"open({PROJECT_FILE!r}).read()\n",
        "shm": ("import subprocess, sys\n"
                f"subprocess.run([sys.executable, '-c', {shm!r}], check=True)\n"
                "assert False, 'created; whether it survives is checked outside'\n"),
        "spoof_layers": ("import os\nfor fd in range(3, 64):\n    try:\n"
                         "        os.write(fd, b'L gvisor,seccomp,FAKE\\n')\n"
                         "    except OSError:\n        pass\nassert False\n"),
    }


def leftovers() -> list[str]:
    found = []
    if any(int(line.split()[0]) == SHM_KEY
           for line in Path("/proc/sysvipc/shm").read_text().splitlines()[1:]):
        found.append("shm")
    for path in ("/run/lock/primer-escape", "/primer-escape"):
        if os.path.exists(path):
            found.append(path)
    return found


def main() -> int:
    config = SandboxConfig(**CONFIG, allow_missing=sys.argv[1:])
    try:
        check_layers(config)
    except SandboxUnavailable as e:
        print(json.dumps({"refused": str(e)}))
        return 2
    os.environ["PRIMER_TEST_SECRET"] = SECRET
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    sleeper = subprocess.Popen(["sleep", "64.75"])
    try:
        hostile = programs(listener.getsockname()[1])
        results = dict(zip(hostile, run_many(list(hostile.values()), config, workers=3),
                           strict=True))
    finally:
        sleeper.kill()
        listener.close()
    escaped = [n for n, r in results.items() if r.status not in ("failed", "timeout")]
    escaped += [f"{n}:layers" for n, r in results.items() if "FAKE" in r.layers]
    escaped += [f"leftover:{x}" for x in leftovers()]
    print(json.dumps({"verdicts": {n: r.status for n, r in results.items()},
                      "escaped": escaped,
                      "degraded": sorted({x for r in results.values() for x in r.missing})}))
    return 1 if escaped else 0


if __name__ == "__main__":
    sys.exit(main())
