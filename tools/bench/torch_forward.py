#!/usr/bin/env python3
"""Forward-only ResNet-50 latency/throughput: PyTorch eager and ONNX Runtime (CPU).

Prints one JSON object per (backend, batch) on stdout, e.g.
  {"backend": "torch", "batch": 4, "threads": 2, "warmup": 3, "runs": 20,
   "median_ms": ..., "p90_ms": ..., "min_ms": ..., "max_ms": ...,
   "images_per_s": ..., "torch": "2.x", ...}
Input is a fixed random [N,3,224,224] float32 tensor (no image decoding/preprocessing).

Usage:
  python tools/bench/torch_forward.py --weights W.safetensors [--onnx M.onnx]
      [--threads 2] [--batches 1,4,8] [--warmup 3] [--runs 20] [--backends torch,ort]
Without --onnx, the model is exported to a temporary file first (tools/bench/export_onnx.py).
Without --weights, torchvision's default random init is used (timing does not depend on values).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
import torchvision


def timeit(fn, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def summarize(backend: str, batch: int, ts: list[float], args, extra: dict) -> dict:
    s = sorted(ts)
    med = statistics.median(s)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return {
        "backend": backend, "batch": batch, "threads": args.threads,
        "warmup": args.warmup, "runs": len(ts),
        "median_ms": round(med, 3), "p90_ms": round(p90, 3),
        "min_ms": round(s[0], 3), "max_ms": round(s[-1], 3),
        "images_per_s": round(batch * 1e3 / med, 2),
        **extra,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    ap.add_argument("--onnx")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="1,4,8")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--backends", default="torch,ort")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    host = {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine()}

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    if args.weights:
        from resnet_st import load_resnet50
        model = load_resnet50(args.weights)
    else:
        model = torchvision.models.resnet50(weights=None).eval()

    gen = torch.Generator().manual_seed(0)
    inputs = {b: torch.randn(b, 3, 224, 224, generator=gen) for b in batches}

    if "torch" in backends:
        for b in batches:
            x = inputs[b]

            def fwd():
                with torch.inference_mode():
                    model(x)

            ts = timeit(fwd, args.warmup, args.runs)
            print(json.dumps(summarize("torch", b, ts, args, {"torch": torch.__version__, **host})), flush=True)

    if "ort" in backends:
        import onnxruntime as ort

        onnx_path = args.onnx
        tmp = None
        if not onnx_path:
            from export_onnx import export
            tmp = tempfile.NamedTemporaryFile(suffix=".onnx", delete=False)
            tmp.close()
            onnx_path = tmp.name
            export(model, onnx_path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        for b in batches:
            xn = np.ascontiguousarray(inputs[b].numpy())
            ts = timeit(lambda: sess.run(None, {in_name: xn}), args.warmup, args.runs)
            print(json.dumps(summarize("onnxruntime", b, ts, args, {"onnxruntime": ort.__version__, **host})),
                  flush=True)
        if tmp is not None:
            os.unlink(onnx_path)


if __name__ == "__main__":
    main()
