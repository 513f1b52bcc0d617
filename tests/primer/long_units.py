"""A slow unit for the long-unit tests, importable by Celery workers (``PYTHONPATH`` = repo).

It stands in for an hours-long curation or generation unit: the visibility timeout in those
tests is a few seconds, so sleeping for several of them is "longer than the timeout".
"""

from __future__ import annotations

import os
import time


def sleep_and_record(starts: str, seconds: float) -> int:
    """Append this process's group id to ``starts`` (one line per start), sleep, and return
    the group id: the worker that finished the unit."""
    with open(starts, "a") as f:
        f.write(f"{os.getpgrp()}\n")
    time.sleep(seconds)
    return os.getpgrp()
