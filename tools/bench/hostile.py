#!/usr/bin/env python3
"""The inference server under hostile load: figures side by side with a baseline from the same run.

  python3 tools/bench/hostile.py --bin target/release/inference-server --weights W.safetensors \
      [--images inference/tests/fixtures/images] [--triton-python .state/venv-triton/bin/python]

1. Memory: N concurrent uploads of a worst-case image (a flat 6000x6600 16-bit RGBA PNG, 40 Mpx is
   the default limit: ~0.3 MB on the wire, 8 bytes a pixel to decode plus the RGB copy). Peak RSS
   over idle with the default DECODE_MEMORY_MB (512) against the documented bound, and the same
   run with the budget lifted (DECODE_MEMORY_MB=65536, DECODE_THREADS=N: what the server did
   before it had one).
2. Slow uploaders: a normal client's latency (20 sequential JPEG requests) alone, then while 70
   connections hold their bodies half-sent.
3. tritonclient: tools/triton_client_check.py against the server, when --triton-python is given.

Only loopback traffic; every loop is bounded in count and time.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
import zlib


def png_rgba16(w: int, h: int) -> bytes:
    """A flat 16-bit RGBA PNG, compressed row by row (never the whole raw image in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 6, 0, 0, 0)
    row = b"\x00" + struct.pack(">HHHH", 30000, 20000, 10000, 65535) * w
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class Server:
    def __init__(self, binary: str, weights: str, port: int, env: dict[str, str]):
        self.port = port
        e = dict(os.environ, MODEL_PATH=weights, PORT=str(port), HOST="127.0.0.1",
                 LOG_FORMAT="text", SHUTDOWN_GRACE_SECONDS="0", **env)
        self.proc = subprocess.Popen([binary], env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(self.url("/ready"), timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("server not ready after 120 s")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def post(self, body: bytes, ctype: str = "image/jpeg", timeout: float = 300) -> int:
        req = urllib.request.Request(self.url("/predict"), data=body, headers={"Content-Type": ctype})
        try:
            return urllib.request.urlopen(req, timeout=timeout).status
        except urllib.error.HTTPError as e:
            return e.code

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def mib(b: float) -> str:
    return f"{b / 2**20:.0f} MiB"


def memory(args, png: bytes, cat: bytes, budget_env: dict[str, str], label: str) -> dict:
    s = Server(args.bin, args.weights, args.port, budget_env)
    try:
        s.post(cat)
        idle = s.rss()
        peak = idle
        done = threading.Event()

        def sample():
            nonlocal peak
            while not done.is_set():
                peak = max(peak, s.rss())
                time.sleep(0.005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        statuses: list[int] = []
        t0 = time.time()
        clients = [threading.Thread(target=lambda: statuses.append(s.post(png, "image/png"))) for _ in range(args.n)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        took = time.time() - t0
        done.set()
        sampler.join()
        return {"label": label, "idle": idle, "peak": peak, "statuses": sorted(statuses), "seconds": took}
    finally:
        s.stop()


def latencies(s: Server, body: bytes, n: int = 20) -> list[float]:
    out = []
    for _ in range(n):
        t = time.time()
        status = s.post(body, timeout=60)
        out.append((time.time() - t) * 1000 if status == 200 else float("inf"))
    return out


def slow_uploaders(args, cat: bytes) -> None:
    s = Server(args.bin, args.weights, args.port, {})
    try:
        alone = latencies(s, cat)
        socks = []
        for _ in range(70):
            c = socket.create_connection(("127.0.0.1", args.port), timeout=10)
            c.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                      b"Content-Length: 300000\r\n\r\n\xff\xd8")
            socks.append(c)
        time.sleep(0.3)
        beside = latencies(s, cat)
        for c in socks:
            c.close()
        for name, xs in (("alone", alone), ("beside 70 slow uploaders", beside)):
            ok = [x for x in xs if x != float("inf")]
            p99 = sorted(xs)[-1]
            print(f"  normal client {name:>26}: {len(ok)}/{len(xs)} answered 200, "
                  f"p50 {statistics.median(xs):.0f} ms, max {p99:.0f} ms")
    finally:
        s.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default="target/release/inference-server")
    ap.add_argument("--weights", required=True)
    ap.add_argument("--images", default="inference/tests/fixtures/images")
    ap.add_argument("--n", type=int, default=8, help="concurrent worst-case uploads")
    ap.add_argument("--port", type=int, default=18099)
    ap.add_argument("--triton-python")
    args = ap.parse_args()
    cat = open(os.path.join(args.images, "cat.jpg"), "rb").read()

    print(f"1. memory: {args.n} concurrent 6000x6600 16-bit RGBA PNGs")
    png = png_rgba16(6000, 6600)
    per_image = 6000 * 6600 * (8 + 3)
    print(f"  the image: {len(png) / 1e3:.0f} KB on the wire, {mib(per_image)} to decode (8 B/px + RGB copy)")
    budget = 512
    runs = [
        memory(args, png, cat, {}, f"DECODE_MEMORY_MB={budget} (default)"),
        memory(args, png, cat, {"DECODE_MEMORY_MB": "65536", "DECODE_THREADS": str(args.n)},
               "no budget (DECODE_MEMORY_MB=65536, DECODE_THREADS=N)"),
    ]
    bodies = args.n * len(png)
    for r in runs:
        over = r["peak"] - r["idle"]
        print(f"  {r['label']:>52}: idle {mib(r['idle'])}, peak {mib(r['peak'])}, "
              f"over idle {mib(over)}, {r['seconds']:.1f} s, statuses {r['statuses']}")
    bound = budget * 2**20 + bodies
    ok = runs[0]["peak"] - runs[0]["idle"] <= bound + 64 * 2**20
    print(f"  documented bound over idle: DECODE_MEMORY_MB + bodies = {mib(bound)} "
          f"-> {'within' if ok else 'OVER'} (64 MiB allocator slack)")

    print("2. slow uploaders")
    slow_uploaders(args, cat)

    if args.triton_python:
        print("3. tritonclient")
        s = Server(args.bin, args.weights, args.port, {})
        try:
            out = subprocess.run([args.triton_python, "tools/triton_client_check.py", "--url",
                                  f"127.0.0.1:{args.port}", "--images", args.images,
                                  "--model-version", "1.0", "--compression"],
                                 capture_output=True, text=True, timeout=600)
            print("  " + out.stdout.strip().splitlines()[-1])
        finally:
            s.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
