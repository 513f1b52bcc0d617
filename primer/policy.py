"""What a run may set, whoever starts it: the config keys each run kind may override and the
teacher endpoints it may name. The gateway (a request from the network) and the operator (a
custom resource anyone with create rights in the namespace may write) refuse the same
specs, so neither door can turn the workers' sandbox off or send their teacher key elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlparse

from primer.runs import GenerationRun, RunSpec

Problem = tuple[str, str]

_TEACHER_LIMITS = ("model", "max_concurrency", "requests_per_minute", "tokens_per_minute",
                   "max_retries", "timeout_s", "backoff_base_s", "backoff_max_s",
                   "price_input_per_1k", "price_output_per_1k")
_GENERATION = ("generation.seed", "generation.batch_size", "generation.overgenerate",
               "generation.max_specs_factor", "generation.temperature", "generation.top_p",
               "generation.near_dup_bands", "generation.near_dup_rows",
               "generation.allow_fewer", *(f"teacher.{k}" for k in _TEACHER_LIMITS),
               "log_level")

#: Config keys (``section.key``) each run kind may set; everything else is refused. The keys
#: that decide *where* a run reads, writes or sends, and *how* it is contained, are absent
#: on purpose: ``sandbox.*``, ``*_env``, ``*.url``/``*.api_base``/``*_uri``/``*_path``,
#: ``storage.*``, ``redis.*``, ``executor``, ``workers`` and encoders loaded from a path.
ALLOWED_CONFIG: dict[str, frozenset[str]] = {
    "curation": frozenset((
        "reader.files_per_unit", "reader.max_bytes", "reader.text_column", "reader.hf_split",
        "reader.hf_data_dir", "reader.hf_limit", "reader.hf_records_per_unit", "reader.limit",
        "filters.min_chars", "filters.max_chars", "filters.max_line_length",
        "filters.min_alnum_fraction", "filters.max_mean_line_length",
        "filters.max_data_fraction", "dedup.ngram", "dedup.bands", "dedup.rows", "dedup.seed",
        "dedup.compat", "dedup.exact", "dedup.near", "annotate.annotator",
        "annotate.sample_size", "annotate.seed", "annotate.positive_score",
        "annotate.max_attempts", *(f"annotate.teacher.{k}" for k in _TEACHER_LIMITS),
        "classify.max_tokens", "classify.batch_size", "classify.n_estimators",
        "classify.test_fraction", "classify.seed", "classify.keep_top", "classify.min_score",
        "write_dropped", "chars_per_token", "log_level")),
    "generation textbooks": frozenset((*_GENERATION, "generation.max_tokens_textbook",
                                       "generation.min_words")),
    "generation exercises": frozenset((*_GENERATION, "generation.max_tokens_exercise",
                                       "generation.sandbox_workers")),
}

#: Whatever the list above says, keys like these are never a user's to set (a test checks
#: the list against them, so a later addition cannot open the sandbox or leak a secret).
NEVER = re.compile(r"(^|\.)(sandbox|storage|redis)\.|_env$|(^|\.)(url|api_base|executor|"
                   r"workers|encoder)$|_(uri|url|path)$")




def run_kind(spec: RunSpec) -> str:
    return f"generation {spec.kind}" if isinstance(spec, GenerationRun) else "curation"


def config_problems(spec: RunSpec, config: Mapping[str, Any]) -> list[Problem]:
    """The ``config`` keys of ``spec`` its run kind may not set, each with what it may."""
    kind = run_kind(spec)
    allowed = ALLOWED_CONFIG[kind]
    refused = [key for key in config if key not in allowed or NEVER.search(key)]
    return [(f"config.{key}", f"{key!r} is not a config key a {kind} run may set (they "
             f"may set: {', '.join(sorted(allowed))})") for key in refused]


def endpoint_problems(field: str, url: str, allowed: Iterable[str], listed_in: str
                      ) -> list[Problem]:
    """``url`` unless it is one of ``allowed`` (compared without case or a trailing /)."""
    allowed = [u for u in allowed if u]
    if normal_url(url) in {normal_url(u) for u in allowed}:
        return []
    listed = ", ".join(allowed) if allowed else "none are"
    return [(field, f"{url!r} is not an endpoint allowed here ({listed}; listed in "
             f"{listed_in}); leave it out to use the workers' configured teacher")]


def normal_url(url: str) -> str:
    parsed = urlparse(url.strip())
    return f"{parsed.scheme.lower()}://{parsed.netloc.lower()}{parsed.path.rstrip('/')}" \
        if parsed.scheme else url.strip().rstrip("/")
