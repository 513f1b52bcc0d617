"""The curation units: read, dedup, annotate, train, score, threshold, select, commit.

Each is an idempotent work-unit function; :mod:`services.curation.plan` says which units a
run is made of and in which order (the same plan under every executor and every door). Each
stage's markers live under ``<output>/_work/state/<stage>``; each unit publishes its output
atomically before its marker, so a killed run, started again with the same config, redoes
only unfinished units and gives the same output. The work folder records the config hash;
another config on the same output is refused rather than mixed. Layout under ``<output>``::

    part-*.parquet, _manifest.json     the kept dataset (drop_counts per reason)
    _dropped/                          optional: dropped records with their reason (a dataset)
    _report/                           report.json, report.md, edu_score_hist.png, classifier
    _work/                             intermediate shards, markers, the model
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from primer.datasets import Producer, ShardInfo, commit_dataset, write_shard
from primer.executor import Executor, LocalExecutor
from primer.executor.plan import drive, unit_result
from primer.storage import Storage, open_storage
from services.curation import readers
from services.curation.annotate import (
    HeuristicAnnotator,
    TeacherAnnotator,
    assign_labels,
    make_annotator,
    sample_rank,
)
from services.curation.classify import (
    EduClassifier,
    load_model,
    save_fallback,
    train,
    untrainable,
)
from services.curation.config import AnnotateConfig, CurationConfig
from services.curation.dedup import MinHasher, cluster, exact_key, removal_reasons
from services.curation.filters import default_filters
from services.curation.steps import BatchStep, Filter, Record, drop_counts, run_pipeline

ANNOTATION = pa.struct([("label", pa.int64()), ("score", pa.float64()),
                        ("annotator", pa.string())])
BASE_FIELDS = [("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
               ("lang", pa.string()), ("n_chars", pa.int64())]
OUTPUT_SCHEMA = pa.schema(BASE_FIELDS + [("edu_score", pa.float64()),
                                         ("annotation", ANNOTATION)])
DROPPED_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()),
                            ("reason", pa.string()), ("text", pa.string())])
HIST_BINS = 20


class CurationError(RuntimeError):
    """A stage failed or the output holds another config's work; the message says which."""


def _filtered_schema(n_bands: int) -> pa.Schema:
    return pa.schema(BASE_FIELDS + [("exact", pa.uint64())] +
                     [(f"b{j:02d}", pa.uint64()) for j in range(n_bands)])


def _shard(i: int) -> str:
    return f"part-{i:05d}.parquet"


def _cfg(config: dict[str, Any]) -> CurationConfig:
    return CurationConfig.model_validate(config)


def _read_table(store: Storage, key: str, columns: list[str] | None = None) -> pa.Table:
    with store.open_read(key) as f:
        return pq.read_table(f, columns=columns)


def _write_table(store: Storage, key: str, table: pa.Table) -> None:
    with store.open_write(key) as f:
        pq.write_table(table, f, compression="zstd")


class _DroppedSink:
    """Collects dropped records (id, source, reason, text) when the run keeps them."""

    def __init__(self, enabled: bool):
        self.enabled, self.rows = enabled, []

    def __call__(self, record: Record, reason: str) -> None:
        if self.enabled:
            self.rows.append({"id": record.get("id"), "source": record.get("source"),
                              "reason": reason, "text": record.get("text")})

    def write(self, out: str, name: str) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        return asdict(write_shard(f"{out}/_dropped", name, self.rows, DROPPED_SCHEMA))


# -- units ----------------------------------------------------------------------------------

def read_unit(config: dict, part: dict, index: int, out: str) -> dict[str, Any]:
    """Read one partition, filter it, and sign what is left for dedup."""
    cfg = _cfg(config)
    sink = _DroppedSink(cfg.write_dropped)
    filters = default_filters(cfg.filters, sink)
    hasher = MinHasher(cfg.dedup)
    rows = []
    for record in run_pipeline(readers.read_partition(part, cfg.reader), filters):
        bands = hasher.bands_of(record["text"])
        row = {k: record[k] for k, _ in BASE_FIELDS}
        row["exact"] = exact_key(record["text"])
        row.update({f"b{j:02d}": int(b) for j, b in enumerate(bands)})
        rows.append(row)
    seen = filters[0].stats.total()
    write_shard(f"{out}/_work/filtered", _shard(index), rows, _filtered_schema(cfg.dedup.bands))
    return {"rows": len(rows), "seen": seen, "drops": dict(drop_counts(filters)),
            "dropped": sink.write(out, f"filter-{index:05d}.parquet")}


def dedup_unit(config: dict, out: str, n_shards: int) -> dict[str, Any]:
    """Cluster every shard's band hashes at once; write who is removed and why."""
    cfg = _cfg(config)
    store = open_storage(f"{out}/_work")
    cols = ["exact"] + [f"b{j:02d}" for j in range(cfg.dedup.bands)]
    tables = [_read_table(store, f"filtered/{_shard(i)}", cols) for i in range(n_shards)]
    sizes = [t.num_rows for t in tables]
    table = pa.concat_tables(tables) if tables else pa.table({c: [] for c in cols})
    exact = table.column("exact").to_numpy().astype(np.uint64) if table.num_rows else \
        np.zeros(0, np.uint64)
    bands = np.stack([table.column(c).to_numpy().astype(np.uint64) for c in cols[1:]], 1) \
        if table.num_rows else np.zeros((0, cfg.dedup.bands), np.uint64)
    reasons = removal_reasons(cluster(bands, exact, cfg.dedup), exact)
    starts = np.cumsum([0] + sizes)
    shard_of = np.repeat(np.arange(len(sizes)), sizes)
    removed = [(int(shard_of[g]), int(g - starts[shard_of[g]]), r)
               for g, r in enumerate(reasons) if r is not None]
    _write_table(store, "dedup/removed.parquet", pa.table({
        "shard": pa.array([r[0] for r in removed], pa.int32()),
        "row": pa.array([r[1] for r in removed], pa.int64()),
        "reason": pa.array([r[2] for r in removed], pa.string())}))
    return dict(Counter(r[2] for r in removed))


def _removed(store: Storage, index: int) -> dict[int, str]:
    table = _read_table(store, "dedup/removed.parquet")
    mask = pc.equal(table.column("shard"), index)
    sub = table.filter(mask)
    return dict(zip(sub.column("row").to_pylist(), sub.column("reason").to_pylist(), strict=True))


def annotate_unit(config: dict, out: str, n_shards: int) -> dict[str, Any]:
    """Annotate a seeded sample of the deduplicated records."""
    cfg = _cfg(config)
    store = open_storage(f"{out}/_work")
    ranked = []
    for i in range(n_shards):
        removed = _removed(store, i)
        ids = _read_table(store, f"filtered/{_shard(i)}", ["id"]).column("id").to_pylist()
        ranked += [(sample_rank(x, cfg.annotate.seed), x, i, r)
                   for r, x in enumerate(ids) if r not in removed]
    ranked.sort()
    chosen = ranked[:cfg.annotate.sample_size]
    by_shard: dict[int, dict[int, str]] = {}
    for _, x, i, r in chosen:
        by_shard.setdefault(i, {})[r] = x
    texts: dict[str, str] = {}
    for i, rows in by_shard.items():
        col = _read_table(store, f"filtered/{_shard(i)}", ["text"]).column("text")
        texts.update({x: col[r].as_py() for r, x in rows.items()})
    ids = [x for _, x, _, _ in chosen]
    annotator = make_annotator(cfg.annotate)
    labels = annotator.annotate([texts[x] for x in ids])
    keep = [(x, a) for x, a in zip(ids, labels, strict=True) if a is not None]
    rule = assign_labels([a for _, a in keep], cfg.annotate)
    _write_table(store, "annotations.parquet", pa.table({
        "id": pa.array([x for x, _ in keep], pa.string()),
        "text": pa.array([texts[x] for x, _ in keep], pa.string()),
        "annotation": pa.array([a for _, a in keep], ANNOTATION)}))
    return {"sampled": len(ids), **dict(annotator.stats), "annotator": annotator.name, **rule}


def train_unit(config: dict, out: str) -> dict[str, Any]:
    """Fit the classifier on the annotations, or, when they cannot train one, record the
    fallback: every record is then scored by the annotator itself (see :class:`Scorer`)."""
    cfg = _cfg(config)
    table = _read_table(open_storage(f"{out}/_work"), "annotations.parquet")
    labels = [a["label"] for a in table.column("annotation").to_pylist()]
    reason = untrainable(labels, cfg.classify.test_fraction)
    if reason is not None:
        return save_fallback(f"{out}/_work/model", f"cannot train the classifier: {reason}",
                             cfg.annotate.annotator)
    model = train(table.column("text").to_pylist(), labels, cfg.classify)
    model.save(f"{out}/_work/model")
    return model.metrics


class Scorer(BatchStep):
    """Adds ``edu_score`` (and the annotation, where one exists) to records in batches:
    the classifier's probability of label 1, or, in the fallback, the annotator's own score
    (the sample's annotation where there is one, else the annotator is asked; a record it
    cannot score gets 0.0 and is counted ``unscored``)."""

    def __init__(self, model: EduClassifier | None, annotations: dict[str, dict],
                 batch_size: int, annotate: AnnotateConfig):
        super().__init__(batch_size)
        self.model, self.annotations, self.annotate_cfg = model, annotations, annotate
        self.annotator: HeuristicAnnotator | TeacherAnnotator | None = None

    def _annotator_scores(self, batch: list[Record]) -> list[float]:
        todo = [r["text"] for r in batch if r["id"] not in self.annotations]
        if todo:
            self.annotator = self.annotator or make_annotator(self.annotate_cfg)
            self.stats["annotator_scored"] += len(todo)
        asked = iter(self.annotator.annotate(todo) if todo else [])
        got = [self.annotations.get(r["id"]) or next(asked) for r in batch]
        self.stats["unscored"] += sum(a is None for a in got)
        return [0.0 if a is None else a["score"] for a in got]

    def process_batch(self, batch: list[Record]) -> list[Record]:
        scores = self.model.score([r["text"] for r in batch], self.batch_size).tolist() \
            if self.model is not None else self._annotator_scores(batch)
        for record, score in zip(batch, scores, strict=True):
            record["edu_score"] = round(float(score), 6)
            record["annotation"] = self.annotations.get(record["id"])
        return batch


class DedupFilter(Filter):
    """Drops the records the dedup stage removed (by row), with its reason."""

    def __init__(self, removed: dict[int, str], dropped=None):
        super().__init__(dropped)
        self.removed, self.row = removed, -1

    def reason(self, record: Record) -> str | None:
        self.row += 1
        return self.removed.get(self.row)


def score_unit(config: dict, out: str, index: int) -> dict[str, Any]:
    cfg = _cfg(config)
    store = open_storage(f"{out}/_work")
    sink = _DroppedSink(cfg.write_dropped)
    ann = _read_table(store, "annotations.parquet", ["id", "annotation"])
    annotations = dict(zip(ann.column("id").to_pylist(), ann.column("annotation").to_pylist(),
                           strict=True))
    dedup = DedupFilter(_removed(store, index), sink)
    scorer = Scorer(load_model(f"{out}/_work/model"), annotations, cfg.classify.batch_size,
                    cfg.annotate)
    records = _read_table(store, f"filtered/{_shard(index)}",
                          [k for k, _ in BASE_FIELDS]).to_pylist()
    rows = list(run_pipeline(records, [dedup, scorer]))
    _write_table(store, f"scored/{_shard(index)}",
                 pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA))
    return {"rows": len(rows), "drops": dict(dedup.drop_counts),
            "dropped": sink.write(out, f"dedup-{index:05d}.parquet"),
            "scoring": {k: scorer.stats[k] for k in ("annotator_scored", "unscored")}}


class EduScoreFilter(Filter):
    def __init__(self, threshold: float, dropped=None):
        super().__init__(dropped)
        self.threshold = threshold

    def reason(self, record: Record) -> str | None:
        return None if record["edu_score"] >= self.threshold else "edu_score_below"


def select_unit(config: dict, out: str, index: int, threshold: float) -> dict[str, Any]:
    cfg = _cfg(config)
    store = open_storage(f"{out}/_work")
    sink = _DroppedSink(cfg.write_dropped)
    table = _read_table(store, f"scored/{_shard(index)}")
    scores = np.asarray(table.column("edu_score").to_pylist(), np.float64)
    edu = EduScoreFilter(threshold, sink)
    kept = list(edu.run(table.to_pylist()))
    info = write_shard(out, _shard(index), kept, OUTPUT_SCHEMA)
    hist_all = np.histogram(scores, HIST_BINS, (0.0, 1.0))[0]
    hist_kept = np.histogram(scores[scores >= threshold], HIST_BINS, (0.0, 1.0))[0]
    return {"shard": asdict(info), "drops": dict(edu.drop_counts),
            "dropped": sink.write(out, f"edu-{index:05d}.parquet"),
            "chars": sum(r["n_chars"] for r in kept),
            "hist_all": hist_all.tolist(), "hist_kept": hist_kept.tolist()}


# -- the last units: threshold, commit --------------------------------------------------------

def plan_unit(config: dict) -> dict[str, Any]:
    """List the input once: the partitions every later stage is cut by (kept in the marker,
    so the run's shards stay fixed even if the input changes under it)."""
    cfg = _cfg(config)
    return {"parts": readers.plan(cfg.input, cfg.reader)}


def threshold_unit(config: dict, out: str, n_shards: int) -> float:
    """``min_score`` as is; for ``keep_top``, the score of the last record kept."""
    cfg = _cfg(config)
    if cfg.classify.keep_top is None:
        return cfg.classify.min_score if cfg.classify.min_score is not None else 0.5
    store = open_storage(f"{out}/_work")
    scores = np.concatenate([np.asarray(_read_table(store, f"scored/{_shard(i)}", ["edu_score"])
                                        .column("edu_score").to_pylist(), np.float64)
                             for i in range(n_shards)] or [np.zeros(0)])
    if len(scores) == 0:
        return 1.0
    k = max(1, math.ceil(cfg.classify.keep_top * len(scores)))
    return float(np.sort(scores)[::-1][k - 1])


def commit_unit(config: dict, out: str, n_shards: int) -> dict[str, Any]:
    """Publish the kept shards (and the dropped ones) as datasets and write the report, from
    the results the earlier units left in their markers; returns the report."""
    from services.curation.report import write_report

    cfg = _cfg(config)

    def results(stage: str, ids: list[str]) -> list[Any]:
        return [unit_result(state_uri(out, stage), i) for i in ids]

    reads = results("read", [f"read-{i:05d}" for i in range(n_shards)])
    dedup, = results("dedup", ["dedup"])
    annotations, = results("annotate", ["annotate"])
    metrics, = results("train", ["train"])
    threshold, = results("threshold", ["threshold"])
    scores = results("score", [f"score-{i:05d}" for i in range(n_shards)])
    selects = results("select", [f"select-{i:05d}" for i in range(n_shards)])
    digest = config_digest(cfg)
    drops: Counter[str] = Counter()
    for r in reads + scores + selects:
        drops.update(r["drops"])
    if metrics.get("status") == "fallback":
        metrics = {**metrics, **{k: sum(s["scoring"][k] for s in scores)
                                 for k in ("annotator_scored", "unscored")}}
    chars = sum(s["chars"] for s in selects)
    tokens = int(chars / cfg.chars_per_token)
    facts = {"input": cfg.input or "stdlib+site-packages", "files_seen": sum(r["seen"]
                                                                              for r in reads),
             "after_filters": sum(r["rows"] for r in reads), "dedup": dedup,
             "annotations": annotations, "classifier": metrics, "threshold": threshold,
             "rule": (f"keep_top={cfg.classify.keep_top}" if cfg.classify.keep_top is not None
                      else f"min_score={threshold}"),
             "kept_chars": chars, "estimated_tokens": tokens,
             "hist_all": np.sum([s["hist_all"] for s in selects], 0).tolist() if selects
             else [0] * HIST_BINS,
             "hist_kept": np.sum([s["hist_kept"] for s in selects], 0).tolist() if selects
             else [0] * HIST_BINS}
    manifest = commit_dataset(out, [ShardInfo(**s["shard"]) for s in selects],
                              Producer("curate", digest), drop_counts=drops, tokens=tokens,
                              metadata={k: v for k, v in facts.items()
                                        if not k.startswith("hist")})
    if cfg.write_dropped:
        commit_dataset(f"{out}/_dropped", [ShardInfo(**r["dropped"]) for r in reads + scores
                                           + selects], Producer("curate-dropped", digest),
                       drop_counts=drops)
    return write_report(out, manifest, facts)


# -- running it -----------------------------------------------------------------------------

#: What a unit's config leaves out: how a door runs the units, not what they compute.
DOOR_KEYS = {"executor", "workers", "redis", "storage", "log_level"}


def config_digest(cfg: CurationConfig) -> str:
    """What the records depend on: not where they are written, nor how units are run."""
    import hashlib

    data = cfg.model_dump(mode="json", exclude=DOOR_KEYS | {"output"})
    data["annotate"]["teacher"].pop("max_concurrency", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def state_uri(out: str, stage: str) -> str:
    return f"{out}/_work/state/{stage}"


def make_executor(cfg: CurationConfig) -> Executor:
    if cfg.executor == "celery":
        from primer.executor import CeleryExecutor

        return CeleryExecutor(cfg.redis.url)
    return LocalExecutor(workers=cfg.workers)


def run(cfg: CurationConfig, *, executor: Executor | None = None, progress: bool = True,
        on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the whole curation with ``executor``; returns the report."""
    from services.curation.plan import CurationPlanner

    return drive(CurationPlanner(), cfg, executor or make_executor(cfg), progress=progress,
                 on_step=(lambda step: on_stage(step.stage)) if on_stage else None)
