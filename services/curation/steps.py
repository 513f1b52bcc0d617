"""The one step contract of curation: a step maps an iterator of records to an iterator of
records; a filter only answers keep or drop-with-reason. The base classes count what passes
and what is dropped per reason, so reports come from counters, not logs (datatrove's
``PipelineStep`` / ``BaseFilter``).

A record is a plain dict: ``id``, ``text``, ``source``, ``lang``, ``n_chars`` and, once
scored, ``edu_score`` and ``annotation``. A dropped record is kept only if a ``dropped``
sink is given, with its reason in ``reason``.
"""

from __future__ import annotations

import abc
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

Record = dict[str, Any]
Sink = Callable[[Record, str], None]


class Step(abc.ABC):
    """Maps records to records; subclasses implement :meth:`run`."""

    name: str = "step"

    def __init__(self) -> None:
        self.stats: Counter[str] = Counter()

    @abc.abstractmethod
    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        """Yield the records that go on, possibly changed."""

    def __call__(self, records: Iterable[Record]) -> Iterator[Record]:
        return self.run(records)


class Filter(Step):
    """Keeps a record or drops it with a stable reason code; counting is done here."""

    def __init__(self, dropped: Sink | None = None) -> None:
        super().__init__()
        self.dropped = dropped

    @abc.abstractmethod
    def reason(self, record: Record) -> str | None:
        """None to keep the record, else the reason code it is dropped for."""

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        for record in records:
            why = self.reason(record)
            if why is None:
                self.stats["kept"] += 1
                yield record
            else:
                self.stats[f"dropped:{why}"] += 1
                if self.dropped is not None:
                    self.dropped(record, why)

    @property
    def drop_counts(self) -> Counter[str]:
        return Counter({k.split(":", 1)[1]: v for k, v in self.stats.items()
                        if k.startswith("dropped:")})


class BatchStep(Step):
    """A step that works on batches (embedding, scoring): subclasses implement
    :meth:`process_batch`, which returns the batch's records in order."""

    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size

    @abc.abstractmethod
    def process_batch(self, batch: list[Record]) -> list[Record]:
        ...

    def run(self, records: Iterable[Record]) -> Iterator[Record]:
        batch: list[Record] = []
        for record in records:
            batch.append(record)
            if len(batch) >= self.batch_size:
                yield from self._do(batch)
                batch = []
        if batch:
            yield from self._do(batch)

    def _do(self, batch: list[Record]) -> list[Record]:
        self.stats["batches"] += 1
        out = self.process_batch(batch)
        self.stats["records"] += len(out)
        return out


def run_pipeline(records: Iterable[Record], steps: list[Step]) -> Iterator[Record]:
    """Chain ``steps`` lazily over ``records``."""
    stream: Iterable[Record] = records
    for step in steps:
        stream = step.run(stream)
    yield from stream


def drop_counts(steps: Iterable[Step]) -> Counter[str]:
    """The per-reason drop counters of every filter in ``steps``, summed."""
    total: Counter[str] = Counter()
    for step in steps:
        if isinstance(step, Filter):
            total.update(step.drop_counts)
    return total
