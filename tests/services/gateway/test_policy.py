"""The run policy's tables and path rules, without a server."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from primer.policy import ALLOWED_CONFIG, NEVER
from services.curation.config import CurationConfig
from services.gateway.config import GatewayConfig
from services.gateway.models import CurationBody, EvaluationBody
from services.gateway.policy import check, location
from services.generation.config import GenerateConfig

CONFIGS = {"curation": CurationConfig, "generation textbooks": GenerateConfig,
           "generation exercises": GenerateConfig}


def _has(model: type[BaseModel], key: str) -> bool:
    head, _, rest = key.partition(".")
    field = model.model_fields.get(head)
    if field is None:
        return False
    if not rest:
        return True
    sub = next((a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return sub is not None and _has(sub, rest)


@pytest.mark.parametrize("kind", sorted(ALLOWED_CONFIG))
def test_every_allowed_override_is_a_real_key_and_none_is_dangerous(kind):
    assert set(CONFIGS) == set(ALLOWED_CONFIG)
    for key in ALLOWED_CONFIG[kind]:
        assert _has(CONFIGS[kind], key), f"{kind}: {key} is no field of {CONFIGS[kind]}"
        assert not NEVER.search(key), f"{kind}: {key} must never be a user's to set"


@pytest.mark.parametrize("key", [
    "sandbox.drop_privileges", "teacher.api_key_env", "generation.api_base", "teacher.url",
    "annotate.teacher.url", "teacher.cache_uri", "benchmarks.mbpp_path", "storage.root",
    "redis.url", "executor", "workers", "classify.encoder"])
def test_the_never_rule_catches_the_dangerous_keys(key):
    assert NEVER.search(key)


@pytest.mark.parametrize(("uri", "root", "inside"), [
    ("s3://primer/data/runs/r/x", "s3://primer/data", True),
    ("s3://primer/data/../tenant-b/x", "s3://primer/data", False),
    ("s3://primer/database", "s3://primer/data", False),  # a sibling sharing a prefix
    ("s3://tenant-b/data/x", "s3://primer/data", False),
    ("/srv/data/x", "s3://primer/data", False),
    ("file:///srv/data/x", "/srv/data", True),
    ("file:///srv/data/%2e%2e/etc", "/srv/data", False),  # unquoted as primer.storage does
    ("file://host/srv/data/x", "/srv/data", None),
    ("/srv/data/./a/../b", "/srv/data/", True),
    ("primer-data/runs/x", "./primer-data", True),
    ("/primer-data/runs/x", "./primer-data", False),  # absolute is not relative
    ("gs://primer/data", "s3://primer/data", None),
])
def test_locations_compare_after_folding_dots(uri, root, inside):
    if inside is None:
        with pytest.raises(ValueError, match="only local paths"):
            location(uri)
    else:
        assert location(uri).within(location(root)) is inside


def test_every_problem_is_reported_at_once():
    spec = CurationBody(component="curation", input="/etc", output="/etc",
                        config={"sandbox.timeout_s": 1, "storage.root": "/"})
    fields = [f for f, _ in check(spec, GatewayConfig(storage_root="/srv/data"))]
    assert fields == ["config.sandbox.timeout_s", "config.storage.root", "input", "output"]
    spec = EvaluationBody(component="evaluation", checkpoint="s3://tenant-b/model",
                          output="../x")
    fields = [f for f, _ in check(spec, GatewayConfig(storage_root="s3://primer/data"))]
    assert fields == ["checkpoint", "output"]
