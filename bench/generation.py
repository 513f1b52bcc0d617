"""Teacher throughput of one worker process: ``primer.teacher`` against a plain ``openai`` loop.

The test OpenAI server (``tests/openai_server.py``) answers every request after a fixed
200 ms, in ``--server-procs`` processes sharing one port (SO_REUSEPORT), so the server is not
the bottleneck. This process runs the client only, so its CPU time is the client's. For each
concurrency C: requests/s (also as a fraction of the ideal C / latency) and CPU ms per
request, for three clients:

- ``openai+semaphore``, the baseline: an ``openai.AsyncOpenAI`` loop behind an
  ``asyncio.Semaphore``, as anyone would write it (the SDK's default pool and 2 retries);
- ``primer.teacher``: ``Teacher.complete_many`` with retries and accounting on, cache off;
- ``primer.teacher+cache``: the same with a fresh cache folder per run, so every request is a
  miss and a put (a first run, the common case at scale). The folder is made in
  ``--cache-dir``, by default the current directory, as a run's ``./primer-data/cache``
  would be: on these machines a file is created about five times slower in ``/tmp`` than
  elsewhere on the same disk (2.4 against 0.4 ms), which would measure the folder, not Primer.

Each is measured ``--rounds`` times, in an order that rotates every round, and the summary
gives medians and ranges, with each Teacher arm's ratio to the baseline of the same round (a
shared machine slows down and speeds up; the ratio of neighbours is steadier). Target: ≥ 1.0×
the baseline's requests/s at every concurrency, within 0.3 ms of its CPU per request.

    .venv/bin/python bench/generation.py                       # C = 32, 128, 512
    .venv/bin/python bench/generation.py --concurrency 128 --rounds 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import openai  # noqa: E402

from primer.teacher import ChatRequest, Teacher, TeacherConfig  # noqa: E402

SERVER = """
import socket, sys, uvicorn
sys.path.insert(0, {repo!r})
from tests.openai_server import OpenAIServer
server = OpenAIServer(latency_s={latency})
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", {port})); sock.listen(4096)
uvicorn.Server(uvicorn.Config(server.app, log_level="critical", lifespan="off",
                              timeout_keep_alive=60, backlog=4096)).run(sockets=[sock])
"""


def start_servers(procs: int, latency: float) -> tuple[str, list[subprocess.Popen]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = SERVER.format(repo=str(REPO), latency=latency, port=port)
    servers = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(procs)]
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return url, servers
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("benchmark server did not start") from None
            time.sleep(0.1)


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Write a short note about topic number {i}."}]


async def run_teacher(url: str, c: int, n: int, offset: int, cache_uri: str | None = None,
                      ) -> None:
    """Retries, accounting and (with ``cache_uri``) the cache on, as a generation run has them."""
    teacher = Teacher(TeacherConfig(url=url, model="bench", max_concurrency=c, timeout_s=60,
                                    cache_uri=cache_uri, price_input_per_1k=0.5,
                                    price_output_per_1k=1.5))
    out = await teacher.complete_many([ChatRequest(messages(offset + i), max_tokens=64)
                                       for i in range(n)])
    bad = [r for r in out if isinstance(r, Exception)]
    assert not bad, f"{len(bad)} teacher requests failed, e.g. {bad[:1]}"
    assert teacher.usage.requests == n and teacher.usage.cost_usd
    await teacher.aclose()


async def run_teacher_cached(url: str, c: int, n: int, offset: int, cache_root: str) -> None:
    """A first run: a fresh cache, so every request is a miss, then a put. (The folders are
    removed with ``cache_root`` after the benchmark: deleting a cache is no client's work.)"""
    await run_teacher(url, c, n, offset, cache_uri=tempfile.mkdtemp(dir=cache_root))


async def run_baseline(url: str, c: int, n: int, offset: int) -> None:
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", timeout=60)
    slots = asyncio.Semaphore(c)

    async def one(i: int) -> str:
        async with slots:
            resp = await client.chat.completions.create(
                model="bench", messages=messages(offset + i), max_tokens=64, temperature=0.0)
            return resp.choices[0].message.content

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()


CLIENTS = {"openai+semaphore": run_baseline, "primer.teacher": run_teacher,
           "primer.teacher+cache": run_teacher_cached}
BASELINE = "openai+semaphore"


def measure(fn, url: str, c: int, waves: int, latency: float) -> dict[str, float]:
    n = c * waves
    asyncio.run(fn(url, c, min(c, 64), 10**9))  # warm-up: imports, lazy state, server workers
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(fn(url, c, n, c * 1000))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rps = n / wall
    return {"requests": n, "wall_s": round(wall, 3), "rps": round(rps, 1),
            "fraction_of_ideal": round(rps / (c / latency), 3),
            "cpu_ms_per_request": round(cpu / n * 1000, 3)}


def summarize(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per client: median and range of requests/s and CPU per request over the rounds, and of
    its ratio to the baseline measured in the same round (which cancels slow phases of a
    shared machine)."""
    out = {}
    for name in CLIENTS:
        rps = [r[name]["rps"] for r in rounds]
        cpu = [r[name]["cpu_ms_per_request"] for r in rounds]
        ratio = [r[name]["rps"] / r[BASELINE]["rps"] for r in rounds]
        extra = [r[name]["cpu_ms_per_request"] - r[BASELINE]["cpu_ms_per_request"]
                 for r in rounds]
        out[name] = {"rps_median": round(statistics.median(rps), 1),
                     "rps_range": [min(rps), max(rps)],
                     "cpu_ms_per_request_median": round(statistics.median(cpu), 3),
                     "cpu_ms_per_request_range": [min(cpu), max(cpu)],
                     "rps_ratio_to_baseline_median": round(statistics.median(ratio), 3),
                     "rps_ratio_to_baseline_range": [round(min(ratio), 3), round(max(ratio), 3)],
                     "cpu_ms_over_baseline_median": round(statistics.median(extra), 3),
                     "cpu_ms_over_baseline_range": [round(min(extra), 3), round(max(extra), 3)]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--waves", type=int, default=5, help="requests = waves × concurrency")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each client "
                        "per concurrency, in an order that rotates every round")
    parser.add_argument("--server-procs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--cache-dir", default=".",
                        help="where the +cache client's fresh cache folders are made")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    url, servers = start_servers(args.server_procs, args.latency)
    cache_root = tempfile.mkdtemp(prefix="primer-bench-cache-", dir=args.cache_dir)
    clients = {**CLIENTS, "primer.teacher+cache": functools.partial(
        run_teacher_cached, cache_root=cache_root)}
    results = {"machine": f"{os.cpu_count()} CPUs", "load_average_at_start": os.getloadavg(),
               "latency_s": args.latency, "server_procs": args.server_procs,
               "waves": args.waves, "rounds": args.rounds,
               "cache_dir": str(Path(args.cache_dir).resolve()), "summary": {}, "runs": []}
    names = list(CLIENTS)
    try:
        for c in args.concurrency:
            rounds = []
            for k in range(args.rounds):
                measured = {}
                for name in names[k % len(names):] + names[:k % len(names)]:
                    row = {"client": name, "concurrency": c, "round": k,
                           **measure(clients[name], url, c, args.waves, args.latency)}
                    results["runs"].append(row)
                    measured[name] = row
                    print(f"C={c:4d} round {k} {name:21s} {row['rps']:8.1f} req/s  "
                          f"{row['fraction_of_ideal']:.3f} of ideal  "
                          f"{row['cpu_ms_per_request']:.3f} ms CPU/request", flush=True)
                rounds.append(measured)
            results["summary"][str(c)] = summary = summarize(rounds)
            for name, row in summary.items():
                print(f"C={c:4d} median {name:21s} {row['rps_ratio_to_baseline_median']:.3f}× "
                      f"baseline req/s {row['rps_ratio_to_baseline_range']}, "
                      f"{row['cpu_ms_per_request_median']:.3f} ms CPU/request "
                      f"({row['cpu_ms_over_baseline_median']:+.3f} vs baseline)", flush=True)
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)
        if args.json:
            results["load_average_at_end"] = os.getloadavg()
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
