"""Issue 14's gateway findings, each as it was reproduced: a real uvicorn gateway, real Redis,
and (for the credential leak) a real listener on 127.0.0.1 plus the worker's own code path
running whatever the gateway's reconciler enqueued."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis

from primer.executor.base import WorkUnit, run_unit
from services.gateway.app import create_app
from tests.services.gateway.conftest import TEACHER, gateway_config, own_db, serve
from tests.services.gateway.test_api import http, wait_for_phase

pytestmark = pytest.mark.integration
SECRET = "s3-secret-that-must-stay-home"


class Listener:
    """An HTTP server on 127.0.0.1 that records every request (an attacker's endpoint)."""

    def __init__(self):
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                owner.requests.append((self.path, self.headers.get("Authorization")))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = b'{"error": {"message": "no", "type": "invalid_request_error"}}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> Listener:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_queued(redis_url: str, queue: str) -> int:
    """Run every unit waiting on ``queue`` as a Celery worker would (its task body is
    ``primer.executor.run_unit``); a failing run is fine. Returns how many ran."""
    client, ran = redis.Redis.from_url(redis_url), 0
    while (raw := client.rpop(queue)) is not None:
        _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
        with contextlib.suppress(Exception):
            run_unit(WorkUnit.from_dict(kwargs["unit"]), kwargs["state_uri"], kwargs["job"])
        ran += 1
    return ran


def fields(data: dict) -> dict[str, str]:
    return {f["field"]: f["message"] for f in data["fields"]}


# -- config keys --------------------------------------------------------------------------------


TEXTBOOKS = {"component": "generation", "kind": "textbooks", "count": 2}
CURATION = {"component": "curation"}


@pytest.mark.parametrize(("base", "key", "value"), [
    (TEXTBOOKS, "teacher.api_key_env", "AWS_SECRET_ACCESS_KEY"),
    (TEXTBOOKS, "teacher.url", "http://attacker/v1"),
    (TEXTBOOKS, "teacher.cache_uri", "/etc/primer-cache"),
    (TEXTBOOKS, "sandbox.drop_privileges", False),
    (TEXTBOOKS, "sandbox.isolate_network", False),
    (TEXTBOOKS, "generation.sandbox_workers", 4),  # an exercises setting, not a textbooks one
    (CURATION, "storage.root", "/"),
    (CURATION, "redis.url", "redis://attacker:6379/0"),
    (CURATION, "annotate.teacher.api_key_env", "AWS_SECRET_ACCESS_KEY"),
    (CURATION, "annotate.teacher.url", "http://attacker/v1"),
    (CURATION, "classify.encoder", "/var/run/secrets"),
    (CURATION, "executor", "celery"),
    (CURATION, "workers", 64),
])
def test_a_config_key_off_the_run_kinds_allow_list_is_a_422_naming_it(gateway, base, key,
                                                                      value):
    url, config = gateway
    before = http("GET", f"{url}/v1/runs?limit=500")[1]["count"]
    status, data, _ = http("POST", f"{url}/v1/runs", {**base, "config": {
        key: value, "log_level": "debug"}})
    assert status == 422, data
    assert set(fields(data)) == {f"config.{key}"}, data
    assert "not a config key" in fields(data)[f"config.{key}"] and key in data["error"]
    assert http("GET", f"{url}/v1/runs?limit=500")[1]["count"] == before  # nothing recorded


def test_allowed_config_keys_reach_the_units(redis_url, tmp_path):
    own = own_db(redis_url, 11)
    config = gateway_config(own, tmp_path, reconcile_seconds=0.1)
    with serve(create_app(config)) as url:
        status, run, _ = http("POST", f"{url}/v1/runs", {
            **TEXTBOOKS, "teacher": {"url": TEACHER + "/"},
            "config": {"generation.temperature": 0.25, "teacher.max_retries": 1}})
        assert status == 201, run
        wait_for_phase(url, run["id"], "Running")
    raw = redis.Redis.from_url(own).lindex(config.queues["generation"], 0)
    _, kwargs, _ = json.loads(base64.b64decode(json.loads(raw)["body"]))
    settings = json.dumps(kwargs["unit"]["args"])
    assert '"temperature": 0.25' in settings and '"max_retries": 1' in settings, settings
    assert f'"{TEACHER}/"' in settings


# -- endpoints and credentials ------------------------------------------------------------------

def test_a_run_cannot_send_the_workers_secrets_to_an_endpoint_of_its_choosing(
        redis_url, tmp_path, monkeypatch):
    """The reproduction: teacher.url pointing at a listener, the key taken from the S3
    secret's variable. Whatever the gateway accepts is then run as a worker runs it."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    own = own_db(redis_url, 11)
    config = gateway_config(own, tmp_path, reconcile_seconds=0.1)
    queue = config.queues["generation"]
    with Listener() as listener, serve(create_app(config)) as url:
        attacks = [
            ({**TEXTBOOKS, "teacher": {"url": listener.url}, "config": {
                "teacher.api_key_env": "AWS_SECRET_ACCESS_KEY", "teacher.max_retries": 0}},
             {"teacher.url", "config.teacher.api_key_env"}),
            ({**TEXTBOOKS, "config": {"teacher.url": listener.url, "teacher.max_retries": 0}},
             {"config.teacher.url"}),
            ({**CURATION, "annotator": "teacher", "config": {
                "annotate.teacher.url": listener.url,
                "annotate.teacher.api_key_env": "AWS_SECRET_ACCESS_KEY"}},
             {"config.annotate.teacher.url", "config.annotate.teacher.api_key_env"}),
        ]
        answers = [http("POST", f"{url}/v1/runs", body)[:2] for body, _ in attacks]
        time.sleep(0.5)  # reconciler passes
        run_queued(own, queue)
    assert listener.requests == [], "the listener got requests (with the worker's secret)"
    for (status, data), (_, refused) in zip(answers, attacks, strict=True):
        assert status == 422, data
        assert set(fields(data)) == refused, data
    assert "PRIMER_GATEWAY_ENDPOINTS" in fields(answers[0][1])["teacher.url"]


def test_only_the_operators_endpoints_may_be_named(redis_url, tmp_path):
    with serve(create_app(gateway_config(redis_url, tmp_path, endpoints=()))) as url:
        status, data, _ = http("POST", f"{url}/v1/runs", {**TEXTBOOKS,
                                                          "teacher": {"url": TEACHER}})
        assert status == 422 and "none are" in fields(data)["teacher.url"], data
        status, run, _ = http("POST", f"{url}/v1/runs", TEXTBOOKS)  # the workers' teacher
        assert status == 201 and run["spec"]["teacher"] == {}, run


# -- inputs and outputs -------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({**CURATION, "output": "/etc/cron.d"}, "output"),
    ({**CURATION, "output": "../../../../etc/cron.d"}, "output"),
    ({**CURATION, "output": "ok/../../../x"}, "output"),
    ({**CURATION, "output": "file:///var/run/secrets"}, "output"),
    ({**CURATION, "output": "s3://tenant-b/runs"}, "output"),
    ({**TEXTBOOKS, "output": "s3://tenant-b/runs"}, "output"),
    ({**CURATION, "input": "/var/run/secrets/kubernetes.io"}, "input"),
    ({**CURATION, "input": "file:///var/run/secrets"}, "input"),
    ({**CURATION, "input": "s3://tenant-b/raw"}, "input"),
    ({**CURATION, "input": "http://attacker/raw.jsonl"}, "input"),
    ({**CURATION, "input": "hf:someone/dataset"}, "input"),
    ({"component": "evaluation", "checkpoint": "s3://tenant-b/model"}, "checkpoint"),
])
def test_inputs_and_outputs_outside_the_storage_roots_are_refused(gateway, body, field):
    url, config = gateway
    status, data, _ = http("POST", f"{url}/v1/runs", body)
    assert status == 422, data
    assert set(fields(data)) == {field}, data


def test_inputs_under_the_roots_and_outputs_under_the_runs_prefix_are_accepted(gateway,
                                                                                tmp_path):
    url, config = gateway
    inputs = tmp_path / "inputs"
    cases = [({**CURATION, "input": f"{inputs}/corpus", "output": "curated/v1"}, "curated/v1"),
             ({**CURATION, "input": f"file://{inputs}/a/../corpus"}, "curation"),
             ({**TEXTBOOKS, "output": "books/./v1"}, "books/v1")]
    for body, sub in cases:
        status, run, _ = http("POST", f"{url}/v1/runs", body)
        assert status == 201, run
        assert run["output"] == f"{config.storage_root}/runs/{run['id']}/{sub}"
        assert run["spec"]["output"] == run["output"]


# -- before any parsing: auth, body size, rate limit --------------------------------------------

def raw_request(url: str, head: str, body: bytes = b"", timeout: float = 5.0) -> tuple[int, str]:
    """Send ``head`` and ``body`` on a plain socket; (status, response text). A server that
    waits for more body than was sent times out here."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # answered early
            sock.sendall(head.encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data or not _complete(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    text = data.decode("latin-1")
    return int(text.split(" ", 2)[1]), text


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
              if line.lower().startswith(b"content-length:")]
    return bool(length) and len(body) >= length[0]


@pytest.mark.slow
def test_an_anonymous_35_mb_body_is_refused_before_it_is_read(redis_url, tmp_path):
    """The request announces 35 MB and sends 1 KB: the 401 must come without waiting for the
    rest (the old gateway read and parsed all of it before checking the token)."""
    app = create_app(gateway_config(redis_url, tmp_path, token="s3cret"))
    with serve(app) as url:
        head = ("POST /v1/runs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {35 << 20}\r\n")
        start = time.monotonic()
        status, text = raw_request(url, head, b"[" + b"1," * 512)
        assert status == 401 and "bearer token" in text
        # with the token, the size alone is refused, also unread
        status, text = raw_request(url, head.replace("Host: x", "Host: x\r\nAuthorization: "
                                                     "Bearer s3cret"), b"{")
        assert status == 413 and "PRIMER_GATEWAY_MAX_BODY_BYTES" in text
        assert time.monotonic() - start < 5
        # a chunked body without Content-Length is cut off once it passes the cap
        chunk = b"a" * 65536
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6))
        status, text = raw_request(url, "POST /v1/runs HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                   "Bearer s3cret\r\nContent-Type: application/json\r\n"
                                   "Transfer-Encoding: chunked\r\n", chunked)
        assert status == 413
        # and a spec of ordinary size still goes through
        assert http("POST", f"{url}/v1/runs", {"component": "curation"}, token="s3cret")[0] \
            == 201


@pytest.mark.slow
def test_each_token_is_rate_limited_with_retry_after(redis_url, tmp_path):
    token = uuid.uuid4().hex  # its own counter
    app = create_app(gateway_config(redis_url, tmp_path, token=token, rate_limit=3))
    while time.time() % 60 > 50:  # four requests inside one one-minute window
        time.sleep(1)
    with serve(app) as url:
        assert [http("GET", f"{url}/v1/runs", token=token)[0] for _ in range(3)] == [200] * 3
        status, data, headers = http("GET", f"{url}/v1/runs", token=token)
        assert status == 429 and "PRIMER_GATEWAY_RATE_LIMIT" in data["error"], data
        assert 1 <= int(headers["Retry-After"]) <= 60
        assert http("GET", f"{url}/healthz")[0] == 200  # probes are not API calls
        assert http("GET", f"{url}/v1/runs", token="wrong")[0] == 401
