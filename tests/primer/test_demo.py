"""`primer demo --quick` through the real console script: a dataset out, a rerun resumes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from primer.datasets import open_dataset
from primer.executor import completed_ids
from primer.storage import open_storage

PRIMER = str(Path(sys.executable).parent / "primer")


def run_demo(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PRIMER, "demo", "--quick", "--workers", "2",
                           f"--storage.root={root}"], capture_output=True, text=True,
                          timeout=300)


def test_quick_demo_writes_a_dataset_and_resumes(tmp_path):
    first = run_demo(tmp_path)
    assert first.returncode == 0, first.stderr
    ds = open_dataset(tmp_path / "runs/demo/sources")
    m = ds.manifest
    assert m.producer.step == "read_sources"
    assert m.rows + sum(m.drop_counts.values()) == 400  # every file is kept or counted
    assert m.rows > 300
    rows = list(ds)
    assert all(r["lang"] == "python" and r["n_chars"] == len(r["text"]) for r in rows)
    assert any(r["source"].endswith(".py") and "def " in r["text"] for r in rows)
    state = open_storage(tmp_path / "runs/demo/state/read-sources")
    assert completed_ids(state) == {"read-00000", "read-00001"}

    second = run_demo(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "0 done, 2 skipped" in second.stderr + second.stdout
    assert open_dataset(tmp_path / "runs/demo/sources").manifest.rows == m.rows
