#!/usr/bin/env python3
"""Overload check for our server: offered load at 2x what it sustains, open loop, with oha.

  1. start inference-server (defaults, MAX_QUEUE as configured) -> /ready -> warm-up;
  2. sustainable rate R: oha closed loop, 8 connections, one image, --sustain seconds;
  3. overload: oha open loop at --factor x R requests/s (-q, enough connections that the rate, not
     the connection count, sets the load) for --duration seconds; its per-request CSV separates
     admitted (200) from refused (503) latencies. Meanwhile three probe clients check that
     refusals carry Retry-After (oha does not report headers), and the server's RSS is sampled
     from /proc every 0.25 s;
  4. after: the server must still answer /health and a normal /predict.
Prints one JSON object ("kind": "overload") for tools/bench/report.py.

Usage: python tools/bench/overload.py --server-bin B --weights W [--threads 2] [--factor 2]
           [--duration 30] [--sustain 10] [--logs DIR] [IMAGE.jpg]
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_bench import ROOT, Server, log, post  # noqa: E402


def oha(url: str, image: Path, args: list[str], seconds: float) -> list[tuple[int, float, float]]:
    """Runs oha; returns (status, seconds, start offset) per completed request (its CSV output).
    Requests still in flight when the duration ends are cut off by oha and not listed."""
    exe = shutil.which("oha") or str(Path.home() / ".cargo" / "bin" / "oha")
    cmd = [exe, "--no-tui", "--output-format", "csv", "-z", f"{seconds:g}s", "-m", "POST",
           "-H", "Content-Type: image/jpeg", "-D", str(image), "-t", "60s", *args, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if out.returncode != 0:
        raise SystemExit(f"oha failed ({out.returncode}): {out.stderr.strip()[:500]}")
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    return [(int(r["status"]), float(r["request-duration"]), float(r["request-start"]))
            for r in rows if r.get("status")]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server-bin", default=str(ROOT / "target" / "release" / "inference-server"))
    ap.add_argument("--weights", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--factor", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--sustain", type=float, default=10.0)
    ap.add_argument("--logs", default=".")
    ap.add_argument("image", nargs="?",
                    default=str(ROOT / "inference" / "tests" / "fixtures" / "images" / "cat.jpg"))
    args = ap.parse_args()
    image = Path(args.image)
    logdir = Path(args.logs)
    logdir.mkdir(parents=True, exist_ok=True)

    server = Server("ours", args, logdir)
    try:
        server.wait_ready()
        for _ in range(3):
            status, body = post(server.base + "/predict", image, False)
            if status != 200:
                raise SystemExit(f"warm-up: {status} {body[:200]!r}")
        url = server.base + "/predict"
        with urllib.request.urlopen(server.base + "/version") as r:
            version = json.loads(r.read())
        max_queue = int(version.get("max_queue") or 64)
        max_batch = int(version.get("max_batch_size") or 8)

        log(f"sustainable rate: oha -c 8 for {args.sustain:g}s")
        base = oha(url, image, ["-c", "8"], args.sustain)
        sustainable = sum(1 for st, _, _ in base if st == 200) / args.sustain
        offered = args.factor * sustainable
        rss_start = rss_mib(server.proc.pid)

        stop = threading.Event()
        probes: list[tuple[int, float, str | None]] = []
        rss: list[float] = [rss_start]

        def probe() -> None:
            body = image.read_bytes()
            while not stop.is_set():
                req = urllib.request.Request(url, data=body, method="POST",
                                             headers={"Content-Type": "image/jpeg"})
                t0 = time.monotonic()
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        r.read()
                        probes.append((r.status, time.monotonic() - t0, r.headers.get("Retry-After")))
                except urllib.error.HTTPError as e:
                    e.read()
                    probes.append((e.code, time.monotonic() - t0, e.headers.get("Retry-After")))
                except OSError:
                    probes.append((0, time.monotonic() - t0, None))
                # Random pauses: a probe sent right after its own batch finished would always find
                # the places that batch just freed.
                stop.wait(random.uniform(0.05, 0.5))

        def sample_rss() -> None:
            while not stop.is_set():
                try:
                    rss.append(rss_mib(server.proc.pid))
                except OSError:
                    return
                stop.wait(0.25)

        # A few probe clients only to read Retry-After on refusals (oha does not report headers).
        threads = [threading.Thread(target=probe) for _ in range(3)] + [threading.Thread(target=sample_rss)]
        for t in threads:
            t.start()
        log(f"overload: {offered:.1f} req/s open loop (oha -q) for {args.duration:g}s")
        try:
            # Enough connections that the rate is the limit: every admitted request may wait up
            # to MAX_QUEUE / R seconds, rejected ones return at once.
            conns = max(64, int(offered * (max_queue / max(sustainable, 0.1) + 2)))
            over = oha(url, image, ["-q", f"{offered:.2f}", "-c", str(conns), "--latency-correction"],
                       args.duration)
        finally:
            stop.set()
            for t in threads:
                t.join()
        rss_end = rss_mib(server.proc.pid)
        alive = server.proc.poll() is None
        if alive:
            status, _ = post(url, image, False)
            alive = status == 200

        ok_ms = [lat * 1e3 for st, lat, _ in over if st == 200]
        half = args.duration / 2
        ok_first = [lat * 1e3 for st, lat, t in over if st == 200 and t < half]
        ok_second = [lat * 1e3 for st, lat, t in over if st == 200 and t >= half]
        busy_ms = [lat * 1e3 for st, lat, _ in over if st in (429, 503)]
        served = len(ok_ms) / args.duration
        codes: dict[str, int] = {}
        for st, _, _ in over:
            codes[str(st)] = codes.get(str(st), 0) + 1
        probe_busy = [ra for st, _, ra in probes if st in (429, 503)]
        result = {
            "kind": "overload", "image": image.name, "duration_s": args.duration,
            "config": server.config + f" MAX_QUEUE={max_queue}",
            "sustainable_rate": round(sustainable, 2), "offered_rate": round(offered, 2),
            "status_codes": codes,
            "cut_off_at_end": round(offered * args.duration) - len(over),
            "served_rate": round(served, 2),
            "probe_requests": len(probes), "probe_rejected": len(probe_busy),
            "rejected_with_retry_after": sum(1 for ra in probe_busy if ra),
            "admitted_p50_ms": round(pct(ok_ms, 0.5), 1),
            "admitted_p99_ms": round(pct(ok_ms, 0.99), 1),
            "admitted_max_ms": round(max(ok_ms, default=float("nan")), 1),
            "admitted_p99_first_half_ms": round(pct(ok_first, 0.99), 1),
            "admitted_p99_second_half_ms": round(pct(ok_second, 0.99), 1),
            "rejected_p50_ms": round(pct(busy_ms, 0.5), 2),
            "rejected_p99_ms": round(pct(busy_ms, 0.99), 2),
            "max_queue": max_queue, "max_batch": max_batch,
            # Ahead of an admitted request: at most MAX_QUEUE waiting and one batch running.
            "queue_bound_ms": round((max_queue + max_batch) / max(served, 0.1) * 1e3, 0),
            "rss_start_mib": round(rss_start, 1), "rss_max_mib": round(max(rss), 1),
            "rss_end_mib": round(rss_end, 1), "rss_mean_mib": round(statistics.fmean(rss), 1),
            "alive_after": alive,
        }
        print(json.dumps(result), flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
