#!/usr/bin/env python3
"""The server on a GPU, end to end: torchvision parity over HTTP, then throughput with oha.

For a machine with an NVIDIA GPU (run by tools/bench/gpu.sh after the forward-pass benchmark).
  1. start the CUDA build of inference-server with DEVICE=cuda on the parity fixture's weights;
     /version must say cuda and the implementation (candle-f16 by default);
  2. parity: POST every photo of inference/tests/fixtures/parity.json to /predict?top_k=5. The
     top-5 classes must be torchvision's, in order, and each probability within --prob-tol of
     softmax(torchvision's logits). This is the GPU counterpart of tests/parity.rs, which CI can
     only run on the CPU;
  3. throughput: oha closed loop, one JPEG, at each --conc for --duration s: img/s, p50, p99.
Exits 1 when parity fails.

Usage: python tools/bench/gpu_server.py --server-bin B --weights W [--conc 1,8,32,64]
           [--duration 10] [--logs DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_bench import ROOT, Server, log, post  # noqa: E402
from overload import oha, pct  # noqa: E402

FIXTURE = ROOT / "inference/tests/fixtures/parity.json"
IMAGES = ROOT / "inference/tests/fixtures/images"


def softmax(logits: list[float]) -> list[float]:
    m = max(logits)
    e = [math.exp(x - m) for x in logits]
    s = sum(e)
    return [x / s for x in e]


def parity(server: Server, weights: Path, tol: float) -> bool:
    fx = json.loads(FIXTURE.read_text())
    if hashlib.sha256(weights.read_bytes()).hexdigest() != fx["weights"]["sha256"]:
        raise SystemExit(f"{weights} is not the parity fixture's weights "
                         "(inference-server generate-weights --seed 42)")
    ok = True
    for im in fx["images"]:
        status, body = post(server.base + "/predict?top_k=5", IMAGES / im["file"], False)
        if status != 200:
            log(f"parity {im['file']}: HTTP {status} {body[:200]!r}")
            ok = False
            continue
        preds = json.loads(body)["predictions"]
        probs = softmax(im["logits"])
        got = [p["class_id"] for p in preds]
        dprob = max(abs(p["confidence"] - probs[p["class_id"]]) for p in preds)
        good = got == im["top5"] and dprob <= tol
        ok &= good
        log(f"parity {im['file']}: top-5 {'=' if got == im['top5'] else '!='} torchvision "
            f"{got} vs {im['top5']}, max |Δprob| {dprob:.1e} {'ok' if good else 'FAIL'}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--threads", type=int, default=0, help="INFERENCE_THREADS (0: all cores)")
    ap.add_argument("--conc", default="1,8,32,64")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--prob-tol", type=float, default=2e-3)
    ap.add_argument("--image", default=str(IMAGES / "cat.jpg"))
    ap.add_argument("--device", default="cuda", help="DEVICE for the server (cpu: try the script)")
    ap.add_argument("--logs", default=".state/bench/gpu-server")
    args = ap.parse_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["DEVICE"] = args.device
    os.environ.setdefault("MAX_BATCH_SIZE", "32")
    os.environ.setdefault("MAX_QUEUE", "256")
    server = Server("ours", args, logs)
    try:
        server.wait_ready(timeout=300)
        with urllib.request.urlopen(server.base + "/version") as r:
            version = json.loads(r.read())
        log(f"/version: device {version['device']}, implementation {version['implementation']}, "
            f"max_batch_size {version['max_batch_size']}")
        if args.device not in str(version["device"]):
            raise SystemExit(f"server is not on {args.device}: device {version['device']}")
        ok = parity(server, Path(args.weights), args.prob_tol)
        rows = []
        for c in [int(x) for x in args.conc.split(",") if x]:
            reqs = oha(server.base + "/predict", Path(args.image), ["-c", str(c)], args.duration)
            lat = [d for s, d, _ in reqs if s == 200]
            bad = sum(1 for s, _, _ in reqs if s != 200)
            span = max((t + d for _, d, t in reqs), default=args.duration)
            rows.append((c, len(lat) / span, statistics.median(lat) * 1e3, pct(lat, 0.99) * 1e3, bad))
        if rows:
            print(f"\nHTTP on {version['device']} ({version['implementation']}, "
                  f"MAX_BATCH_SIZE {version['max_batch_size']}), oha, {Path(args.image).name}, "
                  f"{args.duration:g} s per row")
            print("| conc | img/s | p50 ms | p99 ms | non-200 |\n|---:|---:|---:|---:|---:|")
            for c, rate, p50, p99, bad in rows:
                print(f"| {c} | {rate:.1f} | {p50:.1f} | {p99:.1f} | {bad} |")
        print(json.dumps({"kind": "gpu-server", "device": version["device"],
                          "implementation": version["implementation"], "parity_ok": ok,
                          "http": [dict(zip(["conc", "img_s", "p50_ms", "p99_ms", "non_200"], r))
                                   for r in rows]}))
        if not ok:
            raise SystemExit("GPU parity FAILED")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
