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

import heapq
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
from services.curation.dedup import MinHasher, bucket_edges, bucket_keys, components, exact_key
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


def bucket_unit(config: dict, out: str, n_shards: int, key: str) -> dict[str, Any]:
    """One dedup bucket: files sharing the value of column ``key`` (the exact hash or one
    LSH band) across every shard, as edges between global row indices."""
    store = open_storage(f"{out}/_work")
    column = np.concatenate([
        _read_table(store, f"filtered/{_shard(i)}", [key]).column(key).to_numpy()
        .astype(np.uint64) for i in range(n_shards)] or [np.zeros(0, np.uint64)])
    src, dst = bucket_edges(column, key != "exact")
    _write_table(store, f"dedup/edges-{key}.parquet",
                 pa.table({"src": pa.array(src, pa.int64()), "dst": pa.array(dst, pa.int64())}))
    return {"edges": len(src)}


def cluster_unit(config: dict, out: str, n_shards: int) -> dict[str, Any]:
    """Join every bucket's edges into duplicate clusters; write who is removed and why (the
    first file of a cluster is kept; ``exact_dup`` when its normalized text equals the kept
    file's, else ``near_dup``)."""
    cfg = _cfg(config)
    store = open_storage(f"{out}/_work")
    exact = [_read_table(store, f"filtered/{_shard(i)}", ["exact"]).column("exact").to_numpy()
             .astype(np.uint64) for i in range(n_shards)]
    sizes = [len(e) for e in exact]
    exact_all = np.concatenate(exact or [np.zeros(0, np.uint64)])
    edges = [_read_table(store, f"dedup/edges-{k}.parquet") for k in bucket_keys(cfg.dedup)]
    src = np.concatenate([e.column("src").to_numpy() for e in edges] or [np.zeros(0, np.int64)])
    dst = np.concatenate([e.column("dst").to_numpy() for e in edges] or [np.zeros(0, np.int64)])
    labels = components(src, dst, len(exact_all))
    gone = np.flatnonzero(labels != np.arange(len(labels)))
    reason = np.where(exact_all[gone] == exact_all[labels[gone]], "exact_dup", "near_dup")
    starts = np.cumsum([0] + sizes)
    shard = np.searchsorted(starts, gone, side="right") - 1
    bounds = np.searchsorted(shard, np.arange(n_shards + 1))  # `gone` is sorted
    for i in range(n_shards):  # one file per shard: a shard's units read only their own
        mine = slice(bounds[i], bounds[i + 1])
        _write_table(store, f"dedup/removed-{i:05d}.parquet", pa.table({
            "row": pa.array(gone[mine] - starts[i], pa.int64()),
            "reason": pa.array(reason[mine].tolist(), pa.string())}))
    return dict(Counter(reason.tolist()))


def _removed(store: Storage, index: int) -> dict[int, str]:
    """Row → reason of shard ``index``'s records that dedup removed."""
    table = _read_table(store, f"dedup/removed-{index:05d}.parquet")
    return dict(zip(table.column("row").to_pylist(), table.column("reason").to_pylist(),
                    strict=True))


def choose_unit(config: dict, out: str, n_shards: int) -> dict[str, Any]:
    """Choose the annotation sample: the ``sample_size`` surviving records with the lowest
    seeded rank (reads only the id column; keeps a heap of the sample, not the corpus)."""
    cfg = _cfg(config)
    store = open_storage(f"{out}/_work")
    heap: list[tuple[int, int, int, str]] = []  # (-rank, shard, row, id): a max-heap
    k = cfg.annotate.sample_size
    for i in range(n_shards):
        removed = _removed(store, i)
        ids = _read_table(store, f"filtered/{_shard(i)}", ["id"]).column("id").to_pylist()
        for r, x in enumerate(ids):
            if r in removed:
                continue
            item = (-sample_rank(x, cfg.annotate.seed), i, r, x)
            if len(heap) < k:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)
    chosen = sorted(((-neg, i, r, x) for neg, i, r, x in heap))
    _write_table(store, "annotate/chosen.parquet", pa.table({
        "rank": pa.array([c[0] for c in chosen], pa.uint64()),
        "shard": pa.array([c[1] for c in chosen], pa.int32()),
        "row": pa.array([c[2] for c in chosen], pa.int64()),
        "id": pa.array([c[3] for c in chosen], pa.string())}))
    return {"sampled": len(chosen)}


def annotate_unit(config: dict, out: str, index: int) -> dict[str, Any]:
    """Annotate the sample's records of shard ``index`` (the teacher's calls fan out over
    the workers this way); labels are set later, over the whole sample."""
    cfg = _cfg(config)
    store = open_storage(f"{out}/_work")
    chosen = _read_table(store, "annotate/chosen.parquet")
    mine = chosen.filter(pc.equal(chosen.column("shard"), index))
    rows = mine.column("row").to_pylist()
    col = _read_table(store, f"filtered/{_shard(index)}", ["text"]).column("text") \
        if rows else None
    texts = [col[r].as_py() for r in rows] if rows else []
    annotator = make_annotator(cfg.annotate)
    got = annotator.annotate(texts) if texts else []
    keep = [j for j, a in enumerate(got) if a is not None]
    _write_table(store, f"annotate/{_shard(index)}", pa.table({
        "rank": pa.array([mine.column("rank")[j].as_py() for j in keep], pa.uint64()),
        "id": pa.array([mine.column("id")[j].as_py() for j in keep], pa.string()),
        "text": pa.array([texts[j] for j in keep], pa.string()),
        "annotation": pa.array([got[j] for j in keep], ANNOTATION)}))
    return {"stats": dict(annotator.stats), "annotator": annotator.name}


def label_unit(config: dict, out: str, n_shards: int) -> dict[str, Any]:
    """Gather the shards' annotations in sample order and label them by the config's rule
    (relative labels need the whole sample's scores)."""
    cfg = _cfg(config)
    store = open_storage(f"{out}/_work")
    table = pa.concat_tables([_read_table(store, f"annotate/{_shard(i)}")
                              for i in range(n_shards)]) if n_shards else None
    if table is None or table.num_rows == 0:
        table = pa.table({"rank": pa.array([], pa.uint64()), "id": pa.array([], pa.string()),
                          "text": pa.array([], pa.string()),
                          "annotation": pa.array([], ANNOTATION)})
    table = table.sort_by("rank")
    annotations = table.column("annotation").to_pylist()
    rule = assign_labels(annotations, cfg.annotate)
    _write_table(store, "annotations.parquet", pa.table({
        "id": table.column("id"), "text": table.column("text"),
        "annotation": pa.array(annotations, ANNOTATION)}))
    return rule


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
    dedup, = results("cluster", ["cluster"])
    sampled, = results("choose", ["choose"])
    labels, = results("label", ["label"])
    stats: Counter[str] = Counter()
    names = {cfg.annotate.annotator}
    for r in results("annotate", [f"annotate-{i:05d}" for i in range(n_shards)]):
        stats.update(r["stats"])
        names = {r["annotator"]}
    annotations = {**sampled, **stats, "annotator": names.pop(), **labels}
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

        return CeleryExecutor(cfg.redis.url, component="curation")
    return LocalExecutor(workers=cfg.workers)


def run(cfg: CurationConfig, *, executor: Executor | None = None, progress: bool = True,
        on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or resume) the whole curation with ``executor``; returns the report."""
    from services.curation.plan import CurationPlanner

    return drive(CurationPlanner(), cfg, executor or make_executor(cfg), progress=progress,
                 on_step=(lambda step: on_stage(step.stage)) if on_stage else None)
