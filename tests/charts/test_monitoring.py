"""The chart's monitoring: the Grafana dashboard, the ServiceMonitor and the PrometheusRule
render, validate against the Prometheus Operator's CRD schemas, use only metrics the gateway
exports, parse as PromQL (promtool), fire when they should (promtool test rules), and the
dashboard's queries return data from a real Prometheus scraping a real gateway."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from primer.executor.consumers import Consumers
from primer.progress import unit_stats
from primer.teacher.client import LATENCY_BUCKETS, Usage
from services.gateway.app import create_app
from services.gateway.metrics import GatewayCollector
from services.gateway.store import RunStore
from tests.charts.k8s_schemas import CHART, helm, validate
from tests.servers import free_port
from tests.services.gateway.conftest import gateway_config, serve

NS = "primer-ns"
ALL_ON = {"monitoring": {"serviceMonitor": {"enabled": True,
                                            "labels": {"release": "kube-prometheus-stack"}},
                         "prometheusRule": {"enabled": True, "alertLabels": {"team": "ml"}},
                         "dashboard": {"folder": "Primer"}},
          "networkPolicy": {"gatewayClientNamespaces": ["monitoring"]}}
DASHBOARD = CHART / "dashboards" / "primer.json"
#: PromQL words that are not metric names (functions are recognised by their parenthesis).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}


def render(values: dict, tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    proc = subprocess.run([helm(), "template", "rel", str(CHART), "--namespace", NS, "-f",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def one(docs, kind):
    """The one object of ``kind`` (for ConfigMaps: the dashboard's)."""
    (found,) = [d for d in docs if d["kind"] == kind
                and (kind != "ConfigMap" or d["metadata"]["name"].endswith("-dashboard"))]
    return found


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: apt-get install --no-install-recommends prometheus",
                    pytrace=False)
    return found


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict[str, Any]]:
    return render(ALL_ON, tmp_path_factory.mktemp("monitoring"))


def dashboard_queries(namespace: str = NS) -> dict[str, str]:
    """{'panel title/refId': PromQL} with the dashboard's $namespace variable filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {f"{p['title']}/{t['refId']}": t["expr"].replace("$namespace", namespace)
            for p in dashboard["panels"] for t in p["targets"]}


def rule_queries(docs) -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in one(docs, "PrometheusRule")["spec"]["groups"]
            for r in g["rules"]}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names (in {…} or by/on/… lists), strings or durations."""
    expr = re.sub(r'"(\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[match.end():].lstrip()
        word = match.group()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue
        if match.start() and (expr[match.start() - 1].isdigit() or expr[match.start() - 1] == "."):
            continue  # the exponent of a number such as 1e3
        names.add(word)
    return names


def test_metric_names_parser():
    assert metric_names('histogram_quantile(0.9, max by (le) (rate(a_bucket{x="y{}"}[5m])))') \
        == {"a_bucket"}
    assert metric_names("max by (queue) (a) > 0 and on (queue) b == 0") == {"a", "b"}
    assert metric_names("sum without (instance) (c offset 5m) / 1e3") == {"c"}


# -- rendering and schemas ---------------------------------------------------------------------

def test_monitoring_objects_render_and_validate(rendered):
    dashboard, monitor, rule = (one(rendered, k) for k in
                                ("ConfigMap", "ServiceMonitor", "PrometheusRule"))
    for obj in (dashboard, monitor, rule):
        validate(obj)
        assert obj["metadata"]["namespace"] == NS
    # the sidecar's default selector, and the folder annotation
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Primer"}
    assert json.loads(dashboard["data"]["primer.json"]) == json.loads(DASHBOARD.read_text())
    # the ServiceMonitor selects the gateway Service and names its port
    service = next(d for d in rendered if d["kind"] == "Service"
                   and d["metadata"]["name"].endswith("-gateway"))
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert selector == service["spec"]["selector"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Prometheus's namespace, listed as the README says, may reach the scraped port
    policy = next(d for d in rendered if d["kind"] == "NetworkPolicy"
                  and d["metadata"]["name"].endswith("-gateway"))
    gateway = next(d for d in rendered if d["kind"] == "Deployment"
                   and d["metadata"]["name"].endswith("-gateway"))
    (port,) = [p["containerPort"] for c in gateway["spec"]["template"]["spec"]["containers"]
               for p in c.get("ports", []) if p["name"] == "http"]
    assert any({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name":
                                                      "monitoring"}}} in rule["from"]
               and port in [p["port"] for p in rule["ports"]]
               for rule in policy["spec"]["ingress"])
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"PrimerQueueWithoutConsumer", "PrimerUnitsFailing",
                           "PrimerTeacherErrors"}
    assert all(a["labels"]["team"] == "ml" and a["labels"]["severity"] for a in alerts.values())


def test_lint_strict_with_monitoring_on(tmp_path):
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(ALL_ON))
    proc = subprocess.run([helm(), "lint", "--strict", str(CHART), "-f", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_options_switch_and_relabel(tmp_path):
    defaults = render({}, tmp_path)
    assert one(defaults, "ConfigMap")["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not [d for d in defaults if d["kind"] in ("ServiceMonitor", "PrometheusRule")]
    custom = render({"monitoring": {"dashboard": {"label": "dashboards", "labelValue": "primer"},
                                    "serviceMonitor": {"enabled": True, "interval": "15s"},
                                    "prometheusRule": {"enabled": True, "noConsumerFor": "2m",
                                                       "teacherErrorRatio": 0.2}}}, tmp_path)
    labels = one(custom, "ConfigMap")["metadata"]["labels"]
    assert labels["dashboards"] == "primer" and "grafana_dashboard" not in labels
    assert one(custom, "ServiceMonitor")["spec"]["endpoints"][0]["interval"] == "15s"
    alerts = {r["alert"]: r for r in one(custom, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert alerts["PrimerQueueWithoutConsumer"]["for"] == "2m"
    assert alerts["PrimerTeacherErrors"]["expr"].endswith("> 0.2")
    off = render({"monitoring": {"dashboard": {"enabled": False}},
                  "gateway": {"enabled": False}}, tmp_path)
    assert not [d for d in off if d["kind"] == "ConfigMap"
                and d["metadata"]["name"].endswith("-dashboard")]


def test_bad_monitoring_values_are_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    for bad, field in [({"serviceMonitor": {"interval": "30"}}, "interval"),
                       ({"prometheusRule": {"teacherErrorRatio": 2}}, "teacherErrorRatio"),
                       ({"dashboard": {"labell": "x"}}, "labell")]:
        path.write_text(yaml.safe_dump({"monitoring": bad}))
        proc = subprocess.run([helm(), "template", "rel", str(CHART), "-f", str(path)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and field in proc.stderr, proc.stderr


def test_dashboard_is_a_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert len({p["id"] for p in panels}) == len(panels)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace"}
    for p in panels:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, p["title"]
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        used = set(re.findall(r"\$(\w+)", json.dumps(p["targets"])))
        assert used <= variables, (p["title"], used)
    titles = " ".join(p["title"].lower() for p in panels)
    for wanted in ("queue depth", "workers", "units done per run", "units failed per run",
                   "tokens per second", "latency percentiles", "error rate"):
        assert wanted in titles


# -- metrics the gateway exports -----------------------------------------------------------------

def exported_names(redis_url: str, tmp_path: Path) -> set[str]:
    """Names a gateway's /metrics declares (# TYPE, also for a family with no series yet) and
    its samples' names (a histogram's _bucket, _sum, _count)."""
    config = gateway_config(redis_url, tmp_path)
    registry = CollectorRegistry()
    registry.register(GatewayCollector(RunStore.from_url(redis_url), config,
                                       Consumers(redis_url, timeout=0.2)))
    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    return ({f.name for f in families if f.type != "histogram"}
            | {s.name for f in families for s in f.samples})


@pytest.mark.integration
def test_every_query_uses_exported_metrics(rendered, redis_url, tmp_path):
    exported = exported_names(redis_url, tmp_path)
    queries = {**dashboard_queries(), **rule_queries(rendered)}
    used = set()
    for where, expr in queries.items():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported"
        used |= names
    # every family the dashboard is meant to show is on it
    assert {"primer_queue_length", "primer_queue_consumers", "primer_run_units_done",
            "primer_run_units_failed", "primer_tokens_generated",
            "primer_teacher_request_duration_seconds_bucket",
            "primer_teacher_failures"} <= used


def test_promql_parses(rendered, tmp_path):
    """promtool parses the alert rules as they are rendered, and each dashboard query (as a
    recording rule)."""
    rules = tmp_path / "alerts.yaml"
    rules.write_text(yaml.safe_dump({"groups": one(rendered, "PrometheusRule")["spec"]["groups"]}))
    panels = tmp_path / "panels.yaml"
    panels.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"primer:panel_{i}", "expr": expr}
        for i, expr in enumerate(dashboard_queries().values())]}]}))
    proc = run_promtool("check", "rules", str(rules), str(panels))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 3 rules found" in proc.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "primer:x", "expr": "max by (queue (primer_queue_length)"}]}]}))
    assert run_promtool("check", "rules", str(broken)).returncode != 0  # the check can fail


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in {"namespace": NS, "instance": "gw-0",
                                               **labels}.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def test_alerts_fire_when_they_should(rendered, tmp_path):
    """promtool's rule unit tests: each alert fires on the situation it names, and stays quiet
    on the healthy one (the input series are what the gateway exports, per replica)."""
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(
        {"groups": one(rendered, "PrometheusRule")["spec"]["groups"]}))
    def teacher(failures_per_minute: int, requests_per_minute: int) -> list[dict[str, str]]:
        return [series("primer_teacher_failures", f"0+{failures_per_minute}x40",
                       component="generation"),
                series("primer_teacher_requests", f"0+{requests_per_minute}x40",
                       component="generation")]

    tests = [
        {"interval": "1m", "input_series": [
            series("primer_queue_length", "3x10", queue="generation"),
            series("primer_queue_consumers", "0x10", queue="generation"),
            series("primer_queue_length", "3x10", queue="curation"),
            series("primer_queue_consumers", "1x10", queue="curation"),
            series("primer_queue_length", "0x10", queue="evaluation"),
            series("primer_queue_consumers", "0x10", queue="evaluation"),
            # another release's queue is not this release's business
            series("primer_queue_length", "3x10", queue="generation", namespace="other"),
            series("primer_queue_consumers", "0x10", queue="generation", namespace="other")],
         "alert_rule_test": [
             {"eval_time": "4m", "alertname": "PrimerQueueWithoutConsumer", "exp_alerts": []},
             {"eval_time": "6m", "alertname": "PrimerQueueWithoutConsumer", "exp_alerts": [
                 {"exp_labels": {"queue": "generation", "severity": "critical", "team": "ml"},
                  "exp_annotations": {
                      "summary": "Queue generation has work and no worker consumes it",
                      "description": "3 units wait on the Celery queue generation and no "
                      "worker has consumed it for 5m: runs on it stay Pending. Check that the "
                      "worker Deployment for that queue is running and started with -Q "
                      "generation."}}]}]},
        {"interval": "1m", "input_series": [
            series("primer_units_failed", "0x10 4x40", component="curation"),
            series("primer_units_failed", "2x50", component="generation")],
         "alert_rule_test": [
             {"eval_time": "9m", "alertname": "PrimerUnitsFailing", "exp_alerts": []},
             {"eval_time": "12m", "alertname": "PrimerUnitsFailing", "exp_alerts": [
                 {"exp_labels": {"component": "curation", "severity": "warning", "team": "ml"},
                  "exp_annotations": {
                      "summary": "curation units are failing",
                      "description": "About 4 curation units failed in the last 30m. "
                      "`primer runs get ID` shows a run's error."}}]},
             {"eval_time": "45m", "alertname": "PrimerUnitsFailing", "exp_alerts": []}]},
        # 1 failure per 10 answered requests: 1/11 = 9% > 5%
        {"interval": "1m", "input_series": teacher(1, 10), "alert_rule_test": [
            {"eval_time": "35m", "alertname": "PrimerTeacherErrors", "exp_alerts": [
                {"exp_labels": {"component": "generation", "severity": "warning",
                                "team": "ml"},
                 "exp_annotations": {
                     "summary": "The teacher fails 9.091% of requests",
                     "description": "9.091% of teacher requests failed for good (after "
                     "retries) in the last 30m, above 5%. Check the teacher's health, rate "
                     "limits and API key."}}]}]},
        # 1 per 100: 1% stays quiet
        {"interval": "1m", "input_series": teacher(1, 100), "alert_rule_test": [
            {"eval_time": "35m", "alertname": "PrimerTeacherErrors", "exp_alerts": []}]},
    ]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(
        {"rule_files": ["alerts.yaml"], "evaluation_interval": "1m", "tests": tests}))
    proc = run_promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- where the new metrics come from ------------------------------------------------------------

def test_teacher_latency_histogram_from_markers(tmp_path):
    """The teacher client buckets each answered request's latency; the gateway's unit_stats
    sums the buckets, failures and retries over the run's markers."""
    usage = Usage()
    for seconds in (0.1, 0.25, 3.0, 1000.0):
        usage.answered(seconds, completion_tokens=7)
    usage.add(failures=2, retries=5)
    counts = usage.as_dict()["latency_counts"]
    assert len(counts) == len(LATENCY_BUCKETS) + 1 and sum(counts) == usage.requests == 4
    assert counts[0] == 2 and counts[LATENCY_BUCKETS.index(5.0)] == 1 and counts[-1] == 1
    markers = tmp_path / "out" / "_work" / "gen" / "_markers"
    markers.mkdir(parents=True)
    for name in ("u1", "u2"):
        (markers / f"{name}.json").write_text(json.dumps(
            {"duration_s": 1.0, "result": {"usage": usage.as_dict()}}))
    stats = unit_stats(str(tmp_path / "out"))
    assert stats["teacher_latency_counts"] == [2 * c for c in counts]
    assert (stats["teacher_requests"], stats["teacher_failures"], stats["teacher_retries"]) \
        == (8, 4, 10)


# -- a real Prometheus scraping a real gateway ----------------------------------------------------

def prometheus_query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def finish_generation_run(base: str, store: RunStore, requests: int, failures: int,
                          latency: float) -> None:
    """Submit a run, then record what the gateway's reconciler records when it ends
    (services/gateway/embedded.py)."""
    body = json.dumps({"component": "generation", "kind": "exercises", "count": 1,
                       "teacher": {"url": "http://teacher:8000/v1"}}).encode()
    req = urllib.request.Request(f"{base}/v1/runs", body, {"Content-Type": "application/json"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        run = json.load(resp)
    usage = Usage()
    for _ in range(requests):
        usage.answered(latency, completion_tokens=50)
    store.update(run["id"], phase="Succeeded", stats={
        "units_done": 3, "units_failed": 1, "unit_seconds": 9.0, "tokens_generated": 50 * requests,
        "teacher_requests": requests, "teacher_failures": failures, "teacher_retries": 1,
        "teacher_seconds": usage.latency_s, "teacher_latency_counts": usage.latency_counts})


@pytest.mark.integration
@pytest.mark.slow
def test_dashboard_queries_return_data_from_a_real_prometheus(redis_url, tmp_path):
    """Prometheus scrapes the gateway on loopback every 2 s; while runs finish, every panel
    query returns a finite value and the derived ones (tokens/s, latency) are positive."""
    prometheus = shutil.which("prometheus")
    if not prometheus:
        pytest.fail("prometheus not found: apt-get install --no-install-recommends prometheus",
                    pytrace=False)
    store = RunStore.from_url(redis_url)
    with serve(create_app(gateway_config(redis_url, tmp_path))) as gateway:
        port = free_port()
        # a scrape waits up to a second for workers' active_queues replies
        config = {"global": {"scrape_interval": "2s", "scrape_timeout": "2s"},
                  "scrape_configs": [{
                      "job_name": "primer-gateway",
                      "static_configs": [{"targets": [gateway.removeprefix("http://")],
                                          "labels": {"namespace": NS}}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base = f"http://127.0.0.1:{port}"
        try:
            tokens = 'primer_tokens_generated{component="generation"}'
            finish_generation_run(gateway, store, requests=10, failures=0, latency=0.4)
            wait_for(base, proc, f"count_over_time({tokens}[1m]) >= 2")
            finish_generation_run(gateway, store, requests=20, failures=2, latency=3.0)
            wait_for(base, proc, f"changes({tokens}[1m]) >= 1")
            results = {where: prometheus_query(base, expr)
                       for where, expr in dashboard_queries().items()}
        finally:
            proc.terminate()
            proc.wait(10)
    for where, result in results.items():
        assert result, f"{where}: no data"
        values = [float(r["value"][1]) for r in result]
        assert all(v == v for v in values), f"{where}: NaN {result}"  # NaN != NaN
    assert float(results["Teacher tokens per second/A"][0]["value"][1]) > 0
    p99 = float(results["Teacher latency percentiles/C"][0]["value"][1])
    assert 2.5 < p99 <= 5.0  # the 3 s requests fall in the (2.5, 5] bucket
    error = float(results["Teacher error rate/A"][0]["value"][1])
    assert 0 < error < 1
    queues = {r["metric"]["queue"]: float(r["value"][1]) for r in results["Workers per queue/A"]}
    assert queues and set(queues.values()) == {0.0}  # no worker runs in this test


def wait_for(base: str, proc: subprocess.Popen, expr: str, timeout: float = 30) -> None:
    """Until ``expr`` has a result (Prometheus has scraped enough)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        try:
            if prometheus_query(base, expr):
                return
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, f"Prometheus: no result for {expr} in {timeout} s"
        time.sleep(0.5)
