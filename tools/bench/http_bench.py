#!/usr/bin/env python3
"""HTTP benchmark: our inference-server vs the seed's Flask + gunicorn + torch app, with wrk.

For each server in turn (never both up at once), on 127.0.0.1 only:
  start it -> wait for /ready -> warm-up (every image POSTed --warmup times, each answer must be
  200 with 5 predictions) -> one wrk run per concurrency (closed loop: C connections, each
  sending its next request when the last one is answered, cycling through the images) -> stop it.
Prints one JSON object per (server, concurrency) on stdout:
  {"kind": "http", "server": "ours", "concurrency": 4, "duration_s": 30.0, "requests": 812,
   "errors": 0, "images_per_s": 27.1, "p50_ms": ..., "p90_ms": ..., "p95_ms": ..., "p99_ms": ...,
   "mean_ms": ..., "max_ms": ..., "images": 7, "config": "..."}

Our server gets the raw JPEG body (Content-Type: image/jpeg); the seed gets the multipart field
`file` it requires. Both decode, preprocess and classify the same bytes.

Usage:
  python tools/bench/http_bench.py --server-bin target/release/inference-server \
      --weights W.safetensors [--threads 2] [--concurrency 1,4,8,16] [--duration 30] \
      [--warmup 2] [--servers ours,seed] [--logs DIR] [IMAGE.jpg ...]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "tools" / "bench" / "wrk_images.lua"
SEED_DIR = ROOT / "tools" / "seed_app"


def log(msg: str) -> None:
    print(f"[http] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, path: Path, multipart: bool, timeout: float = 120) -> tuple[int, bytes]:
    data = path.read_bytes()
    if multipart:
        b = uuid.uuid4().hex
        body = (f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
                f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
        ctype = f"multipart/form-data; boundary={b}"
    else:
        body, ctype = data, "image/jpeg"
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Server:
    def __init__(self, name: str, args, logdir: Path):
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.multipart = name == "seed"
        env = dict(os.environ, MODEL_PATH=str(Path(args.weights).resolve()))
        if name == "ours":
            cmd = [str(Path(args.server_bin).resolve())]
            env.update(HOST="127.0.0.1", PORT=str(self.port), INFERENCE_THREADS=str(args.threads),
                       SHUTDOWN_GRACE_SECONDS="0", LOG_FORMAT="json")
            self.config = (f"inference-server INFERENCE_THREADS={args.threads} "
                           f"HTTP_WORKERS=default MAX_BATCH_SIZE={env.get('MAX_BATCH_SIZE', 'default')}")
        elif name == "seed":
            # The seed's Dockerfile CMD, bound to loopback on a free port.
            cmd = [str(Path(sys.executable).with_name("gunicorn")), "--chdir", str(SEED_DIR),
                   "--bind", f"127.0.0.1:{self.port}", "--workers", "2", "--threads", "4",
                   "--timeout", "60", "app:app"]
            self.config = "gunicorn --workers 2 --threads 4 (seed Dockerfile), torch default threads"
        else:
            raise SystemExit(f"unknown server {name} (ours, seed)")
        self.logfile = open(logdir / f"{name}-server.log", "wb")
        log(f"starting {name}: {' '.join(cmd)} (log {self.logfile.name})")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.logfile, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} server exited with {self.proc.returncode}; "
                                 f"see {self.logfile.name}")
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=30) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        raise SystemExit(f"{self.name} server not ready after {timeout:.0f}s; see {self.logfile.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.logfile.close()


def run_wrk(server: Server, images: list[Path], conc: int, duration: float) -> dict:
    cmd = ["wrk", "-t", "1", "-c", str(conc), "-d", f"{duration:g}s", "--timeout", "60s",
           "-s", str(LUA), server.base + "/predict", "--",
           "multipart" if server.multipart else "raw", *[str(p) for p in images]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 180)
    if out.returncode != 0:
        raise SystemExit(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    line = next((l for l in reversed(out.stdout.splitlines()) if l.startswith("{")), None)
    if line is None:
        raise SystemExit(f"wrk printed no result line:\n{out.stdout}\n{out.stderr}")
    w = json.loads(line)
    errors = sum(w[k] for k in w if k.startswith("errors_"))
    ok = w["wrk_requests"] - w["errors_status"]
    secs = w["duration_us"] / 1e6
    ms = lambda k: round(w[k] / 1e3, 2)  # noqa: E731
    return {
        "kind": "http", "server": server.name, "concurrency": conc,
        "duration_s": round(secs, 2), "requests": ok, "errors": errors,
        "images_per_s": round(ok / secs, 2) if secs > 0 else 0.0,
        "p50_ms": ms("p50_us"), "p90_ms": ms("p90_us"), "p95_ms": ms("p95_us"),
        "p99_ms": ms("p99_us"), "mean_ms": ms("mean_us"), "max_ms": ms("max_us"),
        "images": len(images), "config": server.config, "errors_detail": {
            k[len("errors_"):]: w[k] for k in w if k.startswith("errors_") and w[k]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-bin", default=str(ROOT / "target" / "release" / "inference-server"))
    ap.add_argument("--weights", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="times each image is POSTed before timing")
    ap.add_argument("--servers", default="ours,seed")
    ap.add_argument("--logs", default=".")
    ap.add_argument("images", nargs="*")
    args = ap.parse_args()
    images = [Path(p) for p in (args.images or sorted(
        glob.glob(str(ROOT / "inference" / "tests" / "fixtures" / "images" / "*.jpg"))))]
    if not images:
        raise SystemExit("no images")
    concs = [int(c) for c in args.concurrency.split(",")]
    logdir = Path(args.logs)
    logdir.mkdir(parents=True, exist_ok=True)

    for name in [s.strip() for s in args.servers.split(",") if s.strip()]:
        server = Server(name, args, logdir)
        try:
            t0 = time.monotonic()
            server.wait_ready()
            log(f"{name} ready in {time.monotonic() - t0:.1f}s; warm-up {args.warmup}x{len(images)} images")
            for _ in range(args.warmup):
                for img in images:
                    status, body = post(server.base + "/predict", img, server.multipart)
                    if status != 200 or len(json.loads(body).get("predictions", [])) != 5:
                        raise SystemExit(f"{name}: {img.name} -> {status} {body[:200]!r}")
            for c in concs:
                log(f"{name}: wrk concurrency {c}, {args.duration:g}s")
                print(json.dumps(run_wrk(server, images, c, args.duration)), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
