"""The work units a Curation/GenerationRun becomes: functions named by import path only.

The operator never imports ``services``: a unit is ``"package.module:function"`` plus JSON
arguments, run by ``primer.run_unit`` on whichever worker consumes the queue. The paths
below are the one place the operator names a component's function.
"""

from __future__ import annotations

import math
from typing import Any

from operators.specs import CurationSpec, GenerationSpec
from primer.executor import WorkUnit
from primer.sandbox.config import SandboxConfig
from primer.teacher.config import TeacherConfig

#: One batch of prompt specs → one Parquet shard (``services/generation/run.py`` UNIT_FN).
#: Its arguments are those of ``generate_batch``; the unit ids are those ``primer generate``
#: uses, so a later ``primer generate`` on the same output skips what the operator ran.
GENERATION_UNIT_FN = "services.generation.batch:generate_batch"
#: Sent once the first round is done: later rounds (if too few records were valid) and the
#: dataset commit, exactly as ``primer generate`` would finish the same output.
GENERATION_FINISH_FN = "services.generation.run:finish_unit"
#: The whole curation pipeline as one driver unit: its stages run one after another on the
#: worker that takes it, each resumable by its own markers.
CURATION_UNIT_FN = "services.curation.pipeline:run_unit"


def state_uri(output: str) -> str:
    """Where the units' completion markers live (``<output>/_work``, as ``primer generate``)."""
    return output.rstrip("/") + "/_work"


def _generation_args(spec: GenerationSpec, teacher_url: str) -> dict[str, Any]:
    teacher = TeacherConfig(url=spec.teacher.url or teacher_url,
                            cache_uri=state_uri(spec.output) + "/teacher-cache",
                            **({"model": spec.teacher.model} if spec.teacher.model else {}))
    return {"kind": spec.kind, "output": spec.output, "teacher": teacher.model_dump(),
            "settings": {"seed": spec.seed, "batch_size": spec.batch_size,
                         "overgenerate": spec.overgenerate},
            "sandbox": SandboxConfig().model_dump(mode="json")}


def generation_finish_unit(spec: GenerationSpec, teacher_url: str) -> WorkUnit:
    """The last unit of a generation run (see :data:`GENERATION_FINISH_FN`)."""
    return WorkUnit(FINISH_ID, GENERATION_FINISH_FN,
                    {**_generation_args(spec, teacher_url), "count": spec.count})


FINISH_ID = "finish"


def generation_units(spec: GenerationSpec, teacher_url: str) -> list[WorkUnit]:
    """The first round of a generation run: ``count × overgenerate`` specs in batches."""
    args = _generation_args(spec, teacher_url)
    stop = math.ceil(spec.count * spec.overgenerate)
    return [WorkUnit(f"{spec.kind}-{s:09d}", GENERATION_UNIT_FN,
                     {**args, "start": s, "count": spec.batch_size})
            for s in range(0, stop, spec.batch_size)]


def curation_units(spec: CurationSpec) -> list[WorkUnit]:
    return [WorkUnit("curate", CURATION_UNIT_FN,
                     {"input": spec.input, "output": spec.output, "steps": spec.steps,
                      "config": spec.config})]
