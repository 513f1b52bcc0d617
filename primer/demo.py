"""``primer demo``: the parts of the recipe that exist, run end to end on this machine.

Today that is the foundation: the Python sources of the running interpreter (standard library,
and site-packages unless ``--quick``) are read by work units on the local executor, each unit
writing one Parquet shard; a coordinator commits them as one dataset with per-reason drop
counts. Curation, generation, training and evaluation join the demo as they land. A rerun
resumes: finished units are skipped through their completion markers.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from primer.datasets import Producer, ShardInfo, commit_dataset, open_dataset, write_shard
from primer.executor import Job, LocalExecutor, WorkUnit
from primer.storage import open_storage

MAX_BYTES = 1 << 20  # larger files are data, not code worth reading


def source_roots(quick: bool) -> list[Path]:
    """Where this interpreter's Python sources live: real code present on every machine."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"])]
    if not quick:
        roots.append(Path(paths["purelib"]))
    return [r for r in dict.fromkeys(roots) if r.is_dir()]


def list_sources(roots: list[Path], limit: int | None = None) -> list[str]:
    files = sorted(str(p) for root in roots for p in root.rglob("*.py") if p.is_file())
    return files[:limit] if limit else files


def read_sources(files: list[str], shard_uri: str, shard_name: str) -> dict[str, Any]:
    """Work unit: read ``files`` into one shard of records; count what was dropped and why."""
    drops: Counter[str] = Counter()
    records = []
    for path in files:
        try:
            raw = Path(path).read_bytes()
        except OSError:
            drops["unreadable"] += 1
            continue
        if not raw.strip():
            drops["empty"] += 1
        elif len(raw) > MAX_BYTES:
            drops["too_large"] += 1
        elif b"\0" in raw:
            drops["binary"] += 1
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                drops["undecodable"] += 1
                continue
            records.append({"id": hashlib.sha256(raw).hexdigest()[:16], "text": text,
                            "source": path, "lang": "python", "n_chars": len(text)})
    shard = write_shard(shard_uri, shard_name, records)
    return {"shard": shard.__dict__, "drops": dict(drops), "files": len(files)}


def run(data_root: str = "./primer-data", run_name: str = "demo", quick: bool = False,
        workers: int | None = None, console: Console | None = None) -> dict[str, Any]:
    console = console or Console()
    t0 = time.monotonic()
    run_uri = open_storage(data_root).child(f"runs/{run_name}").uri
    files = list_sources(source_roots(quick), limit=400 if quick else None)
    n_units = max(1, min(16, len(files) // 200))
    groups: list[list[str]] = [[] for _ in range(n_units)]
    for f in files:  # stable assignment: the same file lands in the same unit on a rerun
        groups[zlib.crc32(f.encode()) % n_units].append(f)
    raw_uri = f"{run_uri}/sources"
    units = [WorkUnit(f"read-{i:05d}", "primer.demo:read_sources",
                      {"files": g, "shard_uri": raw_uri, "shard_name": f"part-{i:05d}.parquet"})
             for i, g in enumerate(groups)]
    console.print(f"[bold]primer demo[/] reading {len(files)} Python files from "
                  f"{', '.join(map(str, source_roots(quick)))} in {n_units} work units")
    result = LocalExecutor(workers=workers or os.cpu_count()).run(
        Job("read-sources", units, state_uri=f"{run_uri}/state/read-sources"))
    if not result.ok:
        for failure in result.failed:
            console.print(f"[red]unit {failure.unit_id} failed:[/] {failure.error}")
        raise SystemExit(1)
    outcomes = [result.results[u.id] for u in units]
    drops = sum((Counter(o["drops"]) for o in outcomes), Counter())
    manifest = commit_dataset(raw_uri, [ShardInfo(**o["shard"]) for o in outcomes],
                              Producer("read_sources", hashlib.sha256(
                                  repr(sorted(files)).encode()).hexdigest()[:16]),
                              drop_counts=drops)
    dataset = open_dataset(raw_uri)
    chars = sum(sum(b.column("n_chars").to_pylist()) for b in dataset.iter_batches(["n_chars"]))

    table = Table(title="stage: read sources")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("files seen", str(len(files)))
    table.add_row("records kept", str(manifest.rows))
    for reason, n in sorted(drops.items()):
        table.add_row(f"dropped: {reason}", str(n))
    table.add_row("characters", f"{chars:,}")
    table.add_row("units run / resumed", f"{len(result.done)} / {len(result.skipped)}")
    table.add_row("seconds", f"{time.monotonic() - t0:.1f}")
    console.print(table)
    console.print(f"dataset: [bold]{raw_uri}[/] ({len(manifest.shards)} shards, manifest "
                  "_manifest.json)\nCuration, generation, training and evaluation stages "
                  "join this demo as they land; see README.md.")
    return {"dataset": raw_uri, "rows": manifest.rows, "drops": dict(drops),
            "done": len(result.done), "skipped": len(result.skipped)}
