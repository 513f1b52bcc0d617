"""The generation planner: rounds of batch units until ``count`` valid records exist, then
one commit unit — the same units whoever drives the run (see ``run.py`` for why the rounds
give exactly ``count`` records).

Round 0 asks for ``count × overgenerate`` specs; once its batches are done, the planner
selects over their markers and, if too few records are valid, plans the next round for
what is missing divided by the yield so far (+10 %). Rounds are recomputed from the markers
on every call, so a planner that restarts (a new operator pod, another gateway replica)
continues exactly where the run is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from primer.config import load_config
from primer.datasets import MANIFEST, DatasetError, Manifest
from primer.executor import Job, WorkUnit
from primer.executor.base import Markers
from primer.executor.plan import Done, Planner, Step
from primer.runs import GenerationRun, nested
from primer.storage import Storage, open_storage
from services.generation.config import GenerateConfig
from services.generation.run import (
    COMMIT_FN,
    COMMIT_ID,
    GenerationError,
    Selection,
    request_of,
    select,
    units_for,
    work_uri,
)
from services.generation.taxonomy import KINDS


class GenerationTarget(BaseModel):
    """What a generation run makes: ``count`` valid ``kind`` records at ``output``."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    count: int
    output: str
    config: GenerateConfig


class GenerationPlanner(Planner[GenerationTarget]):
    kind = "generation"

    def resolve(self, spec: GenerationRun) -> GenerationTarget:
        config = load_config(GenerateConfig, base=nested(spec.config))
        for section, key, value in (("teacher", "url", spec.teacher.url),
                                    ("teacher", "model", spec.teacher.model),
                                    ("generation", "seed", spec.seed),
                                    ("generation", "batch_size", spec.batch_size),
                                    ("generation", "overgenerate", spec.overgenerate)):
            if value is not None:
                setattr(getattr(config, section), key, value)
        if not spec.output:
            raise GenerationError("a generation run needs an output")
        return GenerationTarget(kind=spec.kind, count=spec.count, output=spec.output,
                                config=config)

    def output(self, target: GenerationTarget) -> str:
        return open_storage(target.output).uri

    def next(self, target: GenerationTarget, markers: Markers | None = None) -> Step | Done:
        kind, count, output, config = target.kind, target.count, target.output, target.config
        if kind not in KINDS:
            raise GenerationError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
        if count < 1:
            raise GenerationError("--count must be at least 1")
        state_uri = work_uri(output)
        state = open_storage(state_uri)
        markers = Markers() if markers is None else markers
        done = markers.done(state)
        if COMMIT_ID in done:
            return Done(markers.result(state, COMMIT_ID) or {})
        _refuse_other_dataset(output, request_of(kind, count, config))

        gen = config.generation
        finished: list[str] = []  # the batches of the finished rounds
        selection = select([], count)  # over them
        planned, round_ = 0, 0
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
            units = units_for(kind, output, config, planned, stop)
            if not {u.id for u in units} <= done:
                return Step(Job(f"generate-{kind}-round-{round_}", units, state_uri),
                            f"round {round_}")
            finished += [u.id for u in units]
            planned, round_ = stop, round_ + 1
            # A finished round's selection is kept in a door's memo (without its rows: only
            # the commit needs them): it is most of what a tick costs. The batches' results
            # are streamed into it, one at a time.
            selection = markers.derive(state, f"selection-{planned}", finished, lambda ids=(
                tuple(finished)): _counts(select((_result(markers, state, i) for i in ids),
                                                 count)))
            if selection.kept >= count:
                break
            rate = max(selection.kept / selection.specs, 1.0 / gen.max_specs_factor)
            want = planned + math.ceil((count - selection.kept) / rate * 1.1)

        args = units_for(kind, output, config, 0, gen.batch_size)[0].args
        commit = WorkUnit(COMMIT_ID, COMMIT_FN, {
            "kind": kind, "count": count, "output": output, "stop": planned,
            **{k: args[k] for k in ("teacher", "settings", "sandbox")}})
        return Step(Job(f"generate-{kind}-commit", [commit], state_uri), "commit")


def _result(markers: Markers, state: Storage, unit_id: str) -> Any:
    return (markers.marker(state, unit_id) or {}).get("result")


def _counts(selection: Selection) -> Selection:
    return dataclasses.replace(selection, rows=[])


def _refuse_other_dataset(output: str, request: dict[str, Any]) -> None:
    store = open_storage(output)
    if store.exists(MANIFEST):
        manifest = Manifest.from_json(store.read_text(MANIFEST), store.url(MANIFEST))
        if {k: manifest.metadata.get(k) for k in request} != request:
            raise DatasetError(f"{store.uri} already holds a dataset made by another run "
                               f"({manifest.metadata}); choose a new --output")
