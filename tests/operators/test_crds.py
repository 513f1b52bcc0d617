"""The CRDs are valid apiextensions/v1 objects (their fields are the spec models', see
tests/charts/test_crds_generated.py), accept the shipped examples and refuse a bad spec
with the field's path."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest
import yaml

from primer import runs
from tests.charts.k8s_schemas import CHART, K8S_VERSIONS, _strict

CRDS = {p.name: yaml.safe_load(p.read_text()) for p in sorted((CHART / "crds").glob("*.yaml"))}
MODELS = {"CurationRun": runs.CurationRun, "GenerationRun": runs.GenerationRun,
          "TrainingRun": runs.TrainingRun, "EvaluationRun": runs.EvaluationRun}


def crd_for(kind: str) -> dict:
    (crd,) = [c for c in CRDS.values() if c["spec"]["names"]["kind"] == kind]
    return crd


def validator(kind: str) -> jsonschema.Draft4Validator:
    schema = copy.deepcopy(crd_for(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    return jsonschema.Draft4Validator(_strict(schema))


@pytest.mark.parametrize("name", CRDS)
def test_crd_is_a_valid_apiextensions_v1_object(name):
    crd = CRDS[name]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)
    (v,) = crd["spec"]["versions"]
    assert crd["spec"]["group"] == "primer.dev" and v["name"] == "v1alpha1"
    assert v["subresources"] == {"status": {}} and crd["spec"]["names"]["shortNames"]
    assert [c["name"] for c in v["additionalPrinterColumns"]][:2] == ["Phase", "Progress"]
    assert v["additionalPrinterColumns"][-1]["jsonPath"] == ".metadata.creationTimestamp"
    status = v["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True


@pytest.mark.parametrize("path", sorted((CHART / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_examples_validate_against_the_crds(path):
    obj = yaml.safe_load(path.read_text())
    assert obj["apiVersion"] == "primer.dev/v1alpha1"
    errors = list(validator(obj["kind"]).iter_errors(obj))
    assert not errors, [e.message for e in errors]
    runs.parse_spec(MODELS[obj["kind"]], obj["spec"])  # and the operator accepts them


@pytest.mark.parametrize("kind, spec, field", [
    ("GenerationRun", {"kind": "textbooks", "count": 0, "output": "s3://bkt/o"}, "count"),
    ("GenerationRun", {"kind": "poems", "count": 1, "output": "s3://bkt/o"}, "kind"),
    ("TrainingRun", {"data": "s3://bkt/d", "output": "/local/o"}, "output"),
    ("EvaluationRun", {"checkpoint": "s3://bkt/c", "output": "s3://bkt/o",
                       "benchmarks": ["gsm8k"]}, "benchmarks"),
])
def test_invalid_specs_are_refused_naming_the_field(kind, spec, field):
    obj = {"apiVersion": "primer.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"},
           "spec": spec}
    paths = {"/".join(map(str, e.path)) for e in validator(kind).iter_errors(obj)}
    assert any(p.startswith(f"spec/{field}") for p in paths), paths  # the API server
    with pytest.raises(Exception, match=rf"spec\.{field}"):  # and the operator
        runs.parse_spec(MODELS[kind], spec)
