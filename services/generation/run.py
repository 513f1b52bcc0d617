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

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq

from primer.config import config_hash
from primer.datasets import (
    MANIFEST,
    Manifest,
    Producer,
    ShardInfo,
    commit_dataset,
    write_shard,
)
from primer.executor import Executor, WorkUnit, completed_ids, marker_result
from primer.executor.plan import Step, drive
from primer.storage import Storage, open_storage
from services.generation.batch import SCHEMAS, shard_name
from services.generation.config import GenerateConfig
from services.generation.neardup import KeyFormatError, KeySet
from services.generation.taxonomy import load_taxonomy

UNIT_FN = "services.generation.batch:generate_batch"
COMMIT_FN = "services.generation.run:commit_unit"
COMMIT_ID = "commit"


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


class Chosen(NamedTuple):
    """The rows a batch contributes: positions in its shard (kept in 4 bytes a row)."""

    start: int
    shard: dict[str, Any] | None
    positions: np.ndarray


@dataclass
class Selection:
    """The first ``count`` valid records in stream order: which rows of which shard."""

    rows: list[Chosen]
    """The batches contributing rows, in stream order."""
    kept: int
    drops: Counter
    surplus: int
    specs: int
    tokens: int
    usage: Counter = field(default_factory=Counter)
    """The teacher's usage summed over every batch (:data:`USAGE_KEYS`)."""


def select(results: Iterable[dict[str, Any]], count: int) -> Selection:
    """The first ``count`` records of the batches' ``results`` (in stream order) that share
    no near-dup key with an earlier kept record. Results are let go once decided (a group
    of ``GROUP`` records at a time), and the kept keys live in a numpy hash table
    (:class:`KeySet`, 10 bytes a slot, at most half full): memory grows with the records by
    that table and 4 bytes a kept row, whatever the results hold."""
    index = KeySet()
    selection = Selection([], 0, Counter(), 0, 0, 0)
    group: list[dict[str, Any]] = []
    size, last = 0, -1
    for result in results:
        start = result["start"]
        if start <= last:
            raise GenerationError(f"batch at spec {start} after the batch at spec {last}: "
                                  "batches are selected in stream order")
        last = start
        selection.drops.update(result["drops"])
        selection.specs += result["count"]
        selection.usage.update({k: result["usage"].get(k) or 0 for k in USAGE_KEYS})
        group.append(result)
        size += len(result["keys"])
        if size >= GROUP:
            _decide(index, group, count, selection)
            group, size = [], 0
    _decide(index, group, count, selection)
    return selection


#: Records decided together: a few batches' keys per lookup (fewer numpy calls a record).
GROUP = 4096


def _decide(index: KeySet, group: list[dict[str, Any]], count: int,
            selection: Selection) -> None:
    """Add a group of batches' first new records (up to ``count`` in all) to ``selection``."""
    records = [keys for result in group for keys in result["keys"]]
    try:
        positions, looked = index.add_first(records, count - selection.kept)
    except KeyFormatError as exc:
        bad = next(r for r in group if any(exc.key in keys for keys in r["keys"]))
        raise GenerationError(f"batch at spec {bad['start']}: {exc}") from None
    if looked > len(positions):
        selection.drops["near_dup"] += looked - len(positions)
    selection.surplus += len(records) - looked
    kept = np.asarray(positions, dtype=np.int64)
    offset = 0
    for result in group:
        lo, hi = np.searchsorted(kept, [offset, offset + len(result["keys"])])
        mine = (kept[lo:hi] - offset).astype(np.uint32)
        offset += len(result["keys"])
        if mine.size:
            selection.kept += mine.size
            selection.tokens += sum(result["tokens"][p] for p in mine.tolist())
            selection.rows.append(Chosen(result["start"], result["shard"], mine))


def _publish(output: str, kind: str, selection: Selection) -> list[ShardInfo]:
    """Shards holding exactly the selected rows: whole unit shards where every row is kept,
    else a filtered copy (``part-<start>-k<rows>.parquet``)."""
    store = open_storage(output)
    shards = []
    for start, shard, positions in selection.rows:
        info = ShardInfo(**shard)
        if len(positions) < info.rows:
            with store.open_read(info.name) as f:
                table = pq.read_table(f).take(positions)
            name = shard_name(start).replace(".parquet", f"-k{len(positions)}.parquet")
            info = write_shard(store, name, table, SCHEMAS[kind])
        shards.append(info)
    return shards


def _results(state: Storage, units: list[WorkUnit], stop: int) -> Iterator[dict[str, Any]]:
    """Each batch's result in stream order, read a few ahead (storage latency) and let go
    once yielded: the commit never holds more than ``READ_AHEAD`` of them."""
    with ThreadPoolExecutor(4) as pool:
        pending: deque[Future] = deque()
        for unit in [*units, None]:
            if unit is not None:
                pending.append(pool.submit(marker_result, state, unit.id))
            while pending and (unit is None or len(pending) > READ_AHEAD):
                result = pending.popleft().result()
                if result is None:
                    raise GenerationError(f"{state.uri}: commit before every batch of specs "
                                          f"[0, {stop}) completed; the planner sends the "
                                          "commit last")
                yield result


#: Batch markers read ahead of the one being selected.
READ_AHEAD = 8


def commit_unit(kind: str, count: int, output: str, stop: int, teacher: dict[str, Any],
                settings: dict[str, Any], sandbox: dict[str, Any]) -> dict[str, Any]:
    """The last unit of a run: select the first ``count`` valid records of specs
    ``[0, stop)`` from the batches' markers, publish them and commit the manifest."""
    config = GenerateConfig(teacher=teacher, generation=settings, sandbox=sandbox)
    gen = config.generation
    state = open_storage(work_uri(output))
    selection = select(_results(state, units_for(kind, output, config, 0, stop), stop), count)
    if selection.kept < count and not gen.allow_fewer:
        raise GenerationError(f"only {selection.kept} of {count} valid records in {stop} specs")
    metadata = {**request_of(kind, count, config), "valid": selection.kept,
                "specs": selection.specs, "surplus_valid": selection.surplus,
                "teacher": config.teacher.model, "usage": dict(selection.usage),
                "selection": "first `count` valid records of the seeded spec stream"}
    manifest = commit_dataset(output, _publish(output, kind, selection),
                              Producer(f"generate-{kind}", producer_hash(config)),
                              selection.drops, selection.tokens, metadata)
    return {"rows": manifest.rows, "tokens": manifest.tokens,
            "drop_counts": manifest.drop_counts, "manifest": open_storage(output).url(MANIFEST)}


def producer_hash(config: GenerateConfig) -> str:
    """The config's digest without where the run keeps its teacher cache (its own output)."""
    return config_hash(config.model_copy(update={
        "teacher": config.teacher.model_copy(update={"cache_uri": None})}))


#: What the manifest sums of the teacher's usage: what the records cost, not how the run
#: went (latency, retries and cache hits differ between two runs of the same records).
USAGE_KEYS = ("prompt_tokens", "completion_tokens")


def request_of(kind: str, count: int, config: GenerateConfig) -> dict[str, Any]:
    """What identifies a run's dataset (kept in its manifest's metadata)."""
    return {"kind": kind, "count": count, "seed": config.generation.seed,
            "taxonomy": load_taxonomy().digest}


def generate(kind: str, count: int, output: str, config: GenerateConfig, executor: Executor,
             on_progress: Callable[[Progress], None] | None = None,
             poll_s: float = 0.5) -> Manifest:
    """Generate ``count`` valid ``kind`` records into the dataset at ``output``."""
    from services.generation.plan import GenerationPlanner, GenerationTarget

    target = GenerationTarget(kind=kind, count=count, output=output, config=config)
    with _Watcher(work_uri(output), count, on_progress, poll_s) as watcher:
        drive(GenerationPlanner(), target, executor, progress=False, on_step=watcher.planned)
    store = open_storage(output)
    return Manifest.from_json(store.read_text(MANIFEST), store.url(MANIFEST))


class _Watcher:
    """Reports progress from completion markers while a run goes on (any executor)."""

    def __init__(self, state: str, target: int,
                 on_progress: Callable[[Progress], None] | None, poll_s: float):
        self.state, self.target = open_storage(state), target
        self.on_progress, self.poll_s = on_progress, poll_s
        self._stop = threading.Event()
        self._seen: dict[str, tuple[int, int]] = {}
        self._planned: set[str] = set()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def planned(self, step: Step) -> None:
        """The planner's next step: its batches count towards the units planned so far."""
        self._planned.update(u.id for u in step.job.units if u.id != COMMIT_ID)

    def poll(self) -> None:
        for unit_id in completed_ids(self.state) - set(self._seen) - {COMMIT_ID}:
            result = marker_result(self.state, unit_id) or {}
            self._seen[unit_id] = (len(result.get("indices", [])), sum(result.get("tokens", [])))
        self.on_progress(Progress(sum(v for v, _ in self._seen.values()), self.target,
                                  sum(t for _, t in self._seen.values()), len(self._seen),
                                  len(self._planned | self._seen.keys())))

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
