"""Measure the heuristic annotator on real code: ``python -m services.curation.calibrate``.

Scores the modules of this interpreter's standard library outside test folders (real,
maintained code present on every machine) that pass the default junk filters, as the
annotator sees them in a curation, and prints the quantiles of the raw feature mean
and the share of modules at or above ``annotate.positive_score``. ``RAW_AT_HALF`` in
annotate.py is the raw mean's 75th percentile as printed here on CPython 3.11.7.
"""

from __future__ import annotations

import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np

from services.curation.annotate import calibrated, features, raw_score
from services.curation.config import FilterConfig, ReaderConfig
from services.curation.filters import default_filters
from services.curation.readers import read_files
from services.curation.steps import run_pipeline

TEST_FOLDERS = {"test", "tests", "idle_test"}


def stdlib_modules() -> list[Path]:
    """Modules of this interpreter's standard library, test folders and site-packages left
    out, in sorted order of their path relative to it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    rel = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    return [root / r for r in rel
            if not ({"site-packages"} | TEST_FOLDERS) & set(r.split("/")[:-1])]


def raw_scores(paths: list[Path]) -> np.ndarray:
    """The raw heuristic mean of each file that passes the default filters."""
    records = run_pipeline(read_files([str(p) for p in paths], ReaderConfig().max_bytes),
                           default_filters(FilterConfig()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray([raw_score(features(r["text"])) for r in records], np.float64)


def positive_rate(paths: list[Path], positive_score: float = 0.5) -> tuple[float, int]:
    """(share of the files whose calibrated score is >= ``positive_score``, files scored)."""
    raw = raw_scores(paths)
    scores = np.asarray([calibrated(r) for r in raw])
    return (float((scores >= positive_score).mean()) if len(scores) else 0.0), len(scores)


def main() -> None:
    raw = raw_scores(stdlib_modules())
    rate = float(np.mean([calibrated(r) >= 0.5 for r in raw]))
    print(f"python {sys.version.split()[0]}: {len(raw)} standard-library modules scored")
    for q in (10, 25, 50, 75, 90):
        print(f"  raw mean, {q}th percentile: {np.percentile(raw, q):.4f}")
    print(f"  positive rate at score >= 0.5: {rate:.1%}")


if __name__ == "__main__":
    main()
