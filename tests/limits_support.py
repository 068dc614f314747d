"""Helpers for the worker's limit tests: decompression-bomb PNGs, RSS sampling, and client load
from many connections in a process of its own (`LoadProcess`)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Any

_MAX_BACKOFF_FACTOR = 16


def png_bomb(width: int = 12000, height: int = 12000) -> bytes:
    """An 8-bit grayscale PNG of zeros, compressed row block by row block (no image in memory): a
    12000x12000 one is 137 KiB and decodes to 144 MB (432 MB as RGB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    parts, done = [], 0
    while done < height:
        rows = min(256, height - done)
        parts.append(compressor.compress(row * rows))
        done += rows
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def cached_png_bomb(directory: Path, width: int = 12000, height: int = 12000) -> bytes:
    path = directory / f"bomb-{width}x{height}.png"
    if not path.exists():
        path.write_bytes(png_bomb(width, height))
    return path.read_bytes()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Polls a process's RSS every few milliseconds in a thread; `peak` is the highest seen."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = rss_mib(pid)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            self.samples += 1
            time.sleep(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib(self.pid))


async def _load(address: str, channels: int, items: int, deployment: str) -> None:
    """Open `channels` connections; then for each stdin line `run CLIENTS SECONDS BACKOFF_S`, let the
    first CLIENTS of them send `items`-text requests back to back for SECONDS and print one JSON line:
    per status code, count, median and slowest answer. After a refusal a client waits BACKOFF_S
    (jittered), doubling on each further refusal up to 16x; 0 = retry at once."""
    from grpc import aio

    from modelyard.api import grpc_predict_v2_pb2 as oip
    from modelyard.api import grpc_predict_v2_pb2_grpc as oip_grpc

    request = oip.ModelInferRequest(model_name=deployment)
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[items])
    tensor.contents.bytes_contents.extend(
        b"the quick brown fox jumps over the lazy dog %d" % i for i in range(items)
    )
    # One channel each: a separate connection, so the worker sees a separate caller.
    opened = [
        aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    await asyncio.gather(*(channel.channel_ready() for channel in opened))
    stubs = [oip_grpc.GRPCInferenceServiceStub(channel) for channel in opened]
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        _, clients, seconds, backoff_s = line.split()
        window = await _window(stubs[: int(clients)], request, float(seconds), float(backoff_s))
        print(json.dumps(window), flush=True)
    for channel in opened:
        await channel.close(None)


async def _window(
    stubs: list[Any], request: Any, seconds: float, backoff_s: float
) -> dict[str, dict[str, float]]:
    from grpc import aio

    times: dict[str, list[float]] = {}
    deadline = time.perf_counter() + seconds

    async def client(stub: Any) -> None:
        wait = backoff_s
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await stub.ModelInfer(request, timeout=30)
                code = "OK"
            except aio.AioRpcError as error:
                code = error.code().name
            times.setdefault(code, []).append(time.perf_counter() - started)
            if code != "RESOURCE_EXHAUSTED":
                wait = backoff_s
            elif wait:  # what the refusal asks for: retry with (exponential) backoff
                await asyncio.sleep(wait * random.uniform(0.5, 1.0))
                wait = min(2 * wait, _MAX_BACKOFF_FACTOR * backoff_s)

    await asyncio.gather(*(client(stub) for stub in stubs))
    return {
        code: {"count": len(values), "median_s": statistics.median(values), "max_s": max(values)}
        for code, values in times.items()
    }


class LoadProcess:
    """`_load` in its own process (its CPU time is not the test's): `run()` one window of load."""

    def __init__(self, address: str, channels: int, items: int, deployment: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "load", address, str(channels), str(items), deployment],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # Its clients stand in for other machines: on a shared box their CPU time should not
            # be taken from the worker or the client being measured.
            preexec_fn=lambda: os.nice(10),
        )
        if self._line() != "ready":
            raise RuntimeError("the load process did not start")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load process died")
        return line.strip()

    def start(self, clients: int, seconds: float, backoff_s: float = 0.0) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"run {clients} {seconds} {backoff_s}\n")
        self.proc.stdin.flush()

    def result(self) -> dict[str, dict[str, float]]:
        return json.loads(self._line())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def main(argv: list[str]) -> None:
    if argv[:1] == ["load"]:
        address, channels, items, deployment = argv[1], int(argv[2]), int(argv[3]), argv[4]
        asyncio.run(_load(address, channels, items, deployment))
    else:
        raise SystemExit("usage: limits_support.py load ADDRESS CHANNELS ITEMS DEPLOYMENT")


if __name__ == "__main__":
    main(sys.argv[1:])
