"""Teacher throughput of one worker process: ``primer.teacher`` against a plain ``openai`` loop.

The test OpenAI server (``tests/openai_server.py``) answers every request after a fixed
200 ms, in ``--server-procs`` processes sharing one port (SO_REUSEPORT), so the server is not
the bottleneck. This process runs the client only, so its CPU time is the client's. For each
concurrency C: requests/s as a fraction of the ideal C / latency, and CPU ms per request, for
``Teacher.complete_many`` (bounded, retrying, cache off) and for the baseline, an
``openai.AsyncOpenAI`` loop behind an ``asyncio.Semaphore``. Target: ≥ 0.9 of ideal at 128,
≤ 2 ms CPU per request.

    .venv/bin/python bench/generation.py                       # C = 32, 128, 512
    .venv/bin/python bench/generation.py --concurrency 128 --waves 5 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
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


async def run_teacher(url: str, c: int, n: int, offset: int) -> None:
    teacher = Teacher(TeacherConfig(url=url, model="bench", max_concurrency=c, max_retries=0,
                                    timeout_s=60))
    out = await teacher.complete_many([ChatRequest(messages(offset + i), max_tokens=64)
                                       for i in range(n)])
    assert all(not isinstance(r, Exception) for r in out), "teacher requests failed"
    await teacher.aclose()


async def run_baseline(url: str, c: int, n: int, offset: int) -> None:
    client = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=60)
    slots = asyncio.Semaphore(c)

    async def one(i: int) -> str:
        async with slots:
            resp = await client.chat.completions.create(
                model="bench", messages=messages(offset + i), max_tokens=64, temperature=0.0)
            return resp.choices[0].message.content

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()


def measure(fn, url: str, c: int, waves: int, latency: float) -> dict[str, float]:
    n = c * waves
    asyncio.run(fn(url, c, c, 10**9))  # warm-up: imports, connection pool, server workers
    cpu, wall = time.process_time(), time.perf_counter()
    asyncio.run(fn(url, c, n, c * 1000))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rps = n / wall
    return {"requests": n, "wall_s": round(wall, 3), "rps": round(rps, 1),
            "fraction_of_ideal": round(rps / (c / latency), 3),
            "cpu_ms_per_request": round(cpu / n * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--waves", type=int, default=5, help="requests = waves × concurrency")
    parser.add_argument("--server-procs", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    url, servers = start_servers(args.server_procs, args.latency)
    results = {"machine": f"{os.cpu_count()} CPUs", "latency_s": args.latency,
               "server_procs": args.server_procs, "runs": []}
    try:
        for c in args.concurrency:
            for name, fn in (("primer.teacher", run_teacher), ("openai+semaphore", run_baseline)):
                row = {"client": name, "concurrency": c,
                       **measure(fn, url, c, args.waves, args.latency)}
                results["runs"].append(row)
                print(f"C={c:4d} {name:17s} {row['rps']:8.1f} req/s  "
                      f"{row['fraction_of_ideal']:.3f} of ideal  "
                      f"{row['cpu_ms_per_request']:.3f} ms CPU/request", flush=True)
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
