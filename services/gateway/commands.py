"""A run spec → the ``primer`` command a worker runs for it (pure functions).

The gateway never imports a component: a run *is* a ``primer`` command line, the same one a
user would type in embedded mode, so both modes share one code path and the gateway depends
only on the commands' documented flags.
"""

from __future__ import annotations

from services.gateway.models import CurationSpec, EvaluationSpec, GenerationSpec

Spec = CurationSpec | GenerationSpec | EvaluationSpec


def command(spec: Spec, output: str) -> list[str]:
    """The ``primer`` arguments (after the program name) that carry out ``spec``; ``spec``
    has passed :func:`services.gateway.policy.check`."""
    if isinstance(spec, CurationSpec):
        argv = ["curate", "--output", output, "--executor", "local"]
        argv += _flags(input=spec.input, annotator=spec.annotator, keep_top=spec.keep_top,
                       min_score=spec.min_score)
    elif isinstance(spec, GenerationSpec):
        argv = ["generate", spec.kind, "--count", str(spec.count), "--output", output,
                "--executor", "local"]
        argv += _flags(teacher_url=spec.teacher_url, teacher_model=spec.teacher_model)
    elif spec.samples is not None:
        argv = ["eval", "score", "--benchmark", spec.benchmarks[0], "--samples", spec.samples,
                "--output", output]
    else:
        argv = ["eval", "run", "--model", spec.model or "", "--benchmark",
                ",".join(spec.benchmarks), "--output", output]
        if spec.api_base is not None:
            argv.append(f"--generation.api_base={spec.api_base}")
    return argv + [f"--{key}={_scalar(value)}" for key, value in spec.overrides.items()]


def _flags(**values: object) -> list[str]:
    out: list[str] = []
    for name, value in values.items():
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


def _scalar(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
