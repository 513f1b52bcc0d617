"""The CRD files are what ``python -m primer.k8s.crds`` generates from the spec models
(primer.runs), are structural apiextensions/v1 objects, accept the shipped examples, and refuse
what the models refuse wherever a structural schema can say it."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys

import jsonschema
import kubernetes_validate
import pytest
import yaml

from primer.k8s import crds
from primer.runs import KINDS, SpecError, parse_spec
from tests.charts.k8s_schemas import CHART, K8S_VERSIONS, REPO, _strict

MODELS = {model.__name__: model for model in KINDS.values()}
GENERATED = {name: yaml.safe_load(text) for name, text in crds.render().items()}


def schema_of(kind: str) -> dict:
    (crd,) = [c for c in GENERATED.values() if c["spec"]["names"]["kind"] == kind]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def errors(kind: str, spec: dict) -> set[str]:
    """Where the API server would refuse ``spec`` (OpenAPI v3.0 is JSON Schema draft 4, and
    strict field validation refuses unknown fields): the paths and messages of the errors."""
    validator = jsonschema.Draft4Validator(_strict(copy.deepcopy(schema_of(kind))))
    obj = {"apiVersion": "primer.dev/v1alpha1", "kind": kind, "metadata": {"name": "x"},
           "spec": spec}
    return {"/".join(map(str, e.path)) + ": " + e.message for e in validator.iter_errors(obj)}


def test_committed_files_are_the_generated_ones():
    committed = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert committed == crds.render(), "run `make crds` and commit charts/primer/crds"


def test_check_command_prints_the_diff_and_fails_when_a_file_differs(tmp_path):
    for path in (CHART / "crds").glob("*.yaml"):
        shutil.copy(path, tmp_path)
    check = [sys.executable, "-m", "primer.k8s.crds", "--check", "--out", str(tmp_path)]
    ok = subprocess.run(check, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "", ok.stdout + ok.stderr
    edited = tmp_path / "primer.dev_generationruns.yaml"
    edited.write_text(edited.read_text().replace("maximum: 100000000", "maximum: 5"))
    (tmp_path / "primer.dev_stray.yaml").write_text("{}\n")
    bad = subprocess.run(check, cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "-                maximum: 5\n+                maximum: 100000000\n" in bad.stdout
    assert "primer.dev_stray.yaml: not generated" in bad.stdout
    assert "run `make crds`" in bad.stderr
    assert crds.main(["--out", str(tmp_path)]) == 0  # rewrites; the stray file is only named
    assert edited.read_text() == crds.render()[edited.name]


@pytest.mark.parametrize("name", GENERATED)
def test_generated_crd_is_a_valid_apiextensions_v1_object(name):
    crd = GENERATED[name]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)
    assert crd["spec"]["names"]["plural"] + ".primer.dev" == crd["metadata"]["name"]
    assert name == f"primer.dev_{crd['spec']['names']['plural']}.yaml"


def structural_problems(node: dict, path: str = "") -> list[str]:
    """What makes a schema non-structural (the rules of apiextensions v1), as readable lines."""
    problems = [f"{path}: {key}" for key in ("$ref", "$defs", "anyOf", "allOf", "oneOf",
                                             "title", "patternProperties", "propertyNames",
                                             "uniqueItems") if key in node]
    if "type" not in node and not (node.get("x-kubernetes-preserve-unknown-fields")
                                   or node.get("x-kubernetes-int-or-string")):
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in node and not isinstance(node[bound], bool):
            problems.append(f"{path}: {bound} is a number (OpenAPI v3.0 wants a bool)")
    if node.get("default", 0) is None:
        problems.append(f"{path}: default null")
    for name, sub in node.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += structural_problems(node[key], f"{path}[]")
    return problems


@pytest.mark.parametrize("kind", MODELS)
def test_spec_schema_is_structural_and_names_every_model_field(kind):
    schema = schema_of(kind)
    assert structural_problems(schema) == []
    spec = schema["properties"]["spec"]
    fields = MODELS[kind].model_fields
    assert list(spec["properties"]) == [f.alias or n for n, f in fields.items()]
    cluster = set(crds.CLUSTER_S3_FIELDS.get(MODELS[kind], ()))
    assert set(spec.get("required", [])) == cluster | {
        f.alias or n for n, f in fields.items() if f.is_required()}
    for name, f in fields.items():  # the model's defaults, where it has a plain one
        prop = spec["properties"][f.alias or name]
        if f.default_factory is None and f.default is not None and not f.is_required():
            assert prop["default"] == f.default, (kind, name)
        assert prop["description"].startswith(f.description), (kind, name)


def test_the_status_keeps_what_the_operator_writes():
    status = {k: schema_of(k)["properties"]["status"]["properties"] for k in MODELS}
    assert {"phase", "message", "progress", "conditions"} <= set.intersection(
        *(set(s) for s in status.values()))
    assert {"units", "tokens", "etaSeconds", "queue"} <= set(status["GenerationRun"])
    assert status["TrainingRun"]["checkpoint"]["properties"]["step"]["type"] == "integer"
    assert set(status["EvaluationRun"]["passAt1"]["properties"]) == {"humaneval", "mbpp"}


EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate_against_the_generated_crds_and_the_models(path):
    obj = yaml.safe_load(path.read_text())
    assert obj["apiVersion"] == "primer.dev/v1alpha1"
    assert errors(obj["kind"], obj["spec"]) == set()
    parse_spec(MODELS[obj["kind"]], obj["spec"])


def test_every_kind_has_an_example():
    assert {yaml.safe_load(p.read_text())["kind"] for p in EXAMPLES} == set(MODELS)


S3 = "s3://bkt/o"
REFUSED = [  # (kind, spec, the field named by both the model and the API server)
    ("GenerationRun", {"kind": "textbooks", "count": 0, "output": S3}, "count"),
    ("GenerationRun", {"kind": "poems", "count": 1, "output": S3}, "kind"),
    ("GenerationRun", {"kind": "textbooks", "count": 1, "output": S3, "colour": "red"},
     "colour"),
    ("GenerationRun", {"kind": "textbooks", "count": 1, "output": S3,
                       "teacher": {"url": "ftp://t/v1"}}, "teacher.url"),
    ("GenerationRun", {"kind": "textbooks", "count": 1, "output": S3,
                       "teacher": {"modle": "m"}}, "teacher.modle"),
    ("GenerationRun", {"kind": "textbooks", "count": 1, "output": S3, "overgenerate": 0.5},
     "overgenerate"),
    ("CurationRun", {"input": S3, "output": S3, "keepTop": 0}, "keepTop"),
    ("CurationRun", {"input": S3, "output": S3, "minScore": 1.5}, "minScore"),
    ("CurationRun", {"input": S3, "output": S3, "annotator": "oracle"}, "annotator"),
    ("CurationRun", {"input": "-rf", "output": S3}, "input"),
    ("CurationRun", {"input": S3, "output": S3, "config": {f"k{i}": 1 for i in range(101)}},
     "config"),
    ("TrainingRun", {"data": S3, "output": "/local/o"}, "output"),
    ("TrainingRun", {"data": S3, "output": S3, "cpu": "lots"}, "cpu"),
    ("TrainingRun", {"data": S3, "output": S3, "evaluation": {"samples": 0}},
     "evaluation.samples"),
    ("EvaluationRun", {"checkpoint": S3, "output": S3, "benchmarks": ["gsm8k"]}, "benchmarks"),
    ("EvaluationRun", {"checkpoint": S3, "output": S3, "benchmarks": []}, "benchmarks"),
    ("EvaluationRun", {"checkpoint": S3, "output": S3, "image": "bad image"}, "image"),
]


@pytest.mark.parametrize("kind, spec, field", REFUSED, ids=[f"{k}-{f}" for k, _, f in REFUSED])
def test_what_the_model_refuses_the_crd_refuses(kind, spec, field):
    with pytest.raises(SpecError, match=rf"spec\.{field}"):
        parse_spec(MODELS[kind], spec)
    *parents, leaf = field.split(".")
    at = "/".join(["spec", *parents])
    found = errors(kind, spec)
    # a bad value is reported at its own path; an unknown field at its parent, by name
    assert any(e.startswith(f"{at}/{leaf}") or (e.startswith(f"{at}: ") and repr(leaf) in e)
               for e in found), found


@pytest.mark.parametrize("kind, spec, field", [
    ("CurationRun", {"input": S3}, "output"),
    ("CurationRun", {"input": "/data/raw", "output": S3}, "input"),
    ("GenerationRun", {"kind": "textbooks", "count": 1, "output": "synthetic/v1"}, "output"),
])
def test_the_cluster_wants_s3_where_the_gateway_takes_a_path(kind, spec, field):
    parse_spec(MODELS[kind], spec)  # fine for the CLI and the gateway
    assert any(field in e for e in errors(kind, spec))


def test_keep_top_with_min_score_is_a_cel_rule_of_the_crd():
    """jsonschema cannot run CEL: this checks the rule is there and the model refuses the
    same spec; the API server evaluates it."""
    spec = {"input": S3, "output": S3, "keepTop": 0.2, "minScore": 0.5}
    with pytest.raises(SpecError, match="keepTop or minScore, not both"):
        parse_spec(MODELS["CurationRun"], spec)
    rules = schema_of("CurationRun")["properties"]["spec"]["x-kubernetes-validations"]
    assert rules == [{"rule": "!(has(self.keepTop) && has(self.minScore))",
                      "message": "give keepTop or minScore, not both"}]


def test_a_model_construct_with_no_structural_form_fails_loudly():
    node = {"anyOf": [{"type": "string"}, {"type": "object", "properties": {}}]}
    with pytest.raises(crds.SchemaError, match=r"spec\.x: anyOf"):
        crds.structural(node, {}, "spec.x")
    with pytest.raises(crds.SchemaError, match=r"spec\.y: no structural form for \['not'\]"):
        crds.structural({"type": "string", "not": {"const": "a"}}, {}, "spec.y")
