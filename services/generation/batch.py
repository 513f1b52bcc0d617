"""The generation work unit: one batch of prompt specs → one Parquet shard.

``generate_batch`` is what an executor runs (``"services.generation.batch:generate_batch"``,
locally or on a Celery worker). It asks the teacher for every spec of its range at once
(``Teacher.complete_many``: many requests in flight on one asyncio loop), validates the
answers (exercises: asserts run in the sandbox), drops near duplicates inside the batch, and
writes ``part-<start>.parquet`` atomically. Its return value, kept in the completion marker,
lists each kept row's spec index, tokens and near-duplicate keys, so the commit step can
select the first ``count`` valid records across batches without reading the shards.

The teacher's response cache lives under the run, so a unit redelivered after its worker
died re-asks only the requests that had not been answered, and gets the same records.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pyarrow as pa

from primer.datasets import write_shard
from primer.sandbox import SandboxConfig, run_many
from primer.teacher import ChatRequest, Completion, Teacher, TeacherConfig, TeacherError
from services.generation.config import GenerationSettings
from services.generation.neardup import NearDupIndex, band_keys
from services.generation.prompts import request
from services.generation.taxonomy import Spec, specs
from services.generation.validate import check_textbook, parse_exercise, sandbox_reason

SCHEMAS = {
    "textbooks": pa.schema([("id", pa.string()), ("text", pa.string()),
                            ("topic", pa.string()), ("audience", pa.string()),
                            ("style", pa.string()), ("teacher", pa.string()),
                            ("prompt_hash", pa.string())]),
    "exercises": pa.schema([("id", pa.string()), ("prompt", pa.string()),
                            ("solution", pa.string()), ("tests", pa.list_(pa.string())),
                            ("function_name", pa.string()), ("concept", pa.string()),
                            ("teacher", pa.string()), ("prompt_hash", pa.string())]),
}


def shard_name(start: int) -> str:
    return f"part-{start:09d}.parquet"


def record_id(spec: Spec, stream_seed: int) -> str:
    prefix = "tb" if spec.kind == "textbooks" else "ex"
    return f"{prefix}-s{stream_seed}-{spec.index:09d}"


def generate_batch(kind: str, start: int, count: int, output: str, teacher: dict[str, Any],
                   settings: dict[str, Any], sandbox: dict[str, Any]) -> dict[str, Any]:
    """Generate specs ``[start, start + count)`` of the ``kind`` stream into one shard."""
    gen = GenerationSettings(**settings)
    batch = specs(kind, gen.seed, start, count)
    client = Teacher(TeacherConfig(**teacher))
    answers = asyncio.run(_ask(client, [request(s, gen) for s in batch]))

    drops: Counter[str] = Counter()
    rows: list[tuple[Spec, Completion, dict[str, Any]]] = []
    if kind == "textbooks":
        for spec, answer in zip(batch, answers, strict=True):
            if isinstance(answer, TeacherError):
                drops["teacher_error"] += 1
            elif reason := check_textbook(answer.text, answer.finish_reason, gen.min_words):
                drops[reason] += 1
            else:
                rows.append((spec, answer, {
                    "id": record_id(spec, gen.seed), "text": answer.text,
                    "topic": spec.concept.name, "audience": spec.audience,
                    "style": spec.style}))
    else:
        parsed = []
        for spec, answer in zip(batch, answers, strict=True):
            if isinstance(answer, TeacherError):
                drops["teacher_error"] += 1
                continue
            exercise, reason = parse_exercise(answer.text, answer.finish_reason,
                                              spec.function_name)
            if reason:
                drops[reason] += 1
            else:
                parsed.append((spec, answer, exercise))
        results = run_many([ex.program for _, _, ex in parsed], SandboxConfig(**sandbox),
                           workers=gen.sandbox_workers)
        for (spec, answer, ex), result in zip(parsed, results, strict=True):
            if reason := sandbox_reason(result.status):
                drops[reason] += 1
            else:
                rows.append((spec, answer, {
                    "id": record_id(spec, gen.seed), "prompt": ex.prompt,
                    "solution": ex.solution, "tests": ex.tests,
                    "function_name": spec.function_name, "concept": spec.concept.name}))

    index = NearDupIndex()
    kept: list[dict[str, Any]] = []
    meta: dict[str, list] = {"indices": [], "tokens": [], "keys": []}
    for spec, answer, row in rows:
        keys = band_keys(row.get("text") or row["prompt"], gen.near_dup_bands,
                         gen.near_dup_rows)
        if not index.add(keys):
            drops["near_dup"] += 1
            continue
        kept.append({**row, "teacher": client.name, "prompt_hash": answer.key})
        meta["indices"].append(spec.index)
        meta["tokens"].append(answer.completion_tokens)
        meta["keys"].append(keys)

    shard = None
    if kept:
        info = write_shard(output, shard_name(start), kept, SCHEMAS[kind])
        shard = {"name": info.name, "rows": info.rows, "bytes": info.bytes,
                 "sha256": info.sha256}
    return {"start": start, "count": count, "shard": shard, "drops": dict(drops),
            "usage": _usage(client), **meta}


async def _ask(client: Teacher, requests: list[ChatRequest]) -> list[Completion | TeacherError]:
    try:
        return await client.complete_many(requests)
    finally:
        await client.aclose()  # on this loop, before asyncio.run closes it


def _usage(client: Teacher) -> dict[str, Any]:
    return client.usage.as_dict()
