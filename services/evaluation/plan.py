"""The evaluation planner: one unit per benchmark, each generating with the run's model and
scoring in the worker's sandbox, then done (the summaries are the units' results).

This is how a gateway in embedded mode runs an EvaluationRun, on the evaluation workers (the
chart gives them the sandbox's pod shape). In a cluster the operator runs the same spec as
a hardened Job of ``primer eval run`` (:mod:`primer.k8s.evaluation_job`); both resolve the
spec to the same :class:`EvalConfig` (``generation.n_samples`` = the spec's ``samples``, the
rest from the process's config layers) and write the same ``<output>/<benchmark>/`` files.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from primer.config import load_config
from primer.executor import Job, WorkUnit
from primer.executor.base import Markers
from primer.executor.plan import Done, Planner, Step
from primer.runs import EvaluationRun
from primer.storage import open_storage
from services.evaluation.config import EvalConfig

UNIT_FN = "services.evaluation.run:evaluate_unit"


class EvaluationTarget(BaseModel):
    """What an evaluation run does: ``model`` on ``benchmarks``, results under ``output``."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str
    benchmarks: list[str]
    output: str
    config: EvalConfig


class EvaluationPlanner(Planner[EvaluationTarget]):
    kind = "evaluation"

    def resolve(self, spec: EvaluationRun) -> EvaluationTarget:
        config = load_config(EvalConfig)
        config.generation.n_samples = spec.samples
        return EvaluationTarget(model=spec.checkpoint, benchmarks=list(spec.benchmarks),
                                output=spec.output, config=config)

    def output(self, target: EvaluationTarget) -> str:
        return open_storage(target.output).uri

    def next(self, target: EvaluationTarget, markers: Markers | None = None) -> Step | Done:
        out = target.output.rstrip("/")
        state_uri = f"{out}/_work"
        units = [WorkUnit(f"evaluate-{name}", UNIT_FN, {
            "model": target.model, "benchmark": name, "output": f"{out}/{name}",
            "config": target.config.model_dump(mode="json")}) for name in target.benchmarks]
        state = open_storage(state_uri)
        markers = Markers() if markers is None else markers
        if {u.id for u in units} <= markers.done(state):
            return Done({u.args["benchmark"]: markers.result(state, u.id) for u in units})
        return Step(Job("evaluate", units, state_uri), "evaluate")
