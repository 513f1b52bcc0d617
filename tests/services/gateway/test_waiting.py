"""A run never waits in silence: with no worker on its queue it says so (naming the queue and
the command that starts a worker) within seconds, in the API, ``/readyz`` and
``primer runs get --wait``; once a worker consumes the queue it proceeds. Real Redis, real
Celery workers, the gateway in embedded mode."""

from __future__ import annotations

import time

import pytest

from primer.runs import worker_command
from services.gateway.app import create_app
from tests.openai_server import OpenAIServer
from tests.primer.test_executor import celery_workers
from tests.services.gateway.conftest import gateway_config, own_db, serve
from tests.services.gateway.test_api import http
from tests.services.gateway.test_runs_e2e import FAST_RETRIES, cli, printed
from tests.services.generation.teacher_responder import responder

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_run_whose_queue_has_no_worker_says_so_and_proceeds_once_one_starts(redis_url,
                                                                              tmp_path):
    own = own_db(redis_url, 13)
    with OpenAIServer(responder) as teacher:
        config = gateway_config(own, tmp_path, reconcile_seconds=0.2,
                                endpoints=(teacher.base_url,))
        queue = config.queues["generation"]
        with serve(create_app(config)) as url:
            sent = cli("runs", "submit", "generation", "kind=textbooks", "count=4",
                       "batch_size=2", f"teacher.url={teacher.base_url}",
                       "teacher.model=test-teacher", *FAST_RETRIES, "--gateway", url)
            assert sent.exit_code == 0, sent.output
            run_id = printed(sent.output)["id"]
            submitted = time.monotonic()

            # No worker anywhere: the run says so, naming its queue, well within 10 s.
            while True:
                run = http("GET", f"{url}/v1/runs/{run_id}")[1]
                if run["conditions"]:
                    break
                assert time.monotonic() - submitted < 10, run
                time.sleep(0.2)
            (condition,) = run["conditions"]
            assert condition["reason"] == "NoConsumer" and run["phase"] != "Succeeded"
            assert f"queue {queue!r}" in condition["message"]
            assert worker_command(queue) in condition["message"]

            ready = http("GET", f"{url}/readyz")
            assert ready[0] == 200 and ready[1]["queues"][queue]["consumers"] == 0
            assert ready[1]["queues"][queue]["waiting"] >= 1  # the round's units wait
            assert any(queue in note for note in ready[1]["notes"])

            waited = cli("runs", "get", run_id, "--wait", "--interval", "0.2",
                         "--timeout", "1", "--gateway", url)
            assert waited.exit_code == 3, waited.output
            assert f"waiting: no worker consumes queue {queue!r}" in waited.output
            listed = cli("runs", "list", "--gateway", url)
            assert f"(NoConsumer: queue {queue})" in listed.output

            # A worker on that queue: the same run proceeds to the end, and the note goes.
            with celery_workers(own, queue, tmp_path / "logs", n=1):
                done = cli("runs", "get", run_id, "--wait", "--interval", "0.3",
                           "--timeout", "120", "--gateway", url)
                deadline = time.monotonic() + 10  # the workers are asked every few seconds
                while (ready := http("GET", f"{url}/readyz")[1])["notes"]:
                    assert time.monotonic() < deadline, ready
                    time.sleep(0.5)
            assert done.exit_code == 0, done.output
            run = printed(done.output)
            assert run["phase"] == "Succeeded" and run["conditions"] == []
            assert ready["queues"][queue] == {"consumers": 1, "waiting": 0}
