#!/usr/bin/env python3
"""Forward-only ResNet-50 on a GPU with PyTorch: the peers of our cuDNN engine.

Backends (same weights, input already on the GPU, each timed run ends with a synchronize):
  torch-eager      fp16, channels_last, torch.inference_mode, cudnn.benchmark on
  torch-compile    the same model through torch.compile (default mode, Inductor), dynamic=False
  torch-compile-ro torch.compile(mode="reduce-overhead"): Inductor plus CUDA graphs
Prints one JSON object per (backend, batch), the keys bench_forward prints, so report.py puts
them side by side. A backend that fails (a compile error, a time limit) prints an "error" line
and the others go on.

  python tools/bench/torch_gpu_forward.py --weights W.safetensors [--batches 1,8,32,128]
      [--warmup 10] [--runs 50] [--backends torch-eager,torch-compile] [--compile-budget 240]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tools/

import torch

from resnet_st import load_resnet50


def timed(fn, x, warmup: int, runs: int) -> list[float]:
    for _ in range(warmup):
        fn(x)
    torch.cuda.synchronize()
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn(x)
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3)
    return ts


def line(backend: str, batch: int, ts: list[float], args, extra: dict) -> str:
    s = sorted(ts)
    med = statistics.median(s)
    p90 = s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))]
    return json.dumps({
        "backend": backend, "batch": batch, "warmup": args.warmup, "runs": len(s),
        "median_ms": round(med, 3), "p90_ms": round(p90, 3), "min_ms": round(s[0], 3),
        "max_ms": round(s[-1], 3), "images_per_s": round(batch * 1e3 / med, 2),
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(), **extra,
    })


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--backends", default="torch-eager,torch-compile")
    ap.add_argument("--compile-budget", type=float, default=240.0,
                    help="seconds of compiling after which the compiled backends stop")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b]

    torch.backends.cudnn.benchmark = True
    base = load_resnet50(args.weights).eval().half().to("cuda").to(memory_format=torch.channels_last)
    g = torch.Generator(device="cpu").manual_seed(0)
    inputs = {b: (torch.rand(b, 3, 224, 224, generator=g) * 4 - 2).half().to("cuda")
              .contiguous(memory_format=torch.channels_last) for b in batches}
    compile_started = None
    for backend in args.backends.split(","):
        if backend == "torch-eager":
            fn = base
        elif backend == "torch-compile":
            fn = torch.compile(base, dynamic=False)
        elif backend == "torch-compile-ro":
            fn = torch.compile(base, mode="reduce-overhead", dynamic=False)
        else:
            raise SystemExit(f"unknown backend {backend}")
        for b in batches:
            compiled = backend != "torch-eager"
            if compiled:
                compile_started = compile_started or time.perf_counter()
                spent = time.perf_counter() - compile_started
                if spent > args.compile_budget:
                    print(json.dumps({"backend": backend, "batch": b,
                                      "error": f"compile budget of {args.compile_budget:.0f} s spent"}), flush=True)
                    continue
            try:
                with torch.inference_mode():
                    t0 = time.perf_counter()
                    fn(inputs[b])  # compiles for this shape
                    torch.cuda.synchronize()
                    first_s = time.perf_counter() - t0
                    ts = timed(fn, inputs[b], args.warmup, args.runs)
                print(line(backend, b, ts, args, {"first_call_s": round(first_s, 2)}), flush=True)
            except Exception as e:  # noqa: BLE001 - one failed peer must not end the run
                print(json.dumps({"backend": backend, "batch": b, "error": repr(e)[:300]}), flush=True)


if __name__ == "__main__":
    main()
