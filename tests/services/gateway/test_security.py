"""Issue 14's gateway findings, each as it was reproduced: a real uvicorn gateway, real Redis,
and (for the credential leak) a real listener on 127.0.0.1 plus the worker's own code path
running whatever the gateway enqueued."""

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
from tests.services.gateway.conftest import TEACHER, gateway_config, serve
from tests.services.gateway.test_api import http

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


# -- overrides ----------------------------------------------------------------------------------

SCORE = {"component": "evaluation", "benchmarks": ["humaneval"], "samples": "{data}/s.jsonl"}
SERVED = {"component": "evaluation", "benchmarks": ["mbpp"], "model": "m", "api_base": TEACHER}
TEXTBOOKS = {"component": "generation", "kind": "textbooks", "count": 2}


def under(body: dict, config) -> dict:
    """``body`` with ``{data}`` standing for the gateway's storage root."""
    return json.loads(json.dumps(body).replace("{data}", config.storage_root))


@pytest.mark.parametrize(("base", "key", "value"), [
    (SCORE, "sandbox.drop_privileges", False),  # the sample ran as uid 0
    (SCORE, "sandbox.isolate_network", False),
    (SCORE, "sandbox.memory_mb", 1_000_000),
    (SCORE, "workers", 64),
    (TEXTBOOKS, "teacher.api_key_env", "AWS_SECRET_ACCESS_KEY"),
    (TEXTBOOKS, "teacher.url", "http://attacker/v1"),
    (TEXTBOOKS, "teacher.cache_uri", "/etc/primer-cache"),
    (TEXTBOOKS, "sandbox.drop_privileges", False),
    (TEXTBOOKS, "generation.sandbox_workers", 4),  # an exercises setting, not a textbooks one
    (SERVED, "generation.api_base", "http://attacker/v1"),
    (SERVED, "generation.api_key_env", "AWS_SECRET_ACCESS_KEY"),
    (SERVED, "benchmarks.mbpp_path", "/etc/shadow"),
    ({"component": "curation"}, "storage.root", "/"),
    ({"component": "curation"}, "redis.url", "redis://attacker:6379/0"),
    ({"component": "curation"}, "annotate.teacher.api_key_env", "AWS_SECRET_ACCESS_KEY"),
    ({"component": "curation"}, "classify.encoder", "/var/run/secrets"),
    ({"component": "curation"}, "executor", "celery"),
])
def test_an_override_off_the_run_kinds_allow_list_is_a_422_naming_it(gateway, base, key,
                                                                      value):
    url, config = gateway
    depth = redis.Redis.from_url(config.redis_url).llen(config.queues[base["component"]])
    status, data, _ = http("POST", f"{url}/v1/runs", under({**base, "overrides": {
        key: value, "log_level": "debug"}}, config))
    assert status == 422, data
    assert set(fields(data)) == {f"overrides.{key}"}, data
    assert "not an override" in fields(data)[f"overrides.{key}"] and key in data["error"]
    assert redis.Redis.from_url(config.redis_url).llen(
        config.queues[base["component"]]) == depth  # nothing was enqueued


def test_allowed_overrides_still_reach_the_command(gateway):
    url, _ = gateway
    status, run, _ = http("POST", f"{url}/v1/runs", {**SERVED, "api_base": TEACHER + "/",
                                                     "overrides": {"generation.n_samples": 5,
                                                                   "limit": 3}})
    assert status == 201, run
    assert run["command"][-3:] == [f"--generation.api_base={TEACHER}/",
                                   "--generation.n_samples=5", "--limit=3"]


# -- endpoints and credentials ------------------------------------------------------------------

def test_a_run_cannot_send_the_workers_secrets_to_an_endpoint_of_its_choosing(
        redis_url, tmp_path, monkeypatch):
    """The reproduction: teacher_url / api_base pointing at a listener, the key taken from the
    S3 secret's variable. Whatever the gateway accepts is then run as a worker runs it."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    config = gateway_config(redis_url, tmp_path)
    queue = config.queues["generation"]
    with Listener() as listener, serve(create_app(config)) as url:
        attacks = [
            ({**TEXTBOOKS, "teacher_url": listener.url, "overrides": {
                "teacher.api_key_env": "AWS_SECRET_ACCESS_KEY", "teacher.max_retries": 0}},
             {"teacher_url", "overrides.teacher.api_key_env"}),
            ({"component": "evaluation", "benchmarks": ["humaneval"], "model": "m",
              "api_base": listener.url, "overrides": {
                  "generation.api_key_env": "AWS_SECRET_ACCESS_KEY", "limit": 1}},
             {"api_base", "overrides.generation.api_key_env"}),
            ({"component": "evaluation", "benchmarks": ["humaneval"], "model": "m",
              "overrides": {"generation.api_base": listener.url, "limit": 1,
                            "generation.retries": 0}},
             {"overrides.generation.api_base", "model"}),  # no endpoint: "m" is a path
        ]
        answers = [http("POST", f"{url}/v1/runs", body)[:2] for body, _ in attacks]
        run_queued(redis_url, queue)
    assert listener.requests == [], "the listener got requests (with the worker's secret)"
    for (status, data), (_, refused) in zip(answers, attacks, strict=True):
        assert status == 422, data
        assert set(fields(data)) == refused, data
    assert "PRIMER_GATEWAY_ENDPOINTS" in fields(answers[0][1])["teacher_url"]


def test_only_the_operators_endpoints_may_be_named(redis_url, tmp_path):
    with serve(create_app(gateway_config(redis_url, tmp_path, endpoints=()))) as url:
        status, data, _ = http("POST", f"{url}/v1/runs", {**TEXTBOOKS, "teacher_url": TEACHER})
        assert status == 422 and "none are" in fields(data)["teacher_url"], data
        status, run, _ = http("POST", f"{url}/v1/runs", TEXTBOOKS)  # the workers' teacher
        assert status == 201 and "--teacher-url" not in run["command"], run


# -- inputs and outputs -------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({"component": "curation", "output": "/etc/cron.d"}, "output"),
    ({"component": "curation", "output": "../../../../etc/cron.d"}, "output"),
    ({"component": "curation", "output": "ok/../../../x"}, "output"),
    ({"component": "curation", "output": "file:///var/run/secrets"}, "output"),
    ({"component": "curation", "output": "s3://tenant-b/runs"}, "output"),
    ({"component": "curation", "input": "/var/run/secrets/kubernetes.io"}, "input"),
    ({"component": "curation", "input": "file:///var/run/secrets"}, "input"),
    ({"component": "curation", "input": "s3://tenant-b/raw"}, "input"),
    ({"component": "curation", "input": "http://attacker/raw.jsonl"}, "input"),
    ({"component": "curation", "input": "hf:someone/dataset"}, "input"),
    ({**SCORE, "samples": "/etc/passwd"}, "samples"),
    ({**SCORE, "samples": "{data}/../../etc/passwd"}, "samples"),
    ({"component": "evaluation", "benchmarks": ["mbpp"], "model": "/root/.cache"}, "model"),
])
def test_inputs_and_outputs_outside_the_storage_roots_are_refused(gateway, body, field):
    url, config = gateway
    status, data, _ = http("POST", f"{url}/v1/runs", under(body, config))
    assert status == 422, data
    assert set(fields(data)) == {field}, data


def test_inputs_under_the_roots_and_outputs_under_the_runs_prefix_are_accepted(gateway,
                                                                                tmp_path):
    url, config = gateway
    inputs = tmp_path / "inputs"
    cases = [({"component": "curation", "input": f"{inputs}/corpus", "output": "curated/v1"},
              "curated/v1"),
             ({"component": "curation", "input": f"file://{inputs}/a/../corpus"}, "curation"),
             ({**SCORE, "samples": f"{config.storage_root}/runs/run-0123456789ab/s.jsonl",
               "output": "scores/./humaneval"}, "scores/humaneval")]
    for body, sub in cases:
        status, run, _ = http("POST", f"{url}/v1/runs", body)
        assert status == 201, run
        assert run["output"] == f"{config.storage_root}/runs/{run['id']}/{sub}"
        assert run["command"][run["command"].index("--output") + 1] == run["output"]


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
