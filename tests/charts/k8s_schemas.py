"""Validation against real schemas: kubernetes-validate for built-in kinds, the upstream CRDs kept
in ``tests/schemas`` (pinned tags and licences in its README) for PyTorchJob, KEDA, the
Prometheus Operator and skaffold."""

from __future__ import annotations

import copy
import hashlib
import shutil
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "primer"
#: Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one; both are
#: bundled inside kubernetes-validate, so this works offline.
K8S_VERSIONS = ("1.30.0", "1.35.0")
#: (apiVersion, kind) → the CRD file that defines it.
CRD_FILES = {
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow.org_pytorchjobs.yaml",
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}


SCHEMAS = REPO / "tests" / "schemas"
#: The upstream files' sha256 (see tests/schemas/README.md): an edited copy fails loudly.
SCHEMA_SHA256 = {
    "kubeflow.org_pytorchjobs.yaml":
        "8b8a8a719cc94173169290251e817f7ac2bb425c20b6c2fa813397bcf4e932ed",
    "keda.sh_scaledobjects.yaml":
        "af35555862a83933b074af14ad439c4b4ceabaf4daa3e9338e9b23e36d308d80",
    "keda.sh_triggerauthentications.yaml":
        "275307b4cb19ca8f0f506a879282aa4c67587ac16ec757f494d6585c5c185d65",
    "monitoring.coreos.com_servicemonitors.yaml":
        "a99047972c9dd7679ce2050b9968e8a08773492e671b3e17abd476d42aa78a32",
    "monitoring.coreos.com_prometheusrules.yaml":
        "78be98554b9c8506ab2b4f4feb91c5f3a56e536a0a510f3a8e876a459970d56d",
    "skaffold-v4beta14.schema.json":
        "7c29a621995d2c6143d3c423c8e3d3dfb25703a49fd1cf77644b54168414b39e",
}


def schema_text(name: str) -> str:
    """One reference schema's text, checked against its pinned upstream sha256."""
    data = (SCHEMAS / name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SCHEMA_SHA256[name]:
        pytest.fail(f"{SCHEMAS / name}: sha256 {digest} is not the pinned upstream "
                    f"{SCHEMA_SHA256[name]}; restore the file (tests/schemas/README.md)",
                    pytrace=False)
    return data.decode()


def helm() -> str:
    found = shutil.which("helm") or str(REPO / ".tools" / "bin" / "helm")
    if not Path(found).is_file():
        pytest.fail("helm not found on PATH or in .tools/bin: run `make tools`", pytrace=False)
    return found


def _strict(schema: Any) -> Any:
    """CRD structural schema → JSON Schema that rejects unknown fields.

    The API server silently prunes fields a structural schema does not name, so a typo in a
    manifest would vanish without an error; rejecting them here catches it.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()
           if k not in ("properties", "additionalProperties")}
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
    if "additionalProperties" in schema:
        out["additionalProperties"] = _strict(schema["additionalProperties"])
    elif "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


@cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft7Validator:
    crd = yaml.safe_load(schema_text(CRD_FILES[(api_version, kind)]))
    version = api_version.split("/")[1]
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = copy.deepcopy(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is checked elsewhere
    return jsonschema.Draft7Validator(_strict(schema))


def validate(obj: dict[str, Any]) -> None:
    """Raise with a readable message if ``obj`` is not a valid object of its kind."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_FILES:
        errors = sorted(crd_validator(*key).iter_errors(obj), key=lambda e: list(e.path))
        if errors:
            raise AssertionError(f"{key[1]} {obj['metadata'].get('name')}: " + "; ".join(
                f"{'/'.join(map(str, e.path))}: {e.message[:200]}" for e in errors[:5]))
        # ObjectMeta itself: validate it as a built-in kind would be.
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap",
                                      "metadata": obj["metadata"]}, K8S_VERSIONS[0], strict=True)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)
