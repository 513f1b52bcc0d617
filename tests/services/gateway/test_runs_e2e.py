"""Runs through the gateway, carried out by a real Celery worker, watched with ``primer runs``."""

from __future__ import annotations

import json
import shutil
import sysconfig
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
from typer.testing import CliRunner

from primer.cli import build_app
from services.gateway.app import create_app
from tests.primer.test_executor import celery_workers
from tests.services.gateway.conftest import gateway_config, serve
from tests.services.gateway.test_api import http, metric

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RUNS = EntryPoint(name="runs", value="services.gateway.cli:app", group="primer.commands")


def cli(*args: str):
    return CliRunner().invoke(build_app([RUNS]), list(args))


def small_corpus(path: Path) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((stdlib / "json").glob("*.py")) + sorted((stdlib / "email").glob("*.py"))
    path.mkdir()
    for f in files[:30]:
        shutil.copy(f, path / f"{f.parent.name}_{f.name}")
    return path


def test_a_curation_run_succeeds_and_a_broken_one_fails(redis_url, tmp_path):
    config = gateway_config(redis_url, tmp_path)
    queue = config.queues["curation"]
    (tmp_path / "inputs").mkdir()
    corpus = small_corpus(tmp_path / "inputs" / "code")
    with celery_workers(redis_url, queue, tmp_path / "logs", n=1), \
            serve(create_app(config)) as url:
        # JSONL records without the text column: the read unit fails → Failed (a run may not
        # name an encoder path, so a broken input is the way to break a unit from outside)
        broken = tmp_path / "inputs" / "broken.jsonl"
        broken.write_text("".join(json.dumps({"content": f"x = {i}"}) + "\n" for i in range(3)))
        bad = cli("runs", "submit", "curation", f"input={broken}", "--gateway", url,
                  "--classify.n_estimators=10")
        assert bad.exit_code == 0, bad.output
        bad_id = json.loads(bad.output)["id"]
        good = cli("runs", "submit", "curation", f"input={corpus}", "--gateway", url,
                   "--classify.n_estimators=10", "--annotate.positive_score=0.8")
        good_id = json.loads(good.output)["id"]

        failed = cli("runs", "get", bad_id, "--wait", "--interval", "0.5", "--gateway", url)
        assert failed.exit_code == 1, failed.output
        run = json.loads(failed.output)
        assert run["phase"] == "Failed" and "expected a JSON object with 'text'" in run["error"]

        done = cli("runs", "get", good_id, "--wait", "--interval", "0.5", "--gateway", url)
        assert done.exit_code == 0, done.output
        run = json.loads(done.output)
        assert run["phase"] == "Succeeded" and run["started_at"] and run["finished_at"]
        assert run["outputs"]["rows"] > 0 and run["outputs"]["manifest"].endswith(
            "_manifest.json")
        assert Path(run["output"], "_manifest.json").is_file()

        listed = cli("runs", "list", "--component", "curation", "--gateway", url)
        assert f"{good_id}  curation    Succeeded" in listed.output
        assert f"{bad_id}  curation    Failed" in listed.output

        text = http("GET", f"{url}/metrics")[1]
        assert metric(text, "primer_queue_length", queue=queue) == 0
        # the broken run's failing unit left a failure record that the metrics count
        assert metric(text, "primer_units_failed", component="curation") >= 1
        assert metric(text, "primer_runs", component="curation", phase="Succeeded") >= 1
        assert metric(text, "primer_units_done", component="curation") >= 6  # 6 stages
        missing = cli("runs", "get", "run-ffffffffffff", "--gateway", url)
        assert missing.exit_code == 2 and "HTTP 404" in missing.output
