#!/usr/bin/env python3
"""Merge benchmark JSON lines into side-by-side tables.

Reads JSON lines (files, or stdin with `-`) written by
  inference/examples/bench_forward.rs   (backends "ours", "candle-folded", "candle-stock")
  tools/bench/torch_forward.py          (backends "torch", "onnxruntime")
  tools/bench/http_bench.py             ("kind": "http", servers "ours", "seed")
  tools/bench/overload.py               ("kind": "overload")
and prints a forward-pass table with ratios vs PyTorch eager and vs ONNX Runtime, an HTTP
table with ours/seed ratios, and the overload run. Lines that are not JSON objects are ignored.

Usage: python tools/bench/report.py forward.jsonl http.jsonl [overload.jsonl]
"""
from __future__ import annotations

import json
import statistics
import sys

FWD_ORDER = ["ours", "candle-folded", "candle-stock", "torch", "onnxruntime"]
FWD_LABEL = {"ours": "ours (NHWC, Winograd)", "candle-folded": "candle, BN folded",
             "candle-stock": "candle-transformers stock", "torch": "PyTorch eager",
             "onnxruntime": "ONNX Runtime"}


def read(paths: list[str]) -> list[dict]:
    rows = []
    for p in paths:
        f = sys.stdin if p == "-" else open(p)
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return rows


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def merge_rounds(rows: list[dict]) -> list[dict]:
    """One row per (backend, batch): several rounds' rows become the median of their medians and
    p90s, the sum of their runs, and a `rounds` count."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["batch"]), []).append(r)
    merged = []
    for (backend, batch), rs in groups.items():
        m = dict(rs[0])
        m["median_ms"] = statistics.median(r["median_ms"] for r in rs)
        m["p90_ms"] = statistics.median(r["p90_ms"] for r in rs)
        m["runs"] = sum(r["runs"] for r in rs)
        m["rounds"] = len(rs)
        m["images_per_s"] = round(batch * 1e3 / m["median_ms"], 2)
        merged.append(m)
    return merged


def forward_table(rows: list[dict]) -> None:
    if not rows:
        return
    rows = merge_rounds(rows)
    threads = sorted({r.get("threads") for r in rows})
    runs = sorted({r.get("runs") for r in rows})
    vers = []
    for key in ("candle", "torch", "onnxruntime"):
        v = next((r[key] for r in rows if key in r), None)
        if v:
            vers.append(f"{key} {v}")
    devices = sorted({r.get("device", "cpu") for r in rows})
    rounds = sorted({r.get("rounds", 1) for r in rows})
    print(f"Forward pass only, input [N,3,224,224] f32 already on the device, same weights; "
          f"device {'/'.join(devices)}, CPU threads {'/'.join(map(str, threads))}, "
          f"runs {'/'.join(map(str, runs))} in {'/'.join(map(str, rounds))} interleaved round(s) "
          f"(median of the rounds' medians)")
    print(f"({', '.join(vers)}; 'vs X' = img/s / X's img/s at the same batch: >1 = faster than X)")
    by = {(r["backend"], r["batch"]): r for r in rows}
    backends = [b for b in FWD_ORDER if any(k[0] == b for k in by)] + sorted(
        {k[0] for k in by} - set(FWD_ORDER))
    hdr = f"{'batch':>5}  {'backend':<27}{'median ms':>10}{'p90 ms':>10}{'img/s':>9}{'vs torch':>10}{'vs ORT':>9}"
    print(hdr)
    print("-" * len(hdr))
    for b in sorted({k[1] for k in by}):
        ref_t = by.get(("torch", b), {}).get("images_per_s")
        ref_o = by.get(("onnxruntime", b), {}).get("images_per_s")
        for be in backends:
            r = by.get((be, b))
            if r is None:
                continue
            ips = r["images_per_s"]
            # On a GPU "ours" is the server's GPU path: the candle network in f16.
            label = "ours (candle, f16)" if be == "ours" and r.get("device", "cpu") != "cpu" \
                else FWD_LABEL.get(be, be)
            print(f"{b:>5}  {label:<27}{r['median_ms']:>10.1f}{r['p90_ms']:>10.1f}"
                  f"{ips:>9.2f}{ratio(ips, ref_t):>10}{ratio(ips, ref_o):>9}")
    print()


def http_table(rows: list[dict]) -> None:
    if not rows:
        return
    dur = sorted({r["duration_s"] for r in rows})
    print(f"HTTP POST /predict, {rows[0].get('images', '?')} real JPEGs cycled, wrk closed loop "
          f"(C connections), 127.0.0.1, ~{dur[0]:g}-{dur[-1]:g}s per run")
    for name in ("ours", "seed"):
        cfg = next((r["config"] for r in rows if r["server"] == name), None)
        if cfg:
            print(f"  {name}: {cfg}")
    print("  ours/seed: img/s ratio >1 = ours faster; latency ratios <1 = ours faster")
    by = {(r["server"], r["concurrency"]): r for r in rows}
    hdr = f"{'conc':>4}  {'server':<10}{'img/s':>9}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'requests':>10}{'errors':>8}"
    print(hdr)
    print("-" * len(hdr))
    for c in sorted({k[1] for k in by}):
        for name in ("ours", "seed"):
            r = by.get((name, c))
            if r:
                print(f"{c:>4}  {name:<10}{r['images_per_s']:>9.2f}{r['p50_ms']:>10.1f}{r['p95_ms']:>10.1f}"
                      f"{r['p99_ms']:>10.1f}{r['requests']:>10}{r['errors']:>8}")
        o, s = by.get(("ours", c)), by.get(("seed", c))
        if o and s:
            print(f"{'':>4}  {'ours/seed':<10}{ratio(o['images_per_s'], s['images_per_s']):>9}"
                  f"{ratio(o['p50_ms'], s['p50_ms']):>10}{ratio(o['p95_ms'], s['p95_ms']):>10}"
                  f"{ratio(o['p99_ms'], s['p99_ms']):>10}")
    if any(r["errors"] for r in rows):
        print("WARNING: some runs had errors (non-2xx, timeouts or socket errors): "
              + ", ".join(f"{r['server']}@{r['concurrency']}: {r.get('errors_detail')}"
                          for r in rows if r["errors"]))
    print()


def overload_table(rows: list[dict]) -> None:
    for r in rows:
        print(f"Overload: {r['image']} offered open loop at {r['offered_rate']:.1f} req/s = "
              f"{r['offered_rate'] / r['sustainable_rate']:.1f}x the sustainable "
              f"{r['sustainable_rate']:.1f} img/s (measured just before, oha -c 8), "
              f"{r['duration_s']:g}s, {r['config']}")
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(r["status_codes"].items()))
        print(f"  responses: {codes} (+{r['cut_off_at_end']} still in flight when the run ended)")
        print(f"  served {r['served_rate']:.1f} img/s while overloaded; refusals probed with "
              f"Retry-After: {r['rejected_with_retry_after']}/{r['probe_rejected']}")
        print(f"  admitted (200): p50 {r['admitted_p50_ms']:.0f} ms, p99 {r['admitted_p99_ms']:.0f} ms "
              f"(first half {r.get('admitted_p99_first_half_ms', float('nan')):.0f}, second half "
              f"{r.get('admitted_p99_second_half_ms', float('nan')):.0f}), max {r['admitted_max_ms']:.0f} ms; "
              f"bound (MAX_QUEUE {r['max_queue']} + a batch of {r.get('max_batch', 8)}) / served rate = "
              f"{r['queue_bound_ms']:.0f} ms")
        print(f"  refused (503): p50 {r['rejected_p50_ms']:.1f} ms, p99 {r['rejected_p99_ms']:.1f} ms")
        print(f"  server RSS: {r['rss_start_mib']:.0f} MiB after warm-up, max {r['rss_max_mib']:.0f} MiB, "
              f"{r['rss_end_mib']:.0f} MiB at the end; alive afterwards: {r['alive_after']}")
        print()


def goals(fwd: list[dict], http: list[dict], over: list[dict]) -> None:
    """Issue 5's targets, checked on this run's figures."""
    fwd = {(r["backend"], r["batch"]): r for r in merge_rounds(fwd)}
    http = {(r["server"], r["concurrency"]): r for r in http}
    lines = []

    def check(what: str, value: float | None, op: str, target: float, unit: str = "x") -> None:
        if value is None:
            return
        ok = value <= target if op == "<=" else value >= target
        lines.append(f"  [{'met' if ok else 'NOT met'}] {what}: {value:.2f}{unit} (target {op} {target:g}{unit})")

    ours1 = fwd.get(("ours", 1), {}).get("median_ms")
    for ref, name, target in (("torch", "PyTorch eager", 0.5), ("onnxruntime", "ONNX Runtime", 1.2)):
        r = fwd.get((ref, 1), {}).get("median_ms")
        check(f"forward batch-1 latency, ours / {name}", ours1 / r if ours1 and r else None, "<=", target)
    o8, s8 = http.get(("ours", 8)), http.get(("seed", 8))
    if o8 and s8:
        check("HTTP img/s at concurrency 8, ours / seed", o8["images_per_s"] / s8["images_per_s"], ">=", 2.0)
    o1 = http.get(("ours", 1))
    if o1 and ours1:
        check("HTTP p99 at concurrency 1 / forward batch-1 median", o1["p99_ms"] / ours1, "<=", 1.3)
    for r in over:
        check("overload: refusals' p99 latency", r["rejected_p99_ms"], "<=", 50.0, " ms")
        # Bounded: within the queue's bound (+10 % for the HTTP path), and not growing over the run.
        check("overload: admitted p99 / queue bound", r["admitted_p99_ms"] / r["queue_bound_ms"], "<=", 1.1)
        if "admitted_p99_second_half_ms" in r:
            check("overload: admitted p99, second half / first half",
                  r["admitted_p99_second_half_ms"] / r["admitted_p99_first_half_ms"], "<=", 1.1)
        check("overload: RSS growth over the run", r["rss_max_mib"] - r["rss_start_mib"], "<=", 200.0, " MiB")
        lines.append(f"  [{'met' if r['alive_after'] else 'NOT met'}] overload: server alive and serving afterwards")
    if lines:
        print("Issue 5 targets on this run:")
        print("\n".join(lines))
        print()


def main() -> None:
    paths = sys.argv[1:] or ["-"]
    rows = read(paths)
    forward_table([r for r in rows if r.get("kind") not in ("http", "overload") and "backend" in r])
    http_table([r for r in rows if r.get("kind") == "http"])
    overload_table([r for r in rows if r.get("kind") == "overload"])
    goals([r for r in rows if r.get("kind") not in ("http", "overload") and "backend" in r],
          [r for r in rows if r.get("kind") == "http"],
          [r for r in rows if r.get("kind") == "overload"])
    if not rows:
        raise SystemExit("no benchmark results found in " + ", ".join(paths))


if __name__ == "__main__":
    main()
