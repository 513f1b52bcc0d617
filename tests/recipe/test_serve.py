"""``primer serve`` as a real process, answered by the openai client, the teacher client and
the evaluation backend."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request

import openai
import pytest

from primer.teacher import ChatRequest, Teacher, TeacherConfig
from tests.checkpoints import tiny_checkpoint
from tests.servers import free_port

# the module's server loads a checkpoint in a process of its own
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``primer serve --model <tiny> --name tiny`` on a free port; yields the /v1 base URL."""
    ckpt = tiny_checkpoint(tmp_path_factory.mktemp("serve") / "ckpt")
    port = free_port()
    log = ckpt.parent / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from primer.cli import main; sys.exit(main())",
             "serve", "--model", str(ckpt), "--port", str(port), "--name", "tiny"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"not serving:\n{log.read_text()}"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            time.sleep(0.1)
        yield f"{base}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_openai_client_lists_chats_and_completes(served):
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]

    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "write add"}], max_tokens=8,
        temperature=0.7, seed=3)
    again = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "write add"}], max_tokens=8,
        temperature=0.7, seed=3)
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == again.choices[0].message.content  # seeded
    assert 0 < chat.usage.completion_tokens <= 8 and chat.usage.prompt_tokens > 0

    done = client.completions.create(model="tiny", prompt="def add(a, b):", max_tokens=6,
                                     n=2, temperature=0.9, seed=1)
    assert [c.index for c in done.choices] == [0, 1]
    assert done.usage.completion_tokens <= 12
    greedy = client.completions.create(model="tiny", prompt="def add(a, b):", max_tokens=6,
                                       temperature=0)
    text = greedy.choices[0].text
    if text:  # a stop string taken from the greedy answer cuts there
        cut = client.completions.create(model="tiny", prompt="def add(a, b):", max_tokens=6,
                                        temperature=0, stop=[text[-1]])
        assert cut.choices[0].text == text[:text.index(text[-1])]
        assert cut.choices[0].finish_reason == "stop"


def test_errors_are_openai_shaped(served):
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="'gpt-4' does not exist"):
        client.completions.create(model="gpt-4", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="tiny", prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="stream"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       stream=True)
    metrics = urllib.request.urlopen(served.removesuffix("/v1") + "/metrics").read().decode()
    assert 'primer_serve_request_duration_seconds_count{endpoint="chat"}' in metrics


def test_it_is_a_teacher_and_an_eval_backend(served):
    from services.evaluation.backends import make_backend
    from services.evaluation.config import GenerationConfig

    teacher = Teacher(TeacherConfig(url=served, model="tiny", max_retries=0))
    answer = teacher.complete_sync(ChatRequest([{"role": "user", "content": "hi"}],
                                               max_tokens=5, seed=2))
    assert answer.model == "tiny" and answer.completion_tokens <= 5
    assert teacher.usage.requests == 1

    backend = make_backend("tiny", GenerationConfig(api_base=served, max_new_tokens=4,
                                                    concurrency=2))
    prompts = ["def f():", "def g():"]
    outs = backend.complete(prompts, ["\ndef"], 2)
    # greedy (temperature 0): both samples are the server's own answer, cut at the stop
    client = openai.OpenAI(base_url=served, api_key="unused", max_retries=0)
    want = [client.completions.create(model="tiny", prompt=p, max_tokens=4, temperature=0,
                                      stop=["\ndef"]).choices[0].text for p in prompts]
    assert outs == [[w, w] for w in want], (outs, want)


def test_serve_is_the_teacher_backend_over_http(tmp_path, monkeypatch):
    """Every answer comes from the teacher's local backend (no generate loop of its own):
    the same text the teacher gives for the same prompt and seed, through LocalBackend._run."""
    import asyncio
    import json

    from primer.teacher.local import LocalBackend
    from recipe.serve import create_app
    from tests.services.gateway.conftest import serve

    ckpt = tiny_checkpoint(tmp_path / "ckpt")
    calls = []
    run = LocalBackend._run

    def counted(self, *args):
        calls.append(args[0])
        return run(self, *args)

    monkeypatch.setattr(LocalBackend, "_run", counted)

    def post(url, body):
        req = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        return json.loads(urllib.request.urlopen(req, timeout=60).read())

    with serve(create_app(str(ckpt), "tiny")) as base:
        raw = post(f"{base}/v1/completions", {"model": "tiny", "prompt": "def add(a, b):",
                                              "max_tokens": 6, "temperature": 0.9, "seed": 4,
                                              "stop": ["\n\n"]})
        chat = post(f"{base}/v1/chat/completions", {
            "model": "tiny", "messages": [{"role": "user", "content": "write add"}],
            "max_tokens": 6, "temperature": 0.9, "seed": 4})
    assert calls == ["def add(a, b):", [{"role": "user", "content": "write add"}]]

    backend = LocalBackend(str(ckpt))
    text, finish, _, _ = asyncio.run(backend.complete("def add(a, b):", 6, 0.9, None, 4,
                                                      ["\n\n"]))
    assert raw["choices"][0]["text"] == text and raw["choices"][0]["finish_reason"] == finish
    teacher = Teacher(TeacherConfig(url=str(ckpt), model="tiny"))
    answer = teacher.complete_sync(ChatRequest([{"role": "user", "content": "write add"}],
                                               temperature=0.9, max_tokens=6, seed=4))
    assert chat["choices"][0]["message"]["content"] == answer.text
