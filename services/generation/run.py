"""Drive a generation run: batches of specs as work units, rounds until ``count`` valid
records exist, then one commit that publishes exactly ``count`` of them.

How "exactly N" is reached: **over-generation from a deterministic stream**. Spec ``i`` of
``(kind, seed)`` is fixed (``taxonomy.spec_at``), units cover consecutive ranges of it, and
the dataset is the first ``count`` valid, non-near-duplicate records *in stream order*. The
first round asks for ``count × overgenerate`` specs; each later round asks for what is still
missing divided by the yield seen so far (+10 %). Invalid outputs are never re-asked (a
re-ask would need a new seed and so a different request); they are dropped and counted.
Because the selection depends only on the stream and the teacher's (cached) answers, a rerun,
a redelivered unit or a killed worker cannot change which records are published.

Layout under ``output``: ``part-*.parquet`` shards and ``_manifest.json`` (the dataset),
``_work/_markers/`` (unit completion markers) and ``_work/teacher-cache/`` (responses).
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from primer.config import config_hash
from primer.datasets import (
    MANIFEST,
    DatasetError,
    Manifest,
    Producer,
    ShardInfo,
    commit_dataset,
    write_shard,
)
from primer.executor import Executor, Job, WorkUnit, completed_ids, read_marker
from primer.storage import open_storage
from services.generation.batch import SCHEMAS, shard_name
from services.generation.config import GenerateConfig
from services.generation.neardup import NearDupIndex
from services.generation.taxonomy import KINDS, load_taxonomy

UNIT_FN = "services.generation.batch:generate_batch"


class GenerationError(RuntimeError):
    """A run could not produce its records; the message says why and how to go on."""


@dataclass(frozen=True)
class Progress:
    """What the run has so far (from completion markers; before cross-batch dedup)."""

    valid: int
    target: int
    tokens: int
    units_done: int
    units_total: int


def work_uri(output: str) -> str:
    return output.rstrip("/") + "/_work"


def units_for(kind: str, output: str, config: GenerateConfig, start: int, stop: int
              ) -> list[WorkUnit]:
    """Units covering specs ``[start, stop)``, in batches aligned to ``batch_size``."""
    size = config.generation.batch_size
    teacher = config.teacher.model_dump()
    if not teacher["cache_uri"]:
        teacher["cache_uri"] = work_uri(output) + "/teacher-cache"
    args = {"kind": kind, "output": output, "teacher": teacher,
            "settings": config.generation.model_dump(),
            "sandbox": config.sandbox.model_dump(mode="json")}
    return [WorkUnit(f"{kind}-{s:09d}", UNIT_FN, {**args, "start": s, "count": size})
            for s in range(start, stop, size)]


@dataclass
class Selection:
    """The first ``count`` valid records in stream order: which rows of which shard."""

    rows: list[tuple[dict[str, Any], list[int]]]
    """(unit result, kept row positions in its shard), for units contributing rows."""
    kept: int
    drops: Counter
    surplus: int
    specs: int
    tokens: int


def select(results: list[dict[str, Any]], count: int) -> Selection:
    index = NearDupIndex()
    chosen, drops, kept, surplus, tokens = [], Counter(), 0, 0, 0
    for result in sorted(results, key=lambda r: r["start"]):
        drops.update(result["drops"])
        positions = []
        for pos, keys in enumerate(result["keys"]):
            if kept == count:
                surplus += 1
            elif not index.add(keys):
                drops["near_dup"] += 1
            else:
                positions.append(pos)
                kept += 1
                tokens += result["tokens"][pos]
        if positions:
            chosen.append((result, positions))
    return Selection(chosen, kept, drops, surplus, sum(r["count"] for r in results), tokens)


def _publish(output: str, kind: str, selection: Selection) -> list[ShardInfo]:
    """Shards holding exactly the selected rows: whole unit shards where every row is kept,
    else a filtered copy (``part-<start>-k<rows>.parquet``)."""
    store = open_storage(output)
    shards = []
    for result, positions in selection.rows:
        info = ShardInfo(**result["shard"])
        if len(positions) < info.rows:
            with store.open_read(info.name) as f:
                table = pq.read_table(f).take(positions)
            name = shard_name(result["start"]).replace(".parquet", f"-k{len(positions)}.parquet")
            info = write_shard(store, name, table, SCHEMAS[kind])
        shards.append(info)
    return shards


def generate(kind: str, count: int, output: str, config: GenerateConfig, executor: Executor,
             on_progress: Callable[[Progress], None] | None = None,
             poll_s: float = 0.5) -> Manifest:
    """Generate ``count`` valid ``kind`` records into the dataset at ``output``."""
    if kind not in KINDS:
        raise GenerationError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    if count < 1:
        raise GenerationError("--count must be at least 1")
    store = open_storage(output)
    producer = Producer(f"generate-{kind}", config_hash(config))
    request = {"kind": kind, "count": count, "seed": config.generation.seed,
               "taxonomy": load_taxonomy().digest}
    if store.exists(MANIFEST):
        manifest = Manifest.from_json(store.read_text(MANIFEST), store.url(MANIFEST))
        if {k: manifest.metadata.get(k) for k in request} == request:
            return manifest  # this very run already finished
        raise DatasetError(f"{store.uri} already holds a dataset made by another run "
                           f"({manifest.metadata}); choose a new --output")

    gen = config.generation
    state = work_uri(output)
    units: list[WorkUnit] = []
    selection = Selection([], 0, Counter(), 0, 0, 0)
    planned = 0
    limit = math.ceil(count * gen.max_specs_factor)
    want = math.ceil(count * gen.overgenerate)
    while True:
        stop = min(limit, math.ceil(want / gen.batch_size) * gen.batch_size)
        if stop <= planned:
            if gen.allow_fewer:
                break  # publish what there is; the manifest records the shortfall
            raise GenerationError(
                f"only {selection.kept} of {count} valid records after {planned} specs "
                f"(limit count × max_specs_factor = {limit}); drops: "
                f"{dict(selection.drops.most_common())}. Check the teacher's answers, or "
                "raise --generation.max_specs_factor")
        units += units_for(kind, output, config, planned, stop)
        planned = stop
        job = Job(f"generate-{kind}", units, state)
        with _Watcher(state, job, count, on_progress, poll_s):
            result = executor.run(job, progress=False)
        if not result.ok:
            first = result.failed[0]
            raise GenerationError(
                f"{len(result.failed)} of {len(units)} units failed (first: {first.unit_id}: "
                f"{first.error}); rerun the same command to retry only those\n"
                f"{first.traceback}")
        selection = select([result.results[u.id] for u in units], count)
        if selection.kept >= count:
            break
        rate = max(selection.kept / selection.specs, 1.0 / gen.max_specs_factor)
        want = planned + math.ceil((count - selection.kept) / rate * 1.1)

    shards = _publish(output, kind, selection)
    usage: Counter = Counter()
    for r in (result.results[u.id] for u in units):
        usage.update({k: v for k, v in r["usage"].items() if isinstance(v, int | float)})
    metadata = {**request, "valid": selection.kept, "specs": selection.specs,
                "surplus_valid": selection.surplus,
                "teacher": config.teacher.model, "usage": dict(usage),
                "selection": "first `count` valid records of the seeded spec stream"}
    return commit_dataset(store, shards, producer, selection.drops, selection.tokens, metadata)


class _Watcher:
    """Reports progress from completion markers while a job runs (any executor)."""

    def __init__(self, state: str, job: Job, target: int,
                 on_progress: Callable[[Progress], None] | None, poll_s: float):
        self.state, self.job, self.target = open_storage(state), job, target
        self.on_progress, self.poll_s = on_progress, poll_s
        self._stop = threading.Event()
        self._seen: dict[str, tuple[int, int]] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def poll(self) -> None:
        ids = {u.id for u in self.job.units}
        for unit_id in (completed_ids(self.state) & ids) - set(self._seen):
            result = (read_marker(self.state, unit_id) or {}).get("result") or {}
            self._seen[unit_id] = (len(result.get("indices", [])), sum(result.get("tokens", [])))
        self.on_progress(Progress(sum(v for v, _ in self._seen.values()), self.target,
                                  sum(t for _, t in self._seen.values()), len(self._seen),
                                  len(ids)))

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def __enter__(self) -> _Watcher:
        if self.on_progress is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on_progress is not None:
            self._stop.set()
            self._thread.join()
            self.poll()


def finish_unit(kind: str, count: int, output: str, teacher: dict[str, Any],
                settings: dict[str, Any], sandbox: dict[str, Any]) -> dict[str, Any]:
    """Work unit that completes a run whose first round ran elsewhere (the operator's
    GenerationRun fans the first round out over the workers, then sends this): the batches
    already done are skipped by their markers, later rounds run here, and the manifest is
    committed. Runs in-process: a Celery worker's process may not start a process pool."""
    from primer.executor import LocalExecutor

    config = GenerateConfig(teacher=teacher, generation=settings, sandbox=sandbox, workers=1)
    manifest = generate(kind, count, output, config, LocalExecutor(workers=1))
    return {"rows": manifest.rows, "drops": manifest.drop_counts}
