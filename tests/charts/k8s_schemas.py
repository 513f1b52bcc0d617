"""Validation against real schemas: kubernetes-validate for built-in kinds, the upstream CRDs in
``<repo>/../shared/k8s-schemas`` (override: ``PRIMER_K8S_SCHEMAS``) for PyTorchJob and KEDA."""

from __future__ import annotations

import copy
import os
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
}


def schemas_dir() -> Path:
    path = Path(os.environ.get("PRIMER_K8S_SCHEMAS") or REPO.parent / "shared" / "k8s-schemas")
    if not (path / CRD_FILES[("kubeflow.org/v1", "PyTorchJob")]).is_file():
        pytest.fail(f"reference schemas not found in {path}: clone the shared/ folder beside "
                    "the repository or set PRIMER_K8S_SCHEMAS", pytrace=False)
    return path


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
    crd = yaml.safe_load((schemas_dir() / CRD_FILES[(api_version, kind)]).read_text())
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
