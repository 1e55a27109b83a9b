#!/usr/bin/env python3
"""The server on a GPU, end to end: torchvision parity over HTTP, then throughput with oha.

For a machine with an NVIDIA GPU (run by tools/bench/gpu.sh after the forward-pass benchmark).
  1. start the CUDA build of inference-server with DEVICE=cuda on the parity fixture's weights;
     /version must say cuda and the implementation (candle-f16 by default);
  2. parity: POST every photo of inference/tests/fixtures/parity.json to /predict?top_k=5. The
     top-5 classes must be torchvision's, in order, and each probability within --prob-tol of
     softmax(torchvision's logits). This is the GPU counterpart of tests/parity.rs, which CI can
     only run on the CPU;
  3. throughput: inference/examples/load.rs, closed loop over the parity set's JPEGs (mixed
     sizes, the 2048x2048 one included), at each --conc for --duration s: img/s, p50, p99, GPU
     utilisation (nvidia-smi) and the server's CPU time per image.
The server's settings come from the environment (GPU_ENGINE, GPU_LANES, MAX_BATCH_SIZE, ...).
Exits 1 when parity fails.

Usage: python tools/bench/gpu_server.py --server-bin B --weights W --load-bin L
           [--conc 1,8,32,64,256] [--duration 8] [--label NAME] [--logs DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from http_bench import ROOT, Server, log, post  # noqa: E402

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


def load(load_bin: str, server: Server, conc: int, duration: float, photos: list[Path]) -> dict:
    """One closed-loop run of inference/examples/load.rs (mixed photos, keep-alive)."""
    cmd = [load_bin, "--url", server.base + "/predict", "--conc", str(conc),
           "--duration", f"{duration:g}", "--warmup", "2", "--pid", str(server.proc.pid),
           "--gpu-util", *[str(p) for p in photos]]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120)
    if out.returncode != 0:
        raise SystemExit(f"load failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--load-bin", required=True, help="inference/examples/load.rs, built")
    ap.add_argument("--threads", type=int, default=0, help="INFERENCE_THREADS (0: all cores)")
    ap.add_argument("--conc", default="1,8,32,64,256")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--prob-tol", type=float, default=2e-3)
    ap.add_argument("--label", default="ours", help="name of this configuration in the report")
    ap.add_argument("--single", default=str(IMAGES / "cat.jpg"),
                    help="one photo for the --single-conc rows (the README's earlier runs posted cat.jpg)")
    ap.add_argument("--single-conc", default="", help="connection counts for one-photo rows")
    ap.add_argument("--device", default="cuda", help="DEVICE for the server (cpu: try the script)")
    ap.add_argument("--logs", default=".state/bench/gpu-server")
    args = ap.parse_args()
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    os.environ["DEVICE"] = args.device
    # The real JPEGs of the parity set, 2048x2048 included: every moment mixes sizes.
    photos = sorted(IMAGES.glob("*.jpg"))
    server = Server("ours", args, logs)
    try:
        t0 = time.monotonic()
        server.wait_ready(timeout=300)
        ready_s = time.monotonic() - t0
        with urllib.request.urlopen(server.base + "/version") as r:
            version = json.loads(r.read())
        log(f"[{args.label}] /version: device {version['device']}, implementation "
            f"{version['implementation']}, max_batch_size {version['max_batch_size']}, "
            f"ready in {ready_s:.1f} s")
        if args.device not in str(version["device"]):
            raise SystemExit(f"server is not on {args.device}: device {version['device']}")
        ok = parity(server, Path(args.weights), args.prob_tol)
        rows = []
        sets = [(f"{len(photos)} JPEGs mixed", photos, args.conc),
                (Path(args.single).name, [Path(args.single)], args.single_conc)]
        for name, files, concs in sets:
            for c in [int(x) for x in concs.split(",") if x]:
                r = load(args.load_bin, server, c, args.duration, files)
                r["set"] = name
                log(f"[{args.label}] {name}, conc {c}: {json.dumps(r)}")
                rows.append(r)
        print(f"\nHTTP [{args.label}] on {version['device']} ({version['implementation']}, "
              f"MAX_BATCH_SIZE {version['max_batch_size']}, GPU_LANES "
              f"{os.environ.get('GPU_LANES', 'default')}), {args.duration:g} s per row")
        print("| photos | conc | img/s | p50 ms | p99 ms | non-200 | GPU util % | server CPU ms/img |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            bad = sum(v for k, v in r["statuses"].items() if k != "200") + r["io_errors"]
            print(f"| {r['set']} | {r['conc']} | {r['images_per_s']:.1f} | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {bad} | {r['gpu_util_pct']} | "
                  f"{r['server_cpu_ms_per_image']} |")
        print(json.dumps({"kind": "gpu-server", "label": args.label, "device": version["device"],
                          "implementation": version["implementation"], "parity_ok": ok,
                          "ready_s": round(ready_s, 2), "http": rows}), flush=True)
        if not ok:
            raise SystemExit("GPU parity FAILED")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
