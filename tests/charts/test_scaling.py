"""How many generation workers a queue asks for, computed from the rendered ScaledObject with
KEDA's documented rule, checked against the chart's bounds and the README's table.

The rule, from KEDA's documentation:
- Redis Lists scaler (https://keda.sh/docs/2.11/scalers/redis-lists/): the metric is the
  list's length; ``listLength`` is the "average target value to trigger scaling actions"
  and ``activationListLength`` the "target value for activating the scaler" (default 0).
- ScaledObject spec (https://keda.sh/docs/2.14/reference/scaledobject-spec/):
  ``minReplicaCount`` defaults to 0, ``maxReplicaCount`` to 100, a trigger's ``metricType``
  to ``AverageValue``.
- Scaling deployments (https://keda.sh/docs/2.17/concepts/scaling-deployments/, "activating
  and scaling thresholds"): KEDA itself only activates (0 → 1 when the metric is above the
  activation value) and deactivates (→ 0); from 1 to the maximum the HPA it creates scales.
- The HPA's rule for an AverageValue target
  (https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/#algorithm-details):
  desired = ceil(metric / target), clamped to the bounds. (The HPA skips changes within its
  10 % tolerance of the current ratio, and scale-down waits out the stabilization window;
  what is computed here is where it settles.)
"""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.charts.k8s_schemas import CHART, helm, validate

KEDA_DEFAULT_MIN, KEDA_DEFAULT_MAX = 0, 100


def scaled_object(tmp: Path, autoscaling: dict | None = None) -> dict:
    values = {"keda": {"enabled": True},
              "generation": {"autoscaling": autoscaling or {}}}
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = subprocess.run([helm(), "template", "rel", str(CHART), "-f", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (found,) = [d for d in yaml.safe_load_all(proc.stdout)
                if d and d["kind"] == "ScaledObject"]
    validate(found)
    return found


def desired_workers(obj: dict, queue_length: int) -> int:
    """Replicas KEDA + the HPA settle on for ``queue_length`` units waiting on the list."""
    spec = obj["spec"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    assert trigger.get("metricType", "AverageValue") == "AverageValue"  # the rule below
    meta = trigger["metadata"]
    target = int(meta["listLength"])
    activation = int(meta.get("activationListLength", "0"))
    low = spec.get("minReplicaCount", KEDA_DEFAULT_MIN)
    high = spec.get("maxReplicaCount", KEDA_DEFAULT_MAX)
    if low == 0 and queue_length <= activation:
        return 0  # inactive: KEDA scales to zero
    return min(high, max(low, 1, math.ceil(queue_length / target)))


def test_chart_defaults_scale_by_list_length(tmp_path):
    obj = scaled_object(tmp_path)
    meta = obj["spec"]["triggers"][0]["metadata"]
    assert meta["listName"] == "generation"
    assert (meta["listLength"], obj["spec"]["minReplicaCount"],
            obj["spec"]["maxReplicaCount"]) == ("4", 1, 20)
    asked = {n: desired_workers(obj, n) for n in (0, 1, 4, 5, 8, 9, 79, 80, 81, 10_000)}
    assert asked == {0: 1, 1: 1, 4: 1, 5: 2, 8: 2, 9: 3, 79: 20, 80: 20, 81: 20, 10_000: 20}


@pytest.mark.parametrize("autoscaling", [
    {},
    {"minReplicas": 0, "maxReplicas": 5, "listLength": 1},
    {"minReplicas": 2, "maxReplicas": 50, "listLength": 16},
])
def test_workers_stay_within_the_chart_bounds_and_one_unit_always_gets_one(tmp_path,
                                                                         autoscaling):
    obj = scaled_object(tmp_path, autoscaling)
    spec = obj["spec"]
    target = int(spec["triggers"][0]["metadata"]["listLength"])
    low, high = spec["minReplicaCount"], spec["maxReplicaCount"]
    counts = [desired_workers(obj, n) for n in range(0, target * high + 3 * target)]
    assert all(low <= c <= high for c in counts)
    assert counts == sorted(counts)  # more work never asks for fewer workers
    assert counts[0] == low
    # a single queued unit is never left without a worker (activation below one unit)
    assert counts[1] >= 1
    # the maximum is first asked for once more than listLength units wait per other worker
    assert counts.index(high) == target * (high - 1) + 1


def test_readme_table_matches_the_rule(tmp_path):
    """The chart README's 'queued units → workers' table is what the rule computes for the
    chart's defaults."""
    readme = (CHART / "README.md").read_text()
    rows = re.findall(r"^\| (\d+)(?:–(\d+)|\+)? \| (\d+) \|$", readme, re.MULTILINE)
    assert len(rows) >= 4, "the README's scaling table is missing"
    obj = scaled_object(tmp_path)
    for first, last, workers in rows:
        # a "77+" row holds for any larger queue too
        for n in {int(first), int(last or first), int(last or first) * (1 if last else 100)}:
            assert desired_workers(obj, n) == int(workers), (n, workers)
