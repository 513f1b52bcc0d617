"""Contained execution of untrusted Python programs (evaluation and generation share it).

>>> result = run_program("assert 1 + 1 == 2")
>>> result.passed, result.layers[:5]
(True, ('session', 'tempdir', 'env', 'cgroup', 'mountns'))
>>> results = run_many(programs, SandboxConfig(timeout_s=3), workers=8)

See :mod:`primer.sandbox.runner` for the layers and how "passed" is decided.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from primer.sandbox.config import SandboxConfig
from primer.sandbox.runner import SandboxResult, SandboxUnavailable, check_layers, run_program

__all__ = ["SandboxConfig", "SandboxResult", "SandboxUnavailable", "check_layers", "run_many",
           "run_program"]


def run_many(sources: Sequence[str], config: SandboxConfig | None = None, workers: int = 0,
             on_result: Callable[[int, SandboxResult], None] | None = None
             ) -> list[SandboxResult]:
    """Run every program in its own sandbox, ``workers`` at a time (0: one per core).

    Threads suffice: each program is its own process, the threads only wait on them.
    Results come back in input order; ``on_result(index, result)`` sees each as it ends.
    """
    import os

    workers = workers or os.cpu_count() or 1

    def one(i: int) -> SandboxResult:
        result = run_program(sources[i], config)
        if on_result is not None:
            on_result(i, result)
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(sources))))
