"""Serving benchmark: ``resnets serve`` with dynamic batching against the same server without it.

Starts the server as its own process on a free loopback port (once with batching, once with
``--no-batching``), then from this process sends ``--requests`` POST /v1/predict requests (one
real CIFAR-10 JPEG each) at each concurrency level, and prints throughput (requests/s), p50 and
p99 latency for both, and the throughput ratio. Failed requests (any status but 200) are counted
and shown; a run with failures is not a valid comparison.

    python benchmarks/bench_serve.py --requests 400 --concurrency 1,8,32
    python benchmarks/bench_serve.py --json > serve.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("RESNETS_DATA", REPO.parent / "shared" / "datasets" / "cifar10-jpeg" / "train"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, batching: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "resnets.cli", "serve", "--weights", args.weights, "--port", str(port),
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if not batching:
        cmd.append("--no-batching")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}): {proc.stderr.read()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready in 180 s")


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def multipart_request(port: int, name: str, data: bytes) -> bytes:
    """One complete HTTP/1.1 POST /v1/predict request (keep-alive), built once and sent many times."""
    boundary = "resnets-bench-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /v1/predict?topk=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        if key.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def load(url: str, images: list[tuple[str, bytes]], requests: int, concurrency: int) -> dict:
    """``requests`` requests from ``concurrency`` keep-alive connections, each sending its next
    request when answered. A minimal HTTP/1.1 client on asyncio streams, not httpx: on 2 cores
    shared with the server, httpx's own CPU per request (3-10 ms, growing with connections) would
    be what is measured at 32 clients, not the server."""
    port = int(url.rsplit(":", 1)[1])
    bodies = [multipart_request(port, name, data) for name, data in images]
    latencies: list[float] = []
    failures: Counter = Counter()
    sent, warm = 0, 0
    all_warm, go = asyncio.Event(), asyncio.Event()

    async def one_client():
        nonlocal sent, warm
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            # Untimed: the connection is open and the server's first calls are done before the clock starts.
            await _exchange(reader, writer, bodies[0])
            warm += 1
            if warm == concurrency:
                all_warm.set()
            await go.wait()
            while sent < requests:
                request = bodies[sent % len(bodies)]
                sent += 1
                start = time.perf_counter()
                status = await _exchange(reader, writer, request)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    failures[status] += 1
        finally:
            writer.close()

    clients = [asyncio.create_task(one_client()) for _ in range(concurrency)]
    await asyncio.wait_for(all_warm.wait(), 120)  # a client that fails to connect raises in gather below
    start = time.perf_counter()
    go.set()
    await asyncio.gather(*clients)
    wall = time.perf_counter() - start
    ms = np.array(latencies) * 1e3
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": wall,
            "req_per_s": len(latencies) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "failed": dict(failures)}


def real_images(data: Path, n: int) -> list[tuple[str, bytes]]:
    classes = sorted(p for p in data.iterdir() if p.is_dir())
    if not classes:
        raise SystemExit(f"no class folders in {data} (pass --data DIR or set RESNETS_DATA)")
    files = [f for c in classes for f in sorted(c.glob("*.jpg"))[: max(1, n // len(classes))]]
    return [(f.name, f.read_bytes()) for f in files]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default="cifar10")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="image folder the requests' JPEGs come from")
    p.add_argument("--requests", type=int, default=400, help="timed requests per concurrency level")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, help="the server's model threads (resnets serve --threads)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    images = real_images(args.data, 100)
    results: dict[str, list[dict]] = {}
    for mode, batching in (("batching", True), ("no_batching", False)):
        proc, url = start_server(args, batching)
        try:
            results[mode] = [asyncio.run(load(url, images, args.requests, c)) for c in levels]
        finally:
            code = stop_server(proc)
        if code != 0:
            print(f"warning: the {mode} server exited with {code}", file=sys.stderr)
    report = {"weights": args.weights, "model": args.model, "requests": args.requests,
              "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "threads": args.threads,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
              **results}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.model} ({args.weights}), {args.requests} requests of one {args.data.name} JPEG per level, "
          f"max_batch {args.max_batch}, max_wait {args.max_wait_ms:g} ms, model threads "
          f"{args.threads or 'default'}; {report['machine']}")
    print(f"{'clients':>7} | {'batching req/s':>14} {'p50 ms':>8} {'p99 ms':>8} | "
          f"{'no batching req/s':>17} {'p50 ms':>8} {'p99 ms':>8} | {'ratio':>5}")
    for on, off in zip(results["batching"], results["no_batching"]):
        failed = {**on["failed"], **off["failed"]}
        print(f"{on['concurrency']:>7} | {on['req_per_s']:>14.1f} {on['p50_ms']:>8.1f} {on['p99_ms']:>8.1f} | "
              f"{off['req_per_s']:>17.1f} {off['p50_ms']:>8.1f} {off['p99_ms']:>8.1f} | "
              f"{on['req_per_s'] / off['req_per_s']:>5.2f}" + (f"  FAILED {failed}" if failed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
