"""The curation planner: which units a curation run is made of, whoever drives it.

Stages, each a job of units (:mod:`services.curation.pipeline` holds the unit functions)::

    plan       1                 list the input once: the partitions
    read       1 per partition   read → filters → exact hash + MinHash bands
    dedup      1 per bucket key  files sharing the exact hash / one LSH band, as edges
    cluster    1                 connected components of the edges; who is removed
    choose     1                 the seeded sample of the survivors (ids only)
    annotate   1 per shard       the annotator (an LLM judge) on the shard's sampled records
    label      1                 labels by the config's rule over the whole sample
    train      1                 embeddings + random forest (or the annotator fallback)
    score      1 per shard       drop duplicates, edu_score for every record
    threshold  1                 the keep rule's score threshold
    select     1 per shard       keep by threshold → output shard
    commit     1                 publish the dataset and the report

A stage's units are built from the config and the results earlier units left in their
markers, so planning again after a crash, on another machine, gives the same units.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from primer.config import load_config
from primer.executor import Job, WorkUnit
from primer.executor.base import Markers
from primer.executor.plan import Done, Planner, Step
from primer.runs import CurationRun, nested
from primer.storage import open_storage
from services.curation.config import CurationConfig
from services.curation.dedup import bucket_keys
from services.curation.pipeline import DOOR_KEYS, CurationError, config_digest, state_uri

MOD = "services.curation.pipeline"


class CurationPlanner(Planner[CurationConfig]):
    kind = "curation"

    def resolve(self, spec: CurationRun) -> CurationConfig:
        cfg = load_config(CurationConfig, base=nested(spec.config))
        if spec.input is not None:
            cfg.input = spec.input
        if spec.output is not None:
            cfg.output = spec.output
        if spec.annotator is not None:
            cfg.annotate.annotator = spec.annotator
        if spec.keep_top is not None:
            cfg.classify.min_score = None
            cfg.classify.keep_top = spec.keep_top
        if spec.min_score is not None:
            cfg.classify.keep_top = None
            cfg.classify.min_score = spec.min_score
        return cfg

    def output(self, config: CurationConfig) -> str:
        return open_storage(config.output or f"{config.storage.root}/runs/curate/curated").uri

    def next(self, config: CurationConfig, markers: Markers | None = None) -> Step | Done:
        out = self.output(config)
        _claim(out, config)
        markers = Markers() if markers is None else markers
        for stage, units in _stages(config, out, markers):
            job = Job(f"curate-{stage}", units, state_uri(out, stage))
            if not {u.id for u in units} <= markers.done(open_storage(job.state_uri)):
                return Step(job, stage)
        return Done(markers.result(open_storage(state_uri(out, "commit")), "commit"))


def _claim(out: str, cfg: CurationConfig) -> None:
    """Record the config's digest in the work folder; refuse another config's work."""
    work = open_storage(f"{out}/_work")
    digest = config_digest(cfg)
    if work.exists("config.json"):
        old = json.loads(work.read_text("config.json"))["hash"]
        if old != digest:
            raise CurationError(f"{out} holds a curation with another config (hash {old}, now "
                                f"{digest}): choose a new --output or delete {work.uri}")
    else:
        work.write_text("config.json", json.dumps(
            {"hash": digest, "config": cfg.model_dump(mode="json", exclude=DOOR_KEYS)},
            indent=1, default=str))


def _stages(cfg: CurationConfig, out: str, markers: Markers
            ) -> Iterator[tuple[str, list[WorkUnit]]]:
    """Each stage's units; a later stage is built only once the earlier ones are done (the
    generator is not resumed past the first unfinished stage)."""

    def result(stage: str) -> Any:  # of a finished one-unit stage, named after the stage
        return markers.result(open_storage(state_uri(out, stage)), stage)

    config = cfg.model_dump(mode="json", exclude=DOOR_KEYS)
    yield "plan", [WorkUnit("plan", f"{MOD}:plan_unit", {"config": config})]
    parts: list[dict[str, Any]] = result("plan")["parts"]
    n = len(parts)
    shared = {"config": config, "out": out}
    yield "read", [WorkUnit(f"read-{i:05d}", f"{MOD}:read_unit", {**shared, "part": p,
                                                                    "index": i})
                   for i, p in enumerate(parts)]
    yield "dedup", [WorkUnit(f"bucket-{key}", f"{MOD}:bucket_unit",
                             {**shared, "n_shards": n, "key": key})
                    for key in bucket_keys(cfg.dedup)]
    yield "cluster", [WorkUnit("cluster", f"{MOD}:cluster_unit", {**shared, "n_shards": n})]
    yield "choose", [WorkUnit("choose", f"{MOD}:choose_unit", {**shared, "n_shards": n})]
    yield "annotate", [WorkUnit(f"annotate-{i:05d}", f"{MOD}:annotate_unit",
                                {**shared, "index": i}) for i in range(n)]
    yield "label", [WorkUnit("label", f"{MOD}:label_unit", {**shared, "n_shards": n})]
    yield "train", [WorkUnit("train", f"{MOD}:train_unit", shared)]
    yield "score", [WorkUnit(f"score-{i:05d}", f"{MOD}:score_unit", {**shared, "index": i})
                    for i in range(n)]
    yield "threshold", [WorkUnit("threshold", f"{MOD}:threshold_unit",
                                 {**shared, "n_shards": n})]
    threshold = result("threshold")
    yield "select", [WorkUnit(f"select-{i:05d}", f"{MOD}:select_unit",
                              {**shared, "index": i, "threshold": threshold})
                     for i in range(n)]
    yield "commit", [WorkUnit("commit", f"{MOD}:commit_unit", {**shared, "n_shards": n})]
