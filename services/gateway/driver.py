"""The worker side of a gateway run: one work unit that runs one ``primer`` command.

The gateway enqueues ``primer.run_unit`` with ``WorkUnit(<run id>, DRIVER_FN, {...})`` on the
component's queue; the worker image (which holds every component) imports this module and
runs the command in a child process, exactly as a user would on a laptop, with the local
executor: the run's units fan out over the worker pod's cores. The run record in Redis is
moved to Running, then Succeeded (with outputs and unit totals) or Failed (with the tail of
the command's output). A worker that dies mid-run has its task redelivered (``acks_late``);
the command resumes from its completion markers.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from typing import Any

from primer import progress
from services.gateway.store import RunStore, now

DRIVER_FN = "services.gateway.driver:run_command"
ERROR_TAIL = 4000
_PRIMER = "import sys; from primer.cli import main; sys.exit(main(sys.argv[1:]))"


class RunFailed(RuntimeError):
    """The command exited non-zero; the message ends with its last output."""


def run_command(run_id: str, component: str, argv: list[str], output: str,
                redis_url: str) -> dict[str, Any]:
    """Run ``primer <argv>`` and record the outcome on the run ``run_id``."""
    store = RunStore.from_url(redis_url)
    store.update(run_id, phase="Running", started_at=now(), worker=socket.gethostname())
    with tempfile.TemporaryFile() as log:
        code = subprocess.run([sys.executable, "-c", _PRIMER, *argv], stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        log.seek(0)
        tail = log.read().decode("utf-8", "replace")[-ERROR_TAIL:]
    if code != 0:
        error = f"primer {argv[0]} exited with code {code}:\n{tail}"
        store.update(run_id, phase="Failed", finished_at=now(), error=error,
                     stats=_stats(output))
        raise RunFailed(error)
    found = progress.outputs(component, output)
    store.update(run_id, phase="Succeeded", finished_at=now(), outputs=found,
                 stats=_stats(output))
    return {"outputs": found}


def _stats(output: str) -> dict[str, Any]:
    try:
        return progress.unit_stats(output)
    except Exception as exc:  # totals are best effort; the outcome is recorded anyway
        return {"error": f"{type(exc).__name__}: {exc}"}
