"""Session-wide real services: Redis and an S3 server, started once, stopped at the end."""

from __future__ import annotations

import uuid

import pytest

from tests import servers


@pytest.fixture(scope="session")
def redis_url() -> str:
    with servers.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_server() -> servers.S3Server:
    with servers.s3_server() as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch) -> servers.S3Server:
    """The S3 server's endpoint and credentials in the environment, as a user would set them."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PRIMER_S3_RETRIES", "2")  # fail fast in tests of failure paths
    return s3_server


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A fresh, empty bucket per test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_env.client().make_bucket(name)
    return name


@pytest.fixture(params=["local", "s3"])
def storage_uri(request, tmp_path) -> str:
    """The same test runs against local disk and against the S3 server."""
    if request.param == "local":
        return str(tmp_path / "store")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/prefix"
