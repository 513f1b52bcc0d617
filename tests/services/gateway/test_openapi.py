"""Schemathesis against the gateway's own OpenAPI spec, in-process (ASGI), real Redis.

Every operation gets generated valid and invalid requests; a response that is a 5xx, or
does not match the spec (status, content type, body schema), fails the test.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from services.gateway.app import create_app
from tests.services.gateway.conftest import gateway_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("token", [None, "s3cret"])
def test_the_api_keeps_its_openapi_contract(redis_url, tmp_path, token):
    # (the schemathesis pytest plug-in does not load under this pytest, so hypothesis drives
    # each operation's strategy directly)
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", create_app(gateway_config(redis_url, tmp_path, token=token)))
    headers = {"Authorization": f"Bearer {token}"} if token else None
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/runs", "GET /v1/runs/{run_id}",
                                               "DELETE /v1/runs/{run_id}",
                                               "GET /v1/runs/{run_id}/logs"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            # The spec cannot state the cross-field rules (keepTop XOR minScore), the storage
            # policy or which config values a component accepts, which test_api and
            # test_security check; so "schema-valid data is accepted" is off.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()
