"""Contained execution of untrusted Python programs (evaluation and generation share it).

>>> result = run_program("assert 1 + 1 == 2")
>>> result.passed, result.layers[:5]
(True, ('session', 'tempdir', 'env', 'cgroup', 'mountns'))
>>> results = run_many(programs, SandboxConfig(timeout_s=3), workers=8)

See :mod:`primer.sandbox.runner` for the layers and how "passed" is decided.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, as_completed, wait

from primer.sandbox.config import SandboxConfig
from primer.sandbox.runner import (
    SandboxResult,
    SandboxUnavailable,
    Zygote,
    check_layers,
    run_program,
)

__all__ = ["SandboxConfig", "SandboxResult", "SandboxUnavailable", "check_layers", "run_many",
           "run_program", "run_stream"]


def run_many(sources: Sequence[str], config: SandboxConfig | None = None, workers: int = 0,
             on_result: Callable[[int, SandboxResult], None] | None = None
             ) -> list[SandboxResult]:
    """Run every program in its own sandbox, ``workers`` at a time (0: one per core).

    Threads suffice: each program is its own process, the threads only wait on them.
    Results come back in input order; ``on_result(index, result)`` sees each as it ends.
    Raises :class:`SandboxUnavailable` before running anything when a required layer is
    missing on this host.
    """
    results: list[SandboxResult | None] = [None] * len(sources)
    for i, result in run_stream(sources, config, workers):
        results[i] = result
        if on_result is not None:
            on_result(i, result)
    return results  # type: ignore[return-value]


def run_stream(sources: Iterable[str], config: SandboxConfig | None = None, workers: int = 0
               ) -> Iterator[tuple[int, SandboxResult]]:
    """Run programs as they are drawn from ``sources``, a bounded number in flight, and yield
    ``(index, result)`` as each ends: memory stays flat however many there are.

    Raises :class:`SandboxUnavailable` before running anything when a required layer is
    missing on this host.
    """
    check_layers(config)
    workers = workers or os.cpu_count() or 1
    own = threading.local()  # each thread forks its programs from its own zygote
    zygotes: list[Zygote] = []

    def run(i: int, source: str) -> tuple[int, SandboxResult]:
        if not hasattr(own, "zygote"):
            own.zygote = Zygote()
            zygotes.append(own.zygote)
        return i, run_program(source, config, own.zygote)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            pending: set[Future[tuple[int, SandboxResult]]] = set()
            for i, source in enumerate(sources):
                pending.add(pool.submit(run, i, source))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (f.result() for f in done)
            for f in as_completed(pending):
                yield f.result()
    finally:
        for zygote in zygotes:
            zygote.close()
