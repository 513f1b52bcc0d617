"""A stage's summary: what a component tells the report about an output it committed.

Each component writes one :class:`StageSummary` next to its output, as
``<output>/_summary.json``, at its commit point (:func:`write_summary`); the report reads
only these (and dataset manifests), never a component's private files. The schema lives in
the core so that the report and every component agree on it; ``facts`` carries what is
particular to a stage (a classifier's F1, pass@1, the tasks matched) as plain JSON values.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from primer.storage import ObjectNotFoundError, Storage, StorageError, open_storage

SUMMARY_KEY = "_summary.json"


class SummaryError(StorageError, ValueError):
    """A ``_summary.json`` that is not a StageSummary; the message names the file."""


class StageSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stage: str = Field(description="The stage, as the report names it: curate, textbooks, "
                       "decontaminate, eval/humaneval, …")
    producer: str = Field(description="The component that wrote it (module, e.g. "
                          "services.curation).")
    rows: int | None = Field(None, ge=0, description="Rows (or problems) in the output.")
    tokens: int | None = Field(None, ge=0, description="Tokens in the output, if counted.")
    drop_counts: dict[str, int] = Field(default_factory=dict,
                                        description="Rows dropped, by reason.")
    facts: dict[str, Any] = Field(default_factory=dict,
                                  description="Stage-specific numbers (JSON values).")


def write_summary(output: str | Storage, summary: StageSummary) -> str:
    """Write ``summary`` as ``<output>/_summary.json``; returns its URL. One object written
    whole, so a reader sees the old summary or the new one, never half of one."""
    store = open_storage(output) if isinstance(output, str) else output
    store.write_text(SUMMARY_KEY, summary.model_dump_json(indent=1) + "\n")
    return store.url(SUMMARY_KEY)


def read_summary(output: str | Storage) -> StageSummary | None:
    """The summary written next to ``output``, or None when there is none (yet)."""
    store = open_storage(output) if isinstance(output, str) else output
    try:
        text = store.read_text(SUMMARY_KEY)
    except ObjectNotFoundError:
        return None
    try:
        return StageSummary.model_validate(json.loads(text))
    except (ValueError, ValidationError) as e:
        raise SummaryError(f"{store.url(SUMMARY_KEY)}: not a stage summary: {e}") from e
